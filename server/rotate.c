/*
 * rotate.c - the rotate-secrets-key subcommand (rotate.h).
 *
 * Crash safety: the new key is on disk (fsynced) before the transaction that re-seals with it
 * commits, and the old key file is replaced only after the commit. An interruption before the
 * commit leaves the old key and old seals (and a <file>.new to delete); one after it leaves
 * <file>.new holding the key that opens everything, which a later run refuses to overwrite.
 *
 * Thread context: the main thread of a process that runs nothing else.
 */
#include "server/rotate.h"

#include "common/err.h"
#include "common/xmem.h"
#include "server/config.h"
#include "server/secrets.h"
#include "storage/registry.h"
#include "storage/secrets_db.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct keys {
    const struct secrets *old, *fresh;
};

/* The aad a value was sealed with: as the vault (server/vault.c) and the credential endpoints
 * (api_repos.c, "<provider>:<user id>") seal them. */
static char *aad_of(const char *table, const char *a, const char *b)
{
    if (strcmp(table, "secrets") == 0) {
        return xasprintf("secret:%s:%s", a, b);
    }
    return xasprintf("%s:%s", b, a);
}

static int reseal(void *ctx, const char *table, const char *a, const char *b, const char *sealed,
                  char **resealed)
{
    struct keys *k = ctx;
    char *aad = aad_of(table, a, b), *plain = NULL;
    size_t n = 0;
    int rc = secrets_unseal(k->old, aad, sealed, &plain, &n);
    if (rc != 0) {
        fprintf(stderr, "sessiond: a value of %s (%s, %s) does not open with the current key: %s\n",
                table, a, b, err_str(rc));
    } else {
        rc = secrets_seal(k->fresh, aad, plain, n, resealed);
    }
    secrets_wipe(plain, n);
    free(aad);
    return rc;
}

/* The current key, as the server loads it (api_repos_start): the environment variable when
 * it is set, else the key file. *path: the file it came from (caller frees), NULL for env. */
static int load_current(const struct config *cfg, struct secrets **out, char **path)
{
    *path = NULL;
    if (cfg->secrets_key_env && *cfg->secrets_key_env) {
        int rc = secrets_new_from_env(cfg->secrets_key_env, out);
        if (rc != ERR_NOT_FOUND) {
            return rc;
        }
    }
    *path = *cfg->secrets_key_file ? xstrdup(cfg->secrets_key_file)
                                   : xasprintf("%s/secrets.key", cfg->data_dir);
    return secrets_new_from_file(*path, 0, out);
}

/* Make a rename or a creation in path's directory durable. */
static int fsync_dir_of(const char *path)
{
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    const char *d = ".";
    if (slash == dir) {
        d = "/";
    } else if (slash) {
        *slash = 0;
        d = dir;
    }
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = fd >= 0 && fsync(fd) == 0 ? 0 : ERR_IO;
    if (fd >= 0) {
        close(fd);
    }
    free(dir);
    return rc;
}

int rotate_secrets_key_main(int argc, char **argv)
{
    struct config *cfg = NULL;
    struct secrets *old = NULL, *fresh = NULL;
    struct registry *reg = NULL;
    char *cur_path = NULL, *new_path = NULL, *db = NULL, msg[512];
    const char *given = NULL;
    char **args = xcalloc((size_t)argc + 1, sizeof(char *));
    int nargs = 0, status = 1, created = 0, n = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--new-key-file") == 0 && i + 1 < argc) {
            given = argv[++i];
        } else {
            args[nargs++] = argv[i];
        }
    }
    if (config_load(nargs, args, NULL, &cfg, msg, sizeof(msg)) != 0) {
        fprintf(stderr, "sessiond rotate-secrets-key: %s\n", msg);
        status = 2;
        goto out;
    }
    int rc = load_current(cfg, &old, &cur_path);
    if (rc != 0) {
        fprintf(stderr, "sessiond rotate-secrets-key: cannot load the current key%s%s: %s\n",
                cur_path ? " " : "", cur_path ? cur_path : "", err_str(rc));
        goto out;
    }
    if (!given && !cur_path) {
        fprintf(stderr,
                "sessiond rotate-secrets-key: the key comes from $%s: name where the new "
                "one goes with --new-key-file PATH\n",
                cfg->secrets_key_env);
        status = 2;
        goto out;
    }
    new_path = given ? xstrdup(given) : xasprintf("%s.new", cur_path);
    if (!given && access(new_path, F_OK) == 0) {
        fprintf(stderr,
                "sessiond rotate-secrets-key: %s exists: an earlier rotation was interrupted. "
                "If it finished its re-sealing, that file holds the key: move it over %s; "
                "otherwise delete it. Then run this again.\n",
                new_path, cur_path);
        goto out;
    }
    created = access(new_path, F_OK) != 0;
    rc = secrets_new_from_file(new_path, 1, &fresh);
    if (rc == 0 && created) {
        rc = fsync_dir_of(new_path);
    }
    if (rc != 0) {
        fprintf(stderr, "sessiond rotate-secrets-key: cannot create the new key %s: %s\n", new_path,
                err_str(rc));
        goto out;
    }
    db = xasprintf("%s/registry.db", cfg->data_dir);
    rc = registry_open(db, 1, &reg);
    if (rc == 0) {
        struct keys k = {old, fresh};
        rc = secrets_db_reseal_all(reg, reseal, &k, &n);
    }
    if (rc != 0) {
        fprintf(stderr, "sessiond rotate-secrets-key: nothing changed: %s\n", err_str(rc));
        goto out;
    }
    if (!given && (rename(new_path, cur_path) != 0 || fsync_dir_of(cur_path) != 0)) {
        fprintf(stderr,
                "sessiond rotate-secrets-key: the values are re-sealed with the key in %s but "
                "it could not replace %s (%s): move it there by hand\n",
                new_path, cur_path, strerror(errno));
        created = 0; /* it is the only key that opens them now */
        goto out;
    }
    created = 0;
    printf("sessiond: re-sealed %d values with the new key (%s)\n", n, given ? given : cur_path);
    status = 0;
out:
    if (created && new_path) {
        unlink(new_path); /* never used: the old key and seals stand */
    }
    registry_close(reg);
    secrets_free(old);
    secrets_free(fresh);
    config_free(cfg);
    free(cur_path);
    free(new_path);
    free(db);
    free(args);
    return status;
}
