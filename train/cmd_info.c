/* moet info: what a model costs: parameters, active parameters, FLOPs per token and the
 * memory of a training step, from the same sizing code the trainer allocates with. */
#include "checkpoints/hf.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "train/cmd.h"
#include "train/config.h"
#include "train/load.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: moet info MODEL_DIR|config.json|RUN.yaml [--batch B] [--seq-len T]\n"
    "  Prints parameter counts, FLOPs per token and the memory a training step needs at\n"
    "  batch B x T (default: the YAML's train.batch_size x data.seq_len, else 1 x 2048), for a\n"
    "  full fine-tune and, when the YAML enables it, for LoRA; and how activation memory\n"
    "  grows with T.\n";

static double gib(double bytes) { return bytes / 1073741824.0; }

int cmd_info(int argc, char **argv)
{
    if (cmd_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    const char *path = NULL;
    int B = 0, T = 0, lora_r = 0;
    size_t lora_params = 0;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "--batch") || !strcmp(argv[i], "--seq-len")) && i + 1 < argc) {
            long v;
            if (cmd_long(argv[i + 1], 1, 1 << 24, &v)) {
                fprintf(stderr, "moet info: %s needs an integer in [1, %d], not '%s'\n", argv[i], 1 << 24, argv[i + 1]);
                return 2;
            }
            *(!strcmp(argv[i], "--batch") ? &B : &T) = (int)v, i++;
        } else if (argv[i][0] != '-' && !path) path = argv[i];
        else {
            fprintf(stderr, "moet info: unexpected argument '%s'\n%s", argv[i], usage);
            return 2;
        }
    }
    if (!path || B < 0 || T < 0) {
        fputs(usage, stderr);
        return 2;
    }
    char err[ERR_MAX];
    model_config c;
    size_t plen = strlen(path);
    if ((plen > 5 && !strcmp(path + plen - 5, ".yaml")) || (plen > 4 && !strcmp(path + plen - 4, ".yml"))) {
        cfg y;
        if (cfg_load(&y, path, NULL, 0, err)) goto fail;
        int rc = load_run_config(&y, &c, err);
        if (!B) B = y.train.batch_size;
        if (!T) T = y.data.seq_len;
        if (!rc && y.lora.enabled) { /* size the adapters without allocating the base */
            lora_r = y.lora.r;
            int hd = c.head_dim, D = c.dim, F = c.ffn, H = c.n_heads, KV = c.n_kv_heads;
            for (int i = 0; i < y.lora.n_targets; i++) {
                const char *t = y.lora.targets[i];
                size_t in = D, out = F, n = 1;
                if (!strcmp(t, "q_proj")) out = (size_t)H * hd;
                else if (!strcmp(t, "k_proj") || !strcmp(t, "v_proj")) out = (size_t)KV * hd;
                else if (!strcmp(t, "o_proj")) in = (size_t)H * hd, out = D;
                else if (!strcmp(t, "w2")) in = F, out = D, n = c.n_experts;
                else n = c.n_experts;
                lora_params += n * (size_t)y.lora.r * (in + out);
            }
            lora_params *= c.n_layers;
            if (y.lora.train_router) lora_params += (size_t)c.n_layers * c.n_experts * D;
        }
        cfg_free(&y);
        if (rc) goto fail;
    } else if (fs_is_dir(path)) {
        if (ckpt_read_config(path, &c, err)) goto fail;
    } else {
        char *text;
        size_t len;
        if (fs_read_file(path, &text, &len, err)) goto fail;
        int rc = model_config_from_json(&c, text, err);
        free(text);
        if (rc) {
            err_wrap(err, "%s", path);
            goto fail;
        }
    }
    if (!B) B = 1;
    if (!T) T = 2048;
    size_t total, active;
    model_param_counts(&c, &total, &active);
    double fwd = model_flops_per_token(&c, T);
    printf("Mixtral: vocab %d, hidden %d, %d layers, %d heads / %d kv heads of dim %d, %d experts (top-%d) of ffn %d%s\n",
           c.vocab, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.n_experts, c.top_k, c.ffn,
           c.tie_embeddings ? ", tied embeddings" : "");
    printf("parameters          %14zu  (%.3f B)\n", total, total / 1e9);
    printf("active per token    %14zu  (%.3f B, %.1f%%)\n", active, active / 1e9, 100.0 * active / total);
    printf("FLOPs per token     %14.4g  forward at T=%d; training step 3x = %.4g\n", fwd, T, 3 * fwd);
    double p = (double)total * 4, acts = (double)model_acts_bytes(&c, B, T, 0);
    printf("\nfull fine-tune, fp32, batch %d x %d:\n", B, T);
    printf("  parameters        %9.3f GiB\n", gib(p));
    printf("  gradients         %9.3f GiB\n", gib(p));
    printf("  AdamW m and v     %9.3f GiB\n", gib(2 * p));
    printf("  activations       %9.3f GiB  (kept for backward + one layer of scratch)\n", gib(acts));
    printf("  total             %9.3f GiB\n", gib(4 * p + acts));
    if (lora_r) {
        double lp = (double)lora_params * 4, la = (double)model_acts_bytes(&c, B, T, lora_r);
        printf("\nLoRA r=%d (%zu trainable parameters), frozen fp32 base, batch %d x %d:\n", lora_r, lora_params, B, T);
        printf("  base weights      %9.3f GiB  (no gradients, no AdamW state)\n", gib(p));
        printf("  adapters+grads+m+v%9.3f GiB\n", gib(4 * lp));
        printf("  activations       %9.3f GiB\n", gib(la));
        printf("  total             %9.3f GiB  (%.1fx less than full)\n", gib(p + 4 * lp + la), (4 * p + acts) / (p + 4 * lp + la));
    }
    printf("\nactivation memory vs sequence length (batch 1): grows linearly in T, no T^2 term\n");
    printf("  %8s %14s %14s\n", "T", "GiB", "bytes/token");
    for (int t = 512; t <= 8192; t *= 2) {
        double a = (double)model_acts_bytes(&c, 1, t, 0);
        printf("  %8d %14.4f %14.0f\n", t, gib(a), a / t);
    }
    return 0;
fail:
    fprintf(stderr, "moet info: %s\n", err);
    return 1;
}
