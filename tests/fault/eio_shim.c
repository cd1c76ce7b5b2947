/*
 * eio_shim.c - an LD_PRELOAD fault injector for tests: write(2), pwrite(2), pwrite64,
 * writev(2), fsync(2) and fdatasync(2) on files whose path contains EIO_SHIM_PATH fail with
 * EIO while the file named by EIO_SHIM_WHILE exists (the test creates and removes it), and,
 * if EIO_SHIM_AFTER=N is set, on every such call after the first N.
 *
 * Built by the test that uses it (cc -shared -fPIC -o eio_shim.so eio_shim.c -ldl); never
 * linked into sessiond. The path of an fd is read from /proc/self/fd at each call: slow, but
 * only while EIO_SHIM_PATH is set, which only a test does. Thread safe (the call counter is
 * atomic; nothing else is shared).
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static long calls;

static int should_fail(int fd)
{
    const char *pat = getenv("EIO_SHIM_PATH");
    if (!pat || !*pat) {
        return 0;
    }
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0) {
        return 0;
    }
    path[n] = 0;
    if (!strstr(path, pat)) {
        return 0;
    }
    const char *trigger = getenv("EIO_SHIM_WHILE");
    struct stat sb;
    if (trigger && *trigger && stat(trigger, &sb) == 0) {
        return 1;
    }
    const char *after = getenv("EIO_SHIM_AFTER");
    if (after && *after) {
        long n_ok = strtol(after, NULL, 10);
        return __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED) > n_ok;
    }
    return 0;
}

/* The next definition of name (libc's), looked up once. */
#define REAL(name)                                                                                 \
    static __typeof__(&name) real_##name;                                                          \
    if (!real_##name) {                                                                            \
        real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name);                                  \
    }

ssize_t write(int fd, const void *buf, size_t n)
{
    REAL(write);
    if (should_fail(fd)) {
        errno = EIO;
        return -1;
    }
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    REAL(pwrite);
    if (should_fail(fd)) {
        errno = EIO;
        return -1;
    }
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    REAL(pwrite64);
    if (should_fail(fd)) {
        errno = EIO;
        return -1;
    }
    return real_pwrite64(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    REAL(writev);
    if (should_fail(fd)) {
        errno = EIO;
        return -1;
    }
    return real_writev(fd, iov, cnt);
}

int fsync(int fd)
{
    REAL(fsync);
    if (should_fail(fd)) {
        errno = EIO;
        return -1;
    }
    return real_fsync(fd);
}

int fdatasync(int fd)
{
    REAL(fdatasync);
    if (should_fail(fd)) {
        errno = EIO;
        return -1;
    }
    return real_fdatasync(fd);
}
