/*
 * main.c - sessiond: flags -> configuration -> application (server/app.c), then wait for a
 * stop signal and stop in order.
 *
 * Thread context: the main thread blocks SIGINT/SIGTERM/SIGHUP before app_start() starts any
 * thread (the mask is inherited), so only its sigwait() sees them.
 */
#include "common/log.h"
#include "server/app.h"
#include "server/rotate.h"
#include "server/config.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

/* --help / --version: 1 when answered (the process exits). */
static int answer_info_flags(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            config_usage(stdout, argv[0]);
            return 1;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("sessiond %s\n", SESSIOND_VERSION);
            return 1;
        }
    }
    return 0;
}

/* Wait for SIGINT or SIGTERM (SIGHUP is logged and ignored). */
static void wait_for_stop(const sigset_t *sigs)
{
    for (;;) {
        int sig = 0;
        if (sigwait(sigs, &sig) != 0) {
            continue;
        }
        if (sig != SIGHUP) {
            LOG_INFO("main: signal %d, shutting down", sig);
            return;
        }
        LOG_INFO("main: SIGHUP ignored (restart to apply configuration changes)");
    }
}

int main(int argc, char **argv)
{
    struct config *cfg = NULL;
    struct app *app = NULL;
    char msg[512];
    sigset_t sigs;
    int level;

    if (argc > 1 && strcmp(argv[1], "rotate-secrets-key") == 0) {
        return rotate_secrets_key_main(argc - 1, argv + 1);
    }
    if (answer_info_flags(argc, argv)) {
        return 0;
    }
    if (config_load(argc, argv, NULL, &cfg, msg, sizeof(msg)) != 0) {
        fprintf(stderr, "sessiond: %s\n", msg);
        return 2;
    }
    if (log_parse_level(cfg->log_level, &level) == 0) {
        log_set_level(level);
    }
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    app_create(cfg, &app); /* takes cfg */
    int rc = app_start(app);
    if (rc == 0) {
        wait_for_stop(&sigs);
    }
    app_stop(app);
    app_destroy(app);
    return rc == 0 ? 0 : 1;
}
