/*
 * api_github.h - POST /v1/github/webhook: GitHub's deliveries about the pull requests sessiond
 * opened (signed with github.webhook_secret; no bearer token).
 */
#ifndef SESSIOND_API_GITHUB_H
#define SESSIOND_API_GITHUB_H

struct req;

/** POST /v1/github/webhook (route handler, ROUTE_PUBLIC: GitHub signs, it has no token). */
int api_github_webhook(struct req *r);

#endif
