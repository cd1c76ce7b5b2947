/*
 * landlock.c - the Landlock domain sandbox-init puts itself and every command in (included by
 * sandbox-init.c after filter.c; libc only).
 *
 * Why: the seccomp filter refuses PTRACE_ATTACH, but a process can also read and write
 * another's memory through /proc/PID/mem (and read its environ, fds, root) whenever the kernel's
 * ptrace access check lets it: same uid and a dumpable target. pid 1 of a local sandbox is
 * bubblewrap's monitor, the same uid as the commands, dumpable and outside the filter: writing
 * code into it would run that code unfiltered. In the process backend the same holds for the
 * server itself. A Landlock domain closes all of these at once: the kernel refuses a process in
 * a domain any ptrace access (attach, /proc/PID/mem, environ, ...) to a process outside it.
 * Processes inside the one domain (the commands of one sandbox) keep the ordinary rules, so a
 * debugger still runs its own child.
 *
 * A domain must restrict something. Here: creating block devices (which needs a capability
 * no sandbox has), plus LANDLOCK_ACCESS_FS_REFER, which every file system domain refuses by
 * default (cross-directory rename and link) and which a rule on "/" gives back. So nothing a
 * command may do today is lost. Needs Landlock ABI 2 (Linux 5.19) for that right; on older
 * kernels, or with Landlock off, sandbox-init says so on stderr (the sandbox's log) and runs
 * without the domain.
 */
#include <fcntl.h>
#include <linux/landlock.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef LANDLOCK_ACCESS_FS_REFER
#define LANDLOCK_ACCESS_FS_REFER (1ULL << 13)
#endif
#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#endif
#ifndef __NR_landlock_add_rule
#define __NR_landlock_add_rule 445
#endif
#ifndef __NR_landlock_restrict_self
#define __NR_landlock_restrict_self 446
#endif

/* Enter the domain (no new privileges must already be set). Returns 0, or -1 with errno set
 * and *what naming the step that failed. */
static int landlock_install(const char **what)
{
    int ruleset = -1, root = -1, rc = -1;
    long abi = syscall(__NR_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    if (abi < 2) {
        *what = "landlock ABI 2 (Linux 5.19)";
        if (abi >= 0) {
            errno = ENOSYS;
        }
        goto out;
    }
    struct landlock_ruleset_attr attr = {
        .handled_access_fs = LANDLOCK_ACCESS_FS_MAKE_BLOCK | LANDLOCK_ACCESS_FS_REFER,
    };
    *what = "landlock_create_ruleset";
    ruleset = (int)syscall(__NR_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (ruleset < 0) {
        goto out;
    }
    *what = "landlock rule for /";
    root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    struct landlock_path_beneath_attr beneath = {
        .allowed_access = LANDLOCK_ACCESS_FS_REFER,
        .parent_fd = root,
    };
    if (root < 0 ||
        syscall(__NR_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &beneath, 0) < 0) {
        goto out;
    }
    *what = "landlock_restrict_self";
    if (syscall(__NR_landlock_restrict_self, ruleset, 0) < 0) {
        goto out;
    }
    rc = 0;
out:
    if (root >= 0) {
        close(root);
    }
    if (ruleset >= 0) {
        close(ruleset);
    }
    return rc;
}
