/*
 * trust_probe.c - system calls a sandboxed command tries (test_trust_syscalls.sh compiles it
 * on the host and runs it inside a sandbox). Each mode prints one line "MODE=OK" or
 * "MODE=<errno name>" and exits 0; the test compares the lines.
 *
 *   attach PID | seize PID   ptrace(PTRACE_ATTACH|PTRACE_SEIZE) of PID
 *   traceme                  a child asks to be traced; the parent stops it, reads its
 *                            registers, continues it and sees it exit 7 (a debugger's way)
 *   userns                   unshare(CLONE_NEWUSER)
 *   clone-userns             clone(CLONE_NEWUSER | SIGCHLD)
 *   clone3                   clone3 with no flags (ENOSYS expected: glibc falls back)
 *   fork                     fork + wait (the ordinary clone must work)
 *   mount                    mount a tmpfs on /tmp
 *   addkey NAME              add_key("user", NAME) to the user keyring
 *   sessionkey NAME          add_key("user", NAME) to the session keyring
 *   keyctl                   keyctl(KEYCTL_GET_KEYRING_ID, session keyring)
 *   bpf | perf | uffd        bpf(BPF_MAP_CREATE), perf_event_open(own task), userfaultfd
 *   iouring                  io_uring_setup (ENOSYS expected: as without io_uring)
 *   personality              personality(ADDR_NO_RANDOMIZE)
 *   vmread PID               process_vm_readv of PID
 *   mem PID | environ PID    open /proc/PID/mem read-write / read /proc/PID/environ
 *   int80                    getpid through the i386 entry (int 0x80)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef __NR_clone3
#define __NR_clone3 435
#endif

static int report(const char *mode, long r)
{
    if (r < 0) {
        const char *n = strerrorname_np(errno);
        printf("%s=%s\n", mode, n ? n : "E?");
    } else {
        printf("%s=OK\n", mode);
    }
    return 0;
}

static long traceme(void)
{
    pid_t pid = fork();
    if (pid < 0) {
        return -1;
    }
    if (pid == 0) {
        if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) < 0) {
            _exit(3);
        }
        raise(SIGSTOP);
        _exit(7);
    }
    int st = 0;
    if (waitpid(pid, &st, 0) != pid || !WIFSTOPPED(st)) {
        errno = ECHILD;
        return -1;
    }
    struct user_regs_struct regs;
    if (ptrace(PTRACE_GETREGS, pid, NULL, &regs) < 0) {
        return -1;
    }
    if (ptrace(PTRACE_CONT, pid, NULL, NULL) < 0) {
        return -1;
    }
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 7) {
        errno = ECHILD;
        return -1;
    }
    return 0;
}

static long add_key(const char *name, long keyring)
{
    return syscall(__NR_add_key, "user", name, "probe-secret", 12, keyring);
}

int main(int argc, char **argv)
{
    const char *m = argc > 1 ? argv[1] : "";
    const char *a = argc > 2 ? argv[2] : "0";
    setvbuf(stdout, NULL, _IONBF, 0);
    if (!strcmp(m, "attach")) {
        long r = ptrace(PTRACE_ATTACH, (pid_t)strtol(a, NULL, 10), NULL, NULL);
        report(m, r);
        if (r == 0) {
            ptrace(PTRACE_DETACH, (pid_t)strtol(a, NULL, 10), NULL, NULL);
        }
        return 0;
    }
    if (!strcmp(m, "seize")) {
        long r = ptrace(PTRACE_SEIZE, (pid_t)strtol(a, NULL, 10), NULL, NULL);
        report(m, r);
        if (r == 0) {
            ptrace(PTRACE_DETACH, (pid_t)strtol(a, NULL, 10), NULL, NULL);
        }
        return 0;
    }
    if (!strcmp(m, "traceme")) {
        return report(m, traceme());
    }
    if (!strcmp(m, "userns")) {
        return report(m, unshare(CLONE_NEWUSER));
    }
    if (!strcmp(m, "clone-userns")) {
        long r = syscall(__NR_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) {
            _exit(0);
        }
        if (r > 0) {
            waitpid((pid_t)r, NULL, 0);
        }
        return report(m, r);
    }
    if (!strcmp(m, "clone3")) {
        unsigned long long args[11] = {0};
        args[4] = SIGCHLD; /* exit_signal */
        long r = syscall(__NR_clone3, args, 88);
        if (r == 0) {
            _exit(0);
        }
        if (r > 0) {
            waitpid((pid_t)r, NULL, 0);
        }
        return report(m, r);
    }
    if (!strcmp(m, "fork")) {
        pid_t p = fork();
        if (p == 0) {
            _exit(0);
        }
        int st = 0;
        return report(m, p < 0 ? -1 : waitpid(p, &st, 0));
    }
    if (!strcmp(m, "mount")) {
        return report(m, mount("none", "/tmp", "tmpfs", 0, NULL));
    }
    if (!strcmp(m, "addkey")) {
        return report(m, add_key(a, -4 /* KEY_SPEC_USER_KEYRING */));
    }
    if (!strcmp(m, "sessionkey")) {
        return report(m, add_key(a, -3 /* KEY_SPEC_SESSION_KEYRING */));
    }
    if (!strcmp(m, "keyctl")) {
        return report(m, syscall(__NR_keyctl, 0 /* GET_KEYRING_ID */, -3, 0));
    }
    if (!strcmp(m, "bpf")) {
        union bpf_attr at;
        memset(&at, 0, sizeof at);
        at.map_type = BPF_MAP_TYPE_ARRAY;
        at.key_size = 4;
        at.value_size = 4;
        at.max_entries = 1;
        return report(m, syscall(__NR_bpf, BPF_MAP_CREATE, &at, sizeof at));
    }
    if (!strcmp(m, "perf")) {
        struct perf_event_attr pe;
        memset(&pe, 0, sizeof pe);
        pe.type = PERF_TYPE_SOFTWARE;
        pe.size = sizeof pe;
        pe.config = PERF_COUNT_SW_TASK_CLOCK;
        pe.exclude_kernel = 1;
        pe.exclude_hv = 1;
        return report(m, syscall(__NR_perf_event_open, &pe, 0, -1, -1, 0));
    }
    if (!strcmp(m, "uffd")) {
        return report(m, syscall(__NR_userfaultfd, 01 /* UFFD_USER_MODE_ONLY */));
    }
    if (!strcmp(m, "iouring")) {
        unsigned char params[120];
        memset(params, 0, sizeof params);
        return report(m, syscall(425 /* io_uring_setup */, 4, params));
    }
    if (!strcmp(m, "personality")) {
        return report(m, personality(ADDR_NO_RANDOMIZE) < 0 ? -1 : 0);
    }
    if (!strcmp(m, "vmread")) {
        char buf[16], there[16];
        struct iovec l = {buf, sizeof buf}, r = {there, sizeof there};
        return report(m, process_vm_readv((pid_t)strtol(a, NULL, 10), &l, 1, &r, 1, 0));
    }
    if (!strcmp(m, "mem") || !strcmp(m, "environ")) {
        char path[64], b[16];
        snprintf(path, sizeof path, "/proc/%s/%s", a, m);
        int fd = open(path, !strcmp(m, "mem") ? O_RDWR : O_RDONLY);
        long r = fd;
        if (fd >= 0 && !strcmp(m, "environ")) {
            r = read(fd, b, sizeof b);
        }
        return report(m, r);
    }
    if (!strcmp(m, "int80")) {
        long r;
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L /* i386 getpid */) : "memory");
        printf("int80=%s\n", r > 0 ? "OK" : "E?");
        return 0;
    }
    fprintf(stderr, "usage: probe MODE [ARG]\n");
    return 2;
}
