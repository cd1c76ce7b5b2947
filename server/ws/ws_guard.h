/*
 * ws_guard.h - enforces RFC 6455 §5.1 in front of libwebsockets: a client must mask every
 * frame it sends, and a server must close the connection (status 1002) on one that is not.
 *
 * Why a relay: libwebsockets 4.1 (Debian's) takes an unmasked client frame as one masked
 * with a zero key and its API shows no trace of the difference, so nothing after lws can tell.
 * The guard sits between the client's socket and lws instead: lws adopts one end of a
 * socketpair, and one guard thread copies bytes both ways, reading the header of every frame
 * the client sends. At an unmasked frame the frame goes no further: the client gets a close
 * frame 1002 (when the server's side of the stream is at a frame boundary; else the TCP
 * connection is just closed), lws gets an end of stream, and the connection is closed.
 *
 * Threads: wsg_wrap may be called from any thread; the guard's own thread does all the I/O.
 * It never calls libwebsockets.
 */
#ifndef SESSIOND_WS_GUARD_H
#define SESSIOND_WS_GUARD_H

struct wsg;

/** Start a guard and its thread. *out owned by the caller: wsg_free(). */
int wsg_new(struct wsg **out);
/** Stop the thread and close every connection still relayed. NULL is a no-op. Call it after
 * the hub is stopped (the hub's last close frames go through the guard). */
void wsg_free(struct wsg *g);
/** Put the guard in front of client_fd (a connected socket; the guard takes it over, also on
 * failure). *lws_fd gets the socket lws must adopt instead (the caller's). 0 or ERR_IO. */
int wsg_wrap(struct wsg *g, int client_fd, int *lws_fd);

#endif
