/*
 * ghapp.c - GitHub App installation tokens (ghapp.h): an RS256 JWT signed with OpenSSL, the
 * installation lookup and the token exchange over libcurl, and a cache of tokens per
 * installation.
 *
 * Threads: any. a->lock guards the two caches (repository -> installation id, installation ->
 * token). Network calls run without it: a thread renewing an installation's token marks the
 * entry `renewing`; others wanting that installation wait on a->cv, the rest go on.
 * Secrets: the key is in a->key only; JWTs, tokens and the Authorization headers that carry
 * them are wiped (OPENSSL_cleanse) before they are freed, and no log line names them.
 */
#include "workspace/ghapp.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xmem.h"
#include "workspace/github.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if LIBCURL_VERSION_NUM < 0x075400
#error "ghapp.c pairs curl_global_init/cleanup per instance: libcurl 7.84 or later needed"
#endif

#define MAX_KEY_FILE   (64 * 1024)
#define MAX_RESPONSE   (256 * 1024)
#define JWT_BACKDATE_S 60  /* iat in the past: GitHub's clock may be behind ours */
#define JWT_LIFE_S     540 /* exp - now; GitHub refuses a JWT valid for more than 10 min */

/* One installation's token. In a->insts, guarded by a->lock. */
struct inst {
    struct inst *next;
    int64_t id;
    char *token; /* NULL until the first exchange */
    int64_t expires_at;
    int renewing; /* a thread is exchanging a JWT for a new token now */
};

/* "owner/repo" (lower case) -> installation id. In a->repos, guarded by a->lock. */
struct repo_inst {
    struct repo_inst *next;
    char *key;
    int64_t id; /* 0: the app is not installed there (as of `at`) */
    int64_t at; /* when that was learnt (epoch seconds) */
};

#define NOT_INSTALLED_TTL_S 60

struct ghapp {
    int64_t app_id;
    int64_t installation_id;
    char *api_base; /* without a trailing slash */
    char *web;      /* the git host's origin, scheme://host[:port], no trailing slash */
    char *ca_file;
    EVP_PKEY *key; /* read-only after open: EVP_DigestSign with distinct contexts is safe */

    pthread_mutex_t lock;
    pthread_cond_t cv; /* a renewal ended */
    struct inst *insts;
    struct repo_inst *repos;
};

void ghapp_wipe(char *token)
{
    if (token) {
        OPENSSL_cleanse(token, strlen(token));
        free(token);
    }
}

/* ---------------------------------------------------------------- the key and the JWT */

/* base64url without padding (RFC 7515 §2). Caller frees. */
static char *b64url(const unsigned char *p, size_t n)
{
    char *out = xmalloc(4 * ((n + 2) / 3) + 1);
    int len = EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    int o = 0;
    for (int i = 0; i < len; i++) {
        char c = out[i];
        if (c == '=') {
            break;
        }
        out[o++] = c == '+' ? '-' : c == '/' ? '_' : c;
    }
    out[o] = 0;
    return out;
}

/* Read the PEM key from path: a regular file of ours (or root's) that group and others cannot
 * read or write, at most 64 KiB, an RSA key of at least 2048 bits. */
static int load_key(const char *path, EVP_PKEY **out, char *msg, size_t n)
{
    char *pem = NULL;
    BIO *bio = NULL;
    EVP_PKEY *k = NULL;
    ssize_t got = 0;
    struct stat sb;
    int rc = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(msg, n, "github.app_key_file %s: %s", path, strerror(errno));
        return errno == ENOENT ? ERR_NOT_FOUND : ERR_IO;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        snprintf(msg, n, "github.app_key_file %s is not a regular file", path);
        rc = ERR_FORBIDDEN;
        goto out;
    }
    if ((sb.st_mode & 077) || (sb.st_uid != geteuid() && sb.st_uid != 0)) {
        snprintf(msg, n,
                 "github.app_key_file %s must be owned by this user and mode 0600 or 0400 "
                 "(it is %04o): the key signs as the GitHub App",
                 path, (unsigned)(sb.st_mode & 07777));
        rc = ERR_FORBIDDEN;
        goto out;
    }
    if (sb.st_size <= 0 || sb.st_size > MAX_KEY_FILE) {
        snprintf(msg, n, "github.app_key_file %s: not a PEM key (size)", path);
        rc = ERR_INVALID;
        goto out;
    }
    pem = xmalloc((size_t)sb.st_size + 1);
    for (size_t off = 0; off < (size_t)sb.st_size; off += (size_t)got) {
        got = read(fd, pem + off, (size_t)sb.st_size - off);
        if (got <= 0) {
            snprintf(msg, n, "github.app_key_file %s: short read", path);
            rc = ERR_IO;
            goto out;
        }
    }
    bio = BIO_new_mem_buf(pem, (int)sb.st_size);
    k = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    if (!k || EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA || EVP_PKEY_get_bits(k) < 2048) {
        snprintf(msg, n, "github.app_key_file %s: not an RSA private key of 2048 bits or more",
                 path);
        rc = ERR_INVALID;
        goto out;
    }
    *out = k;
    k = NULL;
out:
    EVP_PKEY_free(k);
    BIO_free(bio);
    if (pem) {
        OPENSSL_cleanse(pem, (size_t)sb.st_size);
        free(pem);
    }
    close(fd);
    return rc;
}

int ghapp_jwt(struct ghapp *a, int64_t now, char **out)
{
    static const char header[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
    char claims[128];
    char *h = NULL, *c = NULL, *input = NULL, *sig64 = NULL;
    unsigned char *sig = NULL;
    size_t siglen = 0;
    EVP_MD_CTX *ctx = NULL;
    int rc = 0;
    *out = NULL;
    snprintf(claims, sizeof(claims), "{\"iat\":%lld,\"exp\":%lld,\"iss\":%lld}",
             (long long)(now - JWT_BACKDATE_S), (long long)(now + JWT_LIFE_S),
             (long long)a->app_id);
    h = b64url((const unsigned char *)header, strlen(header));
    c = b64url((const unsigned char *)claims, strlen(claims));
    input = xasprintf("%s.%s", h, c);
    ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, a->key) != 1 ||
        EVP_DigestSign(ctx, NULL, &siglen, (const unsigned char *)input, strlen(input)) != 1) {
        rc = ERR_INTERNAL;
        goto out;
    }
    sig = xmalloc(siglen);
    if (EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)input, strlen(input)) != 1) {
        rc = ERR_INTERNAL;
        goto out;
    }
    sig64 = b64url(sig, siglen);
    *out = xasprintf("%s.%s", input, sig64);
out:
    if (rc != 0) {
        LOG_ERROR("ghapp: cannot sign the JWT (OpenSSL error)");
    }
    EVP_MD_CTX_free(ctx);
    free(h);
    free(c);
    free(input);
    free(sig);
    free(sig64);
    return rc;
}

/* ---------------------------------------------------------------- hosts */

/* The length of url's origin (scheme://host[:port]) for http(s) URLs, else 0. */
static size_t origin_len(const char *url)
{
    size_t skip = 0;
    if (strncasecmp(url, "https://", 8) == 0) {
        skip = 8;
    } else if (strncasecmp(url, "http://", 7) == 0) {
        skip = 7;
    } else {
        return 0;
    }
    size_t hl = strcspn(url + skip, "/?#");
    return hl ? skip + hl : 0;
}

/* The git host of api_base: its origin, without a leading "api." (api.github.com serves the
 * REST API of github.com; GitHub Enterprise serves both on one host, under /api/v3). */
static char *web_origin(const char *api_base)
{
    size_t ol = origin_len(api_base);
    if (!ol) {
        return NULL;
    }
    const char *host = strstr(api_base, "://") + 3;
    size_t scheme = (size_t)(host - api_base);
    if (strncasecmp(host, "api.", 4) == 0 && (size_t)(host - api_base) + 4 < ol) {
        return xasprintf("%.*s%.*s", (int)scheme, api_base, (int)(ol - scheme - 4), host + 4);
    }
    return xstrndup(api_base, ol);
}

int ghapp_covers(const struct ghapp *a, const char *url, char **owner, char **repo)
{
    *owner = *repo = NULL;
    if (!a || !url) {
        return 0;
    }
    size_t wl = strlen(a->web);
    /* the whole origin must match: "https://github.com.evil" and "https://github.com@evil"
     * are other hosts */
    if (origin_len(url) != wl || strncasecmp(url, a->web, wl) != 0 || url[wl] != '/') {
        return 0;
    }
    return github_parse_url(url, owner, repo) == 0;
}

/* ---------------------------------------------------------------- the REST calls */

static size_t on_data(char *p, size_t size, size_t nmemb, void *ud)
{
    struct buf *b = ud;
    if (buf_append(b, p, size * nmemb) != 0) {
        return 0; /* over the cap: abort the transfer */
    }
    return size * nmemb;
}

/* method {api_base}{path} with "Authorization: Bearer <jwt>"; *status and *out (the JSON
 * answer or NULL; caller decrefs). ERR_UNAVAILABLE if GitHub cannot be reached. */
static int api_call(struct ghapp *a, const char *method, const char *path, const char *jwt,
                    long *status, json_t **out)
{
    CURL *c = NULL;
    struct curl_slist *hdr = NULL;
    struct buf resp;
    char *url = xasprintf("%s%s", a->api_base, path);
    char *auth = xasprintf("Authorization: Bearer %s", jwt);
    int rc = 0;
    *out = NULL;
    *status = 0;
    buf_init(&resp, MAX_RESPONSE);
    hdr = curl_slist_append(hdr, auth);
    hdr = curl_slist_append(hdr, "Accept: application/vnd.github+json");
    hdr = curl_slist_append(hdr, "X-GitHub-Api-Version: 2022-11-28");
    hdr = curl_slist_append(hdr, "Expect:");
    c = curl_easy_init();
    if (!c || !hdr) {
        rc = ERR_NOMEM;
        goto out;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https,http");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L); /* the JWT goes nowhere else */
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
    }
    curl_easy_setopt(c, CURLOPT_USERAGENT, "sessiond");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    if (a->ca_file) {
        curl_easy_setopt(c, CURLOPT_CAINFO, a->ca_file);
    } else if (access("/etc/ssl/certs/ca-certificates.crt", R_OK) == 0) {
        curl_easy_setopt(c, CURLOPT_CAINFO, "/etc/ssl/certs/ca-certificates.crt");
    }
    CURLcode cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        LOG_WARN("ghapp: %s %s: %s", method, path, curl_easy_strerror(cc));
        rc = ERR_UNAVAILABLE;
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    *out = json_loadb(resp.data ? resp.data : "", resp.len, 0, NULL);
out:
    if (c) {
        curl_easy_cleanup(c);
    }
    curl_slist_free_all(hdr);
    OPENSSL_cleanse(auth, strlen(auth));
    free(auth);
    free(url);
    buf_free(&resp);
    return rc;
}

/* Our code for an error status of GitHub's, logged with the path (never a credential). */
static int status_err(const char *path, long status, json_t *ans)
{
    const char *m = json_string_value(json_object_get(ans, "message"));
    LOG_WARN("ghapp: %s answered %ld: %s", path, status, m ? m : "");
    switch (status) {
    case 401:
        return ERR_AUTH; /* the JWT: wrong app id, key or clock */
    case 404:
        return ERR_NOT_FOUND;
    default:
        return ERR_UNAVAILABLE;
    }
}

/* "2026-01-02T03:04:05Z" -> epoch seconds, or -1. */
static int64_t parse_time(const char *s)
{
    struct tm tm = {0};
    int n = 0;
    if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                     &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6) {
        return -1;
    }
    if (strcmp(s + n, "Z") != 0 && strcmp(s + n, "+00:00") != 0) {
        return -1;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm);
}

static int valid_name(const char *s)
{
    if (!s || !*s || strlen(s) > 100) {
        return 0;
    }
    for (const char *p = s; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.') {
            return 0;
        }
    }
    return strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* GET /repos/{owner}/{repo}/installation -> its id. */
static int lookup_installation(struct ghapp *a, const char *owner, const char *repo, int64_t *id)
{
    char *jwt = NULL, *path = xasprintf("/repos/%s/%s/installation", owner, repo);
    json_t *ans = NULL;
    long status = 0;
    int rc = ghapp_jwt(a, (int64_t)time(NULL), &jwt);
    if (rc == 0) {
        rc = api_call(a, "GET", path, jwt, &status, &ans);
    }
    if (rc == 0 && status != 200) {
        rc = status_err(path, status, ans);
    }
    if (rc == 0) {
        json_t *v = json_object_get(ans, "id");
        *id = json_is_integer(v) ? json_integer_value(v) : 0;
        if (*id <= 0) {
            LOG_WARN("ghapp: %s answered without an installation id", path);
            rc = ERR_UNAVAILABLE;
        }
    }
    ghapp_wipe(jwt);
    json_decref(ans);
    free(path);
    return rc;
}

/* POST /app/installations/{id}/access_tokens -> a token and its expiry (caller wipes). */
static int exchange(struct ghapp *a, int64_t id, char **token, int64_t *expires_at)
{
    char *jwt = NULL, *path = xasprintf("/app/installations/%lld/access_tokens", (long long)id);
    json_t *ans = NULL;
    long status = 0;
    int rc = ghapp_jwt(a, (int64_t)time(NULL), &jwt);
    if (rc == 0) {
        rc = api_call(a, "POST", path, jwt, &status, &ans);
    }
    if (rc == 0 && status != 201) {
        rc = status_err(path, status, ans);
    }
    if (rc == 0) {
        const char *t = json_string_value(json_object_get(ans, "token"));
        int64_t exp = parse_time(json_string_value(json_object_get(ans, "expires_at")));
        if (!t || !*t || exp < 0) {
            LOG_WARN("ghapp: %s answered without a token or its expiry", path);
            rc = ERR_UNAVAILABLE;
        } else {
            *token = xstrdup(t);
            *expires_at = exp;
        }
    }
    if (ans) {
        /* the answer holds the token: wipe it inside jansson's copy too */
        json_t *t = json_object_get(ans, "token");
        if (json_is_string(t)) {
            OPENSSL_cleanse((char *)json_string_value(t), json_string_length(t));
        }
    }
    ghapp_wipe(jwt);
    json_decref(ans);
    free(path);
    return rc;
}

/* ---------------------------------------------------------------- the caches */

/* The installation of owner/repo: the configured one, the cached one, or a lookup. */
static int installation_of(struct ghapp *a, const char *owner, const char *repo, int64_t *id)
{
    if (a->installation_id > 0) {
        *id = a->installation_id;
        return 0;
    }
    char *key = xasprintf("%s/%s", owner, repo);
    for (char *p = key; *p; p++) {
        *p = (char)tolower((unsigned char)*p); /* GitHub names are case-insensitive */
    }
    int64_t now = (int64_t)time(NULL);
    pthread_mutex_lock(&a->lock);
    for (struct repo_inst **pp = &a->repos; *pp; pp = &(*pp)->next) {
        struct repo_inst *ri = *pp;
        if (strcmp(ri->key, key) != 0) {
            continue;
        }
        if (ri->id > 0 || now - ri->at < NOT_INSTALLED_TTL_S) {
            int64_t found = ri->id;
            pthread_mutex_unlock(&a->lock);
            free(key);
            *id = found;
            return found > 0 ? 0 : ERR_NOT_FOUND;
        }
        *pp = ri->next; /* "not installed" is old news: ask again */
        free(ri->key);
        free(ri);
        break;
    }
    pthread_mutex_unlock(&a->lock);
    int rc = lookup_installation(a, owner, repo, id);
    if (rc == 0 || rc == ERR_NOT_FOUND) {
        struct repo_inst *ri = xcalloc(1, sizeof(*ri));
        ri->key = key;
        ri->id = rc == 0 ? *id : 0;
        ri->at = now;
        key = NULL;
        pthread_mutex_lock(&a->lock);
        ri->next = a->repos;
        a->repos = ri;
        pthread_mutex_unlock(&a->lock);
    }
    free(key);
    return rc;
}

/* Forget the repositories mapped to installation id (it was deleted: look them up again).
 * Called with a->lock held. */
static void forget_installation(struct ghapp *a, int64_t id)
{
    struct repo_inst **pp = &a->repos;
    while (*pp) {
        struct repo_inst *ri = *pp;
        if (ri->id == id) {
            *pp = ri->next;
            free(ri->key);
            free(ri);
        } else {
            pp = &ri->next;
        }
    }
}

static struct inst *inst_get(struct ghapp *a, int64_t id)
{
    for (struct inst *in = a->insts; in; in = in->next) {
        if (in->id == id) {
            return in;
        }
    }
    struct inst *in = xcalloc(1, sizeof(*in));
    in->id = id;
    in->next = a->insts;
    a->insts = in;
    return in;
}

int ghapp_token(struct ghapp *a, const char *owner, const char *repo, const char *stale,
                char **token, int64_t *expires_at)
{
    int64_t id = 0, exp = 0;
    char *fresh = NULL;
    *token = NULL;
    if (!valid_name(owner) || !valid_name(repo)) {
        return ERR_INVALID;
    }
    int rc = installation_of(a, owner, repo, &id);
    if (rc != 0) {
        return rc;
    }
    pthread_mutex_lock(&a->lock);
    struct inst *in = inst_get(a, id);
    for (;;) {
        while (in->renewing) {
            pthread_cond_wait(&a->cv, &a->lock);
        }
        int64_t now = (int64_t)time(NULL);
        int refused = stale && in->token && strcmp(stale, in->token) == 0;
        if (in->token && in->expires_at - now > GHAPP_RENEW_MARGIN_S && !refused) {
            *token = xstrdup(in->token);
            exp = in->expires_at;
            break;
        }
        if (rc != 0 || fresh) {
            /* our own renewal failed, or gave a token already too close to its expiry */
            if (fresh) {
                *token = xstrdup(in->token);
                exp = in->expires_at;
            }
            break;
        }
        in->renewing = 1;
        pthread_mutex_unlock(&a->lock);
        rc = exchange(a, id, &fresh, &exp);
        pthread_mutex_lock(&a->lock);
        in->renewing = 0;
        pthread_cond_broadcast(&a->cv);
        if (rc == 0) {
            ghapp_wipe(in->token);
            in->token = fresh;
            in->expires_at = exp;
            LOG_INFO("ghapp: new token for installation %lld, valid %llds", (long long)id,
                     (long long)(exp - (int64_t)time(NULL)));
        } else if (rc == ERR_NOT_FOUND) {
            forget_installation(a, id);
        }
    }
    pthread_mutex_unlock(&a->lock);
    if (expires_at) {
        *expires_at = exp;
    }
    return *token ? 0 : rc;
}

int ghapp_token_for_url(struct ghapp *a, const char *url, const char *stale, char **token)
{
    char *owner = NULL, *repo = NULL;
    *token = NULL;
    if (!ghapp_covers(a, url, &owner, &repo)) {
        return 0;
    }
    int rc = ghapp_token(a, owner, repo, stale, token, NULL);
    if (rc == ERR_NOT_FOUND) {
        LOG_INFO("ghapp: the app is not installed for %s/%s: no credentials", owner, repo);
        rc = 0;
    } else if (rc != 0) {
        LOG_WARN("ghapp: no installation token for %s/%s: %s", owner, repo, err_str(rc));
    }
    free(owner);
    free(repo);
    return rc;
}

/* ---------------------------------------------------------------- lifetime */

int ghapp_open(const struct ghapp_config *cfg, struct ghapp **out, char *msg, size_t n)
{
    EVP_PKEY *key = NULL;
    char *web = NULL;
    int rc = 0;
    *out = NULL;
    if (cfg->app_id <= 0 || !cfg->key_file || !*cfg->key_file) {
        snprintf(msg, n, "github.app_id and github.app_key_file are both required");
        return ERR_INVALID;
    }
    web = cfg->api_base ? web_origin(cfg->api_base) : NULL;
    if (!web) {
        snprintf(msg, n, "github.api_base must be an http(s) URL");
        return ERR_INVALID;
    }
    rc = load_key(cfg->key_file, &key, msg, n);
    if (rc != 0) {
        free(web);
        return rc;
    }
    /* reference-counted and thread safe since libcurl 7.84; paired in ghapp_free */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        EVP_PKEY_free(key);
        free(web);
        snprintf(msg, n, "cannot initialise libcurl");
        return ERR_INTERNAL;
    }
    struct ghapp *a = xcalloc(1, sizeof(*a));
    a->app_id = cfg->app_id;
    a->installation_id = cfg->installation_id;
    size_t bl = strlen(cfg->api_base);
    while (bl > 0 && cfg->api_base[bl - 1] == '/') {
        bl--;
    }
    a->api_base = xstrndup(cfg->api_base, bl);
    a->web = web;
    a->ca_file = cfg->ca_file && *cfg->ca_file ? xstrdup(cfg->ca_file) : NULL;
    a->key = key;
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->cv, NULL);
    *out = a;
    return 0;
}

void ghapp_free(struct ghapp *a)
{
    if (!a) {
        return;
    }
    while (a->insts) {
        struct inst *in = a->insts;
        a->insts = in->next;
        ghapp_wipe(in->token);
        free(in);
    }
    while (a->repos) {
        struct repo_inst *ri = a->repos;
        a->repos = ri->next;
        free(ri->key);
        free(ri);
    }
    EVP_PKEY_free(a->key); /* OpenSSL clears an RSA key's numbers as it frees them */
    pthread_mutex_destroy(&a->lock);
    pthread_cond_destroy(&a->cv);
    free(a->api_base);
    free(a->web);
    free(a->ca_file);
    free(a);
    curl_global_cleanup();
}
