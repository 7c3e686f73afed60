/* The training step allocates nothing: after two warm-up steps (OpenMP's thread pool,
 * OpenBLAS's buffers, LoRA's scratch), three more steps of forward + backward + clip +
 * AdamW, and an evaluation forward, make zero allocations from moet's code, at 1, 2 and 3
 * threads, for a full fine-tune and for LoRA with dropout on attention and expert adapters
 * (the experts run one per core, or alone and threaded, depending on the count); and with
 * several threads none from libgomp either (a nested or one-thread region would allocate
 * its team each time: common/par.h). OpenBLAS 0.3.21 mallocs its job array in every
 * threaded sgemm call; those are counted and printed, not asserted: not moet's to change.
 *
 * It counts by replacing the allocator in this binary (glibc's __libc_* underneath) and
 * tells callers apart by return address, so under AddressSanitizer, which owns malloc, it
 * is skipped and says so. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <omp.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/rng.h"
#include "model/lora.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "optim/clip.h"

#if defined(__SANITIZE_ADDRESS__)
#define NOALLOC_COUNTS 0
#else
#define NOALLOC_COUNTS 1
#include <link.h>

/* Who allocated, by the caller's address: the libraries below, or anything else (moet, libc). */
enum { BY_MOET, BY_GOMP, BY_BLAS, N_BY };
static const char *lib_names[N_BY] = {NULL, "libgomp", "libopenblas"};
static uintptr_t lib_lo[N_BY], lib_hi[N_BY]; /* each library's mapped range */
static atomic_int counting;
static atomic_long n_by[N_BY];

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static int find_libs(struct dl_phdr_info *info, size_t size, void *data)
{
    for (int k = 1; k < N_BY; k++) {
        if (!strstr(info->dlpi_name, lib_names[k])) continue;
        for (int i = 0; i < info->dlpi_phnum; i++) {
            const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
            if (ph->p_type != PT_LOAD) continue;
            uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
            if (!lib_lo[k] || lo < lib_lo[k]) lib_lo[k] = lo;
            if (hi > lib_hi[k]) lib_hi[k] = hi;
        }
    }
    return 0;
}

static void note(uintptr_t caller)
{
    if (!atomic_load_explicit(&counting, memory_order_relaxed)) return;
    int by = BY_MOET;
    for (int k = 1; k < N_BY; k++)
        if (caller >= lib_lo[k] && caller < lib_hi[k]) by = k;
    atomic_fetch_add(&n_by[by], 1);
}
#define NOTE() note((uintptr_t)__builtin_return_address(0))

void *malloc(size_t n) { return NOTE(), __libc_malloc(n); }
void *calloc(size_t n, size_t s) { return NOTE(), __libc_calloc(n, s); }
void *realloc(void *p, size_t n) { return NOTE(), __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t a, size_t n) { return NOTE(), __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { return NOTE(), __libc_memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n)
{
    NOTE();
    void *p = __libc_memalign(a, n);
    if (!p) return 12; /* ENOMEM */
    *out = p;
    return 0;
}
#endif

static const char *CFG = "{\"vocab_size\":300,\"hidden_size\":64,\"intermediate_size\":96,\"num_hidden_layers\":2,"
                         "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"num_local_experts\":4,"
                         "\"num_experts_per_tok\":2,\"rope_theta\":10000.0,\"initializer_range\":0.05}";
enum { B = 3, T = 80 };

typedef struct {
    model m;
    lora *lo;
    model_acts *a;
    float *w, *g, *mom, *vel; /* what AdamW updates: the model, or the adapters */
    size_t n;
    int32_t tok[B * T];
} fixture;

static void setup(fixture *f, int with_lora)
{
    char err[ERR_MAX];
    model_config c;
    memset(f, 0, sizeof *f);
    assert_int_equal(model_config_from_json(&c, CFG, err), 0);
    assert_int_equal(model_create(&f->m, &c, !with_lora, err), 0);
    model_init_random(&f->m, 3);
    if (with_lora) {
        unsigned targets = 1u << LORA_Q | 1u << LORA_V | 1u << LORA_W1 | 1u << LORA_W2 | 1u << LORA_W3;
        lora_config lc = {.r = 4, .alpha = 8, .dropout = 0.1, .targets = targets, .train_router = 1};
        assert_int_equal(lora_create(&f->lo, &f->m, &lc, 5, err), 0);
        lora_attach(&f->m, f->lo);
        f->w = f->lo->w, f->g = f->lo->g, f->n = f->lo->tab.total;
    } else {
        f->w = f->m.w, f->g = f->m.g, f->n = f->m.tab.total;
    }
    f->mom = calloc(f->n, sizeof(float));
    f->vel = calloc(f->n, sizeof(float));
    assert_non_null(f->mom);
    assert_non_null(f->vel);
    rng_state r;
    rng_seed(&r, 7, 0);
    for (int i = 0; i < B * T; i++) f->tok[i] = (int32_t)(rng_next(&r) % 300);
    assert_int_equal(model_acts_create(&f->a, &f->m, B, T, err), 0);
}

static void teardown(fixture *f)
{
    model_acts_free(f->a);
    lora_free(f->lo);
    model_free(&f->m);
    free(f->mom), free(f->vel);
}

/* One optimizer step as the trainer takes it, then an evaluation forward. */
static void step(fixture *f, int k)
{
    char err[ERR_MAX];
    model_stats st;
    model_batch b = {B, T, f->tok, NULL, NULL, 0};
    adamw_cfg ac = {0.9, 0.95, 1e-8, 0.1};
    adamw_seg seg = {0, f->n, 1};
    if (f->lo) lora_set_dropout_key(f->lo, 1, (uint64_t)k, 0);
    memset(f->g, 0, f->n * sizeof(float));
    assert_int_equal(model_forward_backward(&f->m, f->a, &b, 1.0 / (B * (T - 1)), 0.02, 0.001, 1, &st, err), 0);
    double norm = clip_norm(f->g, f->n);
    adamw_step_scaled(&ac, f->w, f->g, f->mom, f->vel, &seg, 1, k + 1, 1e-3f, clip_coef(norm, 1.0));
    assert_int_equal(model_forward(&f->m, f->a, &b, 0.02f, 0.001f, NULL, &st, err), 0);
    assert_true(st.loss > 0 && st.loss < 20);
}

static void check_steps_allocate_nothing(int with_lora)
{
#if NOALLOC_COUNTS
    dl_iterate_phdr(find_libs, NULL);
    for (int k = 1; k < N_BY; k++) assert_true(lib_hi[k] > lib_lo[k]); /* both are linked, so mapped */
    for (int threads = 1; threads <= 3; threads++) {
        omp_set_num_threads(threads);
        fixture f;
        setup(&f, with_lora);
        step(&f, 0), step(&f, 1); /* warm-up */
        for (int k = 0; k < N_BY; k++) atomic_store(&n_by[k], 0);
        atomic_store(&counting, 1);
        for (int k = 2; k < 5; k++) step(&f, k);
        atomic_store(&counting, 0);
        long moet = atomic_load(&n_by[BY_MOET]), gomp = atomic_load(&n_by[BY_GOMP]);
        print_message("%s, %d thread(s), 3 steps: allocations by moet/libc %ld, libgomp %ld, OpenBLAS %ld\n",
                      with_lora ? "LoRA" : "full", threads, moet, gomp, atomic_load(&n_by[BY_BLAS]));
        assert_int_equal(moet, 0);
        /* libgomp allocates a team for every one-thread region (it keeps only multi-thread
         * teams); with several threads moet opens no nested or one-thread region */
        if (threads > 1) assert_int_equal(gomp, 0);
        /* the counter sees allocations at all: one malloc from here while counting is one */
        atomic_store(&counting, 1);
        void *volatile p = malloc(64);
        atomic_store(&counting, 0);
        free(p);
        assert_int_equal(atomic_load(&n_by[BY_MOET]), 1);
        teardown(&f);
    }
#else
    (void)with_lora;
    skip(); /* AddressSanitizer owns malloc; the plain build runs this test */
#endif
}

static void test_full_training_step_allocates_nothing(void **state) { check_steps_allocate_nothing(0); }
static void test_lora_training_step_allocates_nothing(void **state) { check_steps_allocate_nothing(1); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_training_step_allocates_nothing),
        cmocka_unit_test(test_lora_training_step_allocates_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
