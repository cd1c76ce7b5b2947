/*
 * auth.c - bearer-token authentication, session access checks, admin token bootstrap.
 * Thread safe: the registry serializes its own statements; no state here.
 */
#include "server/auth.h"

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "server/config.h"
#include "storage/registry.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

int auth_bearer(struct registry *reg, const char *authorization, struct auth_info *out)
{
    const char *p = authorization;
    char secret[256];
    size_t n;
    if (!p) {
        return ERR_AUTH;
    }
    while (*p == ' ') {
        p++;
    }
    if (strncasecmp(p, "Bearer ", 7) != 0) {
        return ERR_AUTH;
    }
    p += 7;
    while (*p == ' ') {
        p++;
    }
    n = strlen(p);
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t')) {
        n--;
    }
    if (n == 0 || n >= sizeof(secret)) {
        return ERR_AUTH;
    }
    memcpy(secret, p, n);
    secret[n] = 0;
    int rc = registry_token_auth(reg, secret, out);
    explicit_bzero(secret, sizeof(secret));
    return rc == 0 ? 0 : ERR_AUTH;
}

static int rank(const char *role)
{
    if (!role) {
        return 0;
    }
    if (strcmp(role, "owner") == 0) {
        return AUTH_OWNER;
    }
    if (strcmp(role, "writer") == 0) {
        return AUTH_WRITE;
    }
    if (strcmp(role, "viewer") == 0) {
        return AUTH_READ;
    }
    return 0;
}

int auth_session(struct registry *reg, const char *sid, const struct auth_info *who, int need,
                 const char **role_out)
{
    static const char *names[] = {NULL, "viewer", "writer", "owner"};
    const char *role = NULL;
    int rc = registry_session_access(reg, sid, who, &role);
    if (rc) {
        return rc;
    }
    int have = rank(role);
    if (have == 0) {
        return ERR_NOT_FOUND; /* a private session the caller may not see: do not confirm it */
    }
    if (have < need) {
        return ERR_FORBIDDEN;
    }
    if (role_out) {
        *role_out = names[have];
    }
    return 0;
}

int auth_is_admin(const struct auth_info *who)
{
    return who && strcmp(who->role, "admin") == 0;
}

int auth_may_impersonate(const struct auth_info *who)
{
    return who && (strcmp(who->role, "admin") == 0 || strcmp(who->role, "bot") == 0);
}

/* Read the stored admin secret (one line). 0, ERR_NOT_FOUND or ERR_IO. */
static int read_secret(const char *path, char *out, size_t n)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        return errno == ENOENT ? ERR_NOT_FOUND : ERR_IO;
    }
    if (!fgets(out, (int)n, f)) {
        fclose(f);
        return ERR_IO;
    }
    fclose(f);
    out[strcspn(out, "\r\n")] = 0;
    return *out ? 0 : ERR_IO;
}

static int write_secret(const char *path, const char *secret)
{
    char *tmp = xasprintf("%s.tmp", path);
    int rc = ERR_IO;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        goto out;
    }
    size_t len = strlen(secret);
    if (write(fd, secret, len) != (ssize_t)len || write(fd, "\n", 1) != 1 || fsync(fd) != 0) {
        close(fd);
        goto out;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        goto out;
    }
    rc = 0;
out:
    if (rc) {
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

int auth_bootstrap_admin(struct registry *reg, const struct config *cfg)
{
    char secret[256];
    char *path = xasprintf("%s/admin.token", cfg->data_dir);
    int rc;
    if (*cfg->admin_token) {
        snprintf(secret, sizeof(secret), "%s", cfg->admin_token);
        LOG_INFO("auth: admin token from SESSIOND_ADMIN_TOKEN / config");
    } else {
        rc = read_secret(path, secret, sizeof(secret));
        if (rc == ERR_NOT_FOUND) {
            char hex[65];
            util_random_hex(hex, 32);
            snprintf(secret, sizeof(secret), "sk_admin_%s", hex);
            rc = write_secret(path, secret);
            if (rc) {
                LOG_ERROR("auth: cannot write %s", path);
                goto out;
            }
            LOG_INFO("auth: generated an admin token; it is in %s (mode 0600)", path);
        } else if (rc) {
            LOG_ERROR("auth: cannot read %s", path);
            goto out;
        } else {
            LOG_INFO("auth: admin token in %s", path);
        }
    }
    rc = registry_token_ensure(reg, secret, "token:admin", "admin");
    if (rc) {
        LOG_ERROR("auth: cannot register the admin token: %s", err_str(rc));
    }
out:
    explicit_bzero(secret, sizeof(secret));
    free(path);
    return rc;
}
