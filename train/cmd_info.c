/* moet info: what a run costs and whether it fits: parameters, active parameters, FLOPs per
 * token and the memory a training step holds at its peak (train/plan.c, the sizing code the
 * trainer allocates with), against the machine's available RAM, with what would make it fit. */
#include "checkpoints/hf.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "model/family.h"
#include "train/cmd.h"
#include "train/config.h"
#include "train/load.h"
#include "train/plan.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: moet info MODEL_DIR|config.json|RUN.yaml [key.path=value ...] [--batch B] [--seq-len T]\n"
    "                 [--json] [--ram BYTES|auto] [--ranks N]\n"
    "  Plans the run: parameters, active parameters, FLOPs per token, and the memory a training\n"
    "  step holds at its peak (weights, trainable adapters, grads, AdamW, activations, scratch),\n"
    "  and says whether it fits the RAM (MemAvailable of /proc/meminfo, or --ram 128GiB), and if\n"
    "  not what would. RUN.yaml: the run as configured (LoRA, model.base_dtype,\n"
    "  train.activation_checkpointing, batch, seq_len, grad_accum; overrides as for train, e.g.\n"
    "  model.init_from=configs/models/mixtral-8x7b). MODEL_DIR or config.json (a\n"
    "  directory with only config.json will do; its dtype/torch_dtype stands for the weights):\n"
    "  a full fine-tune at 1 x the model's context, with a LoRA r=16 q,k,v,o line beside it.\n"
    "  --ranks N: per rank of N data-parallel ranks (mpirun -np N): B is the global batch\n"
    "  (train.batch_size), B/N rows each; ZeRO-1 (dist.zero, the default) divides the AdamW state\n"
    "  by N and adds a 1/N gradient shard; also the bytes a step sends.\n"
    "  --json prints one object: parameters, active_parameters, flops_per_token, memory {weights,\n"
    "  trainable, grads, optimizer, activations, scratch, total} in bytes, ram, fits, suggestions.\n";

static double gib(double bytes) { return bytes / 1073741824.0; }

static int parse_bytes(const char *s, size_t *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v > 0) || v > 1e18) return -1;
    double mul = 1;
    if (!strcmp(end, "KiB") || !strcmp(end, "K")) mul = 1024.0;
    else if (!strcmp(end, "MiB") || !strcmp(end, "M")) mul = 1048576.0;
    else if (!strcmp(end, "GiB") || !strcmp(end, "G")) mul = 1073741824.0;
    else if (!strcmp(end, "TiB") || !strcmp(end, "T")) mul = 1099511627776.0;
    else if (!strcmp(end, "KB")) mul = 1e3;
    else if (!strcmp(end, "MB")) mul = 1e6;
    else if (!strcmp(end, "GB")) mul = 1e9;
    else if (!strcmp(end, "TB")) mul = 1e12;
    else if (*end) return -1;
    *out = (size_t)(v * mul);
    return 0;
}

/* The dtype of a model dir's weights: the files', else config.json's dtype / torch_dtype. */
static int dir_dtype(const char *dir, int *dtype)
{
    char p[4096], err[ERR_MAX];
    *dtype = MODEL_F32;
    fs_path_join(p, sizeof p, dir, "model.safetensors");
    char idx[4096];
    fs_path_join(idx, sizeof idx, dir, "model.safetensors.index.json");
    if (fs_exists(p) || fs_exists(idx)) return ckpt_disk_dtype(dir, dtype, err) ? -1 : 0;
    char *text;
    size_t len;
    fs_path_join(p, sizeof p, dir, "config.json");
    if (fs_read_file(p, &text, &len, err)) return -1;
    cJSON *o = cJSON_Parse(text);
    free(text);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "dtype");
    if (!cJSON_IsString(d)) d = cJSON_GetObjectItemCaseSensitive(o, "torch_dtype");
    if (cJSON_IsString(d))
        *dtype = !strcmp(d->valuestring, "bfloat16") ? MODEL_BF16 : !strcmp(d->valuestring, "float16") ? MODEL_F16
                                                                                                       : MODEL_F32;
    cJSON_Delete(o);
    return 0;
}

/* What would make in fit into ram, as config changes a user can make; n lines into s. */
static int suggest(const model_config *c, const plan_in *in, size_t ram, char s[][160], char *err)
{
    int n = 0;
    plan_out o;
    if (!in->ckpt) {
        plan_in t = *in;
        t.ckpt = 1;
        if (!plan_make(c, &t, &o, err) && o.total <= ram)
            snprintf(s[n++], 160, "set train.activation_checkpointing: true (total %.2f GiB)", gib(o.total));
    }
    if (in->lora && in->base_dtype == MODEL_F32) {
        plan_in t = *in;
        t.base_dtype = MODEL_BF16;
        if (!plan_make(c, &t, &o, err) && o.total <= ram)
            snprintf(s[n++], 160, "set model.base_dtype: bfloat16 (total %.2f GiB)", gib(o.total));
    }
    if (!in->lora) {
        plan_in t = *in;
        t.lora = 1;
        t.lc = (lora_config){.r = 16, .alpha = 32, .targets = 15};
        t.base_dtype = MODEL_BF16;
        t.ckpt = 1;
        if (!plan_make(c, &t, &o, err) && o.total <= ram)
            snprintf(s[n++], 160, "train LoRA (lora.enabled: true, r 16 on q,k,v,o) on a bf16 base with activation "
                                  "checkpointing (total %.2f GiB)", gib(o.total));
    }
    int shorter = 0;
    for (int pass = 0; pass < 2 && !shorter; pass++) { /* shorter sequences: as they are, else checkpointed */
        plan_in t = *in;
        t.ckpt = pass ? 1 : in->ckpt;
        if (pass && in->ckpt) break;
        int best = 0;
        for (int T = in->T / 2; T >= 64 && !best; T /= 2) {
            t.T = T;
            if (!plan_make(c, &t, &o, err) && o.total <= ram) best = T;
        }
        if (best) {
            t.T = best;
            plan_make(c, &t, &o, err);
            snprintf(s[n++], 160, "lower data.seq_len to %d%s (total %.2f GiB)", best,
                     pass ? " with train.activation_checkpointing: true" : "", gib(o.total));
            shorter = 1;
        }
    }
    if (in->B > 1) {
        plan_in t = *in;
        t.B = 1;
        t.grad_accum = in->grad_accum * in->B;
        if (!plan_make(c, &t, &o, err) && o.total <= ram)
            snprintf(s[n++], 160, "set train.batch_size: 1 and train.grad_accum: %d (the same tokens per step, total "
                                  "%.2f GiB)", t.grad_accum, gib(o.total));
    }
    return n;
}

static void print_text(const model_config *c, const plan_in *in, const plan_out *o, size_t ram, char s[][160], int ns)
{
    const model_family *F = model_family_get(c->family);
    printf("%s: vocab %d, hidden %d, %d layers (%d MoE), %d heads / %d kv heads of dim %d, %d experts (top-%d) of "
           "ffn %d%s%s\n",
           F->model_type, c->vocab, c->dim, c->n_layers, model_moe_layers(c), c->n_heads, c->n_kv_heads, c->head_dim,
           c->n_experts, c->top_k, c->ffn, c->shared_ffn ? ", shared expert" : "",
           c->tie_embeddings ? ", tied embeddings" : "");
    printf("parameters          %14zu  (%.3f B)\n", o->parameters, o->parameters / 1e9);
    printf("active per token    %14zu  (%.3f B, %.1f%%)\n", o->active, o->active / 1e9,
           100.0 * o->active / o->parameters);
    printf("FLOPs per token     %14.4g  forward at T=%d; training step 3x = %.4g\n", o->flops_per_token, in->T,
           3 * o->flops_per_token);
    if (in->lora)
        printf("\nLoRA r=%d (%zu trainable parameters) on a %s base", in->lc.r, o->trainable_params,
               model_dtype_name(in->base_dtype));
    else
        printf("\nfull fine-tune, fp32 weights and AdamW state");
    printf(", batch %d x %d%s%s%s", in->B, in->T, in->ranks > 1 ? " per rank" : "", in->grad_accum > 1 ? " (grad_accum " : "",
           in->grad_accum > 1 ? "" : "");
    if (in->grad_accum > 1) printf("%d)", in->grad_accum);
    if (in->ranks > 1) printf(", %d ranks%s", in->ranks, in->zero ? " with ZeRO-1" : "");
    printf(", activation checkpointing %s:\n", in->ckpt ? "on" : "off");
    printf("  weights           %9.3f GiB%s\n", gib(o->weights),
           in->lora && in->base_dtype != MODEL_F32 ? "  (16-bit base matrices mapped from the files as stored)" : "");
    if (in->lora) printf("  trainable         %9.3f GiB  (adapters)\n", gib(o->trainable));
    printf("  gradients         %9.3f GiB\n", gib(o->grads));
    printf("  AdamW m and v     %9.3f GiB\n", gib(o->optimizer));
    printf("  activations       %9.3f GiB  (%s)\n", gib(o->activations),
           in->ckpt ? "each layer's input + one layer recomputed at a time" : "kept for backward + one layer of scratch");
    printf("  scratch           %9.3f GiB  (widening tiles %.3f, LoRA %.3f, batches %.3f, process %.3f)\n",
           gib(o->scratch), gib(o->tiles), gib(o->lora_scratch), gib(o->batches), gib(o->runtime));
    printf("  total             %9.3f GiB  at the peak of a step%s\n", gib(o->total), in->ranks > 1 ? ", per rank" : "");
    if (in->ranks > 1) /* ring collectives: the gradients out, the parameters back (ZeRO-1) or an all-reduce */
        printf("  sent per step     %9.3f GiB  per rank: 2(N-1)/N x the trainable fp32 bytes\n",
               gib(2.0 * (in->ranks - 1) / in->ranks * 4.0 * o->trainable_params));
    if (ram) {
        printf("  RAM available     %9.3f GiB: %s\n", gib(ram), o->total <= ram ? "fits" : "does NOT fit");
        for (int i = 0; i < ns; i++) printf("    - %s\n", s[i]);
        if (o->total > ram && !ns) printf("    - nothing in the config makes it fit on this machine\n");
    }
}

static void print_json(const plan_in *in, const plan_out *o, size_t ram, char s[][160], int ns)
{
    cJSON *j = cJSON_CreateObject(), *mem = cJSON_CreateObject(), *sug = cJSON_CreateArray();
    cJSON_AddNumberToObject(j, "parameters", (double)o->parameters);
    cJSON_AddNumberToObject(j, "active_parameters", (double)o->active);
    cJSON_AddNumberToObject(j, "trainable_parameters", (double)o->trainable_params);
    cJSON_AddNumberToObject(j, "flops_per_token", o->flops_per_token);
    cJSON_AddStringToObject(j, "run", in->lora ? "lora" : "full");
    cJSON_AddStringToObject(j, "base_dtype", model_dtype_name(in->lora ? in->base_dtype : MODEL_F32));
    cJSON_AddBoolToObject(j, "activation_checkpointing", in->ckpt);
    cJSON_AddNumberToObject(j, "batch_size", in->B);
    cJSON_AddNumberToObject(j, "seq_len", in->T);
    cJSON_AddNumberToObject(j, "ranks", in->ranks);
    const struct { const char *k; size_t v; } m[] = {
        {"weights", o->weights},         {"trainable", o->trainable}, {"grads", o->grads},
        {"optimizer", o->optimizer},     {"activations", o->activations}, {"scratch", o->scratch},
        {"total", o->total}};
    for (size_t i = 0; i < sizeof m / sizeof *m; i++) cJSON_AddNumberToObject(mem, m[i].k, (double)m[i].v);
    cJSON_AddItemToObject(j, "memory", mem);
    cJSON_AddNumberToObject(j, "ram", (double)ram);
    cJSON_AddBoolToObject(j, "fits", !ram || o->total <= ram);
    for (int i = 0; i < ns; i++) cJSON_AddItemToArray(sug, cJSON_CreateString(s[i]));
    cJSON_AddItemToObject(j, "suggestions", sug);
    char *t = cJSON_Print(j);
    puts(t);
    free(t);
    cJSON_Delete(j);
}

int cmd_info(int argc, char **argv)
{
    if (cmd_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    const char *path = NULL;
    char *over[64];
    int B = 0, T = 0, json = 0, ranks = 1, nover = 0;
    size_t ram = 0;
    int ram_auto = 1;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "--batch") || !strcmp(argv[i], "--seq-len") || !strcmp(argv[i], "--ranks")) &&
            i + 1 < argc) {
            long v;
            if (cmd_long(argv[i + 1], 1, 1 << 24, &v)) {
                fprintf(stderr, "moet info: %s needs an integer in [1, %d], not '%s'\n", argv[i], 1 << 24, err_q(argv[i + 1], -1));
                return 2;
            }
            *(!strcmp(argv[i], "--batch") ? &B : !strcmp(argv[i], "--ranks") ? &ranks : &T) = (int)v, i++;
        } else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--ram") && i + 1 < argc) {
            i++;
            if (strcmp(argv[i], "auto") && parse_bytes(argv[i], &ram)) {
                fprintf(stderr, "moet info: --ram needs a size like 128GiB or 64GB, or auto, not '%s'\n", argv[i]);
                return 2;
            }
            ram_auto = !strcmp(argv[i], "auto");
        } else if (argv[i][0] != '-' && !path) path = argv[i];
        else if (argv[i][0] != '-' && strchr(argv[i], '=') && nover < 64) over[nover++] = argv[i];
        else {
            fprintf(stderr, "moet info: unexpected argument '%s'\n%s", err_q(argv[i], -1), usage);
            return 2;
        }
    }
    if (!path) {
        fputs(usage, stderr);
        return 2;
    }
    if (ram_auto) ram = plan_mem_available();
    char err[ERR_MAX];
    model_config c;
    plan_in in = {.grad_accum = 1, .ranks = ranks, .zero = ranks > 1, .base_dtype = MODEL_F32};
    int lora_side = 0; /* a model dir: also show LoRA r 16 q,k,v,o */
    size_t plen = strlen(path);
    if (!fs_exists(path)) {
        err_set(err, "%s: no such file or directory", path);
        goto fail;
    }
    if ((plen > 5 && !strcmp(path + plen - 5, ".yaml")) || (plen > 4 && !strcmp(path + plen - 4, ".yml"))) {
        cfg y;
        if (cfg_load(&y, path, over, nover, err)) goto fail;
        int rc = load_run_config(&y, &c, err);
        in.B = B ? B : y.train.batch_size;
        in.zero = ranks > 1 && y.dist.zero != 0;
        in.T = T ? T : y.data.seq_len;
        in.grad_accum = y.train.grad_accum;
        in.ckpt = y.train.activation_checkpointing;
        in.lora = y.lora.enabled;
        if (!rc && y.lora.enabled) {
            rc = load_lora_config(&y, &in.lc, err);
            static const int of_cfg[] = {[CFG_BASE_F32] = MODEL_F32, [CFG_BASE_BF16] = MODEL_BF16,
                                         [CFG_BASE_F16] = MODEL_F16};
            if (y.model.base_dtype != CFG_BASE_AUTO) in.base_dtype = of_cfg[y.model.base_dtype];
            else if (!rc && y.model.init_from && dir_dtype(y.model.init_from, &in.base_dtype))
                rc = err_set(err, "model.init_from %s: cannot read its weights' dtype", y.model.init_from);
        }
        cfg_free(&y);
        if (rc) goto fail;
    } else {
        if (nover) {
            err_set(err, "key=value overrides apply to a RUN.yaml, not to %s", path);
            goto fail;
        }
        if (fs_is_dir(path)) {
            if (ckpt_read_config(path, &c, err)) goto fail;
            if (dir_dtype(path, &in.base_dtype)) in.base_dtype = MODEL_F32;
        } else {
            char *text;
            size_t len;
            if (fs_read_file(path, &text, &len, err)) goto fail;
            int rc = model_config_from_json(&c, text, err);
            cJSON *o = cJSON_Parse(text);
            const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "dtype");
            if (!cJSON_IsString(d)) d = cJSON_GetObjectItemCaseSensitive(o, "torch_dtype");
            if (cJSON_IsString(d) && !strcmp(d->valuestring, "bfloat16")) in.base_dtype = MODEL_BF16;
            if (cJSON_IsString(d) && !strcmp(d->valuestring, "float16")) in.base_dtype = MODEL_F16;
            cJSON_Delete(o);
            free(text);
            if (rc) {
                err_wrap(err, "%s", path);
                goto fail;
            }
        }
        in.B = B ? B : ranks;
        in.T = T ? T : c.max_pos;
        lora_side = 1;
    }
    if (ranks > 1 && in.B % ranks) {
        fprintf(stderr, "moet info: batch %d does not split evenly over %d ranks\n", in.B, ranks);
        return 2;
    }
    in.B /= ranks; /* the rows each rank holds */
    plan_out o;
    char sug[8][160];
    if (plan_make(&c, &in, &o, err)) goto fail;
    int ns = ram && o.total > ram ? suggest(&c, &in, ram, sug, err) : 0;
    if (json) {
        print_json(&in, &o, ram, sug, ns);
        return 0;
    }
    print_text(&c, &in, &o, ram, sug, ns);
    if (lora_side) {
        plan_in l = in;
        l.lora = 1;
        l.lc = (lora_config){.r = 16, .alpha = 32, .targets = 15};
        plan_out lo;
        if (plan_make(&c, &l, &lo, err)) goto fail;
        printf("\nLoRA r=16 on q,k,v,o (%zu trainable), %s base as stored: %.3f GiB (%.1fx less); with activation "
               "checkpointing: ",
               lo.trainable_params, model_dtype_name(l.base_dtype), gib(lo.total), (double)o.total / lo.total);
        l.ckpt = 1;
        if (plan_make(&c, &l, &lo, err)) goto fail;
        printf("%.3f GiB\n", gib(lo.total));
    }
    printf("\nactivation memory vs sequence length (batch 1): grows linearly in T, no T^2 term\n");
    printf("  %8s %14s %14s %16s\n", "T", "GiB", "bytes/token", "checkpointed GiB");
    for (int t = 512; t <= 8192; t *= 2) {
        double a = (double)model_acts_bytes_ckpt(&c, 1, t, in.lora ? in.lc.r : 0, 0);
        double ac = (double)model_acts_bytes_ckpt(&c, 1, t, in.lora ? in.lc.r : 0, 1);
        printf("  %8d %14.4f %14.0f %16.4f\n", t, gib(a), a / t, gib(ac));
    }
    return 0;
fail:
    fprintf(stderr, "moet info: %s\n", err);
    return 1;
}
