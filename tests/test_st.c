/* safetensors: conversions checked bit for bit against numpy (f16) and torch (bf16),
 * files written by python read back equal, our files round-trip, the golden HF files
 * read with the names/shapes meta.json lists and are rewritten byte for byte, sharded
 * save_pretrained layout, and every malformed-file rule gives its own clear error. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "checkpoints/st.h"
#include "common/err.h"
#include "common/fsutil.h"

#include <cJSON.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static char tmpdir[256];

static int setup(void **state)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/moet_test_st_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    char err[ERR_MAX];
    return fs_rm_rf(tmpdir, err);
}

static const char *shared_dir(void)
{
    const char *s = getenv("SHARED");
    return s && s[0] ? s : "../shared";
}

static void tmp_path(char *out, size_t cap, const char *name)
{
    assert_int_equal(fs_path_join(out, cap, tmpdir, name), 0);
}

static uint32_t bits32(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }

/* Run a python program (numpy/torch available) with tmpdir as argv[1]. */
static void run_python(const char *name, const char *src)
{
    char path[512], cmd[1200], err[ERR_MAX];
    tmp_path(path, sizeof path, name);
    assert_int_equal(fs_write_atomic(path, src, strlen(src), err), 0);
    const char *py = getenv("PY");
    snprintf(cmd, sizeof cmd, "%s '%s' '%s'", py && py[0] ? py : "/usr/bin/python3", path, tmpdir);
    assert_int_equal(system(cmd), 0);
}

/* The python side: a hand-rolled safetensors writer (json header + numpy bytes), so
 * nothing of ours is involved in making the file. */
static const char PY_SAVE[] =
    "import json, struct, sys\n"
    "import numpy as np\n"
    "np.seterr(all='ignore')\n"
    "def save(path, items, meta=None, pad=True, reverse_header=False):\n"
    "    ents, blobs, off = [], [], 0\n"
    "    for name, dt, arr in items:\n"
    "        b = np.ascontiguousarray(arr).tobytes()\n"
    "        ents.append((name, {'dtype': dt, 'shape': list(arr.shape), 'data_offsets': [off, off + len(b)]}))\n"
    "        blobs.append(b); off += len(b)\n"
    "    hdr = {} if meta is None else {'__metadata__': meta}\n"
    "    for k, v in (reversed(ents) if reverse_header else ents): hdr[k] = v\n"
    "    h = json.dumps(hdr).encode()\n"
    "    if pad: h += b' ' * ((8 - len(h) % 8) % 8)\n"
    "    open(path, 'wb').write(struct.pack('<Q', len(h)) + h + b''.join(blobs))\n";

/* ---- conversions ---- */

static void test_f16_conversion_follows_ieee_rounding(void **state)
{
    /* IEEE binary16 facts: max 65504 = 0x7bff, ties at 65520 go to inf, smallest
     * subnormal 2^-24 = 0x0001, 2^-25 is a tie that rounds to even (zero). */
    assert_int_equal(st_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(st_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(st_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(st_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(st_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(st_f32_to_f16(1e30f), 0x7c00);
    assert_int_equal(st_f32_to_f16(-INFINITY), 0xfc00);
    assert_int_equal(st_f32_to_f16(0x1p-24f), 0x0001);
    assert_int_equal(st_f32_to_f16(0x1p-25f), 0x0000);
    assert_int_equal(st_f32_to_f16(0x1.8p-25f), 0x0001);
    assert_int_equal(st_f32_to_f16(0x1.8p-24f), 0x0002);         /* 1.5 ulp: tie to even */
    assert_int_equal(st_f32_to_f16(0x1p-14f), 0x0400);            /* smallest normal */
    assert_int_equal(st_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(st_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);     /* tie, even stays */
    assert_int_equal(st_f32_to_f16(1.0f + 0x3p-11f), 0x3c02);     /* tie, odd rounds up */
    uint16_t nan = st_f32_to_f16(NAN);
    assert_true((nan & 0x7c00) == 0x7c00 && (nan & 0x3ff) != 0);
    assert_true(isnan(st_f16_to_f32(nan)));
    assert_true(st_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(st_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(st_f16_to_f32(0xfc00) == -INFINITY);
    assert_true(signbit(st_f16_to_f32(0x8000)));
}

static void test_bf16_conversion_rounds_to_nearest_even(void **state)
{
    assert_int_equal(st_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(st_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);      /* tie, even stays */
    assert_int_equal(st_f32_to_bf16(1.0f + 0x3p-8f), 0x3f82);      /* tie, odd rounds up */
    assert_int_equal(st_f32_to_bf16(1.0f + 0x1.2p-8f), 0x3f81);    /* above the tie */
    assert_int_equal(st_f32_to_bf16(-0.0f), 0x8000);
    assert_int_equal(st_f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(st_f32_to_bf16(3.4028235e38f), 0x7f80);       /* FLT_MAX rounds to inf */
    assert_int_equal(st_f32_to_bf16(NAN), 0x7fc0);
    assert_true(st_bf16_to_f32(0x3f81) == 1.0f + 0x1p-7f);
}

/* Every value python made (specials, ties, all kinds of random bit patterns) converts
 * to exactly the bits numpy's float16 and torch's bfloat16 give. */
static void test_conversions_match_numpy_and_torch_bitwise(void **state)
{
    char py[8192];
    snprintf(py, sizeof py, "%s%s", PY_SAVE,
        "import torch\n"
        "rng = np.random.default_rng(1234)\n"
        "sp = np.array([0.0, -0.0, 1, -1, 65504, 65505, 65519.996, 65520, 65536, 1e30, -1e30,\n"
        "     np.inf, -np.inf, np.nan, 2**-24, 2**-25, 1.5*2**-25, 2**-26, 2**-14, 2**-14 - 2**-24,\n"
        "     1e-45, 1.17549435e-38, 3.4028235e38, 1/3, 0.1, 1 + 2**-8, 1 + 3*2**-8], np.float32)\n"
        "r = (rng.standard_normal(20000) * np.exp2(rng.uniform(-30, 20, 20000))).astype(np.float32)\n"
        "b = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)\n"
        "h = np.arange(0, 0x7bff, dtype=np.uint16)\n"
        "mid = ((h.view(np.float16).astype(np.float64) + (h + 1).view(np.float16).astype(np.float64)) / 2)\n"
        "mid = mid.astype(np.float32)\n"
        "bt = ((rng.integers(0, 2**16, 20000, dtype=np.uint64) << 16) | 0x8000).astype(np.uint32).view(np.float32)\n"
        "x = np.concatenate([sp, r, b, mid, -mid, bt])\n"
        "f16 = x.astype(np.float16)\n"
        "bf = torch.from_numpy(x.copy()).to(torch.bfloat16)\n"
        "save(sys.argv[1] + '/conv.safetensors', [('x', 'F32', x), ('x_f16', 'F16', f16),\n"
        "     ('x_f16_f32', 'F32', f16.astype(np.float32)), ('x_bf16', 'BF16', bf.view(torch.int16).numpy()),\n"
        "     ('x_bf16_f32', 'F32', bf.float().numpy())])\n");
    run_python("conv.py", py);
    char path[512], err[ERR_MAX];
    tmp_path(path, sizeof path, "conv.safetensors");
    st_file *f;
    assert_int_equal(st_open(&f, path, err), 0);
    const st_tensor *x = st_find(f, "x"), *h = st_find(f, "x_f16"), *hf = st_find(f, "x_f16_f32");
    const st_tensor *b = st_find(f, "x_bf16"), *bff = st_find(f, "x_bf16_f32");
    assert_true(x && h && hf && b && bff);
    int64_t n = x->numel;
    assert_true(n > 100000);
    float *xv = malloc((size_t)n * 4), *hv = malloc((size_t)n * 4), *hfv = malloc((size_t)n * 4);
    float *bv = malloc((size_t)n * 4), *bfv = malloc((size_t)n * 4);
    assert_int_equal(st_read_f32(x, xv, n, err), 0);
    assert_int_equal(st_read_f32(h, hv, n, err), 0);
    assert_int_equal(st_read_f32(hf, hfv, n, err), 0);
    assert_int_equal(st_read_f32(b, bv, n, err), 0);
    assert_int_equal(st_read_f32(bff, bfv, n, err), 0);
    int64_t bad16 = 0, bad_bf = 0, bad_read = 0, nans = 0;
    for (int64_t i = 0; i < n; i++) {
        uint16_t want16, want_bf;
        memcpy(&want16, (const char *)h->data + 2 * i, 2);
        memcpy(&want_bf, (const char *)b->data + 2 * i, 2);
        if (isnan(xv[i])) {                  /* NaN payloads differ between libraries */
            nans++;
            bad16 += !isnan(st_f16_to_f32(st_f32_to_f16(xv[i]))) || !isnan(hv[i]);
            bad_bf += !isnan(st_bf16_to_f32(st_f32_to_bf16(xv[i]))) || !isnan(bv[i]);
            continue;
        }
        if (st_f32_to_f16(xv[i]) != want16 && bad16++ < 5)
            print_error("f16 of %a: ours %04x numpy %04x\n", xv[i], st_f32_to_f16(xv[i]), want16);
        if (st_f32_to_bf16(xv[i]) != want_bf && bad_bf++ < 5)
            print_error("bf16 of %a: ours %04x torch %04x\n", xv[i], st_f32_to_bf16(xv[i]), want_bf);
        bad_read += bits32(hv[i]) != bits32(hfv[i]) || bits32(bv[i]) != bits32(bfv[i]);
    }
    assert_true(nans > 10);
    assert_int_equal(bad16, 0);
    assert_int_equal(bad_bf, 0);
    assert_int_equal(bad_read, 0);
    free(xv); free(hv); free(hfv); free(bv); free(bfv);
    st_close(f);
}

/* ---- reading files made elsewhere ---- */

/* Compare a tensor with the values python listed in expect.json (an independent
 * channel: text, parsed by cJSON). */
static void check_against_json(const st_file *f, const cJSON *e)
{
    const st_tensor *t = st_find(f, e->string);
    assert_non_null(t);
    assert_string_equal(st_dtype_name(t->dtype), cJSON_GetObjectItem(e, "dtype")->valuestring);
    const cJSON *shape = cJSON_GetObjectItem(e, "shape"), *vals = cJSON_GetObjectItem(e, "values");
    assert_int_equal(t->ndim, cJSON_GetArraySize(shape));
    for (int d = 0; d < t->ndim; d++) assert_int_equal(t->shape[d], cJSON_GetArrayItem(shape, d)->valueint);
    int64_t n = cJSON_GetArraySize(vals);
    assert_int_equal(t->numel, n);
    char err[ERR_MAX];
    if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 || t->dtype == ST_F64) {
        float *v = malloc((size_t)n * 4 + 4);
        assert_int_equal(st_read_f32(t, v, n, err), 0);
        for (int64_t i = 0; i < n; i++)
            assert_true(v[i] == (float)cJSON_GetArrayItem(vals, (int)i)->valuedouble);
        free(v);
    } else {
        int64_t *v = malloc((size_t)n * 8 + 8);
        assert_int_equal(st_read_i64(t, v, n, err), 0);
        for (int64_t i = 0; i < n; i++)
            assert_true(v[i] == (int64_t)cJSON_GetArrayItem(vals, (int)i)->valuedouble);
        free(v);
    }
}

static void test_python_written_file_reads_back_equal(void **state)
{
    char py[4096];
    snprintf(py, sizeof py, "%s%s", PY_SAVE,
        "import torch\n"
        "rng = np.random.default_rng(7)\n"
        "items = [('zeta.w', 'F32', rng.standard_normal((3, 5)).astype(np.float32)),\n"
        "  ('flag', 'BOOL', np.array([True, False, True])), ('alpha', 'F16', rng.standard_normal(7).astype(np.float16)),\n"
        "  ('ids', 'I64', np.array([[1, -2, 3], [2**40, -2**40, 0]], np.int64)),\n"
        "  ('i32', 'I32', np.array([-7, 2**31 - 1], np.int32)), ('i16', 'I16', np.array([-300, 300], np.int16)),\n"
        "  ('i8', 'I8', np.array([-128, 127], np.int8)), ('u8', 'U8', np.array([0, 255], np.uint8)),\n"
        "  ('d', 'F64', np.array([0.1, -1e30, 1e-40, 2**-149])), ('scalar', 'F32', np.array(2.5, np.float32)),\n"
        "  ('one', 'I64', np.array([42], np.int64)), ('empty', 'F32', np.zeros((0, 3), np.float32)),\n"
        "  ('mid.bf', 'BF16', torch.tensor([1.5, -3.25, 1e-3]).to(torch.bfloat16).view(torch.int16).numpy())]\n"
        "save(sys.argv[1] + '/py.safetensors', items, meta={'format': 'np', 'who': 'python'}, pad=False,\n"
        "     reverse_header=True)\n"
        "def vals(dt, a):\n"
        "    if dt == 'BF16': return torch.from_numpy(a).view(torch.bfloat16).float().numpy().ravel().tolist()\n"
        "    if dt == 'F64': return a.astype(np.float32).ravel().tolist()\n"
        "    return a.astype(np.float64 if dt[0] == 'F' else np.int64).ravel().tolist()\n"
        "json.dump({n: {'dtype': dt, 'shape': list(a.shape), 'values': vals(dt, a)} for n, dt, a in items},\n"
        "          open(sys.argv[1] + '/expect.json', 'w'))\n");
    run_python("py.py", py);
    char path[512], err[ERR_MAX], *text;
    size_t len;
    tmp_path(path, sizeof path, "expect.json");
    assert_int_equal(fs_read_file(path, &text, &len, err), 0);
    cJSON *expect = cJSON_Parse(text);
    free(text);
    assert_non_null(expect);
    tmp_path(path, sizeof path, "py.safetensors");
    st_file *f;
    assert_int_equal(st_open(&f, path, err), 0);
    assert_int_equal(st_count(f), cJSON_GetArraySize(expect));
    for (int i = 1; i < st_count(f); i++)                     /* listed in name order */
        assert_true(strcmp(st_at(f, i - 1)->name, st_at(f, i)->name) < 0);
    const cJSON *e;
    cJSON_ArrayForEach(e, expect) check_against_json(f, e);
    assert_string_equal(st_metadata(f, "format"), "np");
    assert_string_equal(st_metadata(f, "who"), "python");
    assert_null(st_metadata(f, "nope"));
    const st_tensor *s = st_find(f, "scalar");
    assert_int_equal(s->ndim, 0);
    assert_int_equal(s->numel, 1);
    assert_int_equal(st_find(f, "empty")->nbytes, 0);
    assert_null(st_find(f, "absent"));
    cJSON_Delete(expect);
    st_close(f);
}

/* Names, shapes and dtypes of the HF-saved golden model, as meta.json lists them. */
static void test_golden_model_matches_meta_ondisk_names(void **state)
{
    char path[1024], mdir[1024], err[ERR_MAX], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/golden/tiny-mixtral/meta.json", shared_dir());
    assert_int_equal(fs_read_file(path, &text, &len, err), 0);
    cJSON *meta = cJSON_Parse(text);
    free(text);
    const cJSON *names = cJSON_GetObjectItem(meta, "ondisk_names");
    assert_true(cJSON_GetArraySize(names) > 40);
    snprintf(mdir, sizeof mdir, "%s/golden/tiny-mixtral/model", shared_dir());
    st_file *f;
    assert_int_equal(st_open(&f, mdir, err), 0);                 /* the directory form */
    assert_int_equal(st_count(f), cJSON_GetArraySize(names));
    assert_string_equal(st_metadata(f, "format"), "pt");
    const cJSON *e;
    cJSON_ArrayForEach(e, names) {
        const st_tensor *t = st_find(f, cJSON_GetArrayItem(e, 0)->valuestring);
        assert_non_null(t);
        const cJSON *shape = cJSON_GetArrayItem(e, 1);
        assert_int_equal(t->ndim, cJSON_GetArraySize(shape));
        for (int d = 0; d < t->ndim; d++) assert_int_equal(t->shape[d], cJSON_GetArrayItem(shape, d)->valueint);
        assert_string_equal(cJSON_GetArrayItem(e, 2)->valuestring, "torch.float32");
        assert_int_equal(t->dtype, ST_F32);
    }
    cJSON_Delete(meta);
    st_close(f);
}

/* Read a file and write all its tensors back unchanged (raw). */
static void rewrite(const char *src, const char *dst)
{
    char err[ERR_MAX];
    st_file *f;
    assert_int_equal(st_open(&f, src, err), 0);
    int n = st_count(f);
    st_out *o = calloc((size_t)n, sizeof *o);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_at(f, i);
        o[i] = (st_out){ .name = t->name, .ndim = t->ndim, .dtype = t->dtype, .raw = t->data };
        memcpy(o[i].shape, t->shape, sizeof t->shape);
    }
    assert_int_equal(st_write(dst, o, n, NULL, err), 0);
    free(o);
    st_close(f);
}

static char *slurp(const char *path, size_t *len)
{
    char err[ERR_MAX], *buf;
    assert_int_equal(fs_read_file(path, &buf, len, err), 0);
    return buf;
}

/* Our writer lays files out exactly as the safetensors library: the HF-saved files
 * come back byte for byte; golden.safetensors (I64 then F32 tensors, no metadata, so
 * its header differs) has an identical data area. */
static void test_rewriting_golden_files_is_byte_identical(void **state)
{
    const char *files[] = { "model/model.safetensors", "lora_init/adapter_model.safetensors",
                            "lora_experts_init/adapter_model.safetensors" };
    char src[1024], dst[512];
    tmp_path(dst, sizeof dst, "rewrite.safetensors");
    for (int k = 0; k < 3; k++) {
        snprintf(src, sizeof src, "%s/golden/tiny-mixtral/%s", shared_dir(), files[k]);
        rewrite(src, dst);
        size_t a, b;
        char *x = slurp(src, &a), *y = slurp(dst, &b);
        assert_int_equal(a, b);
        assert_memory_equal(x, y, a);
        free(x); free(y);
    }
    snprintf(src, sizeof src, "%s/golden/tiny-mixtral/golden.safetensors", shared_dir());
    rewrite(src, dst);
    size_t a, b;
    char *x = slurp(src, &a), *y = slurp(dst, &b);
    uint64_t ha, hb;
    memcpy(&ha, x, 8);
    memcpy(&hb, y, 8);
    assert_int_equal(a - 8 - ha, b - 8 - hb);
    assert_memory_equal(x + 8 + ha, y + 8 + hb, a - 8 - ha);
    free(x); free(y);
}

/* ---- our writer ---- */

static const float SPECIAL[] = { 0.0f, -0.0f, 1.0f, -1.5f, 0x1p-24f, 0x1p-25f, 0x1.8p-25f, 0x1p-130f, 1e-45f,
                                 65504.0f, 65520.0f, 1e30f, -1e30f, INFINITY, -INFINITY, 3.14159265f,
                                 1.0f + 0x1p-8f, 1.0f + 0x3p-8f, 0.1f, -7e-6f, 3.4028235e38f, NAN };
#define NSPECIAL ((int)(sizeof SPECIAL / sizeof SPECIAL[0]))

static void test_round_trip_f32_bf16_f16_f64(void **state)
{
    char path[512], err[ERR_MAX];
    tmp_path(path, sizeof path, "rt.safetensors");
    st_out o[4] = {
        { .name = "w.f32", .ndim = 2, .shape = { 2, NSPECIAL / 2 }, .dtype = ST_F32, .f32 = SPECIAL },
        { .name = "w.bf16", .ndim = 1, .shape = { NSPECIAL }, .dtype = ST_BF16, .f32 = SPECIAL },
        { .name = "w.f16", .ndim = 1, .shape = { NSPECIAL }, .dtype = ST_F16, .f32 = SPECIAL },
        { .name = "w.f64", .ndim = 1, .shape = { NSPECIAL }, .dtype = ST_F64, .f32 = SPECIAL },
    };
    const char *meta[] = { "step", "12", "note", "quote \" and \\ ok", NULL };
    assert_int_equal(st_write(path, o, 4, meta, err), 0);
    st_file *f;
    assert_int_equal(st_open(&f, path, err), 0);
    assert_string_equal(st_metadata(f, "format"), "pt");
    assert_string_equal(st_metadata(f, "step"), "12");
    assert_string_equal(st_metadata(f, "note"), "quote \" and \\ ok");
    float v[NSPECIAL];
    for (int k = 0; k < 4; k++) {
        const st_tensor *t = st_find(f, o[k].name);
        assert_non_null(t);
        assert_int_equal(t->dtype, o[k].dtype);
        assert_int_equal((uintptr_t)t->data % (uintptr_t)st_dtype_size(t->dtype), 0);  /* aligned */
        assert_int_equal(st_read_f32(t, v, NSPECIAL, err), 0);
        for (int i = 0; i < NSPECIAL; i++) {
            float want = SPECIAL[i];
            if (o[k].dtype == ST_BF16) want = st_bf16_to_f32(st_f32_to_bf16(want));
            if (o[k].dtype == ST_F16) want = st_f16_to_f32(st_f32_to_f16(want));
            if (isnan(want)) assert_true(isnan(v[i]));
            else assert_int_equal(bits32(v[i]), bits32(want));   /* -0.0 keeps its sign */
        }
    }
    /* Header: metadata first, data starts at a multiple of 8, F64 laid out first. */
    size_t len;
    char *raw = slurp(path, &len);
    uint64_t hlen;
    memcpy(&hlen, raw, 8);
    assert_int_equal((8 + hlen) % 8, 0);
    assert_memory_equal(raw + 8, "{\"__metadata__\":{\"format\":\"pt\"", 29);
    assert_true(strstr(raw + 8, "\"w.f64\":{\"dtype\":\"F64\",\"shape\":[22],\"data_offsets\":[0,176]}"));
    free(raw);
    st_close(f);
}

static void test_scalar_one_element_and_empty_tensors(void **state)
{
    char path[512], err[ERR_MAX];
    tmp_path(path, sizeof path, "small.safetensors");
    float lr = 3e-4f, one = -2.0f;
    int64_t step = 1234567890123LL;
    st_out o[4] = {
        { .name = "lr", .ndim = 0, .dtype = ST_F32, .f32 = &lr },
        { .name = "step", .ndim = 0, .dtype = ST_I64, .raw = &step },
        { .name = "one", .ndim = 1, .shape = { 1 }, .dtype = ST_BF16, .f32 = &one },
        { .name = "empty", .ndim = 2, .shape = { 0, 4 }, .dtype = ST_F32, .f32 = &one },
    };
    assert_int_equal(st_write(path, o, 4, NULL, err), 0);
    st_file *f;
    assert_int_equal(st_open(&f, path, err), 0);
    assert_int_equal(st_count(f), 4);
    const st_tensor *t = st_find(f, "lr");
    float x;
    int64_t s;
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->numel, 1);
    assert_int_equal(st_read_f32(t, &x, 1, err), 0);
    assert_true(x == lr);
    assert_int_equal(st_read_i64(st_find(f, "step"), &s, 1, err), 0);
    assert_true(s == step);
    assert_int_equal(st_read_f32(st_find(f, "one"), &x, 1, err), 0);
    assert_true(x == -2.0f);
    t = st_find(f, "empty");
    assert_int_equal(t->numel, 0);
    assert_int_equal(st_read_f32(t, &x, 0, err), 0);
    st_close(f);
}

static void test_find_among_many_tensors(void **state)
{
    enum { N = 1500 };
    char path[512], err[ERR_MAX];
    static char names[N][32];
    static float vals[N];
    st_out *o = calloc(N, sizeof *o);
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "model.layers.%d.w", (i * 7919) % N);
        vals[i] = (float)i;
        o[i] = (st_out){ .name = names[i], .ndim = 1, .shape = { 1 }, .dtype = ST_F32, .f32 = &vals[i] };
    }
    tmp_path(path, sizeof path, "many.safetensors");
    assert_int_equal(st_write(path, o, N, NULL, err), 0);
    st_file *f;
    assert_int_equal(st_open(&f, path, err), 0);
    assert_int_equal(st_count(f), N);
    for (int i = 0; i < N; i++) {
        const st_tensor *t = st_find(f, names[i]);
        float x;
        assert_non_null(t);
        assert_int_equal(st_read_f32(t, &x, 1, err), 0);
        assert_true(x == (float)i);
    }
    assert_null(st_find(f, "model.layers.1500.w"));
    assert_null(st_at(f, N));
    st_close(f);
    free(o);
}

static void test_read_helpers_check_dtype_and_count(void **state)
{
    char path[512], err[ERR_MAX] = "";
    tmp_path(path, sizeof path, "kinds.safetensors");
    float w[3] = { 1, 2, 3 };
    int64_t ids[2] = { 5, 6 };
    st_out o[2] = { { .name = "w", .ndim = 1, .shape = { 3 }, .dtype = ST_F32, .f32 = w },
                    { .name = "ids", .ndim = 1, .shape = { 2 }, .dtype = ST_I64, .raw = ids } };
    assert_int_equal(st_write(path, o, 2, NULL, err), 0);
    st_file *f;
    assert_int_equal(st_open(&f, path, err), 0);
    float x[3];
    int64_t y[3];
    assert_int_equal(st_read_f32(st_find(f, "ids"), x, 2, err), -1);
    assert_non_null(strstr(err, "not a float type"));
    assert_int_equal(st_read_i64(st_find(f, "w"), y, 3, err), -1);
    assert_non_null(strstr(err, "not an integer type"));
    assert_int_equal(st_read_f32(st_find(f, "w"), x, 2, err), -1);
    assert_non_null(strstr(err, "asked for 2 values, it has 3"));
    st_close(f);
}

static void test_writer_rejects_bad_input_and_keeps_old_file(void **state)
{
    char path[512], err[ERR_MAX] = "";
    tmp_path(path, sizeof path, "keep.safetensors");
    float w[2] = { 1, 2 };
    int64_t i2[2] = { 1, 2 };
    st_out good = { .name = "w", .ndim = 1, .shape = { 2 }, .dtype = ST_F32, .f32 = w };
    assert_int_equal(st_write(path, &good, 1, NULL, err), 0);
    size_t len0;
    char *before = slurp(path, &len0);

    st_out dup[2] = { good, good };
    dup[1].dtype = ST_BF16;
    assert_int_equal(st_write(path, dup, 2, NULL, err), -1);
    assert_non_null(strstr(err, "duplicate tensor name 'w'"));
    st_out conv = { .name = "i", .ndim = 1, .shape = { 2 }, .dtype = ST_I64, .f32 = w };
    assert_int_equal(st_write(path, &conv, 1, NULL, err), -1);
    assert_non_null(strstr(err, "cannot convert fp32 to I64"));
    st_out both = { .name = "i", .ndim = 1, .shape = { 2 }, .dtype = ST_I64, .f32 = w, .raw = i2 };
    assert_int_equal(st_write(path, &both, 1, NULL, err), -1);
    assert_non_null(strstr(err, "exactly one of f32, raw and fill"));
    st_out reserved = { .name = "__metadata__", .ndim = 1, .shape = { 2 }, .dtype = ST_F32, .f32 = w };
    assert_int_equal(st_write(path, &reserved, 1, NULL, err), -1);
    assert_non_null(strstr(err, "reserved"));
    st_out neg = { .name = "n", .ndim = 1, .shape = { -2 }, .dtype = ST_F32, .f32 = w };
    assert_int_equal(st_write(path, &neg, 1, NULL, err), -1);
    assert_non_null(strstr(err, "bad shape"));

    /* A write that dies half way (file-size limit, like a full disk). */
    enum { BIG = 1 << 18 };
    float *big = calloc(BIG, 4);
    st_out large = { .name = "big", .ndim = 1, .shape = { BIG }, .dtype = ST_F32, .f32 = big };
    struct rlimit old, small;
    getrlimit(RLIMIT_FSIZE, &old);
    small = old;
    small.rlim_cur = 65536;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    int rc = st_write(path, &large, 1, NULL, err);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    free(big);
    assert_int_equal(rc, -1);
    assert_non_null(strstr(err, "write failed"));

    size_t len1;
    char *after = slurp(path, &len1);
    assert_int_equal(len0, len1);
    assert_memory_equal(before, after, len0);
    free(before); free(after);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    assert_false(fs_exists(tmp));
}

/* ---- sharded (save_pretrained) layout ---- */

static void test_sharded_write_reads_back_and_index_is_valid(void **state)
{
    enum { N = 7 };
    static const int sizes[N] = { 100, 100, 100, 700, 50, 50, 10 };   /* elements */
    static float data[N][700];
    char names[N][40], dir[512], p[700], err[ERR_MAX];
    st_out o[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "model.layers.%d.weight", N - i);  /* not in name order */
        for (int j = 0; j < sizes[i]; j++) data[i][j] = (float)(i * 1000 + j) * 0.5f;
        o[i] = (st_out){ .name = names[i], .ndim = 2, .shape = { sizes[i] / 10, 10 },
                         .dtype = i == 2 ? ST_BF16 : ST_F32, .f32 = data[i] };
    }
    size_t total = 0;
    for (int i = 0; i < N; i++) total += (size_t)sizes[i] * (i == 2 ? 2 : 4);
    tmp_path(dir, sizeof dir, "sharded");
    assert_int_equal(st_write_sharded(dir, o, N, 1000, NULL, err), 0);

    assert_int_equal(fs_path_join(p, sizeof p, dir, "model.safetensors.index.json"), 0);
    size_t len;
    char *text = slurp(p, &len);
    cJSON *ix = cJSON_Parse(text);
    free(text);
    assert_non_null(ix);
    const cJSON *wm = cJSON_GetObjectItem(ix, "weight_map");
    assert_int_equal(cJSON_GetArraySize(wm), N);
    assert_true(cJSON_GetObjectItem(cJSON_GetObjectItem(ix, "metadata"), "total_size")->valuedouble == (double)total);
    int nshards = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {                       /* each entry is in its shard */
        int a, b, end = 0;
        assert_int_equal(sscanf(e->valuestring, "model-%5d-of-%5d.safetensors%n", &a, &b, &end), 2);
        assert_int_equal(end, (int)strlen(e->valuestring));
        nshards = b;
        assert_true(a >= 1 && a <= b);
        assert_int_equal(fs_path_join(p, sizeof p, dir, e->valuestring), 0);
        st_file *one;
        assert_int_equal(st_open(&one, p, err), 0);
        assert_non_null(st_find(one, e->string));
        size_t bytes = 0;
        for (int i = 0; i < st_count(one); i++) bytes += st_at(one, i)->nbytes;
        assert_true(bytes <= 1000 || st_count(one) == 1);
        st_close(one);
        if (e != wm->child) assert_true(strcmp(e->prev->string, e->string) < 0);   /* sorted keys */
    }
    /* The HF rule on these sizes (bytes 400 400 200 2800 200 200 40, limit 1000):
     * tensor 3 is over the limit and becomes shard 1 at once; 0-2 fill shard 2 up to
     * exactly 1000; 4-6 go to shard 3. */
    assert_int_equal(nshards, 3);
    static const char *want[N] = { "model-00002-of-00003.safetensors", "model-00002-of-00003.safetensors",
        "model-00002-of-00003.safetensors", "model-00001-of-00003.safetensors",
        "model-00003-of-00003.safetensors", "model-00003-of-00003.safetensors",
        "model-00003-of-00003.safetensors" };
    for (int i = 0; i < N; i++)
        assert_string_equal(cJSON_GetObjectItem(wm, names[i])->valuestring, want[i]);

    for (int form = 0; form < 2; form++) {           /* the directory, then the index */
        if (form) assert_int_equal(fs_path_join(p, sizeof p, dir, "model.safetensors.index.json"), 0);
        st_file *f;
        assert_int_equal(st_open(&f, form ? p : dir, err), 0);
        assert_int_equal(st_count(f), N);
        for (int i = 0; i < N; i++) {
            const st_tensor *t = st_find(f, names[i]);
            float v[700];
            assert_non_null(t);
            assert_int_equal(st_read_f32(t, v, sizes[i], err), 0);
            for (int j = 0; j < sizes[i]; j++) {
                float want = i == 2 ? st_bf16_to_f32(st_f32_to_bf16(data[i][j])) : data[i][j];
                assert_true(v[j] == want);
            }
        }
        assert_string_equal(st_metadata(f, "format"), "pt");
        st_close(f);
    }
    cJSON_Delete(ix);

    /* Saving again with a big limit: one model.safetensors, the old shards and index go. */
    assert_int_equal(st_write_sharded(dir, o, N, 1 << 20, NULL, err), 0);
    assert_int_equal(fs_path_join(p, sizeof p, dir, "model.safetensors"), 0);
    assert_true(fs_exists(p));
    assert_int_equal(fs_path_join(p, sizeof p, dir, "model.safetensors.index.json"), 0);
    assert_false(fs_exists(p));
    assert_int_equal(fs_path_join(p, sizeof p, dir, "model-00001-of-00003.safetensors"), 0);
    assert_false(fs_exists(p));
    st_file *f;
    assert_int_equal(st_open(&f, dir, err), 0);
    assert_int_equal(st_count(f), N);
    st_close(f);
}

/* ---- malformed files ---- */

/* Write an 8-byte length, the header text and ndata bytes of data. */
static void make_file(const char *name, uint64_t hlen_field, const char *hdr, size_t ndata, char *path)
{
    char err[ERR_MAX];
    size_t hl = strlen(hdr);
    char *buf = calloc(1, 8 + hl + ndata + 1);
    memcpy(buf, &hlen_field, 8);
    memcpy(buf + 8, hdr, hl);
    tmp_path(path, 512, name);
    assert_int_equal(fs_write_atomic(path, buf, 8 + hl + ndata, err), 0);
    free(buf);
}

static void expect_open_error(const char *path, const char *phrase)
{
    char err[ERR_MAX] = "";
    st_file *f = (st_file *)1;
    int rc = st_open(&f, path, err);
    if (rc != -1 || !strstr(err, phrase) || !strstr(err, path))
        print_error("%s: rc %d, err \"%s\", wanted \"%s\"\n", path, rc, err, phrase);
    assert_int_equal(rc, -1);
    assert_null(f);
    assert_non_null(strstr(err, phrase));
    assert_non_null(strstr(err, path));             /* the message names the file */
}

static void test_malformed_files_give_clear_errors(void **state)
{
    static const struct { const char *hdr; size_t ndata; const char *phrase; } cases[] = {
        { "{\"a\":", 0, "not valid JSON" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4, "not valid JSON" },
        { "[1,2]", 0, "not a JSON object" },
        { "{\"\xff\":1}", 0, "not valid UTF-8" },
        { "{\"a\":5}", 0, "entry is not an object" },
        { "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "missing \"dtype\"" },
        { "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "missing \"shape\"" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "missing \"data_offsets\"" },
        { "{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "unknown dtype \"F8_E4M3\"" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "bad shape" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "bad shape" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, "bad shape" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "bad shape" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,4]}}", 4,
          "shape overflows" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "data_offsets must be [begin, end]" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "data_offsets must be [begin, end]" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 12, "byte count 12" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "outside the data area" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
          "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "tensors 'a' and 'b' overlap" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
          "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 20, "hole of 4 bytes before tensor 'b'" },
        { "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "hole of 4 bytes" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, "4 bytes after the last tensor" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
          "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "duplicate tensor name 'a'" },
        { "{\"__metadata__\":{\"format\":1}}", 0, "value of 'format' is not a string" },
        { "{\"__metadata__\":[]}", 0, "__metadata__ is not an object" },
    };
    char path[512], name[32];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(name, sizeof name, "bad%02zu.safetensors", i);
        make_file(name, strlen(cases[i].hdr), cases[i].hdr, cases[i].ndata, path);
        expect_open_error(path, cases[i].phrase);
    }
    make_file("short.safetensors", 0, "", 0, path);          /* 8 zero bytes: empty header */
    expect_open_error(path, "not a JSON object");
    char err[ERR_MAX];
    assert_int_equal(fs_write_atomic(path, "\x05\0\0\0", 4, err), 0);
    expect_open_error(path, "too short");
    assert_int_equal(fs_write_atomic(path, "", 0, err), 0);
    expect_open_error(path, "too short");
    make_file("past.safetensors", 1000, "{}", 10, path);
    expect_open_error(path, "runs past the end of the file");
    make_file("huge.safetensors", 1ull << 40, "{}", 0, path);
    expect_open_error(path, "over the 100000000-byte limit");
    make_file("nul.safetensors", 4, "{}  ", 0, path);        /* then patch a NUL into the header */
    assert_int_equal(fs_write_atomic(path, "\x04\0\0\0\0\0\0\0{}\0 ", 12, err), 0);
    expect_open_error(path, "NUL");
    expect_open_error("/nonexistent/m.safetensors", "cannot open");
    expect_open_error(tmpdir, "no model.safetensors or model.safetensors.index.json");

    /* A valid empty file, for contrast: "{}" padded, no tensors. */
    make_file("empty.safetensors", 8, "{}      ", 0, path);
    st_file *f;
    assert_int_equal(st_open(&f, path, err), 0);
    assert_int_equal(st_count(f), 0);
    st_close(f);
}

static void test_bad_index_files_give_clear_errors(void **state)
{
    char dir[512], p[700], ix[700], err[ERR_MAX];
    tmp_path(dir, sizeof dir, "badindex");
    assert_int_equal(fs_mkdir_p(dir, err), 0);
    float w[2] = { 1, 2 };
    st_out o = { .name = "a", .ndim = 1, .shape = { 2 }, .dtype = ST_F32, .f32 = w };
    assert_int_equal(fs_path_join(p, sizeof p, dir, "model-00001-of-00002.safetensors"), 0);
    assert_int_equal(st_write(p, &o, 1, NULL, err), 0);
    assert_int_equal(fs_path_join(ix, sizeof ix, dir, "model.safetensors.index.json"), 0);
    static const struct { const char *json, *phrase; } cases[] = {
        { "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
          "\"b\":\"model-00002-of-00002.safetensors\"}}",
          "shard 'model-00002-of-00002.safetensors' named by the index is missing" },
        { "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
          "\"c\":\"model-00001-of-00002.safetensors\"}}",
          "tensor 'c' is listed in the index but absent from shard 'model-00001-of-00002.safetensors'" },
        { "{\"metadata\":{}}", "index has no \"weight_map\" object" },
        { "{\"weight_map\":{\"a\":\"../escape.safetensors\"}}", "does not name a shard file" },
        { "{\"weight_map\":{\"a\":7}}", "does not name a shard file" },
        { "{\"weight_map\":", "index is not a JSON object" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(fs_write_atomic(ix, cases[i].json, strlen(cases[i].json), err), 0);
        expect_open_error(ix, cases[i].phrase);
    }
    /* A bad shard behind a good index: the error names the shard file. */
    const char *good = "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\"}}";
    assert_int_equal(fs_write_atomic(ix, good, strlen(good), err), 0);
    assert_int_equal(fs_write_atomic(p, "\x02\0\0\0\0\0\0\0{", 9, err), 0);
    char e2[ERR_MAX] = "";
    st_file *f;
    assert_int_equal(st_open(&f, dir, e2), -1);
    assert_non_null(strstr(e2, p));
    assert_non_null(strstr(e2, "runs past the end"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_conversion_follows_ieee_rounding),
        cmocka_unit_test(test_bf16_conversion_rounds_to_nearest_even),
        cmocka_unit_test(test_conversions_match_numpy_and_torch_bitwise),
        cmocka_unit_test(test_python_written_file_reads_back_equal),
        cmocka_unit_test(test_golden_model_matches_meta_ondisk_names),
        cmocka_unit_test(test_rewriting_golden_files_is_byte_identical),
        cmocka_unit_test(test_round_trip_f32_bf16_f16_f64),
        cmocka_unit_test(test_scalar_one_element_and_empty_tensors),
        cmocka_unit_test(test_find_among_many_tensors),
        cmocka_unit_test(test_read_helpers_check_dtype_and_count),
        cmocka_unit_test(test_writer_rejects_bad_input_and_keeps_old_file),
        cmocka_unit_test(test_sharded_write_reads_back_and_index_is_valid),
        cmocka_unit_test(test_malformed_files_give_clear_errors),
        cmocka_unit_test(test_bad_index_files_give_clear_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
