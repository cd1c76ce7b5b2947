/*
 * ops.h - the server's transport-neutral operations: what a REST handler, a WebSocket frame
 * and the Slack worker do to a session, each written once. A caller parses its transport's
 * input into the request object (a JSON object with the REST body's fields), names the actor
 * explicitly (the token's owner, a WebSocket client, the Slack integration) and turns the
 * answer back into its transport's reply; the operations know nothing of HTTP.
 *
 * Every operation returns 0 or a negative err.h code; on error ans->msg says why in the words
 * the REST API answers with, ans->retry_after (seconds, 0 = none) is set for a rate limit.
 * On success ans->json holds the answer (new reference; the caller frees it with
 * ops_answer_free).
 *
 * Threads: any thread that may block on a session's group commit (HTTP pool threads, the
 * hub's writer thread, the Slack worker); never the lws service thread.
 */
#ifndef SESSIOND_OPS_H
#define SESSIOND_OPS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct app;
struct redact_set;
struct auth_info;
struct author;
struct sess_tx;

/** The outcome of an operation. Initialise with {0}; free with ops_answer_free(). */
struct ops_answer {
    json_t *json;    /* the answer on success (owned) */
    char msg[320];   /* the reason on error */
    int retry_after; /* seconds, for ERR_LIMIT from a rate limit; 0 otherwise */
    int replayed;    /* a repeated client_request_id returned the first answer */
    int mismatch;    /* the client_request_id was used before for another request */
};

/** Drop ans->json (the struct itself is the caller's). */
void ops_answer_free(struct ops_answer *ans);

/** A new id "<prefix><12 hex ms><8 hex random>" for a message, prompt or artifact: unique, and
 * sorted by creation time (cheap inserts into TEXT primary keys). Caller frees. */
char *ops_new_id(const char *prefix);

/** The secrets of a repository (repo non-NULL) or of a session's repository (sid): the
 * observer the runner and the repository layer are handed (ctx = the app), and what a posted
 * message is scrubbed with. *out: a new reference or NULL (none). Any thread. */
int ops_secrets_for(void *ctx, const char *sid, const char *repo, struct redact_set **out);

/** Inside a session write (sess_write's callback): append an event of type whose data is the
 * JSON object data (stolen), by author by (may be NULL). *seq_out (may be NULL) gets its seq. */
int ops_tx_append_json(struct sess_tx *tx, const char *type, const struct author *by, json_t *data,
                       int64_t *seq_out);

/** Check actor's access to session sid (AUTH_READ/WRITE/OWNER of auth.h), with the REST
 * API's messages: ERR_NOT_FOUND, ERR_GONE, ERR_FORBIDDEN. */
int ops_session_access(struct app *app, const struct auth_info *actor, const char *sid, int need,
                       struct ops_answer *ans);

/** May actor create a session now? Viewers may not (ERR_FORBIDDEN); everyone but admins is
 * held to max_sessions_per_minute (ERR_LIMIT with retry_after). Takes a rate-limit token. */
int ops_session_admit(struct app *app, const struct auth_info *actor, struct ops_answer *ans);

/** What POST /v1/sessions does: req = {title?, repo?, visibility?, agent?}; actor becomes the
 * owner and first participant, `session.created` is the file's first event. admitted = 1 when
 * the caller already ran ops_session_admit (the REST handler does, before reading the body).
 * Answer: the registry row plus last_seq (201 over REST). */
int ops_session_create(struct app *app, const struct auth_info *actor, json_t *req, int admitted,
                       struct ops_answer *ans);

/** What POST /v1/sessions/{id}/messages does: req = {content, context?, client_request_id?,
 * run?, author?} (author only for actors that may impersonate). The caller has checked write
 * access. Answer: {message_id, prompt_id, seq} (202 over REST), or on a replay the first
 * request's answer (ans->replayed). */
int ops_message_create(struct app *app, const struct auth_info *actor, const char *sid, json_t *req,
                       struct ops_answer *ans);

/** What POST /v1/sessions/{id}/cancel does: req = {prompt_id?} or NULL (the running prompt).
 * The caller has checked write access. Answer: {cancelled: true, prompt_id}. */
int ops_prompt_cancel(struct app *app, const struct auth_info *actor, const char *sid, json_t *req,
                      struct ops_answer *ans);

/** A participant joins (join = 1: participants row, `participant.joined`) or leaves (join = 0:
 * last_seen, `participant.left`) session sid, as a WebSocket client does on connect and close.
 * No answer JSON. */
int ops_session_join(struct app *app, const struct auth_info *actor, const char *sid, int join,
                     struct ops_answer *ans);

#endif
