/*
 * outpump.h - the one output reader thread for all sandboxes.
 *
 * One thread runs epoll over the control sockets of every sandbox (sources). It reads bytes
 * and hands them to the source's on_data callback; the sandbox client demultiplexes them into
 * per-command sinks, which merge consecutive output into chunks of at most OP_MERGE_MAX bytes
 * or OP_MERGE_MS milliseconds, cut on a UTF-8 boundary and sanitized, and pass each chunk to
 * a flush callback. The flush callback must not block (it queues work for a commit worker,
 * commitq.h); it may ask to pause the source, which stops reading that one sandbox (its
 * sandbox-init then stops reading its commands' pipes) until outpump_resume().
 *
 * Threads: outpump_start/stop from the owner; outpump_add, outpump_resume, outpump_call from
 * any thread; everything named op_sink_* and outpump_pause only on the pump thread (inside
 * callbacks).
 */
#ifndef SESSIOND_OUTPUMP_H
#define SESSIOND_OUTPUMP_H

#include <stddef.h>
#include <stdint.h>

#define OP_MERGE_MAX 16384 /* bytes per merged chunk */
#define OP_MERGE_MS  10    /* longest a byte waits in a sink */

struct outpump;
struct op_src;
struct op_sink;

struct op_src_ops {
    /** Bytes read from the fd. Pump thread. */
    void (*on_data)(void *ctx, const unsigned char *p, size_t n);
    /** EOF, error or outpump_stop(): the last call for this source. Pump thread (or the
     * stopping thread once the pump has ended). The fd is not closed by the pump. */
    void (*on_close)(void *ctx);
};

/** Start the pump thread. *out: outpump_stop(). */
int outpump_start(struct outpump **out);
/** Stop the thread, call on_close of every remaining source, free. NULL is a no-op. */
void outpump_stop(struct outpump *op);

/** Watch fd (made non-blocking). *out is owned by the caller and freed with
 * outpump_src_free() once on_close has been called. *out is set before the pump can call
 * on_data (callbacks may use it); NULL on failure. Any thread. */
int outpump_add(struct outpump *op, int fd, const struct op_src_ops *ops, void *ctx,
                struct op_src **out);
/** Ask the pump to stop watching the source; on_close follows on the pump thread. */
void outpump_close(struct op_src *src);
void outpump_src_free(struct op_src *src);
/** Stop reading a source (pump thread) / read it again (any thread). Not counted: one resume
 * undoes any number of pauses (a consumer still behind pauses again on its next chunk). */
void outpump_pause(struct op_src *src);
void outpump_resume(struct op_src *src);

/** Run fn(arg) on the pump thread soon. Any thread. */
void outpump_call(struct outpump *op, void (*fn)(void *arg), void *arg);

/** Called with a merged chunk (valid UTF-8, at most OP_MERGE_MAX bytes before sanitizing).
 * Return 1 to pause the sink's source. Pump thread. */
typedef int (*op_flush_fn)(void *ctx, int stream, const char *data, size_t n);

/** A merger for one command's output, bound to a source for pausing. Pump thread. */
struct op_sink *op_sink_new(struct outpump *op, struct op_src *src, op_flush_fn fn, void *ctx);
/** Append output of a stream; flushes on a stream change, at OP_MERGE_MAX, or by the timer. */
void op_sink_write(struct op_sink *k, int stream, const char *data, size_t n);
/** Flush what is pending (incomplete UTF-8 tails included, sanitized). */
void op_sink_flush(struct op_sink *k);
/** Flush and free. NULL is a no-op. */
void op_sink_free(struct op_sink *k);

/** Counters (any thread; approximate). */
struct outpump_stats {
    uint64_t bytes_read;
    uint64_t chunks;
    uint64_t pauses;
};
void outpump_get_stats(struct outpump *op, struct outpump_stats *out);

#endif
