/*
 * test_git.c - gitx_* against real git on disk: a bare repository as the remote, a second
 * clone (git CLI, test-only) pushing commits that sync must pick up, per-author commits,
 * push, and the workspace-config attacks (insteadOf redirect, gitfile escape).
 */
#include "testlib.h"

#include "common/err.h"
#include "common/util.h"
#include "common/xmem.h"
#include "workspace/git.h"
#include "workspace/gitjob.h"

#include <jansson.h>
#include <pwd.h>
#include <stdarg.h>
#include <sys/stat.h>

static char g_tmp[256];

static char *P(const char *rel)
{
    return xasprintf("%s/%s", g_tmp, rel);
}

#define GITC "git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"

/* remote.git (bare) with one commit on main, pushed from seed/. */
static void setup(void)
{
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/test_git.XXXXXX");
    ASSERT(mkdtemp(g_tmp) != NULL);
    tsh("cd %s && " GITC " init -q --bare remote.git && " GITC " init -q seed && cd seed && "
        "echo hello > README && mkdir src && echo 'int main(void){return 0;}' > src/main.c && " GITC
        " add -A && " GITC " commit -qm init && " GITC " push -q ../remote.git main",
        g_tmp);
    ASSERT_EQ(gitx_init(NULL, NULL), 0);
}

static void file_put(const char *rel, const char *content)
{
    char *p = P(rel);
    FILE *f = fopen(p, "w");
    ASSERT(f != NULL);
    fputs(content, f);
    fclose(f);
    free(p);
}

TEST(clone_sync_picks_up_new_commits)
{
    setup();
    char *remote = P("remote.git"), *ws = P("ws");
    char head[41], head2[41];
    ASSERT_EQ(gitx_clone(remote, "main", ws, NULL, head), 0);
    char *seed_head = tout1("git -C %s/seed rev-parse HEAD", g_tmp);
    ASSERT_STREQ(head, seed_head);
    struct stat sb;
    char *readme = P("ws/README");
    ASSERT_EQ(stat(readme, &sb), 0);
    /* another clone pushes two commits */
    tsh("cd %s/seed && echo more > NEW && " GITC " add -A && " GITC " commit -qm two && "
        "echo again >> README && " GITC " commit -qam three && " GITC " push -q ../remote.git main",
        g_tmp);
    char *new_head = tout1("git -C %s/seed rev-parse HEAD", g_tmp);
    ASSERT_EQ(gitx_sync(ws, NULL, remote, "main", NULL, head2), 0);
    ASSERT_STREQ(head2, new_head);
    char *p = P("ws/NEW");
    ASSERT_EQ(stat(p, &sb), 0);
    char *wshead = tout1("git -C %s/ws rev-parse HEAD", g_tmp);
    ASSERT_STREQ(wshead, new_head);
    char *st = tout1("git -C %s/ws status --porcelain | wc -l", g_tmp);
    ASSERT_STREQ(st, "0");
    ASSERT_EQ(gitx_head(ws, NULL, head, NULL), 0);
    ASSERT_STREQ(head, new_head);
    /* sync also discards local edits to tracked files */
    file_put("ws/README", "local edit\n");
    ASSERT_EQ(gitx_sync(ws, NULL, remote, "main", NULL, head2), 0);
    char *c = tout1("head -1 %s/ws/README", g_tmp);
    ASSERT_STREQ(c, "hello");
    util_rm_rf(g_tmp);
}

TEST(clone_unknown_branch)
{
    setup();
    char *remote = P("remote.git"), *ws = P("ws");
    ASSERT(gitx_clone(remote, "nope", ws, NULL, NULL) != 0);
    ASSERT_EQ(gitx_clone(remote, "bad..name", ws, NULL, NULL), ERR_INVALID);
    util_rm_rf(g_tmp);
}

TEST(two_authors_two_commits_and_push)
{
    setup();
    char *remote = P("remote.git"), *ws = P("ws");
    ASSERT_EQ(gitx_clone(remote, "main", ws, NULL, NULL), 0);
    int committed = -1;
    char sha1[41], sha2[41];
    struct gitx_ident alice = {"Alice Liddell", "alice@example.com"};
    struct gitx_ident bob = {"Bob Builder", "bob@example.com"};

    /* nothing changed: no commit */
    ASSERT_EQ(gitx_commit(ws, NULL, "sessiond/s_test1", &alice, "noop\n", sha1, &committed), 0);
    ASSERT_EQ(committed, 0);

    file_put("ws/alice.txt", "from alice\n");
    json_t *ch = NULL;
    ASSERT_EQ(gitx_changed(ws, NULL, &ch), 0);
    ASSERT_EQ(json_array_size(ch), 1);
    ASSERT_STREQ(json_string_value(json_object_get(json_array_get(ch, 0), "path")), "alice.txt");
    ASSERT_STREQ(json_string_value(json_object_get(json_array_get(ch, 0), "status")), "added");
    json_decref(ch);
    char *msg = gitx_message("Add a greeting file\nplease", NULL);
    ASSERT_EQ(gitx_commit(ws, NULL, "sessiond/s_test1", &alice, msg, sha1, &committed), 0);
    ASSERT_EQ(committed, 1);
    free(msg);

    file_put("ws/README", "changed by bob\n");
    char *p = P("ws/src/main.c");
    ASSERT_EQ(unlink(p), 0);
    struct gitx_ident coauthor = {"Bob Builder", "bob@example.com"};
    msg = gitx_message("Rewrite the readme", &coauthor);
    ASSERT_EQ(gitx_commit(ws, NULL, "sessiond/s_test1", &bob, msg, sha2, &committed), 0);
    ASSERT_EQ(committed, 1);
    free(msg);

    char *branch = tout1("git -C %s/ws symbolic-ref --short HEAD", g_tmp);
    ASSERT_STREQ(branch, "sessiond/s_test1");
    char *l1 = tout1("git -C %s/ws log -1 --skip=1 --format='%%an|%%ae|%%cn|%%ce|%%s' HEAD", g_tmp);
    ASSERT_STREQ(l1, "Alice Liddell|alice@example.com|Alice Liddell|alice@example.com|"
                     "Add a greeting file");
    char *l2 = tout1("git -C %s/ws log -1 --format='%%an|%%ae|%%cn|%%ce|%%s' HEAD", g_tmp);
    ASSERT_STREQ(l2, "Bob Builder|bob@example.com|Bob Builder|bob@example.com|Rewrite the readme");
    char *tr = tout1(
        "git -C %s/ws log -1 --format='%%(trailers:key=Co-authored-by,valueonly)' HEAD", g_tmp);
    ASSERT_STREQ(tr, "Bob Builder <bob@example.com>");
    char *st = tout1("git -C %s/ws status --porcelain | wc -l", g_tmp);
    ASSERT_STREQ(st, "0"); /* the index matches the commit, deletion included */

    ASSERT_EQ(gitx_push(ws, NULL, remote, "sessiond/s_test1", NULL), 0);
    char *rh = tout1("git --git-dir=%s/remote.git rev-parse sessiond/s_test1", g_tmp);
    ASSERT_STREQ(rh, sha2);
    char *n = tout1("git --git-dir=%s/remote.git rev-list --count sessiond/s_test1", g_tmp);
    ASSERT_STREQ(n, "3");
    /* main on the remote is untouched */
    char *seed_head = tout1("git -C %s/seed rev-parse HEAD", g_tmp);
    char *rm = tout1("git --git-dir=%s/remote.git rev-parse main", g_tmp);
    ASSERT_STREQ(rm, seed_head);
    util_rm_rf(g_tmp);
}

TEST(push_ignores_workspace_config)
{
    setup();
    char *remote = P("remote.git"), *ws = P("ws");
    ASSERT_EQ(gitx_clone(remote, "main", ws, NULL, NULL), 0);
    tsh("cd %s && git init -q --bare evil.git", g_tmp);
    /* the agent rewrites the remote and adds an insteadOf redirect */
    tsh("git -C %s/ws config remote.origin.url %s/evil.git && "
        "git -C %s/ws config url.%s/evil.git.insteadOf %s/remote.git && "
        "git -C %s/ws config http.proxy http://127.0.0.1:9",
        g_tmp, g_tmp, g_tmp, g_tmp, g_tmp, g_tmp);
    file_put("ws/x", "x\n");
    struct gitx_ident a = {"A", "a@example.com"};
    int committed = 0;
    ASSERT_EQ(gitx_commit(ws, NULL, "sessiond/s2", &a, "x\n", NULL, &committed), 0);
    ASSERT_EQ(gitx_push(ws, NULL, remote, "sessiond/s2", NULL), 0);
    char *rh = tout1("git --git-dir=%s/remote.git rev-parse --verify -q sessiond/s2", g_tmp);
    ASSERT(strlen(rh) == 40);
    char *eh = tout1("git --git-dir=%s/evil.git rev-parse --verify -q sessiond/s2", g_tmp);
    ASSERT_STREQ(eh, "");
    util_rm_rf(g_tmp);
}

TEST(gitfile_and_alternates_refused)
{
    setup();
    char *remote = P("remote.git"), *ws = P("ws");
    ASSERT_EQ(gitx_clone(remote, "main", ws, NULL, NULL), 0);
    /* alternates pointing at another repository */
    tsh("echo %s/remote.git/objects > %s/ws/.git/objects/info/alternates", g_tmp, g_tmp);
    ASSERT_EQ(gitx_push(ws, NULL, remote, "main", NULL), ERR_FORBIDDEN);
    tsh("rm %s/ws/.git/objects/info/alternates", g_tmp);
    /* .git replaced by a gitfile pointing elsewhere */
    tsh("mv %s/ws/.git %s/ws-gitdir && echo 'gitdir: %s/ws-gitdir' > %s/ws/.git", g_tmp, g_tmp,
        g_tmp, g_tmp);
    ASSERT_EQ(gitx_push(ws, NULL, remote, "main", NULL), ERR_FORBIDDEN);
    int committed = 0;
    struct gitx_ident a = {"A", "a@example.com"};
    ASSERT_EQ(gitx_commit(ws, NULL, "sessiond/s3", &a, "x", NULL, &committed), ERR_FORBIDDEN);
    /* a symlinked .git */
    tsh("rm %s/ws/.git && ln -s %s/ws-gitdir %s/ws/.git", g_tmp, g_tmp, g_tmp);
    ASSERT_EQ(gitx_sync(ws, NULL, remote, "main", NULL, NULL), ERR_FORBIDDEN);
    util_rm_rf(g_tmp);
}

/* The first wall: nothing in the workspace's .git/config is obeyed by host-side git. */
TEST(workspace_config_never_read)
{
    setup();
    char *remote = P("remote.git"), *ws = P("ws");
    ASSERT_EQ(gitx_clone(remote, "main", ws, NULL, NULL), 0);
    /* a host directory the agent would like committed, and a config full of orders */
    tsh("mkdir %s/host && echo host-secret > %s/host/secret.key && "
        "printf '[core]\\n\\tworktree = %s/ws\\n' > %s/inc.cfg",
        g_tmp, g_tmp, g_tmp, g_tmp);
    tsh("cd %s/ws && printf '[core]\\n\\tworktree = %s/host\\n\\tbare = true\\n"
        "\\thooksPath = %s/hooks\\n\\tlogAllRefUpdates = always\\n\\tfilemode = false\\n"
        "[include]\\n\\tpath = %s/inc.cfg\\n[filter \"evil\"]\\n\\tclean = touch %s/filtered\\n"
        "\\trequired = true\\n[user]\\n\\tname = $(touch /tmp/x)\\n' >> .git/config && "
        "echo '* filter=evil' > .gitattributes",
        g_tmp, g_tmp, g_tmp, g_tmp, g_tmp);
    file_put("ws/new.txt", "mine\n");
    json_t *changed = NULL;
    ASSERT_EQ(gitx_changed(ws, NULL, &changed), 0);
    char *dump = json_dumps(changed, JSON_COMPACT);
    ASSERT(strstr(dump, "new.txt") != NULL);
    ASSERT(strstr(dump, "secret.key") == NULL);
    free(dump);
    json_decref(changed);
    struct gitx_ident a = {"A", "a@example.com"};
    int committed = 0;
    char sha[41];
    ASSERT_EQ(gitx_commit(ws, NULL, "sessiond/cfg", &a, "x\n", sha, &committed), 0);
    ASSERT_EQ(committed, 1);
    char *tree =
        tout1("git --git-dir=%s/ws/.git ls-tree -r --name-only sessiond/cfg | tr '\\n' ' '", g_tmp);
    ASSERT(strstr(tree, "new.txt") != NULL);
    ASSERT(strstr(tree, "secret.key") == NULL);
    /* no reflog (ours say core.logAllRefUpdates=false), no filter ran, the working tree was
     * the workspace */
    struct stat sb;
    char *log = P("ws/.git/logs/refs/heads/sessiond/cfg"), *filtered = P("filtered");
    ASSERT(lstat(log, &sb) != 0);
    ASSERT(lstat(filtered, &sb) != 0);
    char head[41];
    ASSERT_EQ(gitx_head(ws, NULL, head, NULL), 0);
    ASSERT_STREQ(head, sha);
    util_rm_rf(g_tmp);
}

/* A reflog symlinked to a host path is neither created nor appended: no reflog is written. */
TEST(reflog_symlink_not_followed)
{
    setup();
    char *remote = P("remote.git"), *ws = P("ws");
    ASSERT_EQ(gitx_clone(remote, "main", ws, NULL, NULL), 0);
    tsh("mkdir -p %s/ws/.git/logs/refs/heads/sessiond %s/hostdir && "
        "ln -s %s/pwned %s/ws/.git/logs/refs/heads/sessiond/rl && "
        "ln -sfn %s/hostdir %s/ws/.git/logs/HEAD.d && echo keep > %s/appended && "
        "rm -f %s/ws/.git/logs/HEAD && ln -s %s/appended %s/ws/.git/logs/HEAD",
        g_tmp, g_tmp, g_tmp, g_tmp, g_tmp, g_tmp, g_tmp, g_tmp, g_tmp, g_tmp);
    file_put("ws/r.txt", "r\n");
    struct gitx_ident a = {"A", "a@example.com"};
    int committed = 0;
    ASSERT_EQ(gitx_commit(ws, NULL, "sessiond/rl", &a, "x\n", NULL, &committed), 0);
    ASSERT_EQ(committed, 1);
    struct stat sb;
    char *pwned = P("pwned");
    ASSERT(lstat(pwned, &sb) != 0);
    char *kept = tout1("cat %s/appended", g_tmp);
    ASSERT_STREQ(kept, "keep");
    util_rm_rf(g_tmp);
}

/* The workspace's `commondir`, or a .git swapped for a symlink, is refused: what libgit2 opened
 * must be the directory that was checked. */
TEST(commondir_refused)
{
    setup();
    char *remote = P("remote.git"), *ws = P("ws");
    ASSERT_EQ(gitx_clone(remote, "main", ws, NULL, NULL), 0);
    tsh("echo %s/remote.git > %s/ws/.git/commondir", g_tmp, g_tmp);
    char head[41];
    ASSERT_EQ(gitx_head(ws, NULL, head, NULL), ERR_FORBIDDEN);
    util_rm_rf(g_tmp);
}

/* The second wall: as root, the helper commits as the sandbox user in a namespace where only
 * the workspace is writable, so a refs/ symlink to a host directory leads nowhere; the
 * ownership walk never follows a symlink. Skipped (passes) when not root or without the
 * sandbox user. */
TEST(helper_confines_writes)
{
    struct passwd *pw = getpwnam("sessiond-sbx");
    if (geteuid() != 0 || !pw) {
        return;
    }
    setup();
    char *remote = P("remote.git"), *ws = P("ws");
    char *bin = gitjob_default_bin();
    struct gitjob_cfg c = {.bin = bin, .uid = (int)pw->pw_uid, .gid = (int)pw->pw_gid};
    ASSERT_EQ(gitx_clone(remote, "main", ws, NULL, NULL), 0);
    tsh("mkdir %s/hostdir && echo host > %s/hostfile && chmod 600 %s/hostfile && "
        "ln -s %s/hostfile %s/ws/link && ln -s %s/hostfile %s/ws/.git/link",
        g_tmp, g_tmp, g_tmp, g_tmp, g_tmp, g_tmp, g_tmp);
    ASSERT_EQ(gitjob_chown(&c, ws), 0);
    char want[64];
    snprintf(want, sizeof(want), "%d", (int)pw->pw_uid);
    char *own = tout1("stat -c %%u %s/ws/.git/HEAD", g_tmp);
    ASSERT_STREQ(own, want);
    char *host = tout1("stat -c %%u:%%a %s/hostfile", g_tmp);
    ASSERT_STREQ(host, "0:600");
    tsh("rm -rf %s/ws/.git/refs/heads/sessiond && ln -s %s/hostdir %s/ws/.git/refs/heads/sessiond",
        g_tmp, g_tmp, g_tmp);
    file_put("ws/h.txt", "h\n");
    struct gitx_ident a = {"A", "a@example.com"};
    int committed = 0;
    char sha[41];
    ASSERT(gitjob_commit_n(&c, ws, NULL, "sessiond/h", &a, "x\n", sha, &committed, NULL, NULL) !=
           0);
    char *left = tout1("ls -A %s/hostdir | wc -l", g_tmp);
    ASSERT_STREQ(left, "0");
    /* without the trap the same commit works, and what it wrote is the sandbox user's */
    tsh("rm %s/ws/.git/refs/heads/sessiond", g_tmp);
    ASSERT_EQ(gitjob_commit_n(&c, ws, NULL, "sessiond/h", &a, "x\n", sha, &committed, NULL, NULL),
              0);
    ASSERT_EQ(committed, 1);
    char *refown = tout1("stat -c %%u %s/ws/.git/refs/heads/sessiond/h", g_tmp);
    ASSERT_STREQ(refown, want);
    char head[41];
    ASSERT_EQ(gitjob_head(&c, ws, NULL, head, NULL), 0);
    ASSERT_STREQ(head, sha);
    free(bin);
    util_rm_rf(g_tmp);
}

/* The index's inode number of path in ws (git ls-files --debug), and the file's. */
static void inos(const char *ws, const char *path, char **idx_ino, char **file_ino)
{
    *idx_ino = tout1("git -C %s/%s ls-files --debug %s | sed -n 's/.*ino: *\\([0-9]*\\).*/\\1/p'",
                     g_tmp, ws, path);
    *file_ino = tout1("stat -c %%i %s/%s/%s", g_tmp, ws, path);
}

TEST(refresh_index_after_copy_restats)
{
    setup();
    char *remote = P("remote.git"), *ws = P("ws"), *ws2 = P("ws2");
    ASSERT_EQ(gitx_clone(remote, "main", ws, NULL, NULL), 0);
    /* a "restore": same contents and mtimes (index included), new inodes and ctimes */
    tsh("sleep 0.05 && touch %s/.git/index && cp -a %s %s", ws, ws, ws2); /* nothing racy */
    char *a = NULL, *b = NULL;
    inos("ws2", "src/main.c", &a, &b);
    ASSERT(strcmp(a, b) != 0); /* stale: git and libgit2 would re-read the file */
    free(a);
    free(b);
    /* a real change of size is still seen after the refresh */
    file_put("ws2/README", "a longer readme than before\n");
    /* proof that matching files are not read: same size and mtime, other bytes (a restore
     * never does this; the refresh trusts size + mtime like git's core.checkStat=minimal) */
    tsh("cd %s && printf 'int main(void){return 1;}\\n' > src/main.c.new && "
        "touch -r src/main.c src/main.c.new && mv src/main.c.new src/main.c",
        ws2);
    ASSERT_EQ(gitx_refresh_index(ws2, NULL), 0);
    inos("ws2", "src/main.c", &a, &b);
    ASSERT_STREQ(a, b);
    free(a);
    free(b);
    json_t *ch = NULL;
    ASSERT_EQ(gitx_changed(ws2, NULL, &ch), 0);
    ASSERT_EQ(json_array_size(ch), 1);
    ASSERT_STREQ(json_string_value(json_object_get(json_array_get(ch, 0), "path")), "README");
    json_decref(ch);
    util_rm_rf(g_tmp);
}

TEST(message_shape)
{
    char *m = gitx_message("  Fix the login bug\nIt fails on Safari.", NULL);
    ASSERT_STREQ(m, "Fix the login bug\n\nPrompt:\nFix the login bug\nIt fails on Safari.\n");
    free(m);
    char longp[200];
    memset(longp, 'a', sizeof(longp) - 1);
    longp[sizeof(longp) - 1] = 0;
    struct gitx_ident co = {"Carol", "carol@example.com"};
    m = gitx_message(longp, &co);
    ASSERT(strncmp(m, "aaaa", 4) == 0);
    ASSERT(strstr(m, "...\n\nPrompt:\n") == m + 69);
    ASSERT(strstr(m, "\n\nCo-authored-by: Carol <carol@example.com>\n") != NULL);
    free(m);
    m = gitx_message("", NULL);
    ASSERT_STREQ(m, "sessiond: agent changes\n");
    free(m);
}

/* A workspace that borrows its objects from a shared store (alternates): checked out without a
 * copy of them, synced, committed to, pushed to an empty remote with a complete history; the
 * host reads the store the caller names, never the alternates file the agent can rewrite. */
TEST(shared_store_workspace)
{
    setup();
    char *remote = P("remote.git"), *store = P("store.git"), *ws = P("ws");
    char *objects = P("store.git/objects");
    char head[41] = "", h2[41] = "";
    ASSERT_EQ(gitx_mirror_fetch(store, remote, "main", NULL, head), 0);
    ASSERT_EQ(gitx_checkout_shared(ws, objects, remote, "main", head), 0);
    char *alt = tout1("cat %s/.git/objects/info/alternates", ws);
    ASSERT_STREQ(alt, objects);
    char *own = tout1("find %s/.git/objects -type f ! -path '*/info/alternates' | wc -l", ws);
    ASSERT_STREQ(own, "0");
    char *st = tout1("git -C %s status --porcelain | wc -l; git -C %s rev-parse HEAD", ws, ws);
    ASSERT_STREQ(st, "0");
    char *cli_head = tout1("git -C %s rev-parse HEAD", ws);
    ASSERT_STREQ(cli_head, head);
    /* without the store named, the alternates file is refused as before */
    ASSERT_EQ(gitx_head(ws, NULL, h2, NULL), ERR_FORBIDDEN);
    ASSERT_EQ(gitx_head(ws, objects, h2, NULL), 0);
    ASSERT_STREQ(h2, head);

    /* the branch moves on: a second fetch into the store and a sync of the workspace */
    tsh("cd %s/seed && echo v2 > README && " GITC " commit -qam v2 && " GITC
        " push -q ../remote.git main",
        g_tmp);
    ASSERT_EQ(gitx_mirror_fetch(store, remote, "main", NULL, h2), 0);
    ASSERT(strcmp(h2, head) != 0);
    ASSERT_EQ(gitx_sync(ws, objects, remote, "main", NULL, head), 0);
    ASSERT_STREQ(head, h2);
    ASSERT_EQ(gitx_refresh_index(ws, objects), 0);

    /* the agent points the alternates file elsewhere: the host does not follow it */
    tsh("echo /nonexistent > %s/.git/objects/info/alternates && echo x > %s/new.txt", ws, ws);
    struct gitx_ident a = {"Alice", "alice@example.com"};
    int committed = 0;
    char sha[41];
    ASSERT_EQ(gitx_commit(ws, objects, "sessiond/s1", &a, "add x\n", sha, &committed), 0);
    ASSERT_EQ(committed, 1);
    tsh("cd %s && git init -q --bare empty.git", g_tmp);
    char *empty = P("empty.git");
    ASSERT_EQ(gitx_push(ws, objects, empty, "sessiond/s1", NULL), 0);
    tsh("cd %s && git clone -q -b sessiond/s1 empty.git check && git -C check fsck --full "
        ">/dev/null 2>&1",
        g_tmp);
    char *n = tout1("git -C %s/check rev-list --count HEAD", g_tmp);
    ASSERT_STREQ(n, "3");
    free(empty);
    free(remote);
    free(store);
    free(ws);
    free(objects);
    util_rm_rf(g_tmp);
}

/* A fast-forward only: the working tree's own changes stay, a local branch ahead is left as it
 * is, a branch that went both ways is refused and nothing moves, an uncommitted change the new
 * commits would overwrite stops it. */
TEST(ff_only_forward)
{
    setup();
    char *remote = P("remote.git"), *ws = P("ws");
    char r[41], l[41], head[41];
    int moved = -1;
    ASSERT_EQ(gitx_clone(remote, "main", ws, NULL, head), 0);
    ASSERT_EQ(gitx_ff(ws, NULL, remote, "main", NULL, r, l, &moved), 0);
    ASSERT_EQ(moved, 0);
    ASSERT_STREQ(r, head);
    /* someone else pushes; the workspace has an uncommitted edit elsewhere */
    tsh("cd %s/seed && echo more > NEW && " GITC " add -A && " GITC " commit -qm two && " GITC
        " push -q ../remote.git main",
        g_tmp);
    char *two = tout1("git -C %s/seed rev-parse HEAD", g_tmp);
    file_put("ws/src/main.c", "int main(void){return 1;}\n");
    ASSERT_EQ(gitx_ff(ws, NULL, remote, "main", NULL, r, l, &moved), 0);
    ASSERT_EQ(moved, 1);
    ASSERT_STREQ(r, two);
    ASSERT_STREQ(l, head);
    char *wshead = tout1("git -C %s/ws rev-parse HEAD", g_tmp);
    ASSERT_STREQ(wshead, two);
    char *c = tout1("cat %s/ws/NEW", g_tmp);
    ASSERT_STREQ(c, "more");
    char *edit = tout1("cat %s/ws/src/main.c", g_tmp);
    ASSERT_STREQ(edit, "int main(void){return 1;}");
    /* the workspace commits: ahead, nothing to do */
    tsh("cd %s/ws && " GITC " commit -qam local", g_tmp);
    char *mine = tout1("git -C %s/ws rev-parse HEAD", g_tmp);
    ASSERT_EQ(gitx_ff(ws, NULL, remote, "main", NULL, r, l, &moved), 0);
    ASSERT_EQ(moved, 0);
    /* and the remote moves too: both ways, refused, nothing moved */
    tsh("cd %s/seed && echo third > THIRD && " GITC " add -A && " GITC " commit -qm three && " GITC
        " push -q ../remote.git main",
        g_tmp);
    char *three = tout1("git -C %s/seed rev-parse HEAD", g_tmp);
    ASSERT_EQ(gitx_ff(ws, NULL, remote, "main", NULL, r, l, &moved), ERR_CONFLICT);
    ASSERT_EQ(moved, 0);
    ASSERT_STREQ(r, three);
    ASSERT_STREQ(l, mine);
    char *still = tout1("git -C %s/ws rev-parse HEAD", g_tmp);
    ASSERT_STREQ(still, mine);
    struct stat sb;
    char *third = P("ws/THIRD");
    ASSERT(stat(third, &sb) != 0);
    /* a fresh clone with an uncommitted README edit; the remote changes README */
    char *ws2 = P("ws2");
    ASSERT_EQ(gitx_clone(remote, "main", ws2, NULL, head), 0);
    file_put("ws2/README", "mine\n");
    tsh("cd %s/seed && echo theirs > README && " GITC " commit -qam four && " GITC
        " push -q ../remote.git main",
        g_tmp);
    ASSERT_EQ(gitx_ff(ws2, NULL, remote, "main", NULL, r, l, &moved), ERR_UNPROCESSABLE);
    char *kept = tout1("cat %s/ws2/README", g_tmp);
    ASSERT_STREQ(kept, "mine");
    char *h2 = tout1("git -C %s/ws2 rev-parse HEAD", g_tmp);
    ASSERT_STREQ(h2, head);
    util_rm_rf(g_tmp);
}

static const struct test_case tests[] = {
    T(ff_only_forward),
    T(clone_sync_picks_up_new_commits),
    T(clone_unknown_branch),
    T(two_authors_two_commits_and_push),
    T(push_ignores_workspace_config),
    T(gitfile_and_alternates_refused),
    T(message_shape),
    T(refresh_index_after_copy_restats),
    T(shared_store_workspace),
    T(workspace_config_never_read),
    T(reflog_symlink_not_followed),
    T(commondir_refused),
    T(helper_confines_writes),
};
TEST_MAIN(tests)
