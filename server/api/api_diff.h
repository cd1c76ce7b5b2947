/*
 * api_diff.h - GET /v1/sessions/{id}/diff (api_diff.c; docs/api.md).
 *
 * Threads: HTTP pool threads.
 */
#ifndef SESSIOND_API_DIFF_H
#define SESSIOND_API_DIFF_H

struct req;

int api_diff(struct req *r);

#endif
