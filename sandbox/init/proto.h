/*
 * proto.h - the wire protocol between sessiond and sandbox-init (the supervisor that runs
 * inside each sandbox). Shared by sandbox/init/sandbox-init.c (libc only) and the backends.
 *
 * One stream socket (a socketpair end) carries frames both ways:
 *   u32 payload length (little endian) | u8 type | u32 command id (LE) | payload
 * Command ids are chosen by the server (0 is reserved for the sandbox itself).
 *
 * server -> init
 *   INIT_EXEC   payload: NUL-terminated "key=value" strings: arg= (repeated, argv in order),
 *               env= (repeated, "NAME=value"), cwd=, timeout_ms=, cpu_s=, data_bytes=,
 *               fsize_bytes=, nofile=, nproc=, stdin=1 (a pipe; else /dev/null).
 *   INIT_STDIN  payload: bytes for the command's stdin (queued, written as the pipe drains).
 *   INIT_CLOSE  close the command's stdin once the queued bytes are written.
 *   INIT_KILL   payload: u32 signal, u32 grace_ms. Signals the command's process group; if
 *               grace_ms > 0, SIGKILLs the group after grace_ms unless it has exited.
 *   INIT_PING   answered by INIT_PONG with the same payload.
 * init -> server
 *   INIT_READY  id 0, payload "sandbox-init 1": sent once at start.
 *   INIT_STARTED payload: u32 pid (inside the sandbox's pid namespace).
 *   INIT_STDOUT / INIT_STDERR  payload: output bytes (at most INIT_CHUNK).
 *   INIT_EXIT   payload: i32 exit code (-1 if signalled), i32 signal (0 if none), u32 flags
 *               (INIT_F_*), u32 reserved, u64 duration in microseconds, u64 max RSS in KiB.
 *               Always the last frame of a command; all its output precedes it.
 *   INIT_PONG
 */
#ifndef SESSIOND_SANDBOX_INIT_PROTO_H
#define SESSIOND_SANDBOX_INIT_PROTO_H

#include <stdint.h>

#define INIT_HDR       9u
#define INIT_MAX_FRAME (4u << 20) /* largest payload accepted either way */
#define INIT_CHUNK     65536u     /* largest output payload sent by init */
#define INIT_VERSION   "sandbox-init 1"

enum init_frame {
    INIT_EXEC = 'x',
    INIT_STDIN = 'i',
    INIT_CLOSE = 'c',
    INIT_KILL = 'k',
    INIT_PING = 'p',
    INIT_READY = 'Y',
    INIT_STARTED = 'S',
    INIT_STDOUT = 'O',
    INIT_STDERR = 'E',
    INIT_EXIT = 'X',
    INIT_PONG = 'P',
};

#define INIT_F_TIMEOUT 1u /* killed because its wall-clock timeout passed */
#define INIT_F_KILLED  2u /* killed on request (INIT_KILL) */
#define INIT_F_NOEXEC  4u /* could not be started (exit code 127, reason on stderr) */

static inline void init_put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline uint32_t init_get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void init_put64(unsigned char *p, uint64_t v)
{
    init_put32(p, (uint32_t)v);
    init_put32(p + 4, (uint32_t)(v >> 32));
}

static inline uint64_t init_get64(const unsigned char *p)
{
    return (uint64_t)init_get32(p) | (uint64_t)init_get32(p + 4) << 32;
}

#endif
