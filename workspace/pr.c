/*
 * pr.c - pull requests of sessions (repos.h "pull requests"): the background workers that push
 * the session branch and open or update its pull request after a prompt that committed
 * changes, the one open-or-update operation they and POST /v1/sessions/{id}/pull-request share,
 * and the generated part of the body.
 *
 * Threads: after a prompt, repos__pr_after_commit (the prompt-end thread) only queues the
 * session; cfg.pr_workers threads take the queue. A slow GitHub holds a worker, never a prompt:
 * the runner's next prompt of the session and every other session go on. One push + pull
 * request per session at a time (r->pr_busy, under r->lock): a worker and the endpoint never
 * open two pull requests for one session. The queue holds a session once; a session queued
 * again while its job runs is run again after it (it had new commits).
 *
 * Credentials of automatic pull requests: the GitHub App's installation token for the URL,
 * else github.token; never a user's stored token (that is used only when its owner calls the
 * endpoint). Without either, pr.failed {reason: "no_credentials"} is said once per session
 * (prs_db_failed keeps the last reason) until an attempt succeeds.
 */
#include "workspace/workspace_int.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "storage/artifacts.h"
#include "storage/messages.h"
#include "storage/prs_db.h"
#include "storage/registry.h"
#include "storage/repos_db.h"
#include "storage/store.h"
#include "workspace/ghapp.h"
#include "workspace/github.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MARK_BEGIN      "<!-- sessiond -->"
#define MARK_END        "<!-- /sessiond -->"
#define TITLE_MAX       72
#define MAX_FILES       300 /* changed paths kept per pull request */
#define FILES_SHOWN     100
#define ASKS_SHOWN      30
#define ASK_CHARS       200
#define SUMMARY_CHARS   600
#define BODY_CAP        60000 /* GitHub refuses bodies over 65536 characters */
#define API_TIMEOUT_MS  15000
#define DEFAULT_WORKERS 2

static const char *const mode_names[] = {
    [REPOS_PR_OFF] = "off", [REPOS_PR_DRAFT] = "draft", [REPOS_PR_READY] = "ready"};

int repos_pr_mode_parse(const char *s, enum repos_pr_mode *out)
{
    for (size_t i = 0; s && i < sizeof(mode_names) / sizeof(mode_names[0]); i++) {
        if (strcmp(s, mode_names[i]) == 0) {
            if (out) {
                *out = (enum repos_pr_mode)i;
            }
            return 0;
        }
    }
    return ERR_INVALID;
}

/* ---- the repository's OWNER/REPO ---- */

/* owner/repo of a repository URL; for local paths (tests, mirrors) the last two components. */
static int owner_repo(const char *url, char **owner, char **repo)
{
    if (github_parse_url(url, owner, repo) == 0) {
        return 0;
    }
    const char *p = strncmp(url, "file://", 7) == 0 ? url + 7 : url;
    if (p[0] != '/') {
        return ERR_INVALID;
    }
    char *copy = xstrdup(p);
    size_t l = strlen(copy);
    while (l > 1 && copy[l - 1] == '/') {
        copy[--l] = 0;
    }
    char *last = strrchr(copy, '/');
    int rc = ERR_INVALID;
    if (last && last != copy) {
        *last = 0;
        char *prev = strrchr(copy, '/');
        char *two = xasprintf("https://local/%s/%s", prev ? prev + 1 : copy, last + 1);
        rc = github_parse_url(two, owner, repo);
        free(two);
    }
    free(copy);
    return rc;
}

/* A local path or file:// remote has no forge to open a pull request on. */
static int is_local_url(const char *url)
{
    return !url || url[0] == '/' || strncmp(url, "file://", 7) == 0;
}

/* ---- one push + pull request per session at a time ---- */

static void slot_take(struct repos *r, const char *sid)
{
    pthread_mutex_lock(&r->lock);
    while (json_object_get(r->pr_busy, sid)) {
        pthread_cond_wait(&r->pr_cv, &r->lock);
    }
    json_object_set_new(r->pr_busy, sid, json_true());
    pthread_mutex_unlock(&r->lock);
}

static void slot_give(struct repos *r, const char *sid)
{
    pthread_mutex_lock(&r->lock);
    json_object_del(r->pr_busy, sid);
    pthread_cond_broadcast(&r->pr_cv);
    pthread_mutex_unlock(&r->lock);
}

/* ---- the generated block of the body ---- */

/* Append at most max characters of s on one line, made inert: no HTML comment can close our
 * block early, no @mention pings anyone. */
static void put_inline(struct buf *b, const char *s, size_t max)
{
    struct buf clean;
    buf_init(&clean, 0);
    util_utf8_sanitize(s ? s : "", s ? strlen(s) : 0, &clean);
    size_t n = 0;
    for (const char *p = clean.data ? clean.data : ""; *p && n < max; p++, n++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\n' || c == '\r' || c == '\t') {
            buf_putc(b, ' ');
        } else if (c == '<') {
            buf_puts(b, "&lt;");
        } else if (c == '@') {
            buf_puts(b, "@\xe2\x80\x8b"); /* zero-width space: no mention */
        } else if (c == '`') {
            buf_putc(b, '\'');
        } else {
            buf_putc(b, (char)c);
        }
    }
    if (n == max && clean.data && strlen(clean.data) > max) {
        buf_puts(b, "\xe2\x80\xa6");
    }
    buf_free(&clean);
}

struct asks {
    json_t *items;   /* [{who, text, summary}] in order */
    json_t *authors; /* "Name <email>" -> true, in first-prompt order */
    json_t *order;   /* the same keys in order */
};

static int collect_message(void *ctx, const struct message_row *m)
{
    struct asks *a = ctx;
    if (m->role && strcmp(m->role, "user") == 0) {
        const char *who = m->author_name && *m->author_name ? m->author_name
                          : m->author_id                    ? m->author_id
                                                            : "someone";
        json_array_append_new(a->items, json_pack("{s:s, s:s%}", "who", who, "text",
                                                  m->content ? m->content : "", m->content_len));
        char *email =
            m->author_email && *m->author_email
                ? xstrdup(m->author_email)
                : xasprintf("%s@users.noreply.sessiond", m->author_id ? m->author_id : "user");
        for (char *p = email; *p; p++) {
            if (*p == '<' || *p == '>' || *p == '\n' || *p == ' ' || *p == ':') {
                *p = '-';
            }
        }
        struct buf k;
        buf_init(&k, 0);
        put_inline(&k, who, 80);
        buf_printf(&k, " <%s>", email);
        free(email);
        if (k.data && !json_object_get(a->authors, k.data)) {
            json_object_set_new(a->authors, k.data, json_true());
            json_array_append_new(a->order, json_string(k.data));
        }
        buf_free(&k);
    } else if (m->role && strcmp(m->role, "assistant") == 0 && json_array_size(a->items) > 0) {
        json_t *last = json_array_get(a->items, json_array_size(a->items) - 1);
        json_object_set_new(last, "summary",
                            json_stringn_nocheck(m->content ? m->content : "", m->content_len));
    }
    return 0;
}

static int read_messages(struct sess_rd *rd, void *arg)
{
    return messages_list(rd, 0, 2000, collect_message, arg);
}

/* The session's prompts with their authors and the agent's answers. */
static void load_asks(struct repos *r, const char *sid, struct asks *a)
{
    struct sess *s = NULL;
    a->items = json_array();
    a->authors = json_object();
    a->order = json_array();
    if (r->cfg.store && store_session_get(r->cfg.store, sid, &s) == 0) {
        sess_view(s, read_messages, a);
        sess_put(s);
    }
}

static void free_asks(struct asks *a)
{
    json_decref(a->items);
    json_decref(a->authors);
    json_decref(a->order);
}

/* The block between the markers: what was asked and by whom, the agent's summaries, the files
 * changed, the session's link and one Co-authored-by line per person who prompted (a squash
 * merge takes them into its commit). Caller frees. */
static char *make_block(struct repos *r, const char *sid, const struct asks *a, json_t *files)
{
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, MARK_BEGIN "\n");
    const char *pub = r->cfg.public_url && *r->cfg.public_url ? r->cfg.public_url : NULL;
    if (pub) {
        size_t pl = strlen(pub);
        while (pl > 0 && pub[pl - 1] == '/') {
            pl--;
        }
        buf_printf(&b, "Made in sessiond session [%s](%.*s/#/s/%s).\n\n", sid, (int)pl, pub, sid);
    } else {
        buf_printf(&b, "Made in sessiond session `%s`.\n\n", sid);
    }
    size_t n = json_array_size(a->items), i;
    if (n > 0) {
        buf_puts(&b, "### Asked\n");
        for (i = n > ASKS_SHOWN ? n - ASKS_SHOWN : 0; i < n && b.len < BODY_CAP / 2; i++) {
            json_t *it = json_array_get(a->items, i);
            buf_puts(&b, "- **");
            put_inline(&b, json_string_value(json_object_get(it, "who")), 80);
            buf_puts(&b, "**: ");
            put_inline(&b, json_string_value(json_object_get(it, "text")), ASK_CHARS);
            buf_putc(&b, '\n');
            const char *sum = json_string_value(json_object_get(it, "summary"));
            if (sum && *sum) {
                buf_puts(&b, "  > ");
                put_inline(&b, sum, SUMMARY_CHARS);
                buf_putc(&b, '\n');
            }
        }
        buf_putc(&b, '\n');
    }
    size_t nf = json_array_size(files);
    if (nf > 0) {
        buf_printf(&b, "### Files changed (%zu%s)\n", nf, nf >= MAX_FILES ? "+" : "");
        for (i = 0; i < nf && i < FILES_SHOWN && b.len < BODY_CAP - 4000; i++) {
            buf_puts(&b, "- `");
            put_inline(&b, json_string_value(json_array_get(files, i)), 300);
            buf_puts(&b, "`\n");
        }
        if (nf > FILES_SHOWN) {
            buf_printf(&b, "- … and %zu more\n", nf - FILES_SHOWN);
        }
        buf_putc(&b, '\n');
    }
    json_t *who;
    json_array_foreach(a->order, i, who)
    {
        if (b.len < BODY_CAP - 200) {
            buf_printf(&b, "Co-authored-by: %s\n", json_string_value(who));
        }
    }
    buf_puts(&b, MARK_END);
    return buf_detach(&b, NULL);
}

/* body with its block replaced by block (text outside the markers kept); a body without the
 * markers (a person removed them) gets the block appended. Caller frees. */
static char *splice_block(const char *body, const char *block)
{
    const char *s = body ? strstr(body, MARK_BEGIN) : NULL;
    const char *e = s ? strstr(s, MARK_END) : NULL;
    if (!s || !e) {
        return body && *body ? xasprintf("%s\n\n%s", body, block) : xstrdup(block);
    }
    e += strlen(MARK_END);
    return xasprintf("%.*s%s%s", (int)(s - body), body, block, e);
}

/* The title: the session's, else the first line of its first prompt; at most TITLE_MAX bytes,
 * cut at a character boundary. Caller frees. */
static char *default_title(struct repos *r, const char *sid, const struct asks *a)
{
    json_t *row = NULL;
    const char *t = NULL;
    char *out = NULL;
    if (r->cfg.store && registry_session_get(store_registry(r->cfg.store), sid, &row) == 0) {
        t = json_string_value(json_object_get(row, "title"));
    }
    if (!t || !*t) {
        t = json_string_value(json_object_get(json_array_get(a->items, 0), "text"));
    }
    if (!t || !*t) {
        out = xasprintf("sessiond: session %s", sid);
        goto out;
    }
    while (*t == ' ' || *t == '\n' || *t == '\r' || *t == '\t') {
        t++;
    }
    size_t n = strcspn(t, "\r\n");
    if (n > TITLE_MAX) {
        n = TITLE_MAX;
        while (n > 0 && ((unsigned char)t[n] & 0xC0) == 0x80) {
            n--; /* not inside a UTF-8 sequence */
        }
    }
    struct buf b;
    buf_init(&b, 0);
    util_utf8_sanitize(t, n, &b);
    out = b.data && *b.data ? buf_detach(&b, NULL) : xasprintf("sessiond: session %s", sid);
    buf_free(&b);
out:
    json_decref(row);
    return out;
}

/* ---- open or update ---- */

struct pr_art {
    const char *id;
    const char *json;
    const char *author_id;
};

static int pr_artifact_tx(struct sess_tx *tx, void *arg)
{
    struct pr_art *a = arg;
    struct artifact_row row = {
        .id = a->id,
        .type = "pr",
        .path = "pull-request.json",
        .mime = "application/json",
        .data = a->json,
        .len = strlen(a->json),
        .author_id = a->author_id,
    };
    int rc = artifacts_insert(tx, &row);
    if (rc) {
        return rc;
    }
    return sess_tx_append(tx, "pr.created", NULL, a->json, NULL);
}

/* The pull request as the events and answers show it. */
static json_t *answer(const json_t *gh, const char *branch, const char *base, const char *title,
                      const char *head, const char *kind)
{
    return json_pack("{s:O, s:O, s:s, s:s, s:b, s:s?, s:s?, s:s, s:s?, s:s}", "number",
                     json_object_get(gh, "number"), "url", json_object_get(gh, "url"), "api_url",
                     json_string_value(json_object_get(gh, "api_url")), "state", "open", "draft",
                     json_is_true(json_object_get(gh, "draft")), "branch", branch, "base", base,
                     "title", title, "head_sha", head, "credentials", kind);
}

/* One API call with the renewal of a refused app token (c->tok replaced). */
struct cred_state {
    struct repos *r;
    const char *url;
    const char *kind;
    char *owned; /* a renewed token, wiped at the end */
    struct github_pr req;
};

static int renew(struct cred_state *c)
{
    char *fresh = NULL;
    if (strcmp(c->kind, "app") != 0 ||
        ghapp_token_for_url(c->r->cfg.ghapp, c->url, c->req.token, &fresh) != 0 || !fresh) {
        return 0;
    }
    LOG_INFO("repos: %s refused the installation token: retrying once with a renewed one", c->url);
    ghapp_wipe(c->owned);
    c->owned = fresh;
    c->req.token = fresh;
    return 1;
}

static int push_branch(struct repos *r, const char *sid, struct cred_state *c, char *head,
                       char *msg, size_t n)
{
    json_t *pushed = NULL;
    char *ws = repos__default_workspace(r, sid);
    int rc = repos_push(r, sid, ws, c->req.token, &pushed);
    if (rc == ERR_AUTH && renew(c)) {
        json_decref(pushed);
        pushed = NULL;
        rc = repos_push(r, sid, ws, c->req.token, &pushed);
    }
    free(ws);
    if (rc == 0) {
        const char *sha = json_string_value(json_object_get(pushed, "sha"));
        snprintf(head, 41, "%s", sha ? sha : "");
    } else if (rc == ERR_CONFLICT) {
        snprintf(msg, n,
                 "the remote refused the push: the session branch is not a "
                 "fast-forward of what it has (sessiond never force-pushes)");
    } else if (rc == ERR_AUTH) {
        snprintf(msg, n, "the remote refused the credentials (%s)", c->kind);
    } else {
        snprintf(msg, n, "push failed: %s", err_str(rc));
    }
    json_decref(pushed);
    return rc;
}

/* Open the pull request of sid (none recorded yet). */
static int open_pr(struct repos *r, const char *sid, const char *repo_name,
                   const struct repos_pr_req *q, struct cred_state *c, const char *head,
                   const struct asks *a, json_t *files, json_t **out, char *msg, size_t n)
{
    json_t *gh = NULL;
    char *title = q->title && *q->title ? xstrdup(q->title) : default_title(r, sid, a);
    char *block = make_block(r, sid, a, files);
    char *body = q->body && *q->body ? xasprintf("%s\n\n%s", q->body, block) : xstrdup(block);
    c->req.title = title;
    c->req.body = body;
    c->req.draft = q->draft > 0;
    int rc = github_create_pr(&c->req, &gh, msg, n);
    if (rc == ERR_AUTH && renew(c)) {
        rc = github_create_pr(&c->req, &gh, msg, n);
    }
    if (rc == 0) {
        struct pr_rec rec = {.number = json_integer_value(json_object_get(gh, "number")),
                             .draft = json_is_true(json_object_get(gh, "draft"))};
        snprintf(rec.session_id, sizeof(rec.session_id), "%s", sid);
        snprintf(rec.repo, sizeof(rec.repo), "%s", repo_name ? repo_name : "");
        snprintf(rec.url, sizeof(rec.url), "%s", json_string_value(json_object_get(gh, "url")));
        snprintf(rec.api_url, sizeof(rec.api_url), "%s",
                 json_string_value(json_object_get(gh, "api_url")));
        snprintf(rec.node_id, sizeof(rec.node_id), "%s",
                 json_string_value(json_object_get(gh, "node_id")));
        snprintf(rec.head_sha, sizeof(rec.head_sha), "%s", head);
        snprintf(rec.title, sizeof(rec.title), "%s", title);
        snprintf(rec.credentials, sizeof(rec.credentials), "%s", c->kind);
        prs_db_created(r->prs, &rec, clock_now_ms());
        /* the setting may say draft while GitHub gives no draft for this repository (plans
         * without drafts): the answer says what GitHub did */
        *out = answer(gh, c->req.head, c->req.base, title, head[0] ? head : NULL, c->kind);
        char *art_json = jx_dump(*out);
        char *aid = util_new_id("a_");
        json_object_set_new(*out, "artifact_id", json_string(aid));
        struct pr_art pa = {aid, art_json, q->by};
        struct sess *s = NULL;
        if (r->cfg.store && store_session_get(r->cfg.store, sid, &s) == 0) {
            if (sess_write(s, pr_artifact_tx, &pa) != 0) {
                LOG_WARN("repos: cannot record the pull request of %s", sid);
            }
            sess_put(s);
        }
        repos_db_session_set_pr(r->db, sid, rec.url);
        free(art_json);
        free(aid);
    }
    json_decref(gh);
    free(title);
    free(block);
    free(body);
    return rc;
}

/* Update the pull request rec of sid: the body's block, the draft flag as asked. */
static int update_pr(struct repos *r, const char *sid, const struct repos_pr_req *q,
                     struct cred_state *c, struct pr_rec *rec, const char *head,
                     const struct asks *a, json_t **out, char *msg, size_t n)
{
    json_t *cur = NULL, *upd = NULL;
    char *block = NULL, *body = NULL;
    int rc = github_get_pr(&c->req, rec->number, &cur, msg, n);
    if (rc == ERR_AUTH && renew(c)) {
        rc = github_get_pr(&c->req, rec->number, &cur, msg, n);
    }
    if (rc != 0) {
        goto out;
    }
    const char *st = json_string_value(json_object_get(cur, "state"));
    if (json_is_true(json_object_get(cur, "merged")) || (st && strcmp(st, "closed") == 0)) {
        int merged = json_is_true(json_object_get(cur, "merged"));
        repos_pr_note_state(r, sid, merged ? "merged" : "closed", -1, clock_now_ms());
        snprintf(msg, n, "pull request #%lld is %s: sessiond opens no other for this session",
                 (long long)rec->number, merged ? "merged" : "closed");
        rc = ERR_CONFLICT;
        goto out;
    }
    block = make_block(r, sid, a, rec->files);
    body = splice_block(json_string_value(json_object_get(cur, "body")), block);
    c->req.body = body;
    c->req.title = NULL; /* set once, at creation: a person may have changed it */
    rc = github_update_pr(&c->req, rec->number, &upd, msg, n);
    if (rc != 0) {
        goto out;
    }
    int draft = json_is_true(json_object_get(upd, "draft"));
    if (q->draft >= 0 && q->draft != draft) {
        rc = github_set_draft(&c->req,
                              rec->node_id[0] ? rec->node_id
                                              : json_string_value(json_object_get(upd, "node_id")),
                              q->draft, msg, n);
        if (rc != 0) {
            goto out;
        }
        draft = q->draft;
        json_object_set_new(upd, "draft", json_boolean(draft));
    }
    int64_t now = clock_now_ms();
    prs_db_set_draft(r->prs, sid, draft, now);
    if (head[0]) {
        prs_db_pushed(r->prs, sid, head, now);
    }
    *out = answer(upd, c->req.head, c->req.base, rec->title, head[0] ? head : NULL, c->kind);
    repos__emit(r, sid, "pr.updated", json_deep_copy(*out));
out:
    json_decref(cur);
    json_decref(upd);
    free(block);
    free(body);
    return rc;
}

int repos_pr_sync(struct repos *r, const char *sid, const struct repos_pr_req *q, json_t **out,
                  int *created, char *msg, size_t n)
{
    json_t *info = NULL;
    char *owner = NULL, *repo = NULL;
    struct pr_rec rec = {0};
    struct asks a = {0};
    char head[41] = "";
    struct cred_state c = {.r = r, .kind = q->kind ? q->kind : "token"};
    *out = NULL;
    *created = 0;
    msg[0] = 0;
    if (!util_valid_id(sid)) {
        return ERR_INVALID;
    }
    slot_take(r, sid);
    int rc = repos__session_row(r, sid, &info);
    if (rc != 0) {
        snprintf(msg, n, "session %s has no repository", sid);
        goto out;
    }
    const char *url = json_string_value(json_object_get(info, "url"));
    if (!url || owner_repo(url, &owner, &repo) != 0) {
        snprintf(msg, n, "the repository URL does not name OWNER/REPO");
        rc = ERR_UNPROCESSABLE;
        goto out;
    }
    c.url = url;
    c.req = (struct github_pr){
        .api_base = r->cfg.github_api_base ? r->cfg.github_api_base : "https://api.github.com",
        .owner = owner,
        .repo = repo,
        .token = q->token,
        .head = json_string_value(json_object_get(info, "branch")),
        .base = json_string_value(json_object_get(info, "default_branch")),
        .ca_file = r->ca_file,
        .timeout_ms = API_TIMEOUT_MS,
        .cancel = &r->stopping,
    };
    const char *repo_name = json_string_value(json_object_get(info, "repo"));
    int have = prs_db_get(r->prs, sid, &rec) == 0 && rec.number > 0;
    if (have && rec.state != PR_OPEN) {
        snprintf(msg, n, "pull request #%lld is %s: sessiond opens no other for this session",
                 (long long)rec.number, pr_state_name(rec.state));
        rc = ERR_CONFLICT;
        goto out;
    }
    rc = push_branch(r, sid, &c, head, msg, n);
    if (rc != 0) {
        goto out;
    }
    load_asks(r, sid, &a);
    if (!rec.files) {
        rec.files = json_array();
    }
    if (have) {
        rc = update_pr(r, sid, q, &c, &rec, head, &a, out, msg, n);
    } else {
        rc = open_pr(r, sid, repo_name, q, &c, head, &a, rec.files, out, msg, n);
        *created = rc == 0;
    }
    if (rc == 0) {
        prs_db_clear_failed(r->prs, sid);
    }
out:
    slot_give(r, sid);
    ghapp_wipe(c.owned);
    prs_rec_clear(&rec);
    free_asks(&a);
    json_decref(info);
    free(owner);
    free(repo);
    return rc;
}

int repos_pr_note_state(struct repos *r, const char *sid, const char *state, int draft,
                        int64_t at_ms)
{
    enum pr_state st;
    struct pr_rec rec;
    int changed = 0;
    if (!r || pr_state_parse(state, &st) != 0) {
        return ERR_INVALID;
    }
    int rc = prs_db_update_state(r->prs, sid, st, draft, at_ms, &changed);
    if (rc == 0 && changed && st != PR_OPEN && prs_db_get(r->prs, sid, &rec) == 0) {
        json_t *ev = json_pack("{s:I, s:s, s:s}", "number", (json_int_t)rec.number, "url", rec.url,
                               "state", state);
        if (st == PR_MERGED && rec.created_at > 0) {
            json_object_set_new(ev, "time_to_merge_ms",
                                json_integer(rec.merged_at - rec.created_at));
        }
        prs_rec_clear(&rec);
        repos__emit(r, sid, st == PR_MERGED ? "pr.merged" : "pr.closed", ev);
    }
    return rc;
}

json_t *repos_pr_json(struct repos *r, const char *sid)
{
    struct pr_rec rec;
    if (!r || !r->prs || prs_db_get(r->prs, sid, &rec) != 0) {
        return json_null();
    }
    json_t *j = prs_rec_json(&rec);
    prs_rec_clear(&rec);
    return j;
}

int repos_pr_counts(struct repos *r, struct prs_counts *out)
{
    if (!r || !r->prs) {
        memset(out, 0, sizeof(*out));
        return ERR_NOT_FOUND;
    }
    return prs_db_counts(r->prs, out);
}

/* ---- automatic pull requests ---- */

/* Record a failure of sid and say it (pr.failed) unless the same reason was said already. */
static void auto_failed(struct repos *r, const char *sid, const char *repo, const char *reason,
                        const char *message)
{
    int first = 0;
    prs_db_failed(r->prs, sid, repo, reason, clock_now_ms(), &first);
    LOG_WARN("repos: session %s: automatic pull request failed (%s): %s", sid, reason, message);
    if (first) {
        repos__emit(r, sid, "pr.failed",
                    json_pack("{s:s, s:s}", "reason", reason, "message", message));
    }
}

static const char *reason_of(int rc, int pushed)
{
    switch (rc) {
    case ERR_AUTH:
    case ERR_FORBIDDEN:
        return pushed ? "api_refused" : "push_refused";
    case ERR_CONFLICT:
        return pushed ? "conflict" : "push_rejected";
    case ERR_UNPROCESSABLE:
        return pushed ? "api_unprocessable" : "push_blocked";
    case ERR_UNAVAILABLE:
        return "github_unavailable";
    default:
        return "failed";
    }
}

/* The automatic push + pull request of sid, on a worker. */
static void auto_run(struct repos *r, const char *sid, int64_t queued_us)
{
    json_t *info = NULL, *repo = NULL, *out = NULL;
    char *tok = NULL;
    char msg[400] = "";
    const char *kind = "app";
    enum repos_pr_mode mode = REPOS_PR_OFF;
    if (repos__session_row(r, sid, &info) != 0) {
        goto out;
    }
    const char *name = json_string_value(json_object_get(info, "repo"));
    const char *url = json_string_value(json_object_get(info, "url"));
    if (!name || !url || repos__repo_load(r, name, &repo) != 0 ||
        repos_pr_mode_parse(json_string_value(json_object_get(repo, "pr")), &mode) != 0 ||
        mode == REPOS_PR_OFF) {
        goto out; /* deleted, or switched off since the prompt */
    }
    struct pr_rec rec;
    if (prs_db_get(r->prs, sid, &rec) == 0) {
        int closed = rec.number > 0 && rec.state != PR_OPEN;
        prs_rec_clear(&rec);
        if (closed) {
            goto out; /* merged or closed: its session opens no other */
        }
    }
    if (ghapp_token_for_url(r->cfg.ghapp, url, NULL, &tok) != 0) {
        tok = NULL;
    }
    if (!tok && r->cfg.github_token && *r->cfg.github_token) {
        tok = xstrdup(r->cfg.github_token);
        kind = "token";
    }
    if (!tok) {
        auto_failed(r, sid, name, "no_credentials",
                    "no credentials to push with: install the GitHub App for the repository or "
                    "set github.token");
        goto out;
    }
    struct repos_pr_req q = {.token = tok, .kind = kind, .draft = -1};
    if (prs_db_get(r->prs, sid, &rec) != 0 || rec.number == 0) {
        q.draft = mode == REPOS_PR_DRAFT;
    }
    prs_rec_clear(&rec);
    int created = 0;
    int rc = repos_pr_sync(r, sid, &q, &out, &created, msg, sizeof(msg));
    if (rc != 0 && __atomic_load_n(&r->stopping, __ATOMIC_RELAXED)) {
        LOG_INFO("repos: session %s: pull request left for its next prompt (stopping)", sid);
        goto out; /* cut short by the stop: not a failure to report */
    }
    if (rc != 0) {
        int pushed = strncmp(msg, "push failed", 11) != 0 && strncmp(msg, "the remote", 10) != 0;
        if (rc != ERR_CONFLICT || !pushed) {
            auto_failed(r, sid, name, reason_of(rc, pushed), msg[0] ? msg : err_str(rc));
        }
        goto out;
    }
    LOG_INFO("repos: session %s: pull request %s %s, %lld ms after the prompt ended", sid,
             json_string_value(json_object_get(out, "url")), created ? "opened" : "updated",
             (long long)((clock_mono_us() - queued_us) / 1000));
out:
    if (tok) {
        ghapp_wipe(tok);
    }
    json_decref(out);
    json_decref(repo);
    json_decref(info);
}

static void *worker_main(void *arg)
{
    struct repos *r = arg;
    pthread_mutex_lock(&r->lock);
    for (;;) {
        struct pr_job *j = NULL, **pp;
        /* the first queued session not being worked on now */
        for (pp = &r->pr_head; *pp; pp = &(*pp)->next) {
            if (!json_object_get(r->pr_busy, (*pp)->sid)) {
                j = *pp;
                break;
            }
        }
        if (r->stopping) {
            break;
        }
        if (!j) {
            pthread_cond_wait(&r->pr_cv, &r->lock);
            continue;
        }
        *pp = j->next;
        if (r->pr_tail == j) {
            r->pr_tail = NULL;
            for (struct pr_job *t = r->pr_head; t; t = t->next) {
                r->pr_tail = t;
            }
        }
        pthread_mutex_unlock(&r->lock);
        auto_run(r, j->sid, j->queued_us);
        free(j);
        pthread_mutex_lock(&r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

void repos__pr_after_commit(struct repos *r, const char *sid, const char *repo, json_t *paths)
{
    json_t *row = NULL;
    enum repos_pr_mode mode = REPOS_PR_OFF;
    if (!r->prs) {
        return;
    }
    prs_db_add_files(r->prs, sid, repo, paths, MAX_FILES, clock_now_ms());
    if (!repo || repos__repo_load(r, repo, &row) != 0 ||
        repos_pr_mode_parse(json_string_value(json_object_get(row, "pr")), &mode) != 0 ||
        mode == REPOS_PR_OFF || is_local_url(json_string_value(json_object_get(row, "url")))) {
        json_decref(row);
        return;
    }
    json_decref(row);
    if (r->pr_nthreads == 0) {
        auto_run(r, sid, clock_mono_us()); /* no workers (tests without threads): here */
        return;
    }
    pthread_mutex_lock(&r->lock);
    int queued = 0;
    for (struct pr_job *t = r->pr_head; t; t = t->next) {
        queued |= strcmp(t->sid, sid) == 0;
    }
    if (!queued && !r->stopping) {
        struct pr_job *j = xcalloc(1, sizeof(*j));
        snprintf(j->sid, sizeof(j->sid), "%s", sid);
        j->queued_us = clock_mono_us();
        if (r->pr_tail) {
            r->pr_tail->next = j;
        } else {
            r->pr_head = j;
        }
        r->pr_tail = j;
        pthread_cond_signal(&r->pr_cv);
    }
    pthread_mutex_unlock(&r->lock);
}

int repos__pr_start(struct repos *r)
{
    r->pr_busy = json_object();
    pthread_cond_init(&r->pr_cv, NULL);
    int rc = prs_db_open(store_registry(r->cfg.store), &r->prs);
    if (rc != 0 || r->cfg.no_threads) {
        return rc;
    }
    int n = r->cfg.pr_workers > 0 ? r->cfg.pr_workers : DEFAULT_WORKERS;
    r->pr_threads = xcalloc((size_t)n, sizeof(pthread_t));
    for (int i = 0; i < n; i++) {
        if (pthread_create(&r->pr_threads[r->pr_nthreads], NULL, worker_main, r) == 0) {
            r->pr_nthreads++;
        }
    }
    return 0;
}

void repos__pr_stop(struct repos *r)
{
    if (!r->pr_busy) {
        return; /* never started */
    }
    pthread_mutex_lock(&r->lock);
    pthread_cond_broadcast(&r->pr_cv); /* r->stopping is set: the workers end */
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; i < r->pr_nthreads; i++) {
        pthread_join(r->pr_threads[i], NULL);
    }
    r->pr_nthreads = 0;
    free(r->pr_threads);
    r->pr_threads = NULL;
    while (r->pr_head) {
        struct pr_job *j = r->pr_head;
        r->pr_head = j->next;
        LOG_INFO("repos: session %s: its pull request waits for the next prompt (stopping)",
                 j->sid);
        free(j);
    }
    r->pr_tail = NULL;
}

void repos__pr_free(struct repos *r)
{
    prs_db_close(r->prs);
    r->prs = NULL;
    json_decref(r->pr_busy);
    if (r->pr_busy) {
        pthread_cond_destroy(&r->pr_cv);
    }
    r->pr_busy = NULL;
}
