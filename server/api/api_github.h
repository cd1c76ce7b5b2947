/*
 * api_github.h - POST /v1/github/webhook: GitHub's deliveries about the pull requests sessiond
 * opened (signed with github.webhook_secret; no bearer token).
 */
#ifndef SESSIOND_API_GITHUB_H
#define SESSIOND_API_GITHUB_H

#include <stddef.h>

struct req;

/** 0 if sig (X-Hub-Signature-256, may be NULL) is "sha256=" and the hex HMAC-SHA256 of the
 * len bytes of body under secret, compared in constant time; else ERR_AUTH. Pure: the one
 * check a delivery must pass before its body is parsed. */
int api_github_verify(const char *secret, const char *sig, const char *body, size_t len);

/** POST /v1/github/webhook (route handler, ROUTE_PUBLIC: GitHub signs, it has no token). */
int api_github_webhook(struct req *r);

#endif
