/*
 * test_secrets.c - AES-256-GCM sealing: round trip, aad binding, tampering, key sources.
 */
#include "testlib.h"

#include "common/err.h"
#include "common/xmem.h"
#include "server/secrets.h"

#include <fcntl.h>
#include <sys/stat.h>

TEST(seal_roundtrip_and_binding)
{
    char path[] = "/tmp/test_secrets.XXXXXX";
    ASSERT(mkdtemp(path) != NULL);
    char *kf = xasprintf("%s/master.key", path);
    struct secrets *s = NULL, *s2 = NULL, *other = NULL;
    ASSERT_EQ(secrets_new_from_file(kf, 0, &s), ERR_NOT_FOUND);
    ASSERT_EQ(secrets_new_from_file(kf, 1, &s), 0);
    struct stat sb;
    ASSERT_EQ(stat(kf, &sb), 0);
    ASSERT_EQ(sb.st_mode & 0777, 0600);
    /* the same key loads back */
    ASSERT_EQ(secrets_new_from_file(kf, 0, &s2), 0);

    const char *tok = "ghp_0123456789abcdefghijklmnopqrstuvwxyz";
    char *sealed = NULL, *plain = NULL;
    size_t n = 0;
    ASSERT_EQ(secrets_seal(s, "github:token:alice", tok, strlen(tok), &sealed), 0);
    ASSERT(strncmp(sealed, "v1.", 3) == 0);
    ASSERT(strstr(sealed, "ghp_") == NULL);
    ASSERT_EQ(secrets_unseal(s2, "github:token:alice", sealed, &plain, &n), 0);
    ASSERT_STREQ(plain, tok);
    ASSERT_EQ(n, strlen(tok));
    secrets_wipe(plain, n);
    /* two seals of the same value differ (random nonce) */
    char *sealed2 = NULL;
    ASSERT_EQ(secrets_seal(s, "github:token:alice", tok, strlen(tok), &sealed2), 0);
    ASSERT(strcmp(sealed, sealed2) != 0);
    /* bound to the user */
    ASSERT_EQ(secrets_unseal(s, "github:token:bob", sealed, &plain, &n), ERR_AUTH);
    /* tampering */
    sealed[10] = sealed[10] == 'A' ? 'B' : 'A';
    ASSERT_EQ(secrets_unseal(s, "github:token:alice", sealed, &plain, &n), ERR_AUTH);
    ASSERT_EQ(secrets_unseal(s, "github:token:alice", "v1.!!!", &plain, &n), ERR_INVALID);
    ASSERT_EQ(secrets_unseal(s, "github:token:alice", "plain", &plain, &n), ERR_INVALID);
    /* another key */
    setenv("TEST_SECRETS_KEY", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
           1);
    ASSERT_EQ(secrets_new_from_env("TEST_SECRETS_KEY", &other), 0);
    ASSERT_EQ(secrets_unseal(other, "github:token:alice", sealed2, &plain, &n), ERR_AUTH);
    setenv("TEST_SECRETS_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", 1);
    struct secrets *b64 = NULL;
    ASSERT_EQ(secrets_new_from_env("TEST_SECRETS_KEY", &b64), 0);
    char *x = NULL;
    ASSERT_EQ(secrets_seal(b64, NULL, "hi", 2, &x), 0);
    ASSERT_EQ(secrets_unseal(other, NULL, x, &plain, &n), 0); /* same key, two encodings */
    ASSERT_STREQ(plain, "hi");
    secrets_wipe(plain, n);
    setenv("TEST_SECRETS_KEY", "short", 1);
    ASSERT_EQ(secrets_new_from_env("TEST_SECRETS_KEY", &b64), ERR_INVALID);
    ASSERT_EQ(secrets_new_from_env("TEST_SECRETS_UNSET", &b64), ERR_NOT_FOUND);
    free(x);
    free(sealed);
    free(sealed2);
    secrets_free(s);
    secrets_free(s2);
    secrets_free(other);
    unlink(kf);
    rmdir(path);
    free(kf);
}

TEST(empty_value)
{
    struct secrets *s = NULL;
    setenv("TEST_SECRETS_KEY2", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
           1);
    ASSERT_EQ(secrets_new_from_env("TEST_SECRETS_KEY2", &s), 0);
    char *sealed = NULL, *plain = NULL;
    size_t n = 99;
    ASSERT_EQ(secrets_seal(s, "a", "", 0, &sealed), 0);
    ASSERT_EQ(secrets_unseal(s, "a", sealed, &plain, &n), 0);
    ASSERT_EQ(n, 0);
    ASSERT_STREQ(plain, "");
    free(plain);
    free(sealed);
    secrets_free(s);
}

static const struct test_case tests[] = {
    T(seal_roundtrip_and_binding),
    T(empty_value),
};
TEST_MAIN(tests)
