/* fuzz_shard: HDF5 data shards through shard_open and shard_read_row, as every reader of
 * data (train's loader, eval, the trainer's val set) opens them. Byte 0 picks the mode:
 *   odd:  the rest is the file itself (raw bytes: libhdf5's own parsing, moet's checks after),
 *         taken only in HDF5's checksummed layout (superblock version 2 or 3, what prep writes):
 *         libhdf5 1.10 itself reads out of bounds on corrupted files of the old unchecksummed
 *         layout (h5py's default), which moet cannot guard (README, Limits)
 *   even: the rest drives a builder that writes a well-formed HDF5 file with fuzzed
 *         attributes (format, vocab_size, bos/eos, tokenizer_sha256: missing, other types,
 *         odd values) and datasets (tokens / loss_mask / doc_start: dtype, rank, dims,
 *         contiguous / chunked / compact / sparse chunks, declared rows up to 2^40, values),
 *         so moet's validation is what gets explored rather than HDF5's checksums.
 * Then rows 0, the middle, the last and two out of range are read; every failure must be one
 * printable line. */
#include "data/shard.h"
#include "tests/fuzz/fuzz.h"

#include <hdf5.h>

typedef struct { const uint8_t *p; size_t n; } src;

static unsigned take(src *s, unsigned mod) /* the next byte mod mod (0 when the input ran out) */
{
    if (!s->n) return 0;
    s->n--;
    return *s->p++ % mod;
}

static uint64_t take64(src *s)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | take(s, 256);
    return v;
}

static void str_attr(hid_t f, const char *name, const char *v, size_t n)
{
    hid_t ty = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR);
    H5Tset_size(ty, n ? n : 1);
    hid_t a = H5Acreate2(f, name, ty, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) H5Awrite(a, ty, v), H5Aclose(a);
    H5Sclose(sp), H5Tclose(ty);
}

static void int_attr(hid_t f, const char *name, hid_t type, int64_t v)
{
    hid_t sp = H5Screate(H5S_SCALAR), a = H5Acreate2(f, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) H5Awrite(a, H5T_NATIVE_INT64, &v), H5Aclose(a);
    H5Sclose(sp);
}

/* An attribute of one of several shapes: absent, a string (given or fuzzed), an integer, a float. */
static void attr(src *s, hid_t f, const char *name, const char *good)
{
    char buf[80];
    switch (take(s, 6)) {
    case 0: break;                                                  /* absent */
    case 1: str_attr(f, name, good, strlen(good) + 1); break;
    case 2: {
        size_t n = take(s, 70);
        for (size_t i = 0; i < n; i++) buf[i] = (char)take(s, 256);
        str_attr(f, name, buf, n);
        break;
    }
    case 3: int_attr(f, name, H5T_STD_I64LE, (int64_t)take64(s)); break;
    case 4: int_attr(f, name, take(s, 2) ? H5T_STD_U8LE : H5T_STD_I32LE, (int64_t)take(s, 256) - 8); break;
    default: int_attr(f, name, H5T_IEEE_F64LE, (int64_t)take(s, 100)); break;
    }
}

static void dataset(src *s, hid_t f, const char *name, int is_tokens)
{
    if (!is_tokens && take(s, 3) == 0) return;                      /* optional ones absent */
    hid_t type = is_tokens ? H5T_STD_U16LE : H5T_STD_U8LE;
    if (take(s, 4) == 0) switch (take(s, 6)) {                      /* another integer or a float */
        case 0: type = H5T_STD_U16LE; break;
        case 1: type = H5T_STD_U32LE; break;
        case 2: type = H5T_STD_U8LE; break;
        case 3: type = H5T_STD_I16LE; break;
        case 4: type = H5T_IEEE_F32LE; break;
        default: type = H5T_STD_U64LE; break;
        }
    int rank = take(s, 5) ? 2 : 1 + take(s, 3);
    hsize_t dims[3], maxd[3], chunk[3];
    dims[0] = take(s, 40), dims[1] = 1 + take(s, 40), dims[2] = 1 + take(s, 3);
    chunk[0] = 1 + take(s, 16), chunk[1] = dims[1], chunk[2] = 1;
    int layout = take(s, 4);                                        /* contiguous, chunked, compact, sparse */
    if (layout == 3) dims[0] = take(s, 2) ? 1ull << (20 + take(s, 21)) : 64 + take(s, 200);
    for (int d = 0; d < 3; d++) maxd[d] = d == 0 && layout >= 1 && layout != 2 ? H5S_UNLIMITED : dims[d];
    hid_t sp = H5Screate_simple(rank, dims, maxd), pl = H5Pcreate(H5P_DATASET_CREATE);
    if (layout == 1 || layout == 3) H5Pset_chunk(pl, rank, chunk);
    if (layout == 2) H5Pset_layout(pl, H5D_COMPACT);
    if (layout == 1 && take(s, 4) == 0) H5Pset_deflate(pl, 1);
    hid_t d = H5Dcreate2(f, name, type, sp, H5P_DEFAULT, pl, H5P_DEFAULT);
    if (d >= 0) {
        hsize_t rows = layout == 3 ? (dims[0] < 16 ? dims[0] : 16) : dims[0], n = rows;
        for (int k = 1; k < rank; k++) n *= dims[k];
        uint32_t *v = malloc((n + 1) * sizeof *v);
        for (hsize_t i = 0; i < n; i++) v[i] = take(s, 4) ? take(s, is_tokens ? 256 : 3) : (uint32_t)take64(s);
        hsize_t start[3] = {0, 0, 0}, count[3] = {rows, dims[1], dims[2]};
        hid_t ms = H5Screate_simple(rank, count, NULL);
        if (rows && H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, NULL, count, NULL) >= 0)
            H5Dwrite(d, H5T_NATIVE_UINT32, ms, sp, H5P_DEFAULT, v);
        H5Sclose(ms);
        free(v);
        H5Dclose(d);
    }
    H5Pclose(pl), H5Sclose(sp);
}

static int build(src *s, const char *path)
{
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return -1;
    attr(s, f, "format", SHARD_FORMAT);
    attr(s, f, "vocab_size", "");
    attr(s, f, "bos_id", "");
    attr(s, f, "eos_id", "");
    attr(s, f, "tokenizer_sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    dataset(s, f, "tokens", 1);
    dataset(s, f, "loss_mask", 0);
    dataset(s, f, "doc_start", 0);
    return H5Fclose(f) < 0 ? -1 : 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const char *path = fuzz_path("s.h5");
    src s = {data + 1, size - 1};
    if (data[0] & 1) {
        if (size < 10 || memcmp(data + 1, "\x89HDF\r\n\x1a\n", 8) || data[9] < 2) return 0;
        fuzz_write("s.h5", data + 1, size - 1);
    } else if (build(&s, path)) {
        return 0;
    }
    int seq = data[0] & 2 ? 8 : 0, vocab = data[0] & 4 ? 300 : 0;
    char err[ERR_MAX] = "";
    shard *sh;
    if (shard_open(&sh, path, seq, vocab, err)) {
        fuzz_check_err(err);
        return 0;
    }
    const shard_info *in = shard_get_info(sh);
    if (in->rows < 1 || in->seq_len < 1 || in->vocab_size < 1 || (vocab && in->vocab_size > vocab)) abort();
    if (in->seq_len > (1 << 20)) { /* a legal but long row: one is enough */
        shard_close(sh);
        return 0;
    }
    int32_t *tok = malloc(sizeof *tok * in->seq_len);
    uint8_t *m = malloc(in->seq_len), *d = malloc(in->seq_len);
    const int64_t rows[5] = {0, in->rows / 2, in->rows - 1, in->rows, -1};
    for (int k = 0; k < 5; k++) {
        err[0] = 0;
        int rc = shard_read_row(sh, rows[k], tok, m, d, err);
        if (rc) fuzz_check_err(err);
        if (k >= 3 && !rc) abort(); /* out of range must fail */
        for (int t = 0; !rc && t < in->seq_len; t++)
            if (tok[t] < 0 || tok[t] >= in->vocab_size || m[t] > 1 || d[t] > 1) abort();
    }
    free(tok), free(m), free(d);
    shard_close(sh);
    return 0;
}
