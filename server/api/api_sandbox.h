/*
 * api_sandbox.h - the sandbox endpoints:
 * POST /v1/sessions/{id}/exec, GET/PUT /v1/sessions/{id}/files, POST /v1/sessions/{id}/cancel.
 *
 * Threads: handlers on HTTP pool threads.
 */
#ifndef SESSIOND_API_SANDBOX_H
#define SESSIOND_API_SANDBOX_H

#include <jansson.h>
#include <stddef.h>

struct app;
struct auth_info;
struct req;

int api_exec(struct req *r);
int api_exec_kill(struct req *r);
int api_files_get(struct req *r);
int api_files_put(struct req *r);
int api_cancel(struct req *r);

#endif
