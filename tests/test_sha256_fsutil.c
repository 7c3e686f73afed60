/* sha256 against FIPS 180-4 vectors and sha256sum; fsutil's atomic write, mkdir -p,
 * rm -rf and directory commit, including the failure paths that must keep old data. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "common/err.h"
#include "common/fsutil.h"
#include "common/sha256.h"

#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[256];

static int setup(void **state)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/moet_test_fs_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    char err[ERR_MAX];
    return fs_rm_rf(tmpdir, err);
}

static void tmp_path(char *out, size_t cap, const char *name)
{
    assert_int_equal(fs_path_join(out, cap, tmpdir, name), 0);
}

static void write_plain(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Count directory entries whose name contains needle. */
static int count_matching(const char *dir, const char *needle)
{
    char cmd[1200], line[64];
    snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -c -F -- '%s'", dir, needle);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    int n = fgets(line, sizeof line, p) ? atoi(line) : -1;
    pclose(p);
    return n;
}

/* ---- sha256 ---- */

static void test_sha256_known_vectors(void **state)
{
    char hex[65];
    sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";   /* 56 bytes */
    sha256_hex(two, strlen(two), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void test_sha256_million_a_streamed_in_odd_chunks(void **state)
{
    static char a[1000000];
    memset(a, 'a', sizeof a);
    const char *want = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    char hex[65];
    sha256_hex(a, sizeof a, hex);
    assert_string_equal(hex, want);
    sha256_ctx c;                          /* chunk sizes that straddle block edges */
    sha256_init(&c);
    size_t at = 0, step = 1;
    while (at < sizeof a) {
        size_t k = sizeof a - at < step ? sizeof a - at : step;
        sha256_update(&c, a + at, k);
        at += k;
        step = step * 7 % 193 + 1;
    }
    sha256_final_hex(&c, hex);
    assert_string_equal(hex, want);
}

/* The SHA-extension path (when this CPU has it) and the portable one agree on every length
 * 0..300 and a few big ones, and both pass the FIPS vectors. */
static void test_sha256_hardware_and_portable_agree(void **state)
{
    int hw = sha256_hardware(1);
    printf("    x86 SHA extensions: %s\n", hw ? "in use" : "not on this CPU (portable code only)");
    static unsigned char buf[200000];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof buf; i++) x = x * 1103515245u + 12345u, buf[i] = (unsigned char)(x >> 16);
    size_t lens[310];
    int nl = 0;
    for (size_t n = 0; n <= 300; n++) lens[nl++] = n;
    lens[nl++] = 4096, lens[nl++] = 65536 + 7, lens[nl++] = sizeof buf;
    for (int i = 0; i < nl; i++) {
        char a[65], b[65];
        sha256_hardware(1);
        sha256_hex(buf, lens[i], a);
        sha256_hardware(0);
        sha256_hex(buf, lens[i], b);
        assert_string_equal(a, b);
    }
    for (int on = 0; on <= 1; on++) {
        char hex[65];
        sha256_hardware(on);
        sha256_hex("abc", 3, hex);
        assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
    sha256_hardware(1);
}

static void test_sha256_file_matches_sha256sum(void **state)
{
    char path[512], hex[65], err[ERR_MAX], cmd[600], want[65] = { 0 };
    tmp_path(path, sizeof path, "blob.bin");
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (int i = 0; i < 3 * 1000 * 1000 + 17; i++) fputc((i * 2654435761u) >> 24, f);  /* > 2 chunks */
    fclose(f);
    assert_int_equal(sha256_file(path, hex, err), 0);
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_int_equal(fscanf(p, "%64s", want), 1);
    pclose(p);
    assert_string_equal(hex, want);
}

static void test_sha256_file_missing_is_an_error(void **state)
{
    char hex[65], err[ERR_MAX] = "";
    assert_int_equal(sha256_file("/nonexistent/x", hex, err), -1);
    assert_non_null(strstr(err, "/nonexistent/x: cannot open"));
}

/* ---- fsutil ---- */

static void test_read_file_is_nul_terminated_and_exact(void **state)
{
    char path[512], err[ERR_MAX];
    tmp_path(path, sizeof path, "r.txt");
    write_plain(path, "hello\nworld");
    char *buf;
    size_t len;
    assert_int_equal(fs_read_file(path, &buf, &len, err), 0);
    assert_int_equal(len, 11);
    assert_string_equal(buf, "hello\nworld");
    free(buf);
    write_plain(path, "");
    assert_int_equal(fs_read_file(path, &buf, &len, err), 0);
    assert_int_equal(len, 0);
    assert_string_equal(buf, "");
    free(buf);
    assert_int_equal(fs_read_file("/nonexistent/y", &buf, &len, err), -1);
    assert_null(buf);
    assert_non_null(strstr(err, "cannot open"));
    assert_int_equal(fs_read_file(tmpdir, &buf, &len, err), -1);
    assert_non_null(strstr(err, "not a regular file"));
}

static void test_write_atomic_creates_then_replaces_leaving_no_temp(void **state)
{
    char path[512], err[ERR_MAX], *buf;
    size_t len;
    tmp_path(path, sizeof path, "a.txt");
    assert_int_equal(fs_write_atomic(path, "first", 5, err), 0);
    assert_int_equal(fs_read_file(path, &buf, &len, err), 0);
    assert_string_equal(buf, "first");
    free(buf);
    assert_int_equal(fs_write_atomic(path, "second!", 7, err), 0);
    assert_int_equal(fs_read_file(path, &buf, &len, err), 0);
    assert_string_equal(buf, "second!");
    free(buf);
    assert_int_equal(count_matching(tmpdir, ".tmp."), 0);
}

/* A write that fails half way (file-size limit: EFBIG, the same path as ENOSPC)
 * must keep the old file byte for byte and remove its temp. */
static void test_write_atomic_failure_keeps_old_content(void **state)
{
    char path[512], err[ERR_MAX] = "", *buf;
    size_t len;
    tmp_path(path, sizeof path, "keep.txt");
    assert_int_equal(fs_write_atomic(path, "old content", 11, err), 0);

    enum { BIG = 1 << 20 };
    char *big = malloc(BIG);
    memset(big, 'x', BIG);
    struct rlimit old, small;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    small = old;
    small.rlim_cur = 4096;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);    /* get EFBIG, not a signal */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    int rc = fs_write_atomic(path, big, BIG, err);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    free(big);

    assert_int_equal(rc, -1);
    assert_non_null(strstr(err, "write failed"));
    assert_int_equal(fs_read_file(path, &buf, &len, err), 0);
    assert_string_equal(buf, "old content");
    free(buf);
    assert_int_equal(count_matching(tmpdir, ".tmp."), 0);
}

/* The real thing: a 256 KiB tmpfs filled by a 1 MiB write (ENOSPC).  Needs a private
 * mount namespace (root / CAP_SYS_ADMIN); skipped where that is not allowed. */
static void test_write_atomic_on_full_disk_keeps_old_content(void **state)
{
    char mnt[512];
    tmp_path(mnt, sizeof mnt, "tiny");
    assert_int_equal(mkdir(mnt, 0755), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {                       /* child: 0 pass, 1 fail, 77 cannot mount */
        if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
            mount("none", mnt, "tmpfs", 0, "size=256k") != 0)
            _exit(77);
        char path[600], err[ERR_MAX] = "", *buf;
        size_t len;
        snprintf(path, sizeof path, "%s/f.txt", mnt);
        if (fs_write_atomic(path, "old content", 11, err) != 0) _exit(1);
        char *big = calloc(1 << 20, 1);
        int rc = fs_write_atomic(path, big, 1 << 20, err);
        int ok = rc == -1 && strstr(err, "No space left on device") &&
                 fs_read_file(path, &buf, &len, err) == 0 && !strcmp(buf, "old content") &&
                 count_matching(mnt, ".tmp.") == 0;
        _exit(ok ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77) skip();
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_write_atomic_bad_targets_fail_cleanly(void **state)
{
    char path[512], sub[512], err[ERR_MAX] = "";
    tmp_path(path, sizeof path, "plainfile");
    write_plain(path, "x");
    assert_int_equal(fs_path_join(sub, sizeof sub, path, "child.txt"), 0);
    assert_int_equal(fs_write_atomic(sub, "y", 1, err), -1);     /* parent is a file */
    assert_non_null(strstr(err, "cannot create temp file"));

    tmp_path(path, sizeof path, "adir");                        /* target is a directory */
    assert_int_equal(fs_mkdir_p(path, err), 0);
    assert_int_equal(fs_write_atomic(path, "y", 1, err), -1);
    assert_non_null(strstr(err, "rename failed"));
    assert_true(fs_is_dir(path));
    assert_int_equal(count_matching(tmpdir, ".tmp."), 0);
}

static void test_mkdir_p_nested_existing_and_blocked(void **state)
{
    char path[512], err[ERR_MAX] = "";
    tmp_path(path, sizeof path, "m/n/o/p");
    assert_false(fs_exists(path));
    assert_int_equal(fs_mkdir_p(path, err), 0);
    assert_true(fs_is_dir(path));
    assert_int_equal(fs_mkdir_p(path, err), 0);                 /* already there: fine */
    tmp_path(path, sizeof path, "plain2");
    write_plain(path, "x");
    char below[600];
    snprintf(below, sizeof below, "%s/q", path);
    assert_int_equal(fs_mkdir_p(below, err), -1);
    assert_non_null(strstr(err, "not a directory"));
}

static void test_rm_rf_removes_tree_but_not_symlink_targets(void **state)
{
    char tree[512], outside[512], p[700], err[ERR_MAX];
    tmp_path(tree, sizeof tree, "tree");
    tmp_path(outside, sizeof outside, "outside");
    snprintf(p, sizeof p, "%s/a/b", tree);
    assert_int_equal(fs_mkdir_p(p, err), 0);
    assert_int_equal(fs_mkdir_p(outside, err), 0);
    snprintf(p, sizeof p, "%s/a/b/f.txt", tree);
    write_plain(p, "f");
    snprintf(p, sizeof p, "%s/precious.txt", outside);
    write_plain(p, "keep me");
    snprintf(p, sizeof p, "%s/a/link", tree);
    assert_int_equal(symlink(outside, p), 0);
    assert_int_equal(fs_rm_rf(tree, err), 0);
    assert_false(fs_exists(tree));
    snprintf(p, sizeof p, "%s/precious.txt", outside);
    assert_true(fs_exists(p));
    assert_int_equal(fs_rm_rf(tree, err), 0);                   /* absent: not an error */
}

static void test_path_join_and_predicates(void **state)
{
    char out[16];
    assert_int_equal(fs_path_join(out, sizeof out, "a", "b"), 0);
    assert_string_equal(out, "a/b");
    assert_int_equal(fs_path_join(out, sizeof out, "a/", "b"), 0);
    assert_string_equal(out, "a/b");
    assert_int_equal(fs_path_join(out, sizeof out, "a", "/abs"), 0);
    assert_string_equal(out, "/abs");
    assert_int_equal(fs_path_join(out, sizeof out, "", "b"), 0);
    assert_string_equal(out, "b");
    assert_int_equal(fs_path_join(out, sizeof out, "0123456789", "abcdef"), -1);
    assert_true(fs_is_dir(tmpdir));
    assert_true(fs_exists(tmpdir));
    assert_false(fs_exists("/nonexistent/z"));
    assert_false(fs_is_dir("/etc/passwd"));
}

static void test_dir_commit_builds_in_temp_and_never_replaces(void **state)
{
    char final[512], tmp[600], p[700], err[ERR_MAX] = "", *buf;
    size_t len;
    tmp_path(final, sizeof final, "ckpt/step_00000001");
    assert_int_equal(fs_dir_begin(final, tmp, sizeof tmp, err), 0);
    assert_non_null(strstr(tmp, "step_00000001.tmp-"));
    assert_true(fs_is_dir(tmp));
    snprintf(p, sizeof p, "%s/sub", tmp);
    assert_int_equal(fs_mkdir_p(p, err), 0);
    snprintf(p, sizeof p, "%s/sub/state.json", tmp);
    write_plain(p, "{\"step\": 1}");
    assert_false(fs_exists(final));
    assert_int_equal(fs_dir_commit(tmp, final, err), 0);
    assert_false(fs_exists(tmp));
    snprintf(p, sizeof p, "%s/sub/state.json", final);
    assert_int_equal(fs_read_file(p, &buf, &len, err), 0);
    assert_string_equal(buf, "{\"step\": 1}");
    free(buf);

    /* A second build of the same name: commit refuses, both dirs stay as they are. */
    assert_int_equal(fs_dir_begin(final, tmp, sizeof tmp, err), 0);
    snprintf(p, sizeof p, "%s/other.txt", tmp);
    write_plain(p, "new");
    assert_int_equal(fs_dir_commit(tmp, final, err), -1);
    assert_non_null(strstr(err, "already exists"));
    assert_true(fs_exists(p));
    snprintf(p, sizeof p, "%s/sub/state.json", final);
    assert_true(fs_exists(p));
    snprintf(p, sizeof p, "%s/other.txt", final);
    assert_false(fs_exists(p));
    /* A stale temp of the same pid is cleared by the next begin. */
    assert_int_equal(fs_dir_begin(final, tmp, sizeof tmp, err), 0);
    snprintf(p, sizeof p, "%s/other.txt", tmp);
    assert_false(fs_exists(p));
    assert_int_equal(fs_rm_rf(tmp, err), 0);
}

/* err_quote: what reaches an error line from user input is printable and bounded. */
static void test_err_quote_escapes_controls_invalid_utf8_and_cuts(void **state)
{
    char b[64];
    assert_string_equal(err_quote(b, sizeof b, "WZ\x13;\x1b[31m", -1, 64), "WZ\\x13;\\x1B[31m");
    assert_string_equal(err_quote(b, sizeof b, "caf\xc3\xa9 \xe2\x96\x81x", -1, 64), "caf\xc3\xa9 \xe2\x96\x81x");
    assert_string_equal(err_quote(b, sizeof b, "\xc3\x28\xff\xc0\xaf", -1, 64), "\\xC3(\\xFF\\xC0\\xAF");
    assert_string_equal(err_quote(b, sizeof b, "\xed\xa0\x80", -1, 64), "\\xED\\xA0\\x80"); /* surrogate */
    assert_string_equal(err_quote(b, sizeof b, "\xc2\x85", -1, 64), "\\xC2\\x85");          /* C1 NEL */
    assert_string_equal(err_quote(b, sizeof b, "a'b\"c\\", -1, 64), "a\\'b\\\"c\\\\");
    assert_string_equal(err_quote(b, sizeof b, "a\0b", 3, 64), "a\\x00b");
    assert_string_equal(err_quote(b, sizeof b, "abcdefghij", -1, 4), "abcd...");
    char big[1000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    err_quote(b, sizeof b, big, -1, 1000);
    assert_true(strlen(b) < sizeof b);
    assert_string_equal(b + strlen(b) - 3, "...");
    assert_string_equal(err_q(NULL, -1), "(null)");
    const char *q1 = err_q("one", -1), *q2 = err_q("two\n", -1);
    assert_string_equal(q1, "one"); /* two calls in one err_set stay distinct */
    assert_string_equal(q2, "two\\x0A");
}

/* A message cut at ERR_MAX (err_set) or at a half (err_wrap) never ends inside a UTF-8
 * character: the fuzzers check every message is valid UTF-8. */
static void test_err_messages_cut_at_a_character_boundary(void **state)
{
    char text[2000], err[ERR_MAX];
    for (int shift = 0; shift < 3; shift++) {
        int n = 0;
        for (int i = 0; i < shift; i++) text[n++] = 'x';
        while (n < 1990) memcpy(text + n, "\xe6\x97\xa5", 3), n += 3; /* 日, 3 bytes */
        text[n] = 0;
        err_set(err, "%s", text);
        assert_true(strlen(err) < ERR_MAX && strlen(err) >= ERR_MAX - 4);
        assert_int_equal((strlen(err) - shift) % 3, 0);
        err_set(err, "%s", text + shift + 600); /* starts on a character */
        err_wrap(err, "%s", text);
        size_t half = strcspn(err, ":");
        assert_int_equal((half - shift) % 3, 0); /* the prefix half ends on a whole character */
        assert_int_equal(err[half + 1], ' ');
        assert_int_equal((strlen(err) - half - 2) % 3, 0);
    }
    err_set(err, "short");
    err_wrap(err, "ctx %d", 1);
    assert_string_equal(err, "ctx 1: short");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_known_vectors),
        cmocka_unit_test(test_sha256_million_a_streamed_in_odd_chunks),
        cmocka_unit_test(test_sha256_hardware_and_portable_agree),
        cmocka_unit_test(test_sha256_file_matches_sha256sum),
        cmocka_unit_test(test_sha256_file_missing_is_an_error),
        cmocka_unit_test(test_read_file_is_nul_terminated_and_exact),
        cmocka_unit_test(test_write_atomic_creates_then_replaces_leaving_no_temp),
        cmocka_unit_test(test_write_atomic_failure_keeps_old_content),
        cmocka_unit_test(test_write_atomic_on_full_disk_keeps_old_content),
        cmocka_unit_test(test_write_atomic_bad_targets_fail_cleanly),
        cmocka_unit_test(test_mkdir_p_nested_existing_and_blocked),
        cmocka_unit_test(test_rm_rf_removes_tree_but_not_symlink_targets),
        cmocka_unit_test(test_path_join_and_predicates),
        cmocka_unit_test(test_err_quote_escapes_controls_invalid_utf8_and_cuts),
        cmocka_unit_test(test_err_messages_cut_at_a_character_boundary),
        cmocka_unit_test(test_dir_commit_builds_in_temp_and_never_replaces),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
