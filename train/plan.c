/* plan: peak memory of a run from the sizing code the trainer allocates with. */
#include "train/plan.h"
#include "common/err.h"

#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

/* The process around the numbers: libraries, OpenBLAS's and libgomp's per-thread buffers and
 * stacks, HDF5, the loader's read-ahead. Measured with `moet train` on this machine (peak RSS
 * minus everything else planned, tests/t_plan.sh): about 24 MiB plus 8 MiB per thread (full
 * fine-tunes touch more of OpenBLAS's buffers than LoRA runs: this sits between them). */
enum { RUNTIME_BASE = 24 << 20, RUNTIME_PER_THREAD = 8 << 20 };

int plan_make(const model_config *c, const plan_in *in, plan_out *o, char *err)
{
    memset(o, 0, sizeof *o);
    int ranks = in->ranks > 0 ? in->ranks : 1, threads = omp_get_max_threads();
    model_param_counts(c, &o->parameters, &o->active);
    o->flops_per_token = model_flops_per_token(c, in->T);
    size_t f32, low, tiles;
    int base = in->lora ? in->base_dtype : MODEL_F32;
    if (model_store_plan(c, base, &f32, &low, &tiles, err)) return -1;
    o->weights = f32 + low;
    o->tiles = tiles;
    size_t tp = in->lora ? lora_param_count(c, &in->lc) : o->parameters;
    o->trainable_params = tp;
    o->trainable = in->lora ? tp * sizeof(float) : 0;
    o->grads = tp * sizeof(float);
    o->optimizer = 2 * tp * sizeof(float);
    if (in->zero && ranks > 1) { /* ZeRO-1: 1/ranks of m and v, plus the reduced gradient shard */
        o->optimizer = (o->optimizer + ranks - 1) / ranks;
        o->grads += (o->grads + ranks - 1) / ranks;
    }
    int r = in->lora ? in->lc.r : 0;
    o->activations = model_acts_bytes_ckpt(c, in->B, in->T, r, in->ckpt);
    if (in->lora) { /* as model_acts_create reserves it */
        size_t N = (size_t)in->B * in->T, rows = N * c->top_k > N ? N * c->top_k : N, cols = c->dim;
        if ((size_t)c->n_heads * c->head_dim > cols) cols = (size_t)c->n_heads * c->head_dim;
        if ((size_t)c->ffn > cols) cols = c->ffn;
        for (int l = 0; l < c->n_layers; l++)
            if ((size_t)model_layer_dense_ffn(c, l) > cols) cols = model_layer_dense_ffn(c, l);
        o->lora_scratch = lora_scratch_bytes(&in->lc, rows, cols);
    }
    /* grad_accum micro-batches + the loader's slots: tokens, mask, doc starts, labels */
    o->batches = (size_t)(in->grad_accum + 3) * in->B * in->T * (4 + 1 + 1 + 4);
    o->runtime = RUNTIME_BASE + (size_t)threads * RUNTIME_PER_THREAD;
    o->scratch = o->tiles + o->lora_scratch + o->batches + o->runtime;
    o->total = o->weights + o->trainable + o->grads + o->optimizer + o->activations + o->scratch;
    return 0;
}

size_t plan_peak_rss(void)
{
    struct rusage u;
    if (getrusage(RUSAGE_SELF, &u)) return 0;
    return (size_t)u.ru_maxrss * 1024;
}

size_t plan_mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (size_t)kb * 1024;
}
