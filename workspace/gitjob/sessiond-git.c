/*
 * sessiond-git - the helper that runs one git operation on a workspace for the server
 * (workspace/gitjob.h): one JSON request on stdin, one JSON answer on stdout. Started by the
 * server only, with an empty environment; as root it confines itself (private mount
 * namespace, read-only host tree) and becomes the sandbox user before touching the workspace.
 */
#include "workspace/gitjob.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#include <fcntl.h>
#include <sanitizer/common_interface_defs.h>
#include <stdint.h>
#endif

int main(void)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    /* A sanitizer build: reports go to the file the server handed over, if any (gitjob.c,
     * san_open), since once confined this process can open no file to write one. */
    if (fcntl(GITJOB_REPORT_FD, F_GETFD) >= 0) {
        __sanitizer_set_report_fd((void *)(intptr_t)GITJOB_REPORT_FD);
    }
#endif
    return gitjob_serve(0, 1);
}
