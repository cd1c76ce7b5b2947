/*
 * vault.c - admin-managed secrets (vault.h): validation, sealing, the per-repository sets and
 * their cache.
 *
 * Threads: any. v->lock guards the cache only; SQLite (the registry's own lock) and sealing
 * run outside it. A cached set is immutable and reference counted, so a caller keeps using
 * the set it got while a change builds the next one.
 */
#include "server/vault.h"

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/redact.h"
#include "common/xmem.h"
#include "server/secrets.h"
#include "storage/secrets_db.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_MAX 64 /* repositories whose set is kept; more are rebuilt on use */

/* What the sandbox, the agents and the egress proxy set themselves: a secret of that name
 * would either be overwritten or override what the server relies on. */
static const char *const reserved[] = {"PATH",
                                       "HOME",
                                       "SHELL",
                                       "USER",
                                       "LOGNAME",
                                       "PWD",
                                       "LANG",
                                       "TERM",
                                       "TMPDIR",
                                       "WORKSPACE",
                                       "HTTP_PROXY",
                                       "HTTPS_PROXY",
                                       "NO_PROXY",
                                       "ALL_PROXY",
                                       "FTP_PROXY",
                                       "PROMPT_FILE",
                                       "CONTEXT_FILE",
                                       "SESSION_ID",
                                       "PROMPT_ID",
                                       "MESSAGE_ID",
                                       "AGENT_NAME",
                                       "IS_SANDBOX",
                                       "CODEX_HOME",
                                       "NAME",
                                       "ANTHROPIC_API_KEY",
                                       "OPENAI_API_KEY",
                                       "ANTHROPIC_BASE_URL",
                                       "CLAUDE_CONFIG_DIR",
                                       "OPENCODE_CONFIG_CONTENT",
                                       NULL};
/* Prefixes reserved the same way (git identity, our own, the dynamic loader, XDG dirs). */
static const char *const reserved_prefix[] = {"GIT_", "SESSIOND_", "LD_", "XDG_", NULL};

struct cached {
    char *repo;
    struct redact_set *set; /* NULL: the repository has no secret */
};

struct vault {
    struct registry *reg;
    const struct secrets *sec;
    char **extra; /* NULL terminated */
    pthread_mutex_t lock;
    uint64_t gen;    /* bumped by every change; guarded by lock */
    _Atomic int any; /* some secret exists (recounted at every change) */
    uint64_t cache_gen;
    struct cached cache[CACHE_MAX];
    int ncache;
};

static void recount(struct vault *v);

static void cache_clear(struct vault *v)
{
    for (int i = 0; i < v->ncache; i++) {
        free(v->cache[i].repo);
        redact_set_unref(v->cache[i].set);
    }
    v->ncache = 0;
}

int vault_new(struct registry *reg, const struct secrets *sec, const char *const *extra_reserved,
              struct vault **out)
{
    struct vault *v = xcalloc(1, sizeof(*v));
    size_t n = 0;
    while (extra_reserved && extra_reserved[n]) {
        n++;
    }
    v->extra = xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        v->extra[i] = xstrdup(extra_reserved[i]);
    }
    v->reg = reg;
    v->sec = sec;
    pthread_mutex_init(&v->lock, NULL);
    recount(v);
    *out = v;
    return 0;
}

void vault_free(struct vault *v)
{
    if (!v) {
        return;
    }
    cache_clear(v);
    for (size_t i = 0; v->extra[i]; i++) {
        free(v->extra[i]);
    }
    free(v->extra);
    pthread_mutex_destroy(&v->lock);
    free(v);
}

static int is_reserved(const struct vault *v, const char *name)
{
    for (size_t i = 0; reserved[i]; i++) {
        if (strcmp(reserved[i], name) == 0) {
            return 1;
        }
    }
    for (size_t i = 0; reserved_prefix[i]; i++) {
        if (strncmp(reserved_prefix[i], name, strlen(reserved_prefix[i])) == 0) {
            return 1;
        }
    }
    for (size_t i = 0; v->extra[i]; i++) {
        if (strcmp(v->extra[i], name) == 0) {
            return 1;
        }
    }
    return 0;
}

int vault_check_name(const struct vault *v, const char *name, char *msg, size_t n)
{
    size_t len = name ? strlen(name) : 0;
    int ok = len >= 1 && len <= 64 && ((name[0] >= 'A' && name[0] <= 'Z') || name[0] == '_');
    for (size_t i = 1; ok && i < len; i++) {
        char c = name[i];
        ok = (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    }
    if (!ok) {
        snprintf(msg, n, "secret names match [A-Z_][A-Z0-9_]{0,63}");
        return ERR_INVALID;
    }
    if (is_reserved(v, name)) {
        snprintf(msg, n, "%s is reserved: the sandbox or the agent sets it", name);
        return ERR_INVALID;
    }
    return 0;
}

static char *aad_of(const char *repo, const char *name)
{
    return xasprintf("secret:%s:%s", repo, name);
}

static void recount(struct vault *v)
{
    int64_t n = 1; /* a failed count keeps the lookups on */
    secrets_db_count(v->reg, &n);
    atomic_store(&v->any, n > 0);
}

static void changed(struct vault *v)
{
    pthread_mutex_lock(&v->lock);
    v->gen++;
    pthread_mutex_unlock(&v->lock);
    recount(v);
}

int vault_any(struct vault *v)
{
    return v && atomic_load(&v->any);
}

int vault_put(struct vault *v, const char *repo, const char *name, const char *value, size_t n,
              const char *set_by, char *msg, size_t msgn)
{
    char *sealed = NULL, *aad = NULL;
    int rc = vault_check_name(v, name, msg, msgn);
    if (rc) {
        return rc;
    }
    if (n < REDACT_MIN_LEN || n > REDACT_MAX_LEN || memchr(value, 0, n)) {
        snprintf(msg, msgn,
                 "secret values are %d to %d bytes without NUL (a shorter one could not be "
                 "told apart from ordinary output to redact it)",
                 REDACT_MIN_LEN, REDACT_MAX_LEN);
        return ERR_INVALID;
    }
    if (!v->sec) {
        snprintf(msg, msgn, "no master key: secrets cannot be stored");
        return ERR_UNAVAILABLE;
    }
    aad = aad_of(repo, name);
    rc = secrets_seal(v->sec, aad, value, n, &sealed);
    if (rc == 0) {
        rc = secrets_db_put(v->reg, repo, name, sealed, set_by, clock_now_ms());
    }
    if (rc == 0) {
        changed(v);
    }
    free(aad);
    free(sealed);
    return rc;
}

int vault_delete(struct vault *v, const char *repo, const char *name)
{
    int rc = secrets_db_delete(v->reg, repo, name);
    if (rc == 0) {
        changed(v);
    }
    return rc;
}

int vault_list(struct vault *v, const char *repo, json_t **out)
{
    return secrets_db_list(v->reg, repo, out);
}

struct build {
    const struct vault *v;
    struct redact_set *set;
};

/* One row of secrets_db_for_repo: the repository's rows come first, so a global one whose
 * name is taken already is overridden. */
static int add_row(void *ctx, const char *repo, const char *name, const char *sealed)
{
    struct build *b = ctx;
    for (size_t i = 0; i < redact_set_count(b->set); i++) {
        if (strcmp(redact_set_name(b->set, i), name) == 0) {
            return 0;
        }
    }
    char *aad = aad_of(repo, name), *plain = NULL;
    size_t n = 0;
    if (secrets_unseal(b->v->sec, aad, sealed, &plain, &n) != 0) {
        LOG_WARN("vault: the secret %s of %s does not open (master key changed?): skipped", name,
                 *repo ? repo : "(global)");
    } else {
        redact_set_add(b->set, name, plain, n);
    }
    secrets_wipe(plain, n);
    free(aad);
    return 0;
}

int vault_repo_set(struct vault *v, const char *repo, struct redact_set **out)
{
    *out = NULL;
    if (!repo || !*repo || !v->sec) {
        return 0;
    }
    pthread_mutex_lock(&v->lock);
    uint64_t gen = v->gen;
    if (v->cache_gen != gen) {
        cache_clear(v);
        v->cache_gen = gen;
    }
    for (int i = 0; i < v->ncache; i++) {
        if (strcmp(v->cache[i].repo, repo) == 0) {
            *out = redact_set_ref(v->cache[i].set);
            pthread_mutex_unlock(&v->lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&v->lock);
    struct build b = {v, redact_set_new()};
    int rc = secrets_db_for_repo(v->reg, repo, add_row, &b);
    if (rc != 0 || redact_set_count(b.set) == 0) {
        redact_set_unref(b.set);
        b.set = NULL;
    }
    if (rc == 0) {
        pthread_mutex_lock(&v->lock);
        /* Cache it only if nothing changed meanwhile: a set built before a change must not
         * outlive it. */
        if (v->gen == gen && v->cache_gen == gen) {
            if (v->ncache == CACHE_MAX) {
                cache_clear(v);
            }
            v->cache[v->ncache].repo = xstrdup(repo);
            v->cache[v->ncache].set = redact_set_ref(b.set);
            v->ncache++;
        }
        pthread_mutex_unlock(&v->lock);
        *out = b.set;
    }
    return rc;
}
