/*
 * pr_hook.c - following a session's pull request after it was opened: the GitHub webhook's
 * deliveries (repos_gh_delivery, repos_gh_event; the HTTP side, the signature, is
 * server/api/api_github.c) and the poller that reads the same state from the REST API when no
 * webhook reaches the server (github.poll_interval_s).
 *
 * Both end in the same records (prs_db_update_state through repos_pr_note_state, which says
 * pr.merged / pr.closed; prs_db_set_ci, which is said as pr.ci), so a server with a webhook and
 * the poller says each change once.
 *
 * Replies on a pull request (repos_gh_reply: a refusal, the agent's answer) are queued and
 * posted by the same thread, so an HTTP thread answering GitHub never waits for GitHub.
 *
 * Threads: repos_gh_* run on HTTP threads and do no network I/O. The follower is one thread
 * (replies, and the poller when github.poll_interval_s > 0), started with the pull request
 * workers and joined before them; its API calls are cancelled by r->stopping. The ring of
 * seen delivery ids and the reply queue are guarded by r->lock.
 */
#include "workspace/workspace_int.h"

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "common/buf.h"
#include "storage/messages.h"
#include "storage/prs_db.h"
#include "storage/store.h"
#include "workspace/ghapp.h"
#include "workspace/github.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SEEN_TTL_MS    (24LL * 3600 * 1000)
#define POLL_LIMIT     500 /* open pull requests read per round */
#define API_TIMEOUT_MS 15000

#define REPLY_MAX   60000 /* GitHub refuses comments over 65536 characters */
#define MAX_REPLIES 256   /* queued comments; more are dropped with a log line */

/* A comment to post on a session's pull request (r->replies, guarded by r->lock). */
struct gh_reply {
    struct gh_reply *next;
    char sid[72];
    char *body;
};

struct hook_seen {
    char id[64];
    int64_t at_ms;
};

int repos_gh_delivery(struct repos *r, const char *delivery, int *fresh)
{
    *fresh = 1;
    if (!delivery || !*delivery || strlen(delivery) >= sizeof(r->hook_seen[0].id)) {
        return ERR_INVALID;
    }
    int64_t now = clock_now_ms();
    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < REPOS_HOOK_SEEN; i++) {
        const struct hook_seen *e = &r->hook_seen[i];
        if (e->at_ms && now - e->at_ms < SEEN_TTL_MS && strcmp(e->id, delivery) == 0) {
            *fresh = 0;
            break;
        }
    }
    if (*fresh) {
        /* the oldest entry goes: the table stays bounded whatever GitHub sends */
        struct hook_seen *e = &r->hook_seen[r->hook_seen_next];
        snprintf(e->id, sizeof(e->id), "%s", delivery);
        e->at_ms = now;
        r->hook_seen_next = (r->hook_seen_next + 1) % REPOS_HOOK_SEEN;
    }
    pthread_mutex_unlock(&r->lock);
    return 0;
}

static const char *str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* Record ci (pending | success | failure | error) for sid and say pr.ci when it changed. */
static void note_ci(struct repos *r, const char *sid, const char *ci, const char *sha)
{
    int changed = 0;
    struct pr_rec rec;
    if (prs_db_set_ci(r->prs, sid, ci, &changed) != 0 || !changed ||
        prs_db_get(r->prs, sid, &rec) != 0) {
        return;
    }
    json_t *ev = json_pack("{s:s, s:I, s:s, s:s?}", "state", ci, "number", (json_int_t)rec.number,
                           "url", rec.url, "sha", sha);
    prs_rec_clear(&rec);
    repos__emit(r, sid, "pr.ci", ev);
}

/* The session whose open pull request in the repository repo_url (its html URL) was last
 * pushed at sha (sid >= 72 bytes). The repository must match: one App's deliveries cover
 * every repository it is installed on, and anyone with a fork can put statuses on the same
 * commit in a repository of their own. */
static int find_by_head(struct repos *r, const char *repo_url, const char *sha, char *sid)
{
    json_t *open = NULL;
    int rc = ERR_NOT_FOUND;
    if (!sha || !*sha || !repo_url || !*repo_url ||
        prs_db_list_open(r->prs, POLL_LIMIT, &open) != 0) {
        return rc;
    }
    size_t ul = strlen(repo_url);
    size_t i;
    json_t *e;
    json_array_foreach(open, i, e)
    {
        const char *h = str(e, "head_sha");
        const char *url = str(e, "url");
        if (h && strcmp(h, sha) == 0 && url && strncmp(url, repo_url, ul) == 0 &&
            strncmp(url + ul, "/pull/", 6) == 0) {
            snprintf(sid, 72, "%s", str(e, "session_id"));
            rc = 0;
            break;
        }
    }
    json_decref(open);
    return rc;
}

/* The check suite's result as a combined state. */
static const char *suite_state(json_t *suite)
{
    const char *status = str(suite, "status");
    const char *concl = str(suite, "conclusion");
    if (!status || strcmp(status, "completed") != 0 || !concl) {
        return "pending";
    }
    if (strcmp(concl, "success") == 0 || strcmp(concl, "neutral") == 0 ||
        strcmp(concl, "skipped") == 0) {
        return "success";
    }
    return "failure";
}

/* The session whose open pull request is in the repository repo_url (its html URL) and
 * whose session branch is branch (sid >= 72 bytes). The repository must match, as for a
 * status: a fork can have a branch of the same name. */
static int find_by_branch(struct repos *r, const char *repo_url, const char *branch, char *sid)
{
    json_t *open = NULL;
    int rc = ERR_NOT_FOUND;
    if (!repo_url || !*repo_url || prs_db_list_open(r->prs, POLL_LIMIT, &open) != 0) {
        return rc;
    }
    size_t ul = strlen(repo_url);
    size_t i;
    json_t *e;
    json_array_foreach(open, i, e)
    {
        const char *url = str(e, "url");
        json_t *row = NULL;
        if (!url || strncmp(url, repo_url, ul) != 0 || strncmp(url + ul, "/pull/", 6) != 0 ||
            repos__session_row(r, str(e, "session_id"), &row) != 0) {
            continue;
        }
        const char *b = str(row, "branch");
        int same = b && strcmp(b, branch) == 0;
        json_decref(row);
        if (same) {
            snprintf(sid, 72, "%s", str(e, "session_id"));
            rc = 0;
            break;
        }
    }
    json_decref(open);
    return rc;
}

/* A push to a branch of a repository the App covers: when it is a session's pull request
 * branch and moved somewhere else than where the session last pushed it, the session pulls it
 * before its next prompt. Nothing is fetched here (no network I/O on the webhook's thread). */
static int on_push(struct repos *r, json_t *p, char *what, size_t n)
{
    char sid[72] = "";
    struct pr_rec rec;
    const char *ref = str(p, "ref");
    const char *after = str(p, "after");
    const char *repo_url = str(json_object_get(p, "repository"), "html_url");
    if (!ref || strncmp(ref, "refs/heads/", 11) != 0 || !after || strlen(after) != 40 ||
        json_is_true(json_object_get(p, "deleted"))) {
        return 0; /* a tag, or a deleted branch: nothing to pull */
    }
    if (find_by_branch(r, repo_url, ref + 11, sid) != 0) {
        snprintf(what, n, "no session's pull request has branch %s", ref + 11);
        return ERR_NOT_FOUND;
    }
    if (prs_db_get(r->prs, sid, &rec) == 0) {
        int ours = strcmp(rec.head_sha, after) == 0;
        prs_rec_clear(&rec);
        if (ours) {
            snprintf(what, n, "session %s: its own push", sid);
            return 0;
        }
    }
    repos__pr_remote_ahead(r, sid, after);
    snprintf(what, n, "session %s: branch pushed at %s", sid, after);
    return 0;
}

int repos_gh_parse(const char *event, json_t *p, const char *mention, struct gh_hook *out)
{
    memset(out, 0, sizeof(*out));
    out->kind = GH_HOOK_IGNORE;
    out->draft = -1;
    if (!event || !json_is_object(p)) {
        return 0;
    }
    const char *action = str(p, "action");
    if (strcmp(event, "pull_request") == 0) {
        json_t *pr = json_object_get(p, "pull_request");
        if (!action || (strcmp(action, "closed") != 0 && strcmp(action, "reopened") != 0)) {
            return 0;
        }
        int merged = json_is_true(json_object_get(pr, "merged"));
        out->kind = GH_HOOK_PR_STATE;
        out->pr_url = str(pr, "html_url");
        out->state = strcmp(action, "reopened") == 0 ? "open" : merged ? "merged" : "closed";
        out->draft = json_is_boolean(json_object_get(pr, "draft"))
                         ? json_is_true(json_object_get(pr, "draft"))
                         : -1;
        return 0;
    }
    if (strcmp(event, "check_suite") == 0) {
        json_t *suite = json_object_get(p, "check_suite");
        out->kind = GH_HOOK_CI;
        out->repo_url = str(json_object_get(p, "repository"), "html_url");
        out->suite_prs = json_object_get(suite, "pull_requests");
        out->sha = str(suite, "head_sha");
        out->state = suite_state(suite);
        return 0;
    }
    if (strcmp(event, "status") == 0) {
        const char *ci = str(p, "state");
        if (!ci || (strcmp(ci, "pending") != 0 && strcmp(ci, "success") != 0 &&
                    strcmp(ci, "failure") != 0 && strcmp(ci, "error") != 0)) {
            return 0;
        }
        out->kind = GH_HOOK_CI;
        out->repo_url = str(json_object_get(p, "repository"), "html_url");
        out->sha = str(p, "sha");
        out->state = ci;
        return 0;
    }
    const char *url = NULL;
    if (!mention || !*mention || !action || strcmp(action, "created") != 0) {
        return 0;
    }
    if (strcmp(event, "issue_comment") == 0) {
        json_t *issue = json_object_get(p, "issue");
        if (!json_object_get(issue, "pull_request")) {
            return 0; /* an issue, not a pull request */
        }
        url = str(issue, "html_url");
    } else if (strcmp(event, "pull_request_review_comment") == 0) {
        url = str(json_object_get(p, "pull_request"), "html_url");
    } else {
        return 0; /* ping and the events sessiond does not follow */
    }
    json_t *c = json_object_get(p, "comment");
    const char *body = str(c, "body");
    const char *utype = str(json_object_get(c, "user"), "type");
    /* a bot's comment (our own replies included) never prompts: no loops between bots */
    if (!body || !strstr(body, mention) || (utype && strcmp(utype, "User") != 0)) {
        return 0;
    }
    const char *assoc = str(c, "author_association");
    out->kind = GH_HOOK_COMMENT;
    out->pr_url = url;
    out->trusted = assoc && (strcmp(assoc, "OWNER") == 0 || strcmp(assoc, "MEMBER") == 0 ||
                             strcmp(assoc, "COLLABORATOR") == 0);
    return 0;
}

int repos_gh_event(struct repos *r, const char *event, json_t *p, char *what, size_t n)
{
    char sid[72] = "";
    struct gh_hook h;
    snprintf(what, n, "ignored");
    if (!r || !r->prs || !event || !json_is_object(p)) {
        return ERR_INVALID;
    }
    if (strcmp(event, "push") == 0) {
        return on_push(r, p, what, n);
    }
    /* no mention: comments are repos_gh_comment's, and need nothing here */
    repos_gh_parse(event, p, NULL, &h);
    if (h.kind == GH_HOOK_PR_STATE) {
        if (!h.pr_url || prs_db_find_url(r->prs, h.pr_url, sid) != 0) {
            snprintf(what, n, "no session has pull request %s", h.pr_url ? h.pr_url : "(none)");
            return ERR_NOT_FOUND;
        }
        repos_pr_note_state(r, sid, h.state, h.draft, clock_now_ms());
        snprintf(what, n, "session %s: pull request %s", sid, h.state);
        return 0;
    }
    if (h.kind != GH_HOOK_CI) {
        return 0;
    }
    size_t i;
    json_t *e;
    json_array_foreach(h.suite_prs, i, e)
    {
        json_t *num = json_object_get(e, "number");
        if (!h.repo_url || !json_is_integer(num)) {
            continue;
        }
        char *url = xasprintf("%s/pull/%lld", h.repo_url, (long long)json_integer_value(num));
        int found = prs_db_find_url(r->prs, url, sid) == 0;
        free(url);
        if (found) {
            break;
        }
        sid[0] = 0;
    }
    if (!sid[0] && find_by_head(r, h.repo_url, h.sha, sid) != 0) {
        snprintf(what, n, "%s",
                 strcmp(event, "check_suite") == 0
                     ? "no session's pull request has this check suite"
                     : "no session's pull request is at this commit");
        return ERR_NOT_FOUND;
    }
    note_ci(r, sid, h.state, h.sha);
    snprintf(what, n, "session %s: ci %s", sid, h.state);
    return 0;
}

int repos_gh_comment(struct repos *r, const char *event, json_t *p, const char *mention, char *sid,
                     int *trusted)
{
    struct gh_hook h;
    *trusted = 0;
    if (!r || !r->prs || !json_is_object(p) || !mention || !*mention) {
        return ERR_NOT_FOUND;
    }
    repos_gh_parse(event, p, mention, &h);
    if (h.kind != GH_HOOK_COMMENT || !h.pr_url || prs_db_find_url(r->prs, h.pr_url, sid) != 0) {
        return ERR_NOT_FOUND;
    }
    *trusted = h.trusted;
    return 0;
}

void repos_gh_reply(struct repos *r, const char *sid, const char *body)
{
    if (!r || !r->hook_seen) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    if (r->nreplies >= MAX_REPLIES || !r->poller_running || r->stopping) {
        pthread_mutex_unlock(&r->lock);
        LOG_WARN("repos: session %s: pull request comment dropped (%s)", sid,
                 r->poller_running ? "queue full" : "no follower thread");
        return;
    }
    struct gh_reply *j = xcalloc(1, sizeof(*j)), **pp = &r->replies;
    snprintf(j->sid, sizeof(j->sid), "%s", sid);
    j->body = xstrdup(body);
    while (*pp) {
        pp = &(*pp)->next;
    }
    *pp = j;
    r->nreplies++;
    pthread_cond_broadcast(&r->poll_cv);
    pthread_mutex_unlock(&r->lock);
}

void repos_gh_watch(struct repos *r, const char *sid, const char *prompt_id, const char *message_id,
                    const char *login)
{
    if (!r || !r->gh_watch || !prompt_id || !message_id) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    if (json_object_size(r->gh_watch) < REPOS_GH_WATCH) {
        json_object_set_new(r->gh_watch, prompt_id,
                            json_pack("{s:s, s:s, s:s}", "sid", sid, "message_id", message_id,
                                      "login", login ? login : ""));
    } else {
        LOG_WARN("repos: session %s: too many pull request prompts watched: no answer posted", sid);
    }
    pthread_mutex_unlock(&r->lock);
}

/* Finding the agent's answer to one user message: the assistant messages after it. */
struct answer_find {
    const char *message_id;
    int after;
    struct buf text;
};

static int find_answer(void *ctx, const struct message_row *m)
{
    struct answer_find *f = ctx;
    if (m->role && strcmp(m->role, "user") == 0) {
        if (f->after) {
            return 1; /* the next prompt: the answer ended */
        }
        f->after = m->id && strcmp(m->id, f->message_id) == 0;
    } else if (f->after && m->role && strcmp(m->role, "assistant") == 0 && m->content) {
        f->text.len = 0; /* the last answer wins: the agent's final word */
        buf_append(&f->text, m->content, m->content_len < REPLY_MAX ? m->content_len : REPLY_MAX);
    }
    return 0;
}

static int read_answer(struct sess_rd *rd, void *arg)
{
    messages_list(rd, 0, 5000, find_answer, arg);
    return 0;
}

void repos__gh_prompt_end(struct repos *r, const char *sid, const char *prompt_id)
{
    json_t *w = NULL;
    struct sess *s = NULL;
    if (!r->gh_watch || !prompt_id) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    w = json_incref(json_object_get(r->gh_watch, prompt_id));
    json_object_del(r->gh_watch, prompt_id);
    pthread_mutex_unlock(&r->lock);
    if (!w) {
        return;
    }
    struct answer_find f = {.message_id = str(w, "message_id")};
    buf_init(&f.text, REPLY_MAX);
    if (r->cfg.store && store_session_get(r->cfg.store, sid, &s) == 0) {
        sess_view(s, read_answer, &f);
        sess_put(s);
    }
    const char *login = str(w, "login");
    char *body =
        xasprintf("@%s %.*s", login && *login ? login : "there", f.text.len ? (int)f.text.len : 40,
                  f.text.len ? f.text.data : "(done: the agent gave no answer)");
    repos_gh_reply(r, sid, body);
    free(body);
    buf_free(&f.text);
    json_decref(w);
}

/* ---- the follower thread: replies and the poller ---- */

/* The API request for sid's repository with a token (the App's, else github.token): 0 and
 * *tok (ghapp_wipe), *owner, *repo (free), or ERR_NOT_FOUND. */
static int api_for(struct repos *r, const char *sid, char **tok, char **owner, char **repo)
{
    json_t *info = NULL;
    int rc = ERR_NOT_FOUND;
    *tok = *owner = *repo = NULL;
    if (repos__session_row(r, sid, &info) != 0) {
        return rc;
    }
    const char *url = str(info, "url");
    if (url && github_parse_url(url, owner, repo) == 0) {
        if (ghapp_token_for_url(r->cfg.ghapp, url, NULL, tok) != 0) {
            *tok = NULL;
        }
        if (!*tok && r->cfg.github_token && *r->cfg.github_token) {
            *tok = xstrdup(r->cfg.github_token);
        }
        rc = *tok ? 0 : ERR_NOT_FOUND;
    }
    json_decref(info);
    return rc;
}

static void post_reply(struct repos *r, const struct gh_reply *j)
{
    char *tok = NULL, *owner = NULL, *repo = NULL;
    char msg[300] = "";
    struct pr_rec rec = {0};
    if (prs_db_get(r->prs, j->sid, &rec) != 0 || rec.number == 0 ||
        api_for(r, j->sid, &tok, &owner, &repo) != 0) {
        LOG_WARN("repos: session %s: no pull request or credentials to reply on", j->sid);
        goto out;
    }
    struct github_pr req = {
        .api_base = r->cfg.github_api_base ? r->cfg.github_api_base : "https://api.github.com",
        .owner = owner,
        .repo = repo,
        .token = tok,
        .ca_file = r->ca_file,
        .timeout_ms = API_TIMEOUT_MS,
        .cancel = &r->stopping,
    };
    if (github_add_comment(&req, rec.number, j->body, msg, sizeof(msg)) != 0) {
        LOG_WARN("repos: session %s: reply on pull request #%lld failed: %s", j->sid,
                 (long long)rec.number, msg);
    }
out:
    if (tok) {
        ghapp_wipe(tok);
    }
    prs_rec_clear(&rec);
    free(owner);
    free(repo);
}

/* ---- the poller ---- */

/* Read one open pull request (e: a prs_db_list_open entry) and record what GitHub says. */
static void poll_one(struct repos *r, json_t *e)
{
    json_t *info = NULL, *cur = NULL;
    char *owner = NULL, *repo = NULL, *tok = NULL;
    char msg[300] = "", ci[16] = "";
    const char *sid = str(e, "session_id");
    if (!sid || repos__session_row(r, sid, &info) != 0) {
        goto out;
    }
    const char *url = str(info, "url");
    if (!url || github_parse_url(url, &owner, &repo) != 0) {
        goto out;
    }
    if (ghapp_token_for_url(r->cfg.ghapp, url, NULL, &tok) != 0) {
        tok = NULL;
    }
    if (!tok && r->cfg.github_token && *r->cfg.github_token) {
        tok = xstrdup(r->cfg.github_token);
    }
    if (!tok) {
        goto out;
    }
    struct github_pr req = {
        .api_base = r->cfg.github_api_base ? r->cfg.github_api_base : "https://api.github.com",
        .owner = owner,
        .repo = repo,
        .token = tok,
        .ca_file = r->ca_file,
        .timeout_ms = API_TIMEOUT_MS,
        .cancel = &r->stopping,
    };
    if (github_get_pr(&req, json_integer_value(json_object_get(e, "number")), &cur, msg,
                      sizeof(msg)) != 0) {
        LOG_INFO("repos: poller: session %s: %s", sid, msg);
        goto out;
    }
    const char *st = str(cur, "state");
    int merged = json_is_true(json_object_get(cur, "merged"));
    if (merged || (st && strcmp(st, "closed") == 0)) {
        repos_pr_note_state(r, sid, merged ? "merged" : "closed", -1, clock_now_ms());
        goto out;
    }
    const char *head = str(cur, "head_sha");
    const char *known = str(e, "head_sha");
    if (head && strlen(head) == 40 && known && strcmp(head, known) != 0) {
        repos__pr_remote_ahead(r, sid, head); /* pushed by someone else (no webhook seen) */
    }
    if (head && github_ci_state(&req, head, ci, msg, sizeof(msg)) == 0 && ci[0]) {
        note_ci(r, sid, ci, head);
    }
out:
    if (tok) {
        ghapp_wipe(tok);
    }
    json_decref(cur);
    json_decref(info);
    free(owner);
    free(repo);
}

static void poll_round(struct repos *r)
{
    json_t *open = NULL;
    if (prs_db_list_open(r->prs, POLL_LIMIT, &open) == 0) {
        size_t i;
        json_t *e;
        json_array_foreach(open, i, e)
        {
            if (__atomic_load_n(&r->stopping, __ATOMIC_RELAXED)) {
                break;
            }
            poll_one(r, e);
        }
    }
    json_decref(open);
}

/* Replies first (a person waits for them), then a poll round when one is due. */
static void *poller_main(void *arg)
{
    struct repos *r = arg;
    int64_t period = (int64_t)r->cfg.poll_interval_s * 1000;
    int64_t next = clock_mono_ms() + period;
    pthread_mutex_lock(&r->lock);
    while (!r->stopping) {
        if (r->replies) {
            struct gh_reply *j = r->replies;
            r->replies = j->next;
            r->nreplies--;
            pthread_mutex_unlock(&r->lock);
            post_reply(r, j);
            free(j->body);
            free(j);
            pthread_mutex_lock(&r->lock);
            continue;
        }
        int64_t now = clock_mono_ms();
        if (period > 0 && now >= next) {
            pthread_mutex_unlock(&r->lock);
            poll_round(r);
            pthread_mutex_lock(&r->lock);
            next = clock_mono_ms() + period;
            continue;
        }
        int64_t wait_ms = period > 0 ? next - now : 3600 * 1000;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = ts.tv_nsec + wait_ms * 1000000;
        ts.tv_sec += ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&r->poll_cv, &r->lock, &ts);
    }
    while (r->replies) {
        struct gh_reply *j = r->replies;
        r->replies = j->next;
        LOG_INFO("repos: session %s: pull request comment not posted (stopping)", j->sid);
        free(j->body);
        free(j);
    }
    r->nreplies = 0;
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

int repos__hook_start(struct repos *r)
{
    r->hook_seen = xcalloc(REPOS_HOOK_SEEN, sizeof(*r->hook_seen));
    r->gh_watch = json_object();
    pthread_cond_init(&r->poll_cv, NULL);
    if (r->cfg.no_threads) {
        return 0;
    }
    if (pthread_create(&r->poller, NULL, poller_main, r) == 0) {
        r->poller_running = 1;
    } else {
        LOG_WARN("repos: cannot start the pull request poller");
    }
    return 0;
}

void repos__hook_stop(struct repos *r)
{
    if (!r->poller_running) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    pthread_cond_broadcast(&r->poll_cv); /* r->stopping is set */
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->poller, NULL);
    pthread_mutex_lock(&r->lock);
    r->poller_running = 0; /* repos_gh_reply queues nothing any more */
    pthread_mutex_unlock(&r->lock);
}

void repos__hook_free(struct repos *r)
{
    if (r->hook_seen) {
        pthread_cond_destroy(&r->poll_cv);
    }
    while (r->replies) {
        struct gh_reply *j = r->replies;
        r->replies = j->next;
        free(j->body);
        free(j);
    }
    free(r->hook_seen);
    r->hook_seen = NULL;
    json_decref(r->gh_watch);
    r->gh_watch = NULL;
}
