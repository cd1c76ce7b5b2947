/*
 * filter.c - the seccomp filter sandbox-init installs on itself before it runs any command
 * (included by sandbox-init.c: one binary, libc only, the BPF written by hand).
 *
 * What a coding agent never needs and what would let one process of a sandbox reach another
 * process, another sandbox or the kernel's rarer surfaces is refused with EPERM (an error the
 * agent sees and can report, never a kill; ENOSYS where a fallback must kick in: clone3,
 * io_uring); everything else is allowed. The list and the
 * reason for each entry are in docs/sandbox.md ("System calls"); keep the two in step.
 *
 * Why in sandbox-init and not in each command's child: sandbox-init itself needs none of
 * these calls, a filter is inherited by fork and kept across execve, so installing it once at
 * start covers every command and all their descendants at no cost per exec, and also fences
 * sandbox-init, which holds the control socket. It is installed before the ready frame: a
 * sandbox that cannot have it never starts (fail closed).
 *
 * Layout of the program: the architecture check (anything but the native ABI is killed: an
 * i386 `int 0x80` would reach the i386 numbers, which this list does not name; x32 numbers are
 * refused), then system calls refused by their arguments (ptrace requests, namespace flags,
 * TIOCSTI, personality flags), then system calls refused outright, then numbers above the
 * newest system call reviewed here (ENOSYS, as on an older kernel: a call added later stays
 * out until someone reviews it). Only the argument checks load arguments, so the kernel's
 * per-syscall cache of "always allowed" answers lets every other call skip the filter.
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define FILTER_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define FILTER_ARCH AUDIT_ARCH_AARCH64
#else
#error "sandbox-init: no seccomp architecture constant for this target"
#endif

/* System calls newer than the C library's headers: the numbers are the same on every
 * architecture from 424 on. */
#ifndef __NR_open_tree
#define __NR_open_tree 428
#endif
#ifndef __NR_move_mount
#define __NR_move_mount 429
#endif
#ifndef __NR_fsopen
#define __NR_fsopen 430
#endif
#ifndef __NR_fsconfig
#define __NR_fsconfig 431
#endif
#ifndef __NR_fsmount
#define __NR_fsmount 432
#endif
#ifndef __NR_fspick
#define __NR_fspick 433
#endif
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif
#ifndef __NR_clone3
#define __NR_clone3 435
#endif
#ifndef __NR_pidfd_getfd
#define __NR_pidfd_getfd 438
#endif
#ifndef __NR_mount_setattr
#define __NR_mount_setattr 442
#endif
#ifndef __NR_quotactl_fd
#define __NR_quotactl_fd 443
#endif
#ifndef __NR_open_tree_attr
#define __NR_open_tree_attr 467
#endif
/* The first system call number not reviewed for this list (Linux 6.18 ends at 469). */
#define FILTER_NR_END 470

#ifndef PTRACE_SEIZE
#define PTRACE_SEIZE 0x4206
#endif
#ifndef PTRACE_INTERRUPT
#define PTRACE_INTERRUPT 0x4207
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

/* Flags that make a new namespace. clone() reads only the low 32 bits of its flags and uses
 * the low byte as the exit signal, so CLONE_NEWTIME (0x80) is a namespace flag for unshare()
 * only. */
#define NS_FLAGS                                                                                   \
    (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |  \
     CLONE_NEWNET)

#define RET_ALLOW  BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
#define RET_ERR(e) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((e)&SECCOMP_RET_DATA))
/* Low 32 bits of argument i (little endian: the first word). */
#define ARG_LO(i) (offsetof(struct seccomp_data, args) + (i) * sizeof(__u64))

#define FILTER_MAX 256

struct filter {
    struct sock_filter p[FILTER_MAX];
    unsigned short n;
};

static void put(struct filter *f, struct sock_filter s)
{
    if (f->n < FILTER_MAX) {
        f->p[f->n] = s;
    }
    f->n++; /* an overflow is caught by filter_install */
}

/* nr with the low word of argument arg equal to one of vals[0..nv): EPERM; other values of
 * that argument: allowed. */
static void deny_arg_values(struct filter *f, int nr, unsigned arg, const __u32 *vals, int nv)
{
    put(f, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (__u32)nr, 0,
                                        (unsigned char)(2 * nv + 2)));
    put(f, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (__u32)ARG_LO(arg)));
    for (int i = 0; i < nv; i++) {
        put(f, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, vals[i], 0, 1));
        put(f, (struct sock_filter)RET_ERR(EPERM));
    }
    put(f, (struct sock_filter)RET_ALLOW);
}

/* nr with any of mask's bits set in the low word of argument arg: EPERM. */
static void deny_arg_bits(struct filter *f, int nr, unsigned arg, __u32 mask)
{
    put(f, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (__u32)nr, 0, 4));
    put(f, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (__u32)ARG_LO(arg)));
    put(f, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, mask, 0, 1));
    put(f, (struct sock_filter)RET_ERR(EPERM));
    put(f, (struct sock_filter)RET_ALLOW);
}

/* nr allowed only with the low word of argument arg equal to one of vals[0..nv); else EPERM. */
static void allow_arg_values(struct filter *f, int nr, unsigned arg, const __u32 *vals, int nv)
{
    put(f, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (__u32)nr, 0,
                                        (unsigned char)(nv + 3)));
    put(f, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (__u32)ARG_LO(arg)));
    for (int i = 0; i < nv; i++) {
        put(f, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, vals[i],
                                            (unsigned char)(nv - i), 0));
    }
    put(f, (struct sock_filter)RET_ERR(EPERM));
    put(f, (struct sock_filter)RET_ALLOW);
}

static void deny_nr(struct filter *f, int nr, int e)
{
    put(f, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (__u32)nr, 0, 1));
    put(f, (struct sock_filter)RET_ERR(e));
}

/* Refused outright with EPERM; docs/sandbox.md gives the reason for each. */
static const int denied[] = {
    /* other processes' memory (need ptrace rights, which ATTACH/SEIZE no longer give) */
    __NR_process_vm_readv,
    __NR_process_vm_writev,
    __NR_pidfd_getfd,
    /* namespaces and mounts */
    __NR_setns,
    __NR_mount,
    __NR_umount2,
    __NR_pivot_root,
    __NR_open_tree,
    __NR_open_tree_attr,
    __NR_move_mount,
    __NR_fsopen,
    __NR_fsconfig,
    __NR_fsmount,
    __NR_fspick,
    __NR_mount_setattr,
    /* the kernel keyring: shared by every sandbox of the same host uid */
    __NR_add_key,
    __NR_request_key,
    __NR_keyctl,
    /* large kernel surfaces no build or test needs */
    __NR_bpf,
    __NR_perf_event_open,
    __NR_userfaultfd,
    /* the machine itself */
    __NR_init_module,
    __NR_finit_module,
    __NR_delete_module,
    __NR_kexec_load,
#ifdef __NR_kexec_file_load
    __NR_kexec_file_load,
#endif
#ifdef __NR_iopl
    __NR_iopl,
#endif
#ifdef __NR_ioperm
    __NR_ioperm,
#endif
    __NR_swapon,
    __NR_swapoff,
    __NR_reboot,
    __NR_acct,
    __NR_quotactl,
    __NR_quotactl_fd,
#ifdef __NR_lookup_dcookie
    __NR_lookup_dcookie,
#endif
    __NR_syslog,
    __NR_settimeofday,
    __NR_clock_settime,
    __NR_clock_adjtime,
    __NR_adjtimex,
    __NR_vhangup,
#ifdef __NR_uselib
    __NR_uselib,
#endif
#ifdef __NR__sysctl
    __NR__sysctl,
#endif
#ifdef __NR_nfsservctl
    __NR_nfsservctl,
#endif
    /* files by handle: bypass the path walk (and so the mount layout) */
    __NR_name_to_handle_at,
    __NR_open_by_handle_at,
};

/* Build the program into f. */
static void filter_build(struct filter *f)
{
    f->n = 0;
    /* Architecture: a foreign ABI (i386 through int 0x80) has other numbers: kill. */
    put(f, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                        (__u32)offsetof(struct seccomp_data, arch)));
    put(f, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, FILTER_ARCH, 1, 0));
    put(f, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    put(f, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                        (__u32)offsetof(struct seccomp_data, nr)));
#if defined(__x86_64__)
    /* The x32 ABI: the same arch value, numbers with bit 30 set. */
    put(f, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1));
    put(f, (struct sock_filter)RET_ERR(EPERM));
#endif
    /* ptrace: a tracer may still run a child that asked for it (PTRACE_TRACEME, then every
     * request on that child); it can no longer take over a process it did not start. */
    static const __u32 ptrace_req[] = {PTRACE_ATTACH, PTRACE_SEIZE, PTRACE_INTERRUPT};
    deny_arg_values(f, __NR_ptrace, 0, ptrace_req, 3);
    /* New namespaces (a new user namespace first of all: its root has every capability on
     * the kernel's namespaced code). */
    deny_arg_bits(f, __NR_clone, 0, NS_FLAGS);
    deny_arg_bits(f, __NR_unshare, 0, NS_FLAGS | CLONE_NEWTIME);
    /* Typing into a terminal's input queue (TIOCSTI) or the console (TIOCLINUX). */
    static const __u32 ioctl_req[] = {TIOCSTI, TIOCLINUX};
    deny_arg_values(f, __NR_ioctl, 1, ioctl_req, 2);
    /* personality: the execution domains programs use (PER_LINUX, PER_LINUX32, UNAME26 and
     * the query); not ADDR_NO_RANDOMIZE and the other flags that weaken a later exec. */
    static const __u32 persona[] = {0x0, 0x8, 0x20000, 0x20008, 0xffffffffu};
    allow_arg_values(f, __NR_personality, 0, persona, 5);
    /* clone3 passes its flags in memory, which a filter cannot read: ENOSYS makes the C
     * library fall back to clone(), whose flags are checked above. */
    deny_nr(f, __NR_clone3, ENOSYS);
    /* io_uring: a second way into most of the kernel, behind many of its recent exploits.
     * ENOSYS, as on a kernel built without it: libuv, Bun and liburing users fall back to
     * ordinary system calls. */
    deny_nr(f, __NR_io_uring_setup, ENOSYS);
    deny_nr(f, __NR_io_uring_enter, ENOSYS);
    deny_nr(f, __NR_io_uring_register, ENOSYS);
    for (size_t i = 0; i < sizeof denied / sizeof denied[0]; i++) {
        deny_nr(f, denied[i], EPERM);
    }
    put(f, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, FILTER_NR_END, 0, 1));
    put(f, (struct sock_filter)RET_ERR(ENOSYS));
    put(f, (struct sock_filter)RET_ALLOW);
}

/* Install the filter on this process (and so on everything it forks from now on). No new
 * privileges is the kernel's condition for an unprivileged filter; it also keeps setuid
 * binaries from raising a command's rights. Returns 0 or -1 with errno set. */
static int filter_install(void)
{
    struct filter f;
    filter_build(&f);
    if (f.n > FILTER_MAX) {
        errno = E2BIG;
        return -1;
    }
    struct sock_fprog prog = {.len = f.n, .filter = f.p};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        return -1;
    }
    if (syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0) {
        return -1;
    }
    return 0;
}
