/*
 * rotate.h - `sessiond rotate-secrets-key`: re-seal every sealed value of registry.db (admin
 * secrets and users' stored tokens) under a new master key, in one transaction.
 *
 * Run it with the server stopped (a running server keeps the old key in memory). The same
 * configuration flags as the server say where the data and the current key are. With the key
 * in a file (secrets.key_file, default <data_dir>/secrets.key) a new random key is written
 * next to it (<file>.new, 0600), the values are re-sealed, and the new file replaces the old
 * one; --new-key-file PATH uses (or creates) the key in PATH instead and leaves the current
 * file alone (required when the key comes from the environment: point the configuration at
 * the new key afterwards).
 */
#ifndef SESSIOND_ROTATE_H
#define SESSIOND_ROTATE_H

/** The subcommand: argv[0] is "rotate-secrets-key", the rest the server's flags plus
 * --new-key-file PATH. Returns the process exit status (0 done, 1 failed, 2 usage). */
int rotate_secrets_key_main(int argc, char **argv);

#endif
