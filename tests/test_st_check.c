/* Weights must be finite (st_check_finite), and safetensors errors show names from the file
 * quoted: issue 14's non-finite weights (a NaN reached model_expf) and raw bytes echoed in
 * messages.  The commands that load weights are covered end to end in t_bad_weights.sh. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "checkpoints/st.h"
#include "tests/tmpdir.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static int setup(void **state) { return tmpdir_make("moet_test_st_check"); }
static int teardown(void **state) { return tmpdir_remove(); }

/* One tensor "w" of n values of dtype (from fp32 v, or raw when dtype is F64) written and
 * checked; returns st_check_finite's result with its message in err. */
static int check_one(st_dtype dtype, const float *v, const double *d, int64_t n, char *err)
{
    st_out o = {.name = "model.layers.0.w", .ndim = 1, .shape = {n}, .dtype = dtype};
    if (dtype == ST_F64) o.raw = d;
    else o.f32 = v;
    char e2[ERR_MAX];
    const char *path = tmp_path("w.safetensors");
    assert_int_equal(st_write(path, &o, 1, NULL, e2), 0);
    st_file *f;
    assert_int_equal(st_open(&f, path, e2), 0);
    err[0] = 0;
    int rc = st_check_finite(st_find(f, "model.layers.0.w"), err);
    st_close(f);
    return rc;
}

static void test_finite_weights_pass_and_the_first_bad_element_is_named(void **state)
{
    enum { N = 10000 }; /* spans three blocks of the vectorised sweep */
    float *v = malloc(N * sizeof *v);
    double *d = malloc(N * sizeof *d);
    for (int i = 0; i < N; i++) v[i] = d[i] = sinf((float)i) * 3e4f; /* f16 holds up to 65504 */
    char err[ERR_MAX];
    const st_dtype kinds[] = {ST_F32, ST_BF16, ST_F16, ST_F64};
    const struct { float bad; const char *word; } cases[] = {{NAN, "NaN"}, {INFINITY, "inf"}, {-INFINITY, "-inf"}};
    for (int k = 0; k < 4; k++) {
        assert_int_equal(check_one(kinds[k], v, d, N, err), 0);
        for (int c = 0; c < 3; c++) {
            v[5000] = d[5000] = cases[c].bad;
            v[7000] = d[7000] = NAN; /* a later one is not the one reported */
            assert_int_equal(check_one(kinds[k], v, d, N, err), -1);
            char want[128];
            snprintf(want, sizeof want, "tensor 'model.layers.0.w': element 5000 of 10000 is %s (", cases[c].word);
            printf("    %-4s %s\n", st_dtype_name(kinds[k]), err);
            assert_non_null(strstr(err, want));
            v[5000] = d[5000] = v[7000] = d[7000] = 1;
        }
    }
    d[N - 1] = 1e300; /* finite as a double, not as the fp32 it becomes */
    assert_int_equal(check_one(ST_F64, v, d, N, err), -1);
    assert_non_null(strstr(err, "element 9999 of 10000 is 1e+300, beyond fp32's range"));
    float big = 3.4e38f; /* finite fp32 extremes pass */
    v[0] = big, v[1] = -big, v[2] = 1e-45f;
    assert_int_equal(check_one(ST_F32, v, d, N, err), 0);
    free(v);
    free(d);
}

static void test_large_tensor_check_runs_in_parallel_and_finds_the_first(void **state)
{
    enum { N = (1 << 22) + 12345 }; /* over the threshold of the OpenMP sweep */
    float *v = calloc(N, sizeof *v);
    char err[ERR_MAX];
    v[N - 1] = NAN, v[3000001] = INFINITY, v[N - 7] = NAN;
    assert_int_equal(check_one(ST_F32, v, NULL, N, err), -1);
    assert_non_null(strstr(err, "element 3000001 of 4206649 is inf"));
    free(v);
}

static void test_integer_tensors_are_not_checked(void **state)
{
    int64_t ids[3] = {-1, INT64_MAX, 0x7FF8000000000000LL}; /* the last is a NaN's bit pattern */
    st_out o = {.name = "ids", .ndim = 1, .shape = {3}, .dtype = ST_I64, .raw = ids};
    char err[ERR_MAX];
    assert_int_equal(st_write(tmp_path("i.safetensors"), &o, 1, NULL, err), 0);
    st_file *f;
    assert_int_equal(st_open(&f, tmp_path("i.safetensors"), err), 0);
    assert_int_equal(st_check_finite(st_find(f, "ids"), err), 0);
    st_close(f);
}

/* A header naming a tensor with an ESC sequence and a newline (legal JSON escapes): the
 * messages about it show \x1B and \x0A, never the bytes. */
static void test_names_from_the_file_are_quoted_in_errors(void **state)
{
    const char *hdr = "{\"w\\u001b[31m\\n\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"z\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    size_t hl = strlen(hdr);
    char *buf = calloc(1, 8 + hl + 4), err[ERR_MAX];
    uint64_t n = hl;
    memcpy(buf, &n, 8);
    memcpy(buf + 8, hdr, hl);
    const char *path = tmp_path("esc.safetensors");
    assert_int_equal(fs_write_atomic(path, buf, 8 + hl + 4, err), 0);
    st_file *f;
    assert_int_equal(st_open(&f, path, err), -1);
    printf("    %s\n", err);
    assert_non_null(strstr(err, "tensors 'w\\x1B[31m\\x0A' and 'z' overlap"));
    assert_null(strchr(err, 0x1b));
    assert_null(strchr(err, '\n'));
    /* the same name on a readable file: a dtype error names it quoted, once */
    hdr = "{\"w\\u001b[31m\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    hl = strlen(hdr), n = hl;
    memcpy(buf, &n, 8);
    memcpy(buf + 8, hdr, hl);
    assert_int_equal(fs_write_atomic(path, buf, 8 + hl + 4, err), 0);
    assert_int_equal(st_open(&f, path, err), 0);
    float x;
    assert_int_equal(st_read_f32(st_at(f, 0), &x, 1, err), -1);
    assert_string_equal(err, "tensor 'w\\x1B[31m': dtype I32 is not a float type");
    st_close(f);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_finite_weights_pass_and_the_first_bad_element_is_named),
        cmocka_unit_test(test_large_tensor_check_runs_in_parallel_and_finds_the_first),
        cmocka_unit_test(test_integer_tensors_are_not_checked),
        cmocka_unit_test(test_names_from_the_file_are_quoted_in_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
