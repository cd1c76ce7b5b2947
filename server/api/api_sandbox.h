/*
 * api_sandbox.h - the sandbox layer inside the server: start/stop of the output pump, the
 * sandbox backend, the runner and the exec pipeline (called by main.c; they go into struct
 * app), and the endpoints
 * POST /v1/sessions/{id}/exec, GET/PUT /v1/sessions/{id}/files, POST /v1/sessions/{id}/cancel.
 *
 * Threads: sandbox_start/sandbox_stop from the main thread; handlers on HTTP pool threads.
 */
#ifndef SESSIOND_API_SANDBOX_H
#define SESSIOND_API_SANDBOX_H

#include <jansson.h>
#include <stddef.h>

struct app;
struct auth_info;
struct req;

/** Start the output pump and the sandbox backend (refuses with one log line if it cannot
 * run); fills app->pump and app->sbx. 0 or a negative error (the server must not start). */
int sandbox_start(struct app *app);
/** Start the runner on app->sbx, handing it app->repos (so after api_repos_start), and the
 * exec pipeline; fills app->runner and app->exec. 0 or a negative error. */
int sandbox_runner_start(struct app *app);
/** Graceful stop: running prompts get a grace period, then are cancelled ("shutdown"). */
void sandbox_stop(struct app *app);

/** A session was created with a repository: start its workspace and sandbox in the
 * background now (never blocks). */
void api_session_started(struct app *app, const char *session_id);

int api_exec(struct req *r);
int api_exec_kill(struct req *r);
int api_files_get(struct req *r);
int api_files_put(struct req *r);
int api_cancel(struct req *r);

#endif
