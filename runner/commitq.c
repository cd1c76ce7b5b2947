/*
 * commitq.c - per-session FIFO of event jobs committed by a few worker threads (commitq.h).
 *
 * Thread context: producers (the output pump, the runner) call commitq_submit; workers run
 * worker(). q->lock guards the session table, every session's job list, backlog and busy
 * flag, and the ready list. A session is on the ready list iff it has jobs and is not busy;
 * a busy session is being committed by exactly one worker, so its jobs stay in order.
 */
#include "runner/commitq.h"

#include "common/err.h"
#include "common/log.h"
#include "common/xmem.h"
#include "storage/store.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS   256
#define BATCH_MAX 256 /* jobs committed in one transaction */

struct cq_ev {
    char *type;
    char *data;
    char *author_id, *author_name;
    struct cq_ev *next;
};

struct cq_job {
    char sid[72];
    size_t bytes;
    int nev;
    struct cq_ev *evs, *evs_tail;
    int (*fn)(struct sess_tx *tx, void *arg);
    void *fn_arg;
    void (*done)(void *arg, int rc);
    void *done_arg;
    int rc; /* this job's own outcome when its batch was retried job by job */
    struct cq_job *next;
};

struct cq_sess {
    char sid[72];
    struct cq_job *head, *tail;
    size_t backlog;
    int busy;
    int ready;
    struct cq_sess *hnext; /* hash chain */
    struct cq_sess *rnext; /* ready list */
};

struct commitq {
    struct store *st;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* work available */
    pthread_cond_t idle; /* a batch finished (commitq_flush) */
    struct cq_sess *tab[BUCKETS];
    struct cq_sess *rhead, *rtail;
    int stopping;
    int nthreads;
    pthread_t *th;
};

static unsigned hash(const char *s)
{
    unsigned h = 5381;
    while (*s) {
        h = h * 33 + (unsigned char)*s++;
    }
    return h % BUCKETS;
}

static struct cq_sess *sess_find(struct commitq *q, const char *sid, int create)
{
    unsigned h = hash(sid);
    for (struct cq_sess *c = q->tab[h]; c; c = c->hnext) {
        if (!strcmp(c->sid, sid)) {
            return c;
        }
    }
    if (!create) {
        return NULL;
    }
    struct cq_sess *c = xcalloc(1, sizeof *c);
    snprintf(c->sid, sizeof c->sid, "%s", sid);
    c->hnext = q->tab[h];
    q->tab[h] = c;
    return c;
}

static void sess_drop_if_empty(struct commitq *q, struct cq_sess *c)
{
    if (c->head || c->busy || c->ready) {
        return;
    }
    unsigned h = hash(c->sid);
    struct cq_sess **pp = &q->tab[h];
    while (*pp != c) {
        pp = &(*pp)->hnext;
    }
    *pp = c->hnext;
    free(c);
}

static void make_ready(struct commitq *q, struct cq_sess *c)
{
    if (c->ready || c->busy || !c->head) {
        return;
    }
    c->ready = 1;
    c->rnext = NULL;
    if (q->rtail) {
        q->rtail->rnext = c;
    } else {
        q->rhead = c;
    }
    q->rtail = c;
    pthread_cond_signal(&q->cond);
}

struct cq_job *cq_job_new(const char *sid)
{
    struct cq_job *j = xcalloc(1, sizeof *j);
    snprintf(j->sid, sizeof j->sid, "%s", sid);
    return j;
}

void cq_job_event(struct cq_job *j, const char *type, const struct author *a, char *data_json)
{
    struct cq_ev *e = xcalloc(1, sizeof *e);
    e->type = xstrdup(type);
    e->data = data_json;
    if (a && a->id) {
        e->author_id = xstrdup(a->id);
        e->author_name = a->name ? xstrdup(a->name) : NULL;
    }
    if (j->evs_tail) {
        j->evs_tail->next = e;
    } else {
        j->evs = e;
    }
    j->evs_tail = e;
    j->nev++;
    j->bytes += (data_json ? strlen(data_json) : 2) + 64;
}

void cq_job_op(struct cq_job *j, int (*fn)(struct sess_tx *tx, void *arg), void *arg)
{
    j->fn = fn;
    j->fn_arg = arg;
    j->bytes += 64;
}

void cq_job_done(struct cq_job *j, void (*done)(void *arg, int rc), void *arg)
{
    j->done = done;
    j->done_arg = arg;
}

int cq_job_count(const struct cq_job *j)
{
    return j->nev;
}

static void job_free(struct cq_job *j)
{
    struct cq_ev *e = j->evs;
    while (e) {
        struct cq_ev *n = e->next;
        free(e->type);
        free(e->data);
        free(e->author_id);
        free(e->author_name);
        free(e);
        e = n;
    }
    free(j);
}

void commitq_submit(struct commitq *q, struct cq_job *j)
{
    pthread_mutex_lock(&q->lock);
    struct cq_sess *c = sess_find(q, j->sid, 1);
    j->next = NULL;
    if (c->tail) {
        c->tail->next = j;
    } else {
        c->head = j;
    }
    c->tail = j;
    c->backlog += j->bytes;
    make_ready(q, c);
    pthread_mutex_unlock(&q->lock);
}

size_t commitq_backlog(struct commitq *q, const char *sid)
{
    pthread_mutex_lock(&q->lock);
    struct cq_sess *c = sess_find(q, sid, 0);
    size_t b = c ? c->backlog : 0;
    pthread_mutex_unlock(&q->lock);
    return b;
}

void commitq_flush(struct commitq *q, const char *sid)
{
    pthread_mutex_lock(&q->lock);
    for (;;) {
        struct cq_sess *c = sess_find(q, sid, 0);
        if (!c || (!c->head && !c->busy)) {
            break;
        }
        pthread_cond_wait(&q->idle, &q->lock);
    }
    pthread_mutex_unlock(&q->lock);
}

static int run_job(struct sess_tx *tx, struct cq_job *j)
{
    for (struct cq_ev *e = j->evs; e; e = e->next) {
        struct author a = {e->author_id, e->author_name, NULL};
        int rc = sess_tx_append(tx, e->type, e->author_id ? &a : NULL, e->data, NULL);
        if (rc) {
            return rc;
        }
    }
    return j->fn ? j->fn(tx, j->fn_arg) : 0;
}

static int run_batch(struct sess_tx *tx, void *arg)
{
    for (struct cq_job *j = arg; j; j = j->next) {
        int rc = run_job(tx, j);
        if (rc) {
            return rc;
        }
    }
    return 0;
}

static int run_one(struct sess_tx *tx, void *arg)
{
    return run_job(tx, arg);
}

static int batch_is_empty(const struct cq_job *batch)
{
    for (const struct cq_job *j = batch; j; j = j->next) {
        if (j->nev || j->fn) {
            return 0;
        }
    }
    return 1;
}

static void *worker(void *arg)
{
    struct commitq *q = arg;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (!q->rhead && !q->stopping) {
            pthread_cond_wait(&q->cond, &q->lock);
        }
        if (!q->rhead) {
            break; /* stopping and nothing left */
        }
        struct cq_sess *c = q->rhead;
        q->rhead = c->rnext;
        if (!q->rhead) {
            q->rtail = NULL;
        }
        c->ready = 0;
        c->busy = 1;
        /* Take up to BATCH_MAX jobs. */
        struct cq_job *batch = c->head, *last = c->head;
        size_t bytes = last->bytes;
        for (int n = 1; n < BATCH_MAX && last->next; n++) {
            last = last->next;
            bytes += last->bytes;
        }
        c->head = last->next;
        if (!c->head) {
            c->tail = NULL;
        }
        last->next = NULL;
        char sid[72];
        memcpy(sid, c->sid, sizeof sid);
        pthread_mutex_unlock(&q->lock);

        struct sess *s = NULL;
        /* A batch with nothing to write (done callbacks alone) does not open the session. */
        int rc = batch_is_empty(batch) ? 0 : store_session_get(q->st, sid, &s);
        if (!rc && s) {
            rc = sess_write(s, run_batch, batch);
            if (rc && batch->next) {
                /* Isolate the failing job: commit the others one by one. */
                LOG_WARN("commitq: session %s: batch failed (%s); retrying job by job", sid,
                         err_str(rc));
                for (struct cq_job *j = batch; j; j = j->next) {
                    j->rc = sess_write(s, run_one, j);
                    if (j->rc) {
                        LOG_ERROR("commitq: session %s: dropped a job of %d events: %s", sid,
                                  j->nev, err_str(j->rc));
                    }
                }
                rc = 0; /* each job reports its own outcome (j->rc) */
            } else if (rc) {
                LOG_ERROR("commitq: session %s: dropped a job of %d events: %s", sid, batch->nev,
                          err_str(rc));
            }
            sess_put(s);
        } else if (rc) {
            LOG_ERROR("commitq: session %s: cannot open (%s): dropping output", sid, err_str(rc));
        }
        /* Give the backlog back before the done callbacks (they look at it to resume). */
        pthread_mutex_lock(&q->lock);
        c->backlog -= bytes;
        pthread_mutex_unlock(&q->lock);
        while (batch) {
            struct cq_job *n = batch->next;
            if (batch->done) {
                batch->done(batch->done_arg, rc ? rc : batch->rc);
            }
            job_free(batch);
            batch = n;
        }
        pthread_mutex_lock(&q->lock);
        c->busy = 0;
        make_ready(q, c);
        sess_drop_if_empty(q, c);
        pthread_cond_broadcast(&q->idle);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

int commitq_start(struct store *st, int nthreads, struct commitq **out)
{
    struct commitq *q = xcalloc(1, sizeof *q);
    q->st = st;
    q->nthreads = nthreads > 0 ? nthreads : 2;
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    pthread_cond_init(&q->idle, NULL);
    q->th = xcalloc((size_t)q->nthreads, sizeof *q->th);
    for (int i = 0; i < q->nthreads; i++) {
        if (pthread_create(&q->th[i], NULL, worker, q) != 0) {
            q->nthreads = i;
            commitq_stop(q);
            return ERR_IO;
        }
    }
    *out = q;
    return 0;
}

void commitq_stop(struct commitq *q)
{
    if (!q) {
        return;
    }
    pthread_mutex_lock(&q->lock);
    q->stopping = 1;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    for (int i = 0; i < q->nthreads; i++) {
        pthread_join(q->th[i], NULL);
    }
    for (int h = 0; h < BUCKETS; h++) {
        struct cq_sess *c = q->tab[h];
        while (c) {
            struct cq_sess *n = c->hnext;
            free(c);
            c = n;
        }
    }
    free(q->th);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    pthread_cond_destroy(&q->idle);
    free(q);
}
