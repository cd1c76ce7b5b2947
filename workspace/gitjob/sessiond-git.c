/*
 * sessiond-git - the helper that runs one git operation on a workspace for the server
 * (workspace/gitjob.h): one JSON request on stdin, one JSON answer on stdout. Started by the
 * server only, with an empty environment; as root it confines itself (private mount
 * namespace, read-only host tree) and becomes the sandbox user before touching the workspace.
 */
#include "workspace/gitjob.h"

int main(void)
{
    return gitjob_serve(0, 1);
}
