/*
 * commitq.h - hands sandbox output (and the prompt/exec state changes that follow it) to the
 * sessions' group commit without ever blocking the producer.
 *
 * The output pump thread builds a job (a list of events, optionally a custom operation run in
 * the same transaction) and submits it: that takes a mutex for a moment and never waits on
 * SQLite. Worker threads take every pending job of one session at once and commit them in
 * one sess_write() (one transaction), in submission order; jobs of one session are never
 * committed concurrently or out of order, jobs of different sessions are independent. The
 * per-session backlog in bytes lets the producer pause a session that falls behind.
 *
 * Threads: all functions are thread safe. done callbacks run on a worker thread after the
 * commit (outside the session lock) and may submit more jobs.
 */
#ifndef SESSIOND_COMMITQ_H
#define SESSIOND_COMMITQ_H

#include <stddef.h>

struct commitq;
struct cq_job;
struct sess_tx;
struct store;
struct author;

/** Start nthreads workers (0 = 2) committing into st. *out: commitq_stop(). */
int commitq_start(struct store *st, int nthreads, struct commitq **out);
/** Commit everything pending, stop the workers, free. NULL is a no-op. */
void commitq_stop(struct commitq *q);

/** A new job for session sid (copied). Owned by the caller until submitted. */
struct cq_job *cq_job_new(const char *sid);
/** Append an event; data_json (a serialized object) is taken over (freed by the queue). a may
 * be NULL (system); its strings are copied. */
void cq_job_event(struct cq_job *j, const char *type, const struct author *a, char *data_json);
/** Run fn(tx, arg) in the transaction after this job's events. */
void cq_job_op(struct cq_job *j, int (*fn)(struct sess_tx *tx, void *arg), void *arg);
/** Call done(arg, rc) once the job is committed (rc 0) or failed. */
void cq_job_done(struct cq_job *j, void (*done)(void *arg, int rc), void *arg);
/** Number of events in the job. */
int cq_job_count(const struct cq_job *j);
/** Queue the job (takes it over). Never blocks. A job with nothing in it is just freed
 * (its done callback still runs, with rc 0, on a worker). */
void commitq_submit(struct commitq *q, struct cq_job *j);
/** Bytes submitted for sid and not yet committed. */
size_t commitq_backlog(struct commitq *q, const char *sid);
/** Wait until everything submitted so far for sid is committed (not from a worker). */
void commitq_flush(struct commitq *q, const char *sid);

#endif
