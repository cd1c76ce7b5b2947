/*
 * slack_int.h - the Slack integration's internals shared by its files (slack.c, text.c, api.c,
 * worker.c, watch.c): limits, the job/watch/event structures and struct slack (sl->lock guards the
 * shared state; slack.c explains the threads). Not for use outside server/slack/.
 */
#ifndef SESSIOND_SLACK_INT_H
#define SESSIOND_SLACK_INT_H

#include "server/slack/slack.h"

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "server/api/api.h"
#include "server/app.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/ops.h"
#include "workspace/repos.h"
#include "storage/registry.h"
#include "storage/store.h"

#include <ctype.h>
#include <errno.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_QUEUE      1000
#define MAX_WATCHES    1000
#define MAX_EVENTS     4096 /* queued events of watched sessions; beyond, a re-read */
#define MAX_PR_NOTES   256  /* queued pull request lines; beyond, dropped (logged) */
#define MAX_RESP       (4u << 20)
#define MAX_SUMMARY    2800 /* Slack section text limit is 3000 */
#define API_TRIES      4
#define SLACK_ACTOR_ID "slack:bot" /* sessions the integration starts are owned by it */
#define MAX_RETRY_WAIT 30

struct job {
    struct job *next;
    json_t *payload; /* the event_callback body; owned */
};

struct watch {
    struct watch *next;
    char *session_id;
    char *prompt_id;
    char *channel;
    char *thread_ts;
    char *repo;
    int64_t after;     /* last seq seen */
    struct buf output; /* tail of agent output, fallback summary */
    char *summary;     /* from an assistant message / agent done */
    char *pr_url;
    int64_t started_ms;
    int resync;              /* read the file after `after` first; guarded by sl->lock */
    int done, gone, catchup; /* watcher thread only */
    enum prompt_state state; /* watcher thread only: how the prompt ended */
};

/* An event of a watched session, copied by slack_on_event for the watcher. */
struct sevent {
    struct sevent *next;
    char *session_id;
    int64_t seq;
    char *json;
    size_t len;
};

struct slack {
    char *signing_secret;
    char *bot_token;
    char *api_base;
    char *public_url;
    char *classifier_url;
    char *classifier_key;
    char *classifier_model;
    json_t *repos; /* config fallback list */
    struct app *app;

    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t cond;  /* worker wake-up */
    pthread_cond_t wcond; /* watcher wake-up */
    int stopping;         /* also read without the lock (atomic) by the curl progress callback */
    struct job *head, *tail;
    int qlen;
    struct watch *watches; /* added by the worker, removed (and freed) by the watcher only */
    int nwatches;
    struct sevent *ev_head, *ev_tail; /* from slack_on_event to the watcher */
    int nev;
    struct sevent *pr_head, *pr_tail; /* pr.created / pr.merged of any session, for a line in
                                         the session's thread */
    int npr;
    char *local_url; /* http://127.0.0.1:PORT, for links when public_url is not set */
    struct slack_stats stats;

    json_t *persist;           /* {"sid/pid": {watch}}: the watches, saved in kv "slack:watches" */
    pthread_mutex_t save_lock; /* orders the kv writes of persist (taken before lock) */

    pthread_t worker, watcher;
    int threads;
};

/* slack.c */
const char *sl_obj_str(json_t *obj, const char *key);
char *sl_dup_or_null(const char *s);

/* text.c */
char *sl_normalize(const char *s);
const char *sl_state_verb(enum prompt_state state);

/* api.c */
void sl_curl_init(void);
int sl_http_do(const int *abort_flag, const char *method, const char *url, const char *bearer,
               const char *ctype, const char *body, long timeout_ms, long *status, struct buf *resp,
               long *retry_after);
int sl_post_message(struct slack *sl, const char *channel, const char *thread_ts, const char *text,
                    json_t *blocks);
void sl_user_info(struct slack *sl, const char *uid, char **name, char **email);
char *sl_channel_name(struct slack *sl, const char *channel);
char *sl_thread_text(struct slack *sl, const char *channel, const char *thread_ts,
                     const char *skip_ts);

/* worker.c */
char *sl_kv_get(struct slack *sl, const char *key);
void sl_kv_put(struct slack *sl, const char *key, const char *val);
char *sl_session_url(struct slack *sl, const char *sid);
void sl_worker_process(struct slack *sl, json_t *payload);
void *sl_worker_main(void *arg);

/* watch.c */
void sl_add_watch(struct slack *sl, const char *sid, const char *pid, int64_t after,
                  const char *channel, const char *thread_ts, const char *repo);
void sl_watch_free(struct watch *w);
void sl_sevent_free(struct sevent *e);
void *sl_watcher_main(void *arg);
void sl_load_watches(struct slack *sl);
void sl_map_session(struct slack *sl, const char *sid, const char *channel, const char *root);

#endif
