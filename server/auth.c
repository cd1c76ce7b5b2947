/*
 * auth.c - bearer-token authentication, session access checks, admin token bootstrap.
 *
 * Two small direct-mapped caches sit in front of the registry (whose one connection is
 * behind one mutex, so every lookup would serialize all HTTP threads): token hash -> owner,
 * and (session, user, token role) -> access. They belong to a struct auth (one per registry,
 * made by app.c). Entries live AUTH_CACHE_TTL_MS; a generation counter bumped by
 * auth_cache_invalidate() drops them all at once. Only successes are cached (an unknown token
 * or session always asks the registry). No secret is kept: the token cache is keyed by the
 * SHA-256 of the secret.
 * Thread safe: each cache has its own mutex, held for a few memcpy's.
 */
#include "server/auth.h"

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "server/audit.h"
#include "server/config.h"
#include "storage/registry.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOKEN_SLOTS  512
#define ACCESS_SLOTS 1024

struct token_slot {
    char hash[65];
    uint64_t gen;
    int64_t expires_ms;
    struct auth_info who;
};

struct access_slot {
    char sid[72];
    char user[160];
    char trole[16];
    uint64_t gen;
    int64_t expires_ms;
    int rank;
};

struct auth {
    struct registry *reg; /* borrowed */
    pthread_mutex_t token_lock;
    pthread_mutex_t access_lock;
    uint64_t gen;                                  /* atomics; 0 marks an empty slot */
    struct token_slot token_cache[TOKEN_SLOTS];    /* guarded by token_lock */
    struct access_slot access_cache[ACCESS_SLOTS]; /* guarded by access_lock */
};

int auth_new(struct registry *reg, struct auth **out)
{
    struct auth *a = xcalloc(1, sizeof(*a));
    a->reg = reg;
    a->gen = 1;
    pthread_mutex_init(&a->token_lock, NULL);
    pthread_mutex_init(&a->access_lock, NULL);
    *out = a;
    return 0;
}

void auth_free(struct auth *a)
{
    if (!a) {
        return;
    }
    pthread_mutex_destroy(&a->token_lock);
    pthread_mutex_destroy(&a->access_lock);
    free(a);
}

void auth_cache_invalidate(struct auth *a)
{
    if (a) {
        __atomic_fetch_add(&a->gen, 1, __ATOMIC_RELEASE);
    }
}

static uint64_t fnv1a(const char *s, uint64_t h)
{
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    }
    return h;
}

static struct token_slot *token_slot_for(struct auth *a, const char hash[65])
{
    return &a->token_cache[fnv1a(hash, 1469598103934665603ull) % TOKEN_SLOTS];
}

static int token_cached(struct auth *a, const char hash[65], struct auth_info *out)
{
    struct token_slot *t = token_slot_for(a, hash);
    uint64_t gen = __atomic_load_n(&a->gen, __ATOMIC_ACQUIRE);
    int hit = 0;
    pthread_mutex_lock(&a->token_lock);
    /* The token's own expiry is checked too: an entry filled just before it would otherwise
     * let an expired token in for up to AUTH_CACHE_TTL_MS. */
    if (t->gen == gen && t->expires_ms > clock_mono_ms() && strcmp(t->hash, hash) == 0 &&
        (t->who.expires_at_ms == 0 || t->who.expires_at_ms > clock_now_ms())) {
        *out = t->who;
        hit = 1;
    }
    pthread_mutex_unlock(&a->token_lock);
    return hit;
}

static void token_store(struct auth *a, const char hash[65], uint64_t gen,
                        const struct auth_info *who)
{
    struct token_slot *t = token_slot_for(a, hash);
    pthread_mutex_lock(&a->token_lock);
    memcpy(t->hash, hash, 65);
    t->gen = gen;
    t->expires_ms = clock_mono_ms() + AUTH_CACHE_TTL_MS;
    t->who = *who;
    pthread_mutex_unlock(&a->token_lock);
}

static struct access_slot *access_slot_for(struct auth *a, const char *sid,
                                           const struct auth_info *who)
{
    uint64_t h = fnv1a(sid, 1469598103934665603ull);
    h = fnv1a(who->user_id, h ^ 0xff);
    h = fnv1a(who->role, h ^ 0xfe);
    return &a->access_cache[h % ACCESS_SLOTS];
}

static int access_cached(struct auth *a, const char *sid, const struct auth_info *who, int *rank)
{
    struct access_slot *x = access_slot_for(a, sid, who);
    uint64_t gen = __atomic_load_n(&a->gen, __ATOMIC_ACQUIRE);
    int hit = 0;
    pthread_mutex_lock(&a->access_lock);
    if (x->gen == gen && x->expires_ms > clock_mono_ms() && strcmp(x->sid, sid) == 0 &&
        strcmp(x->user, who->user_id) == 0 && strcmp(x->trole, who->role) == 0) {
        *rank = x->rank;
        hit = 1;
    }
    pthread_mutex_unlock(&a->access_lock);
    return hit;
}

static void access_store(struct auth *a, const char *sid, const struct auth_info *who, uint64_t gen,
                         int rank)
{
    struct access_slot *x = access_slot_for(a, sid, who);
    if (strlen(sid) >= sizeof(x->sid) || strlen(who->user_id) >= sizeof(x->user) ||
        strlen(who->role) >= sizeof(x->trole)) {
        return;
    }
    pthread_mutex_lock(&a->access_lock);
    snprintf(x->sid, sizeof(x->sid), "%s", sid);
    snprintf(x->user, sizeof(x->user), "%s", who->user_id);
    snprintf(x->trole, sizeof(x->trole), "%s", who->role);
    x->gen = gen;
    x->expires_ms = clock_mono_ms() + AUTH_CACHE_TTL_MS;
    x->rank = rank;
    pthread_mutex_unlock(&a->access_lock);
}

int auth_bearer(struct auth *a, const char *authorization, struct auth_info *out)
{
    const char *p = authorization;
    char secret[256];
    size_t n;
    if (!p) {
        return ERR_AUTH;
    }
    while (*p == ' ') {
        p++;
    }
    if (strncasecmp(p, "Bearer ", 7) != 0) {
        return ERR_AUTH;
    }
    p += 7;
    while (*p == ' ') {
        p++;
    }
    n = strlen(p);
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t')) {
        n--;
    }
    if (n == 0 || n >= sizeof(secret)) {
        return ERR_AUTH;
    }
    memcpy(secret, p, n);
    secret[n] = 0;
    char hash[65];
    util_sha256_hex(secret, n, hash);
    if (token_cached(a, hash, out)) {
        explicit_bzero(secret, sizeof(secret));
        return 0;
    }
    /* The generation is read before the lookup: an invalidation racing with it wins. */
    uint64_t gen = __atomic_load_n(&a->gen, __ATOMIC_ACQUIRE);
    int rc = registry_token_auth(a->reg, secret, out);
    explicit_bzero(secret, sizeof(secret));
    if (rc == 0) {
        token_store(a, hash, gen, out);
    }
    return rc == 0 ? 0 : ERR_AUTH;
}

static int rank(const char *role)
{
    if (!role) {
        return 0;
    }
    if (strcmp(role, "owner") == 0) {
        return AUTH_OWNER;
    }
    if (strcmp(role, "writer") == 0) {
        return AUTH_WRITE;
    }
    if (strcmp(role, "viewer") == 0) {
        return AUTH_READ;
    }
    return 0;
}

int auth_session(struct auth *a, const char *sid, const struct auth_info *who, int need,
                 const char **role_out)
{
    static const char *const names[] = {NULL, "viewer", "writer", "owner"};
    const char *role = NULL;
    int have;
    if (!access_cached(a, sid, who, &have)) {
        uint64_t gen = __atomic_load_n(&a->gen, __ATOMIC_ACQUIRE);
        int rc = registry_session_access(a->reg, sid, who, &role);
        if (rc) {
            return rc;
        }
        have = rank(role);
        if (have) {
            access_store(a, sid, who, gen, have);
        }
    }
    if (have == 0) {
        return ERR_NOT_FOUND; /* a private session the caller may not see: do not confirm it */
    }
    if (have < need) {
        return ERR_FORBIDDEN;
    }
    if (role_out) {
        *role_out = names[have];
    }
    return 0;
}

int auth_is_admin(const struct auth_info *who)
{
    return who && strcmp(who->role, "admin") == 0;
}

int auth_may_impersonate(const struct auth_info *who)
{
    return who && (strcmp(who->role, "admin") == 0 || strcmp(who->role, "bot") == 0);
}

/* Read the stored admin secret (one line). 0, ERR_NOT_FOUND or ERR_IO. */
static int read_secret(const char *path, char *out, size_t n)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        return errno == ENOENT ? ERR_NOT_FOUND : ERR_IO;
    }
    if (!fgets(out, (int)n, f)) {
        fclose(f);
        return ERR_IO;
    }
    fclose(f);
    out[strcspn(out, "\r\n")] = 0;
    return *out ? 0 : ERR_IO;
}

static int write_secret(const char *path, const char *secret)
{
    char *tmp = xasprintf("%s.tmp", path);
    int rc = ERR_IO;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        goto out;
    }
    size_t len = strlen(secret);
    if (write(fd, secret, len) != (ssize_t)len || write(fd, "\n", 1) != 1 || fsync(fd) != 0) {
        close(fd);
        goto out;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        goto out;
    }
    rc = 0;
out:
    if (rc) {
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

/* The bootstrap admin token is whichever secret the environment or admin.token gives now: one
 * registered by an earlier start with another secret is revoked, so rotating
 * SESSIOND_ADMIN_TOKEN ends the old one. Admin tokens minted through the API are kept. */
static int revoke_previous_bootstrap(struct auth *a, const char *keep_id)
{
    struct registry *reg = a->reg;
    json_t *gone = NULL;
    size_t i;
    json_t *v;
    int rc = registry_token_revoke_bootstrap(reg, keep_id, &gone);
    if (rc) {
        LOG_ERROR("auth: cannot revoke the previous admin token: %s", err_str(rc));
        return rc;
    }
    json_array_foreach(gone, i, v)
    {
        LOG_INFO("auth: admin token changed: the previous one (%s) is revoked",
                 json_string_value(v));
        audit_log(reg, NULL, NULL, "admin.token_rotated", json_string_value(v),
                  json_pack("{s:s,s:s}", "revoked_token_id", json_string_value(v), "new_token_id",
                            keep_id));
    }
    if (json_array_size(gone)) {
        auth_cache_invalidate(a);
    }
    json_decref(gone);
    return 0;
}

int auth_bootstrap_admin(struct auth *a, const struct config *cfg)
{
    struct registry *reg = a->reg;
    char secret[256];
    char id[40];
    char *path = xasprintf("%s/admin.token", cfg->data_dir);
    int rc;
    if (*cfg->admin_token) {
        snprintf(secret, sizeof(secret), "%s", cfg->admin_token);
        LOG_INFO("auth: admin token from SESSIOND_ADMIN_TOKEN / config");
    } else {
        rc = read_secret(path, secret, sizeof(secret));
        if (rc == ERR_NOT_FOUND) {
            char hex[65];
            util_random_hex(hex, 32);
            snprintf(secret, sizeof(secret), "sk_admin_%s", hex);
            rc = write_secret(path, secret);
            if (rc) {
                LOG_ERROR("auth: cannot write %s", path);
                goto out;
            }
            LOG_INFO("auth: generated an admin token; it is in %s (mode 0600)", path);
        } else if (rc) {
            LOG_ERROR("auth: cannot read %s", path);
            goto out;
        } else {
            LOG_INFO("auth: admin token in %s", path);
        }
    }
    rc = registry_token_ensure(reg, secret, "token:admin", "admin", id);
    if (rc) {
        LOG_ERROR("auth: cannot register the admin token: %s", err_str(rc));
        goto out;
    }
    rc = revoke_previous_bootstrap(a, id);
out:
    explicit_bzero(secret, sizeof(secret));
    free(path);
    return rc;
}
