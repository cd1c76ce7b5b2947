/*
 * app.c - the composition root: creates every part of the server, hands each the peers and
 * observers it needs (the only place that knows them all), starts them in dependency order and
 * stops them in the reverse order. Nothing else creates a part or stores one in struct app.
 *
 * Order (app_start; app_stop undoes it backwards, before what each part needs):
 *   data dir -> hub (no thread) -> store (its on_event fans out to hub and Slack) -> admin
 *   token -> agents + egress proxy -> output pump + sandbox backend -> master key +
 *   repositories -> runner + exec pipeline -> hub threads -> WebSocket guard -> Slack -> HTTP
 *   -> port file.
 * Adding a part: one start step after what it needs, one stop line before what it needs, and
 * its pointer in struct app.
 *
 * Threads: app_create/start/stop/destroy run on the main thread. The observers below run on
 * the threads of the parts that call them (each says which).
 */
#include "server/app.h"

#include "agents/agents.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "runner/exec.h"
#include "runner/runner.h"
#include "sandbox/egress/egress.h"
#include "sandbox/outpump.h"
#include "sandbox/sbx.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/ops.h"
#include "server/ratelimit.h"
#include "server/api/api.h"
#include "server/secrets.h"
#include "server/slack/slack.h"
#include "server/static.h"
#include "server/vault.h"
#include "server/ws/hub.h"
#include "server/ws/ws_guard.h"
#include "server/ws/ws_upgrade.h"
#include "storage/registry.h"
#include "storage/store.h"
#include "workspace/gitjob.h"
#include "workspace/ghapp.h"
#include "workspace/repos.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Who hears of each committed event: the WebSocket hub always, the Slack integration once it
 * exists (it starts after the store, whose runner may already commit events; hence atomic). */
struct event_fanout {
    struct hub *hub;
    struct slack *_Atomic slack;
};

/* struct app and what only the composition root touches. */
struct app_root {
    struct app app; /* first: app_* convert back with a cast */
    struct config *cfg;
    struct event_fanout fan;
    rlim_t nofile; /* the fd limit after raise_nofile() */
    int stopped;
};

static struct app_root *root_of(struct app *app)
{
    return (struct app_root *)(void *)app;
}

/* ---- observers handed to the parts ---- */

/* store_config.on_event: called under the session's lock, so each target only queues. */
static void fanout_event(void *ctx, const char *session_id, int64_t seq, const char *json,
                         size_t len)
{
    struct event_fanout *f = ctx;
    hub_on_event(f->hub, session_id, seq, json, len);
    struct slack *sl = atomic_load_explicit(&f->slack, memory_order_acquire);
    if (sl) {
        slack_on_event(sl, session_id, seq, json, len);
    }
}

/* egress_config.on_deny (an egress connection thread): a refused request becomes a
 * sandbox.egress_denied event of the session (a short group commit). */
static void egress_denied(void *ctx, const char *name, const char *host, int port,
                          const char *reason)
{
    struct app *app = ctx;
    struct sess *s = NULL;
    if (!app->store || store_session_get(app->store, name, &s) != 0) {
        /* not a session's (an image build's): that build reads its refusals itself */
        return;
    }
    json_t *d = json_pack("{s:s, s:i, s:s}", "host", host, "port", port, "reason", reason);
    char *js = json_dumps(d, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(d);
    int rc = sess_append(s, "sandbox.egress_denied", NULL, js, NULL);
    if (rc) {
        LOG_WARN("agents: session %s: cannot record an egress refusal: %s", name, err_str(rc));
    }
    free(js);
    sess_put(s);
}

/* The agents' way to open a session's egress listener on the proxy. */
static int egress_hook(void *ctx, const char *name, const char *const *allow, const char *unix_path,
                       int *port_out)
{
    return egress_open(ctx, name, allow, unix_path, port_out);
}

static void egress_close_hook(void *ctx, const char *name)
{
    egress_close(ctx, name);
}

/* The egress.hosts setting (JSON text, checked by config_load) as the proxy's host map: the
 * entries point into *root, which the caller decrefs after egress_start. */
static struct egress_host *host_map(const char *text, json_t **root, size_t *n)
{
    const char *k;
    json_t *v;
    *n = 0;
    *root = *text ? json_loads(text, 0, NULL) : NULL;
    struct egress_host *h = xcalloc(json_object_size(*root) + 1, sizeof(*h));
    json_object_foreach(*root, k, v)
    {
        h[*n].name = k;
        h[(*n)++].addr = json_string_value(v);
    }
    return h;
}

/* sbx_config.own_workspace: the ownership walk of the git helper (by descriptors, never through
 * a symlink, confined to the tree), so that the server itself never chowns workspace paths. */
static void own_workspace(void *arg, const char *dir, int uid, int gid)
{
    (void)arg;
    char *bin = gitjob_default_bin();
    struct gitjob_cfg gc = {.bin = bin, .uid = uid, .gid = gid};
    int64_t t0 = clock_mono_us();
    int rc = gitjob_chown(&gc, dir);
    if (rc) {
        LOG_WARN("sandbox: cannot give %s to uid %d: %s", dir, uid, err_str(rc));
    } else {
        LOG_INFO("sandbox: %s given to uid %d in %lld us", dir, uid,
                 (long long)(clock_mono_us() - t0));
    }
    free(bin);
}

/* repos_config.agent_known: a repository's default agent must be a configured agent (or the
 * server default). */
static int agent_known(void *ctx, const char *name)
{
    struct app *app = ctx;
    return agents_find(app->agents, name) != NULL ||
           (app->cfg->agent && strcmp(app->cfg->agent, name) == 0);
}

/* http_config.abort_deferred (main thread, in http_stop): answer the synchronous execs still
 * waiting, so no suspended request is freed by the daemon's stop. */
static void abort_deferred(void *ctx)
{
    struct app *app = ctx;
    rexec_abort_waiters(app->exec);
}

/* ---- process set-up ---- */

/* The system's ceiling for one process's descriptors (fs.nr_open), capped at 256 Ki (lws and
 * MHD size tables from the limit: 256 Ki keeps those small and serves ~60,000 clients). */
static rlim_t nr_open(void)
{
    rlim_t n = 262144;
    FILE *f = fopen("/proc/sys/fs/nr_open", "re");
    unsigned long long v = 0;
    if (f && fscanf(f, "%llu", &v) == 1 && v > 0 && v < n) {
        n = (rlim_t)v;
    }
    if (f) {
        fclose(f);
    }
    return n;
}

/* Raise the fd limit: as root (CAP_SYS_RESOURCE) the hard limit too, up to fs.nr_open, since
 * each WebSocket client holds up to four descriptors (its socket, the guard's dup and
 * socketpair) and a host's default hard limit (often 20,000 or less) would refuse clients long
 * before memory runs out; otherwise the soft limit up to the hard one. Returns the resulting
 * soft limit. */
static rlim_t raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return 1024;
    }
    rlim_t ceiling = nr_open();
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < ceiling) {
        struct rlimit up = {ceiling, ceiling};
        if (setrlimit(RLIMIT_NOFILE, &up) == 0) {
            return ceiling;
        }
        LOG_WARN("main: the hard fd limit %llu cannot be raised (%s): with ws.require_mask on "
                 "that serves about %llu WebSocket clients; raise it (LimitNOFILE=) or grant "
                 "CAP_SYS_RESOURCE",
                 (unsigned long long)rl.rlim_max, strerror(errno),
                 (unsigned long long)rl.rlim_max / 4);
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max == RLIM_INFINITY ? 1048576 : rl.rlim_max;
        struct rlimit nr = {want, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &nr) == 0) {
            rl.rlim_cur = want;
        }
    }
    return rl.rlim_cur == RLIM_INFINITY ? 1048576 : rl.rlim_cur;
}

/* Connections MHD may hold: the fd limit minus ~3 fds per open session file and a reserve
 * for the registry, logs, sandboxes' pipes and WebSocket sockets being handed over. */
static unsigned connection_limit(rlim_t nofile, const struct config *cfg)
{
    int64_t reserve = 3 * cfg->max_open_sessions + 256;
    int64_t lim = (int64_t)nofile - reserve;
    if (lim > (int64_t)nofile / 2 + 1) {
        lim = (int64_t)nofile / 2 + 1; /* leave half for WebSocket clients and sandboxes */
    }
    if (lim < 64) {
        lim = 64;
    }
    return (unsigned)lim;
}

static int write_port_file(const char *path, int port)
{
    char *tmp = xasprintf("%s.tmp", path);
    FILE *f = fopen(tmp, "we");
    int rc = ERR_IO;
    if (f) {
        int ok = fprintf(f, "%d\n", port) > 0;
        ok = (fclose(f) == 0) && ok;
        if (ok && rename(tmp, path) == 0) {
            rc = 0;
        }
    }
    if (rc) {
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

/* The data dir holds the registry (token hashes), the session files and the master key: an
 * existing one made world-readable by hand or by an image (mkdir /data is 0755) is tightened,
 * and said so, rather than trusted. */
static int make_data_dir(const char *dir)
{
    unsigned was = 0;
    if (util_mkdir_p(dir, 0700) != 0) {
        LOG_ERROR("main: cannot create data_dir %s", dir);
        return ERR_IO;
    }
    if (util_dir_private(dir, &was) != 0) {
        LOG_WARN("main: cannot make data_dir %s private (mode %04o): %s", dir, was,
                 strerror(errno));
    } else if (was & 07067) {
        LOG_WARN("main: data_dir %s was mode %04o, now %04o (private to this user)", dir, was,
                 was & 0710);
    }
    return 0;
}

/* agents/bundled on the host: the one the sandbox backend binds (next to the binary). */
static char *agents_dir_host(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) {
        return xstrdup("agents/bundled");
    }
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) {
        *slash = '\0';
    }
    /* build/sessiond, then build/asan/sessiond */
    static const char *const up[] = {"%s/../agents/bundled", "%s/../../agents/bundled"};
    for (size_t i = 0; i < sizeof(up) / sizeof(up[0]); i++) {
        char *d = xasprintf(up[i], exe);
        char real[PATH_MAX];
        int found = realpath(d, real) != NULL;
        free(d);
        if (found) {
            return xstrdup(real);
        }
    }
    return xstrdup("agents/bundled");
}

/* Add (or update) every repository of the config's repos.file: [{name, url, ...}] or
 * {"repos":[…]}. A bad entry stops the start with a clear message. */
static int load_repos_file(struct repos *rp, const char *path)
{
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    json_t *list = json_is_object(doc) ? json_object_get(doc, "repos") : doc;
    int rc = 0;
    if (!json_is_array(list)) {
        LOG_ERROR("main: %s must hold a JSON array of repositories (%s)", path,
                  doc ? "not an array" : jerr.text);
        json_decref(doc);
        return ERR_INVALID;
    }
    size_t i;
    json_t *spec;
    json_array_foreach(list, i, spec)
    {
        char msg[200] = "";
        json_t *out = NULL;
        rc = repos_create(rp, spec, NULL, msg, sizeof(msg));
        if (rc == ERR_CONFLICT) {
            json_t *patch = json_deep_copy(spec);
            const char *name = json_string_value(json_object_get(spec, "name"));
            json_object_del(patch, "name");
            rc = repos_update(rp, name, patch, &out, msg, sizeof(msg));
            json_decref(patch);
            json_decref(out);
        }
        if (rc != 0) {
            LOG_ERROR("main: %s: repository #%zu: %s", path, i + 1, msg[0] ? msg : err_str(rc));
            break;
        }
    }
    if (rc == 0) {
        LOG_INFO("main: %zu repositories from %s", json_array_size(list), path);
    }
    json_decref(doc);
    return rc;
}

/* ---- start steps, in dependency order ---- */

static int start_store(struct app_root *ar)
{
    const struct config *cfg = ar->cfg;
    struct store_config scfg = {
        .data_dir = cfg->data_dir,
        .durability_full = strcmp(cfg->durability, "full") == 0,
        .max_open = (int)cfg->max_open_sessions,
        .cache_kib = (int)cfg->session_cache_kib,
        .no_spool = !cfg->park_comments,
        .on_event = fanout_event, /* the WebSocket hub and Slack hear committed events */
        .on_event_ctx = &ar->fan,
    };
    int rc = store_open(&scfg, &ar->app.store);
    if (rc) {
        if (rc != ERR_CORRUPT) { /* the store said which file and what to do, in one line */
            LOG_ERROR("main: cannot open the store in %s: %s", cfg->data_dir, err_str(rc));
        }
        return rc;
    }
    ar->app.reg = store_registry(ar->app.store);
    auth_new(ar->app.reg, &ar->app.auth);
    return auth_bootstrap_admin(ar->app.auth, cfg);
}

/* The named agents (cfg->agents) and the egress proxy they reach their model through. */
static int start_agents(struct app *app)
{
    char msg[512] = "";
    char *dir = agents_dir_host();
    int rc = agents_load(app->cfg->agents, dir, &app->agents, msg, sizeof(msg));
    free(dir);
    if (rc) {
        LOG_ERROR("main: %s", msg);
        return rc;
    }
    json_t *hosts_json = NULL;
    struct egress_config ecfg = {.on_deny = egress_denied, .ctx = app};
    struct egress_host *hosts = host_map(app->cfg->egress_hosts, &hosts_json, &ecfg.nhosts);
    ecfg.hosts = hosts;
    rc = egress_start(&ecfg, &app->egress);
    free(hosts);
    json_decref(hosts_json);
    if (rc) {
        LOG_ERROR("main: cannot start the egress proxy: %s", err_str(rc));
        return rc;
    }
    agents_set_egress(app->agents, egress_hook, egress_close_hook, app->egress);
    return 0;
}

/* The output pump and the sandbox backend (refuses with one log line if it cannot run). */
static int start_sandbox(struct app *app)
{
    const struct config *cfg = app->cfg;
    int rc = outpump_start(&app->pump);
    if (rc) {
        return rc;
    }
    struct sbx_config sc = {
        .backend = cfg->sandbox,
        .data_dir = cfg->data_dir,
        .uid = (int)cfg->sandbox_uid,
        .uid_lo = (int)cfg->sandbox_uid_lo,
        .uid_hi = (int)cfg->sandbox_uid_hi,
        .own_workspace = own_workspace,
        .memory_mib = (int)cfg->sandbox_memory_mib,
        .disk_mib = cfg->sandbox_disk_mib,
        .pids = (int)cfg->sandbox_pids,
        .cpus = (int)cfg->sandbox_cpus,
        .exec_timeout_s = (int)cfg->exec_timeout,
        .idle_stop_s = (int)cfg->sandbox_idle_stop,
        .blocked_commands = (const char *const *)cfg->blocked_commands.v,
        .n_blocked_commands = cfg->blocked_commands.n,
    };
    /* copies sc, with its defaults; on failure the backend logged the one line saying why */
    return sbx_backend_open(&sc, app->pump, &app->sbx);
}

/* The master key: from the environment variable the config names, else from the key file
 * (created when missing). A key that is set but malformed stops the start. */
static int open_secrets(struct app *app)
{
    const struct config *cfg = app->cfg;
    int rc = ERR_NOT_FOUND;
    if (cfg->secrets_key_env && *cfg->secrets_key_env) {
        rc = secrets_new_from_env(cfg->secrets_key_env, &app->secrets);
        if (rc == ERR_INVALID) {
            LOG_ERROR("main: %s does not hold a 32-byte key (64 hex chars or base64)",
                      cfg->secrets_key_env);
            return rc;
        }
    }
    if (rc == ERR_NOT_FOUND) {
        char *path = *cfg->secrets_key_file ? xstrdup(cfg->secrets_key_file)
                                            : xasprintf("%s/secrets.key", cfg->data_dir);
        rc = secrets_new_from_file(path, 1, &app->secrets);
        if (rc != 0) {
            LOG_ERROR("main: cannot load the master key %s: %s", path, err_str(rc));
        }
        free(path);
    }
    return rc;
}

/* The admin-managed secrets, over the master key just loaded. The configured agents' key
 * variables are reserved too: a secret of that name would replace the model key the server
 * hands the agent. Without a vault, sessions get no secrets and the endpoints answer 503. */
static void open_vault(struct app *app)
{
    json_t *agents = app->agents ? agents_list_json(app->agents, NULL) : NULL;
    json_t *list = json_object_get(agents, "agents");
    size_t n = json_array_size(list), k = 0;
    const char **extra = xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        const char *env =
            json_string_value(json_object_get(json_array_get(list, i), "api_key_env"));
        if (env && *env) {
            extra[k++] = env;
        }
    }
    int rc = vault_new(app->reg, app->secrets, extra, &app->vault);
    if (rc) {
        LOG_WARN("main: admin-managed secrets are unavailable: %s", err_str(rc));
    }
    free(extra);
    json_decref(agents);
}

/* The GitHub App (app->ghapp) when github.app_id or github.app_key_file is set: both are then
 * required and the key must load, or the server does not start. Also says at start that the
 * static token still goes by its deprecated name. */
static int open_ghapp(struct app *app)
{
    const struct config *cfg = app->cfg;
    char msg[300] = "";
    if (*cfg->github_app_token) {
        LOG_WARN("config: github.app_token is deprecated: name the static token github.token "
                 "(SESSIOND_GITHUB_TOKEN, --github-token)%s",
                 strcmp(cfg->github_app_token, cfg->github_token) != 0
                     ? "; github.token is set too and wins"
                     : "");
    }
    if (cfg->github_app_id <= 0 && !*cfg->github_app_key_file) {
        return 0;
    }
    struct ghapp_config gc = {
        .app_id = cfg->github_app_id,
        .key_file = cfg->github_app_key_file,
        .installation_id = cfg->github_installation_id,
        .api_base = cfg->github_api_base,
        .ca_file = *cfg->git_ca_file ? cfg->git_ca_file : NULL,
    };
    int rc = ghapp_open(&gc, &app->ghapp, msg, sizeof(msg));
    if (rc != 0) {
        LOG_ERROR("main: cannot use the GitHub App: %s", msg);
        return rc;
    }
    LOG_INFO("main: GitHub App %lld, installation %s", (long long)cfg->github_app_id,
             cfg->github_installation_id > 0 ? "configured" : "looked up per repository");
    return 0;
}

/* The repository layer (images, warm pools, snapshots) on the sandbox backend, and the
 * repositories of cfg->repos_file. */
static int start_repos(struct app *app)
{
    const struct config *cfg = app->cfg;
    struct repos_config rcfg = {
        .data_dir = cfg->data_dir,
        .store = app->store,
        .sbx = app->sbx,
        .snapshot_keep = (int)cfg->repos_snapshot_keep,
        .snapshot_quota = cfg->repos_snapshot_quota_mib << 20,
        .image_keep = (int)cfg->repos_image_keep,
        .pool_max_age_s = (int)cfg->repos_pool_max_age,
        .sync_wait_ms = (int)cfg->repos_sync_wait_ms,
        .tick_ms = (int)cfg->repos_tick_ms,
        .ca_file = *cfg->git_ca_file ? cfg->git_ca_file : NULL,
        .ghapp = app->ghapp,
        .agent_known = agent_known,
        .agent_ctx = app,
        .egress = app->egress,
        .egress_default = (const char *const *)cfg->egress_default.v,
        .n_egress_default = cfg->egress_default.n,
        .secrets = ops_secrets_for, /* setup steps' env and log, the scan before a push */
        .secrets_ctx = app,
        .github_api_base = cfg->github_api_base,
        .github_token = cfg->github_token,
        .public_url = cfg->public_url,
        .poll_interval_s = (int)cfg->github_poll_interval,
    };
    int rc = repos_open(&rcfg, &app->repos);
    if (rc != 0) {
        LOG_ERROR("main: cannot start the repository layer: %s", err_str(rc));
        return rc;
    }
    return *cfg->repos_file ? load_repos_file(app->repos, cfg->repos_file) : 0;
}

/* The prompt runner on the sandbox backend and the repository layer, and the exec pipeline
 * on the runner. */
static int start_runner(struct app *app)
{
    const struct config *cfg = app->cfg;
    struct runner_config rcfg = {
        .agent = cfg->agent,
        .prompt_timeout_s = (int)cfg->prompt_timeout,
        .cancel_grace_ms = (int)cfg->cancel_grace_ms,
        .shutdown_grace_s = (int)cfg->shutdown_grace,
        .idle_stop_s = (int)cfg->sandbox_idle_stop,
        .agents = app->agents,
        .prompt_output_cap = cfg->max_prompt_output_bytes,
        .session_output_cap = cfg->max_session_output_bytes,
        .max_sandboxes = (int)cfg->max_sandboxes,
        .max_sandboxes_per_user = (int)cfg->max_sandboxes_per_user,
        .max_execs_per_session = (int)cfg->max_execs_per_session,
        .repos = app->repos,
        .egress = app->egress,
        .secrets = ops_secrets_for, /* the vault: env and redaction of a session's secrets */
        .secrets_ctx = app,
    };
    int rc = runner_start(app->store, app->sbx, app->pump, &rcfg, &app->runner);
    if (rc) {
        return rc;
    }
    /* A synchronous exec holds no HTTP thread while it waits but buffers its output: at most
     * half the HTTP threads' worth of them, as the API has always promised. */
    struct rexec_config xc = {
        .output_cap = app->sbx->cfg.exec_output_cap,
        .max_sync = (int)cfg->threads / 2 > 0 ? (int)cfg->threads / 2 : 1,
        .blocked_commands = app->sbx->cfg.blocked_commands,
        .n_blocked_commands = app->sbx->cfg.n_blocked_commands,
        .egress = app->egress,
    };
    return rexec_new(app->runner, &xc, &app->exec);
}

/* The hub's threads (it was created before the store, which feeds it) and the guard between
 * WebSocket clients and lws. */
static int start_ws(struct app *app, struct hub *hub)
{
    app->hub = hub;
    if (hub_start(hub, app) != 0) {
        return ERR_INTERNAL;
    }
    if (app->cfg->ws_require_mask) {
        return wsg_new(&app->wsg);
    }
    return 0;
}

/* Slack answers 503 until a signing secret is set; once it exists it hears committed events. */
static void start_slack(struct app_root *ar)
{
    struct slack_config slc;
    slack_config_from(&slc, ar->cfg);
    slack_new(&slc, &ar->app, &ar->app.slack);
    atomic_store_explicit(&ar->fan.slack, ar->app.slack, memory_order_release);
    json_decref(slc.repos);
}

/* The listening daemon, last: every part a request reaches is running. */
static int start_http(struct app_root *ar)
{
    const struct config *cfg = ar->cfg;
    struct app *app = &ar->app;
    struct http_config hc = {
        .routes = http_routes,
        .conn_limit = connection_limit(ar->nofile, cfg),
        .abort_deferred = abort_deferred,
        .ctx = app,
        .upgrade_begin = ws_upgrade_begin,
        .upgrade_complete = ws_upgrade_complete,
    };
    int rc = http_start(app, &hc, &app->http);
    if (rc) {
        return rc;
    }
    int port = http_port(app->http);
    if (*cfg->port_file && write_port_file(cfg->port_file, port) != 0) {
        LOG_ERROR("main: cannot write the port file %s", cfg->port_file);
        return ERR_IO;
    }
    slack_set_local_address(app->slack, cfg->listen, port);
    LOG_INFO("main: listening on %s (port %d), data in %s", cfg->listen, port, cfg->data_dir);
    return 0;
}

/* ---- the life cycle ---- */

int app_create(struct config *cfg, struct app **out)
{
    struct app_root *ar = xcalloc(1, sizeof(*ar));
    ar->cfg = cfg;
    ar->app.cfg = cfg;
    ar->app.metrics = metrics_new();
    rl_new(cfg->max_sessions_per_minute, &ar->app.session_rate); /* the config checked it */
    *out = &ar->app;
    return 0;
}

int app_start(struct app *app)
{
    struct app_root *ar = root_of(app);
    const struct config *cfg = ar->cfg;
    struct hub *hub = NULL;
    ar->nofile = raise_nofile();
    char *dump = config_dump(cfg);
    LOG_INFO("sessiond %s starting; fd limit %llu; config %s", SESSIOND_VERSION,
             (unsigned long long)ar->nofile, dump);
    free(dump);

    int rc = make_data_dir(cfg->data_dir);
    if (rc) {
        return rc;
    }
    struct hub_config hcfg = {.max_frame = (size_t)cfg->ws_max_frame,
                              .send_queue_max = (size_t)cfg->ws_send_queue_max,
                              .ping_secs = (int)cfg->ws_ping_interval};
    hub_new(&hcfg, &hub);
    ar->fan.hub = hub; /* app->hub once started; app_stop frees it either way */
    rc = start_store(ar);
    if (rc == 0) {
        rc = start_agents(app);
    }
    if (rc == 0) {
        rc = start_sandbox(app);
    }
    if (rc == 0) {
        rc = open_secrets(app); /* a missing key only disables stored user tokens */
    }
    if (rc == 0) {
        open_vault(app);
    }
    if (rc == 0) {
        rc = open_ghapp(app); /* the repository layer clones and fetches with it */
    }
    if (rc == 0) {
        rc = start_repos(app); /* image setup commands run in app->sbx */
    }
    if (rc == 0) {
        rc = start_runner(app); /* on the repository layer */
    }
    if (rc == 0) {
        rc = start_ws(app, hub);
    }
    if (rc == 0) {
        app->csp = static_csp_new(cfg); /* the web UI's (frame-ancestors: extension origins) */
        start_slack(ar);
        rc = start_http(ar);
    }
    return rc;
}

void app_stop(struct app *app)
{
    if (!app || root_of(app)->stopped) {
        return;
    }
    struct app_root *ar = root_of(app);
    ar->stopped = 1;
    app->shutting_down = 1;
    http_stop(app->http, (int)ar->cfg->shutdown_grace); /* finish requests in flight */
    app->http = NULL;
    repos_shutdown(app->repos); /* its threads and warm pool, before the sandboxes they use */
    runner_stop(app->runner);   /* grace for running prompts, then cancel; sandboxes down */
    app->runner = NULL;
    rexec_free(app->exec); /* after the runner: every exec has ended */
    app->exec = NULL;
    sbx_backend_free(app->sbx);
    app->sbx = NULL;
    outpump_stop(app->pump);
    app->pump = NULL;
    repos_close(app->repos); /* after the runner, which holds it */
    app->repos = NULL;
    ghapp_free(app->ghapp); /* after the layer, whose clones and fetches use it */
    app->ghapp = NULL;
    vault_free(app->vault); /* after the repository layer and the runner, its users */
    app->vault = NULL;
    secrets_free(app->secrets); /* after every part that may seal or open with it */
    app->secrets = NULL;
    egress_stop(app->egress); /* after the runner */
    app->egress = NULL;
    agents_free(app->agents);
    app->agents = NULL;
    slack_stop(app->slack); /* its threads call into the store and the runner */
    hub_free(ar->fan.hub);  /* after everything that writes events, before the store */
    app->hub = NULL;
    wsg_free(app->wsg); /* after the hub: its last close frames go through the guard */
    app->wsg = NULL;
    auth_free(app->auth); /* before the registry it reads */
    app->auth = NULL;
    store_close(app->store);
    app->store = NULL;
    app->reg = NULL;
    atomic_store_explicit(&ar->fan.slack, NULL, memory_order_release);
    slack_free(app->slack); /* after the store: no event can reach it any more */
    app->slack = NULL;
    LOG_INFO("main: stopped");
}

void app_destroy(struct app *app)
{
    if (!app) {
        return;
    }
    struct app_root *ar = root_of(app);
    app_stop(app);
    metrics_free(app->metrics);
    rl_free(app->session_rate);
    free(app->csp);
    config_free(ar->cfg);
    free(ar);
}
