/*
 * ghapp.h - GitHub App authentication: installation tokens for clone, fetch, push and the
 * pull request API.
 *
 * The server signs a JSON Web Token (RS256, iss = the app id, valid 10 minutes from a minute
 * ago) with the app's private key, finds the installation that covers a repository
 * (GET {api_base}/repos/{owner}/{repo}/installation, unless one installation id is configured)
 * and exchanges the JWT for an installation token (POST
 * {api_base}/app/installations/{id}/access_tokens → {token, expires_at}). Tokens are cached per
 * installation and renewed when less than 5 minutes of their life remain, or at once when a
 * caller reports the cached one refused (a 401).
 *
 * Where a token may go: only to the app's own GitHub host, the web origin of api_base
 * (https://api.github.com → https://github.com; https://HOST/api/v3 → https://HOST). A
 * repository URL on any other host gets no installation token (ghapp_token_for_url).
 *
 * The private key is read once at ghapp_open from a file that must be a regular file readable
 * by its owner only; it lives in this process's memory and nowhere else (never logged, never
 * passed to a helper or a sandbox). Tokens and JWTs are never logged.
 *
 * Thread safety: every function is thread safe; one instance serves all threads. A renewal
 * runs without the instance's lock; other threads that need the same installation's token
 * wait for it, others do not.
 */
#ifndef SESSIOND_GHAPP_H
#define SESSIOND_GHAPP_H

#include <stddef.h>
#include <stdint.h>

struct ghapp;

/** Renew a cached token when fewer than this many seconds of its life remain. */
#define GHAPP_RENEW_MARGIN_S 300

/** Borrowed strings, copied by ghapp_open. */
struct ghapp_config {
    int64_t app_id;          /* > 0: the JWT's iss */
    const char *key_file;    /* the app's private key (PEM, RSA) */
    int64_t installation_id; /* > 0: use this installation for every repository; 0: look it
                                up per repository */
    const char *api_base;    /* https://api.github.com or https://HOST/api/v3 */
    const char *ca_file;     /* HTTPS CA bundle, or NULL: the system bundle */
};

/** Read the key and make the instance. ERR_FORBIDDEN if the key file is not a regular file or
 * is accessible by group or others; ERR_INVALID for an unusable key or config; ERR_NOT_FOUND /
 * ERR_IO when it cannot be read. msg (size n) says why, without key material. *out:
 * ghapp_free(). */
int ghapp_open(const struct ghapp_config *cfg, struct ghapp **out, char *msg, size_t n);
/** Free the instance, wiping the key and the cached tokens. NULL is a no-op. */
void ghapp_free(struct ghapp *a);

/** A JWT for the app at time now (seconds since the epoch): iat = now - 60 (clock drift),
 * exp = now + 540, iss = app id, signed RS256. Caller frees (it is a credential: wipe it). */
int ghapp_jwt(struct ghapp *a, int64_t now, char **out);

/** 1 if url is an http(s) URL on the app's GitHub host; then *owner and *repo (caller frees)
 * name the repository. 0 otherwise (ssh, another host, a local path). a may be NULL (0). */
int ghapp_covers(const struct ghapp *a, const char *url, char **owner, char **repo);

/** An installation token for owner/repo (caller wipes and frees *token): the cached one while
 * more than GHAPP_RENEW_MARGIN_S seconds of it remain, else a new one. stale (may be NULL): a
 * token the caller had refused; if it is still the cached one it is renewed now, so a refused
 * push or call is retried once with a fresh token. *expires_at (may be NULL) gets its expiry
 * (epoch seconds). ERR_NOT_FOUND if the app is not installed for the repository, ERR_AUTH if
 * GitHub refused the app's JWT, ERR_UNAVAILABLE if GitHub cannot be reached or answers an
 * error. */
int ghapp_token(struct ghapp *a, const char *owner, const char *repo, const char *stale,
                char **token, int64_t *expires_at);

/** ghapp_token() for a repository URL: *token = NULL and 0 when a is NULL, the URL is not on
 * the app's host (ghapp_covers) or the app is not installed for it (a public repository is
 * then read without credentials; "not installed" is remembered for a minute, so the background
 * syncs of such a repository do not ask GitHub each time); other failures are returned (and
 * logged). */
int ghapp_token_for_url(struct ghapp *a, const char *url, const char *stale, char **token);

/** Wipe and free a token (or a JWT). NULL is a no-op. */
void ghapp_wipe(char *token);

#endif
