/*
 * test_repos.c - the repository layer against real git on disk and the `process` sandbox
 * backend: registry CRUD, image builds (ok and failing step), session start order (clone,
 * image, warm, snapshot), warm expiry and invalidation by a newer image, per-author commits,
 * snapshots + rollback, push to a bare remote, events.
 */
#include "testlib.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmem.h"
#include "sandbox/outpump.h"
#include "workspace/repos.h"
#include "sandbox/sbx.h"
#include "storage/registry.h"
#include "storage/store.h"

#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_tmp[256];
static struct store *g_store;
static struct outpump *g_pump;
static struct sbx_backend *g_be;
static struct repos *g_repos;
static char *g_data; /* borrowed by the sandbox backend's config: lives until teardown */

#define GITC "git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"

static void setup_with(int pool_max_age_s)
{
    log_set_level(LOG_LEVEL_WARN);
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/test_repos.XXXXXX");
    ASSERT(mkdtemp(g_tmp) != NULL);
    tsh("cd %s && " GITC " init -q --bare remote.git && " GITC " init -q seed && cd seed && "
        "echo hello > README && mkdir lib && for i in $(seq 1 40); do echo $i > lib/f$i; done "
        "&& " GITC " add -A && " GITC " commit -qm init && " GITC " push -q ../remote.git main",
        g_tmp);
    char *data = g_data = xasprintf("%s/data", g_tmp);
    struct store_config sc = {.data_dir = data};
    ASSERT_EQ(store_open(&sc, &g_store), 0);
    ASSERT_EQ(outpump_start(&g_pump), 0);
    struct sbx_config bc = {.backend = "process", .data_dir = data};
    ASSERT_EQ(sbx_backend_open(&bc, g_pump, &g_be), 0);
    struct repos_config rc = {.data_dir = data,
                              .store = g_store,
                              .sbx = g_be,
                              .no_threads = 1,
                              .pool_max_age_s = pool_max_age_s};
    ASSERT_EQ(repos_open(&rc, &g_repos), 0);
}

static void teardown(void)
{
    repos_close(g_repos);
    sbx_backend_free(g_be);
    outpump_stop(g_pump);
    store_close(g_store);
    util_rm_rf(g_tmp);
    free(g_data);
    g_data = NULL;
}

static void add_repo(const char *name, const char *setup_json, int pool_size)
{
    char body[1024];
    snprintf(body, sizeof(body),
             "{\"name\":\"%s\",\"url\":\"%s/remote.git\",\"setup\":%s,\"pool_size\":%d,"
             "\"image_interval_min\":0}",
             name, g_tmp, setup_json, pool_size);
    json_t *spec = json_loads(body, 0, NULL);
    char msg[256];
    json_t *out = NULL;
    int rc = repos_create(g_repos, spec, &out, msg, sizeof(msg));
    if (rc != 0) {
        TFAIL("create: %s", msg);
    }
    json_decref(spec);
    json_decref(out);
}

static void new_session(const char *sid)
{
    struct session_new n = {.id = sid, .repo = "app", .visibility = "org", .created_by = "t"};
    ASSERT_EQ(registry_session_create(store_registry(g_store), &n, NULL), 0);
    ASSERT_EQ(store_session_create(g_store, sid), 0);
}

static char *ws_of(const char *sid)
{
    return xasprintf("%s/data/workspaces/%s", g_tmp, sid);
}

static char *start(const char *sid, char *source)
{
    char *ws = ws_of(sid);
    int64_t ms = -1;
    int rc = repos_prepare_workspace(g_repos, sid, "app", ws, source, &ms);
    if (rc != 0) {
        TFAIL("prepare %s: %s", sid, err_str(rc));
    }
    ASSERT(ms >= 0);
    fprintf(stderr, "# %s ready from %s in %lld ms\n", sid, source, (long long)ms);
    return ws;
}

static json_t *image0(const char *repo)
{
    json_t *imgs = NULL;
    ASSERT_EQ(repos_images(g_repos, repo, &imgs), 0);
    json_t *first = json_incref(json_array_get(json_object_get(imgs, "images"), 0));
    json_decref(imgs);
    return first;
}

/* Count events of type in session sid. */
static int count_events(const char *sid, const char *type)
{
    struct sess *s = NULL;
    struct buf b;
    int count = 0, n = 0;
    int64_t last = 0;
    buf_init(&b, 0);
    ASSERT_EQ(store_session_get(g_store, sid, &s), 0);
    ASSERT_EQ(sess_events(s, 0, 1000, &b, &count, &last), 0);
    sess_put(s);
    char pat[128];
    snprintf(pat, sizeof(pat), "\"type\":\"%s\"", type);
    for (const char *p = b.data; p && (p = strstr(p, pat)); p++) {
        n++;
    }
    buf_free(&b);
    return n;
}

TEST(registry_crud)
{
    setup_with(0);
    char msg[256];
    json_t *out = NULL;
    const char *bad[] = {
        "{\"name\":\"a b\",\"url\":\"https://x/y\"}",
        "{\"name\":\"ok\",\"url\":\"ftp://x/y\"}",
        "{\"name\":\"ok\",\"url\":\"https://x/y\",\"colour\":1}",
        "{\"name\":\"ok\",\"url\":\"https://x/y\",\"setup\":\"make\"}",
        "{\"name\":\"ok\",\"url\":\"https://x/y\",\"pool_size\":99}",
        "{\"name\":\"ok\",\"url\":\"https://x/y\",\"default_branch\":\"a..b\"}",
        "{\"url\":\"https://x/y\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *spec = json_loads(bad[i], 0, NULL);
        ASSERT(spec != NULL);
        if (repos_create(g_repos, spec, &out, msg, sizeof(msg)) != ERR_INVALID) {
            TFAIL("accepted %s", bad[i]);
        }
        json_decref(spec);
    }
    json_t *spec = json_loads("{\"name\":\"web\",\"url\":\"https://github.com/o/web.git\","
                              "\"setup\":[\"npm ci\"],\"hints\":[\"UI\"],\"description\":\"d\"}",
                              0, NULL);
    ASSERT_EQ(repos_create(g_repos, spec, &out, msg, sizeof(msg)), 0);
    ASSERT_STREQ(json_string_value(json_object_get(out, "default_branch")), "main");
    ASSERT_EQ(json_integer_value(json_object_get(out, "pool_size")), 2);
    ASSERT_EQ(json_integer_value(json_object_get(out, "image_interval_min")), 30);
    json_decref(out);
    ASSERT_EQ(repos_create(g_repos, spec, &out, msg, sizeof(msg)), ERR_CONFLICT);
    json_decref(spec);
    json_t *patch = json_loads("{\"pool_size\":0,\"hints\":[\"a\",\"b\"]}", 0, NULL);
    ASSERT_EQ(repos_update(g_repos, "web", patch, &out, msg, sizeof(msg)), 0);
    ASSERT_EQ(json_integer_value(json_object_get(out, "pool_size")), 0);
    ASSERT_EQ(json_array_size(json_object_get(out, "hints")), 2);
    ASSERT_STREQ(json_string_value(json_object_get(out, "url")), "https://github.com/o/web.git");
    json_decref(out);
    json_decref(patch);
    patch = json_loads("{\"name\":\"other\"}", 0, NULL);
    ASSERT_EQ(repos_update(g_repos, "web", patch, &out, msg, sizeof(msg)), ERR_INVALID);
    json_decref(patch);
    ASSERT_EQ(repos_list(g_repos, &out), 0);
    ASSERT_EQ(json_array_size(json_object_get(out, "repos")), 1);
    json_decref(out);
    ASSERT_EQ(repos_delete(g_repos, "web"), 0);
    ASSERT_EQ(repos_delete(g_repos, "web"), ERR_NOT_FOUND);
    ASSERT_EQ(repos_get(g_repos, "web", &out), ERR_NOT_FOUND);
    teardown();
}

TEST(image_build_ok_and_failing_step)
{
    setup_with(0);
    add_repo("app", "[\"echo built > built.txt\",\"echo to-stdout; echo to-stderr >&2\"]", 0);
    json_t *row = NULL;
    ASSERT_EQ(repos_image_build(g_repos, "app", &row), 0);
    json_decref(row);
    json_t *img = image0("app");
    ASSERT_STREQ(json_string_value(json_object_get(img, "state")), "ready");
    char *seed = tout1("git -C %s/seed rev-parse HEAD", g_tmp);
    ASSERT_STREQ(json_string_value(json_object_get(img, "commit_sha")), seed);
    ASSERT(json_integer_value(json_object_get(img, "files")) >= 2);
    const char *log = json_string_value(json_object_get(img, "log_tail"));
    ASSERT(strstr(log, "$ echo built > built.txt") != NULL);
    ASSERT(strstr(log, "to-stderr") != NULL);
    json_decref(img);

    json_t *patch = json_loads("{\"setup\":[\"echo step-one\",\"echo oops >&2; exit 3\","
                               "\"echo never\"]}",
                               0, NULL);
    char msg[128];
    ASSERT_EQ(repos_update(g_repos, "app", patch, &row, msg, sizeof(msg)), 0);
    json_decref(row);
    json_decref(patch);
    ASSERT_EQ(repos_image_build(g_repos, "app", &row), 0);
    json_decref(row);
    img = image0("app");
    ASSERT_STREQ(json_string_value(json_object_get(img, "state")), "failed");
    const char *err = json_string_value(json_object_get(img, "error"));
    ASSERT(strstr(err, "setup step 2") != NULL);
    ASSERT(strstr(err, "exit code 3") != NULL);
    log = json_string_value(json_object_get(img, "log_tail"));
    ASSERT(strstr(log, "step-one") && strstr(log, "oops") && !strstr(log, "$ echo never"));
    json_decref(img);
    /* the failed build does not replace the ready image: a session starts from it */
    new_session("s_img");
    char src[16];
    char *ws = start("s_img", src);
    ASSERT_STREQ(src, "image");
    char *b = tout1("cat %s/built.txt", ws);
    ASSERT_STREQ(b, "built");
    teardown();
}

TEST(start_order_clone_image_warm_snapshot)
{
    setup_with(0);
    add_repo("app", "[\"date +%s%N > stamp\"]", 1);
    char src[16];
    /* no image yet: clone */
    new_session("s_clone");
    char *ws = start("s_clone", src);
    ASSERT_STREQ(src, "clone");
    struct stat sb;
    char *p = xasprintf("%s/README", ws);
    ASSERT_EQ(stat(p, &sb), 0);
    free(p);

    json_t *row = NULL;
    ASSERT_EQ(repos_image_build(g_repos, "app", &row), 0);
    json_decref(row);
    /* a commit lands after the image was built: the image start syncs to it */
    tsh("cd %s/seed && echo v2 > README && " GITC " commit -qam v2 && " GITC
        " push -q ../remote.git main",
        g_tmp);
    char *head = tout1("git -C %s/seed rev-parse HEAD", g_tmp);
    /* The seeded stat cache vouches only for files older than its creation minus snap.c's
     * racily-clean window (100 ms): the image's files were checked out moments ago, so let
     * them age past it (otherwise, on a fast run, every file is hashed again). */
    usleep(250 * 1000);
    new_session("s_image");
    ws = start("s_image", src);
    ASSERT_STREQ(src, "image");
    char *h = tout1("git -C %s rev-parse HEAD", ws);
    ASSERT_STREQ(h, head);
    char *stamp_image = tout1("cat %s/stamp", ws);
    ASSERT(strlen(stamp_image) > 5);
    struct author ia = {"token:ivy", "Ivy", "ivy@example.com"};
    json_t *ir = NULL, *isl = NULL;
    ASSERT_EQ(repos_after_prompt(g_repos, "s_image", ws, "p_i", &ia, "nothing", &ir), 0);
    json_decref(ir);
    ASSERT_EQ(repos_snapshots(g_repos, "s_image", &isl), 0);
    json_t *is0 = json_array_get(json_object_get(isl, "snapshots"), 0);
    fprintf(stderr, "# image first snapshot: %lld of %lld files hashed\n",
            (long long)json_integer_value(json_object_get(is0, "hashed")),
            (long long)json_integer_value(json_object_get(is0, "files")));
    /* lib/ (40 files) is unchanged since the image: none of it is read again */
    ASSERT(json_integer_value(json_object_get(is0, "hashed")) <=
           json_integer_value(json_object_get(is0, "files")) - 40);
    json_decref(isl);

    /* warm: fill the pool, claim it */
    ASSERT_EQ(repos_pool_fill(g_repos, "app"), 0);
    json_t *w = NULL;
    ASSERT_EQ(repos_warm(g_repos, "app", &w), 0);
    ASSERT_EQ(json_integer_value(json_object_get(w, "warm")), 1);
    json_decref(w);
    new_session("s_warm");
    ws = start("s_warm", src);
    ASSERT_STREQ(src, "warm");
    h = tout1("git -C %s rev-parse HEAD", ws);
    ASSERT_STREQ(h, head);
    char *stamp = tout1("cat %s/stamp", ws);
    ASSERT_STREQ(stamp, stamp_image);
    ASSERT_EQ(repos_warm(g_repos, "app", &w), 0);
    ASSERT_EQ(json_integer_value(json_object_get(w, "warm")), 0);
    json_decref(w);

    /* snapshot: a session that ran a prompt and lost its workspace gets it back */
    tsh("echo work > %s/mywork.txt", ws);
    struct author a = {"token:alice", "Alice", "alice@example.com"};
    json_t *res = NULL;
    ASSERT_EQ(repos_after_prompt(g_repos, "s_warm", ws, "p_1", &a, "add my work", &res), 0);
    ASSERT_STREQ(json_string_value(json_object_get(res, "snapshot_id")), "snap-000001");
    json_decref(res);
    /* the warm workspace came with a seeded snapshot store: the first snapshot reads only
     * what changed since the image (the new file, git's index and refs) */
    json_t *sl = NULL;
    ASSERT_EQ(repos_snapshots(g_repos, "s_warm", &sl), 0);
    json_t *s0 = json_array_get(json_object_get(sl, "snapshots"), 0);
    fprintf(stderr, "# warm first snapshot: %lld of %lld files hashed\n",
            (long long)json_integer_value(json_object_get(s0, "hashed")),
            (long long)json_integer_value(json_object_get(s0, "files")));
    ASSERT(json_integer_value(json_object_get(s0, "hashed")) <=
           json_integer_value(json_object_get(s0, "files")) - 40);
    json_decref(sl);
    util_rm_rf(ws);
    ws = start("s_warm", src);
    ASSERT_STREQ(src, "snapshot");
    char *work = tout1("cat %s/mywork.txt", ws);
    ASSERT_STREQ(work, "work");
    ASSERT_EQ(count_events("s_warm", "session.snapshot"), 1);
    ASSERT_EQ(count_events("s_warm", "git.commit"), 1);
    teardown();
}

TEST(warm_expiry_and_invalidation)
{
    setup_with(1);
    add_repo("app", "[\"date +%s%N > stamp\"]", 1);
    json_t *row = NULL, *w = NULL;
    ASSERT_EQ(repos_image_build(g_repos, "app", &row), 0);
    json_decref(row);
    ASSERT_EQ(repos_pool_fill(g_repos, "app"), 0);
    ASSERT_EQ(repos_warm(g_repos, "app", &w), 0);
    ASSERT_EQ(json_integer_value(json_object_get(w, "warm")), 1);
    const char *first_img = json_string_value(json_object_get(w, "image_id"));
    char *img1 = xstrdup(first_img);
    json_decref(w);
    /* a newer image invalidates the warm workspace at once */
    ASSERT_EQ(repos_image_build(g_repos, "app", &row), 0);
    json_decref(row);
    new_session("s_inv");
    char src[16];
    char *ws = start("s_inv", src);
    ASSERT_STREQ(src, "image"); /* the warm one was made from the old image */
    ASSERT_EQ(repos_pool_fill(g_repos, "app"), 0);
    ASSERT_EQ(repos_warm(g_repos, "app", &w), 0);
    ASSERT_EQ(json_integer_value(json_object_get(w, "warm")), 1);
    ASSERT(strcmp(json_string_value(json_object_get(w, "image_id")), img1) != 0);
    json_decref(w);
    /* expiry: max_age is 1 s here */
    sleep(2);
    new_session("s_exp");
    ws = start("s_exp", src);
    ASSERT_STREQ(src, "image");
    free(ws);
    free(img1);
    teardown();
}

TEST(two_authors_commit_rollback_push)
{
    setup_with(0);
    add_repo("app", "[]", 0);
    new_session("s_git");
    char src[16];
    char *ws = start("s_git", src);
    ASSERT_STREQ(src, "clone");
    struct author alice = {"token:alice", "Alice", "alice@example.com"};
    struct author bob = {"token:bob", "Bob", "bob@example.com"};
    /* bob has his own GitHub token stored: no trailer for him */
    ASSERT_EQ(repos_cred_put(g_repos, "token:bob", "github", "v1.sealed-blob"), 0);
    char *sealed = NULL;
    ASSERT_EQ(repos_cred_get(g_repos, "token:bob", "github", &sealed), 0);
    ASSERT_STREQ(sealed, "v1.sealed-blob");
    free(sealed);

    tsh("echo one > %s/a.txt", ws);
    json_t *res = NULL;
    ASSERT_EQ(repos_after_prompt(g_repos, "s_git", ws, "p_1", &alice, "Add a\nplease", &res), 0);
    ASSERT(json_is_object(json_object_get(res, "commit")));
    ASSERT_EQ(json_integer_value(json_object_get(res, "turn")), 1);
    json_decref(res);
    tsh("echo two > %s/a.txt && echo b > %s/b.txt", ws, ws);
    ASSERT_EQ(repos_after_prompt(g_repos, "s_git", ws, "p_2", &bob, "Change a, add b", &res), 0);
    ASSERT_EQ(json_integer_value(json_object_get(res, "turn")), 2);
    json_decref(res);
    /* a prompt that changes nothing: a snapshot, no commit */
    ASSERT_EQ(repos_after_prompt(g_repos, "s_git", ws, "p_3", &alice, "look around", &res), 0);
    ASSERT(json_is_null(json_object_get(res, "commit")));
    json_decref(res);

    char *l1 = tout1("git -C %s log -1 --skip=1 --format='%%an|%%ae|%%cn|%%ce' HEAD", ws);
    ASSERT_STREQ(l1, "Alice|alice@example.com|Alice|alice@example.com");
    char *l2 = tout1("git -C %s log -1 --format='%%an|%%ae|%%cn|%%ce' HEAD", ws);
    ASSERT_STREQ(l2, "Bob|bob@example.com|Bob|bob@example.com");
    char *t1 =
        tout1("git -C %s log -1 --skip=1 --format='%%(trailers:key=Co-authored-by,valueonly)'"
              " HEAD",
              ws);
    ASSERT_STREQ(t1, "Alice <alice@example.com>");
    char *t2 =
        tout1("git -C %s log -1 --format='%%(trailers:key=Co-authored-by,valueonly)' HEAD", ws);
    ASSERT_STREQ(t2, "");
    char *br = tout1("git -C %s symbolic-ref --short HEAD", ws);
    ASSERT_STREQ(br, "sessiond/s_git");
    ASSERT_EQ(count_events("s_git", "git.commit"), 2);
    ASSERT_EQ(count_events("s_git", "session.snapshot"), 3);

    /* push reaches the bare remote */
    json_t *pushed = NULL;
    ASSERT_EQ(repos_push(g_repos, "s_git", ws, NULL, &pushed), 0);
    char *rh = tout1("git --git-dir=%s/remote.git rev-parse sessiond/s_git", g_tmp);
    ASSERT_STREQ(json_string_value(json_object_get(pushed, "sha")), rh);
    json_decref(pushed);
    char *authors = tout1("git --git-dir=%s/remote.git log --format=%%an sessiond/s_git | "
                          "head -2 | tr '\\n' ,",
                          g_tmp);
    ASSERT_STREQ(authors, "Bob,Alice,");

    /* rollback to turn 1 */
    json_t *snaps = NULL;
    ASSERT_EQ(repos_snapshots(g_repos, "s_git", &snaps), 0);
    ASSERT_EQ(json_array_size(json_object_get(snaps, "snapshots")), 3);
    json_decref(snaps);
    ASSERT_EQ(repos_rollback(g_repos, "s_git", "snap-000001", ws, &res), 0);
    json_decref(res);
    char *a = tout1("cat %s/a.txt", ws);
    ASSERT_STREQ(a, "one");
    struct stat sb;
    char *bp = xasprintf("%s/b.txt", ws);
    ASSERT(stat(bp, &sb) != 0);
    free(bp);
    char *n = tout1("git -C %s rev-list --count HEAD", ws);
    ASSERT_STREQ(n, "2"); /* init + alice: git state rolled back too */
    ASSERT_EQ(repos_rollback(g_repos, "s_git", "snap-000099", ws, &res), ERR_NOT_FOUND);
    ASSERT_EQ(count_events("s_git", "session.rollback"), 1);
    teardown();
}

/* issue 5: images share one object store per repository (git alternates) instead of a copy of
 * the packs in every image and workspace; commits, push to an empty remote, snapshots,
 * rollback and a restore after the workspace is gone all still work through it. */
TEST(shared_store_alternates)
{
    setup_with(0);
    add_repo("app", "[\"git rev-parse HEAD > built-at\"]", 0);
    json_t *row = NULL;
    ASSERT_EQ(repos_image_build(g_repos, "app", &row), 0);
    json_decref(row);
    json_t *img = image0("app");
    ASSERT_STREQ(json_string_value(json_object_get(img, "state")), "ready");
    json_decref(img);
    char *abs = realpath(g_tmp, NULL);
    ASSERT(abs != NULL);
    char *objects = xasprintf("%s/data/repos/app/objects.git/objects", abs);
    free(abs);
    /* the image holds no pack: it lives in the shared store only */
    char *img_packs = tout1("for f in $(find %s/data/repos/app/images -type f); do head -c 4 $f; "
                            "echo; done | grep -c '^PACK' || true",
                            g_tmp);
    ASSERT_STREQ(img_packs, "0");
    /* the store has the objects (a local remote's loose objects are copied as they are) */
    char *in_store = tout1("git --git-dir=%s/.. cat-file -e $(git -C %s/seed rev-parse HEAD)"
                           " && echo yes",
                           objects, g_tmp);
    ASSERT_STREQ(in_store, "yes");

    new_session("s_alt");
    char src[16];
    char *ws = start("s_alt", src);
    ASSERT_STREQ(src, "image");
    char *alt = tout1("cat %s/.git/objects/info/alternates", ws);
    ASSERT_STREQ(alt, objects);
    /* no pack, no loose object: only the alternates file */
    char *packs = tout1("find %s/.git/objects -type f ! -path '*/info/alternates' | wc -l", ws);
    ASSERT_STREQ(packs, "0");
    char *built = tout1("cat %s/built-at", ws); /* git worked in the setup sandbox */
    char *head = tout1("git -C %s rev-parse HEAD", ws);
    ASSERT_STREQ(built, head);
    char *st = tout1("git -C %s status --porcelain | grep -v built-at | wc -l", ws);
    ASSERT_STREQ(st, "0");

    /* a commit by the prompt's author, then a push to a fresh, empty bare remote: the pack
     * must carry the objects borrowed from the store too */
    tsh("echo one > %s/a.txt", ws);
    struct author alice = {"token:alice", "Alice", "alice@example.com"};
    json_t *res = NULL;
    ASSERT_EQ(repos_after_prompt(g_repos, "s_alt", ws, "p_1", &alice, "Add a", &res), 0);
    ASSERT(json_is_object(json_object_get(res, "commit")));
    json_decref(res);
    tsh("cd %s && git init -q --bare empty.git", g_tmp);
    char body[512];
    snprintf(body, sizeof(body), "{\"url\":\"%s/empty.git\"}", g_tmp);
    json_t *patch = json_loads(body, 0, NULL), *upd = NULL;
    char msg[256];
    ASSERT_EQ(repos_update(g_repos, "app", patch, &upd, msg, sizeof(msg)), 0);
    json_decref(patch);
    json_decref(upd);
    json_t *pushed = NULL;
    ASSERT_EQ(repos_push(g_repos, "s_alt", ws, NULL, &pushed), 0);
    json_decref(pushed);
    tsh("cd %s && git clone -q -b sessiond/s_alt empty.git check && git -C check fsck --full "
        ">/dev/null 2>&1 && git --git-dir=empty.git fsck --full >/dev/null 2>&1",
        g_tmp);
    char *count = tout1("git -C %s/check rev-list --count HEAD", g_tmp);
    ASSERT_STREQ(count, "2");
    char *files = tout1("git -C %s/check ls-files | wc -l", g_tmp);
    ASSERT_STREQ(files, "43"); /* README, lib/f1..f40, built-at, a.txt */

    /* snapshot (turn 2), rollback to turn 1, then a restore after the workspace is gone */
    tsh("echo two > %s/a.txt && echo b > %s/b.txt", ws, ws);
    ASSERT_EQ(repos_after_prompt(g_repos, "s_alt", ws, "p_2", &alice, "Change a", &res), 0);
    json_decref(res);
    ASSERT_EQ(repos_rollback(g_repos, "s_alt", "snap-000001", ws, &res), 0);
    json_decref(res);
    char *a = tout1("cat %s/a.txt", ws);
    ASSERT_STREQ(a, "one");
    char *n = tout1("(git -C %s rev-list --count HEAD && git -C %s fsck >/dev/null 2>&1 && "
                    "git -C %s status --porcelain | wc -l) | tr '\\n' ,",
                    ws, ws, ws);
    ASSERT_STREQ(n, "2,0,");
    util_rm_rf(ws);
    ws = start("s_alt", src);
    ASSERT_STREQ(src, "snapshot");
    n = tout1("(git -C %s log --format=%%an | head -1 && git -C %s status --porcelain | wc -l && "
              "find %s/.git/objects -type f -name '*.pack' | wc -l) | tr '\\n' ,",
              ws, ws, ws);
    ASSERT_STREQ(n, "Alice,0,0,");
    alt = tout1("cat %s/.git/objects/info/alternates", ws);
    ASSERT_STREQ(alt, objects);

    /* the host never follows an alternates file the agent rewrote: commits keep working
     * against the store the registry names, and the repo's deletion keeps the store */
    tsh("echo /nonexistent/objects > %s/.git/objects/info/alternates && echo c > %s/c.txt", ws, ws);
    ASSERT_EQ(repos_after_prompt(g_repos, "s_alt", ws, "p_3", &alice, "Add c", &res), 0);
    ASSERT(json_is_object(json_object_get(res, "commit")));
    json_decref(res);
    ASSERT_EQ(repos_delete(g_repos, "app"), 0);
    struct stat sb;
    ASSERT_EQ(stat(objects, &sb), 0);
    free(objects);
    teardown();
}

static const struct test_case tests[] = {
    T(registry_crud),
    T(image_build_ok_and_failing_step),
    T(start_order_clone_image_warm_snapshot),
    T(warm_expiry_and_invalidation),
    T(two_authors_commit_rollback_push),
    T(shared_store_alternates),
};
TEST_MAIN(tests)
