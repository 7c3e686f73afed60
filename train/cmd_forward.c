/* moet forward: the numerics check after importing a model. Runs one batch through the
 * model and writes logits, losses, router logits and (with --grads) every gradient under
 * its HF name, for comparison with transformers. */
#include "checkpoints/hf.h"
#include "checkpoints/peft.h"
#include "checkpoints/st.h"
#include "common/err.h"
#include "train/cmd.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: moet forward MODEL_DIR --batch BATCH.safetensors --out OUT.safetensors [--grads]\n"
    "                    [--lora ADAPTER_DIR] [--clip-grad-norm C] [--z-loss C]\n"
    "                    [--base-dtype float32|bfloat16|float16|auto]\n"
    "  BATCH holds input_ids [B,T] (int64/int32) and optional labels [B,T] (-100 = ignore;\n"
    "  default input_ids). OUT gets logits [B,T,V], loss, ce_loss, aux_loss, z_loss ([1] F32),\n"
    "  router_logits.layerL [B*T,E], and with --grads grad.<HF name> for every parameter\n"
    "  (d loss / d w, as loss.backward() gives in transformers) and grad_norm (their global L2\n"
    "  norm). --clip-grad-norm C scales the written gradients as torch's clip_grad_norm_(C)\n"
    "  does before an optimizer step (grad_norm stays the norm before clipping).\n"
    "  --lora applies a PEFT adapter on the frozen base; --grads then gives the adapter's\n"
    "  gradients as grad.<PEFT key>.\n"
    "  --base-dtype keeps a frozen base (no --grads, or --lora) as model.base_dtype would\n"
    "  (auto: 16-bit files stay 16-bit, mapped); default float32.\n";

static int read_ids(const st_file *f, const char *name, int32_t **out, int *B, int *T, char *err)
{
    const st_tensor *t = st_find(f, name);
    *out = NULL;
    if (!t) return 0;
    if (t->ndim != 2)
        return err_set(err, "batch: '%s' must be 2-D [B,T], not %d-D", name, t->ndim);
    if (t->shape[0] < 1 || t->shape[1] < 1 || t->shape[0] > (1 << 20) || t->shape[1] > (1 << 20))
        return err_set(err, "batch: '%s' has shape [%lld,%lld]: B and T must be in [1, 2^20]", name,
                       (long long)t->shape[0], (long long)t->shape[1]);
    if (*B && (t->shape[0] != *B || t->shape[1] != *T))
        return err_set(err, "batch: labels shape [%lld,%lld] differs from input_ids [%d,%d]",
                       (long long)t->shape[0], (long long)t->shape[1], *B, *T);
    *B = (int)t->shape[0];
    *T = (int)t->shape[1];
    int64_t *tmp = malloc((size_t)t->numel * sizeof *tmp);
    *out = malloc((size_t)t->numel * sizeof **out);
    if (!tmp || !*out || st_read_i64(t, tmp, t->numel, err)) {
        free(tmp);
        return err_wrap(err, "batch: '%s'", name);
    }
    for (int64_t i = 0; i < t->numel; i++) { /* labels may be -100; nothing may leave int32 */
        if (tmp[i] < INT32_MIN || tmp[i] > INT32_MAX) {
            err_set(err, "batch: '%s' holds %lld at position %lld, outside int32", name, (long long)tmp[i],
                    (long long)i);
            free(tmp);
            return -1;
        }
        (*out)[i] = (int32_t)tmp[i];
    }
    free(tmp);
    return 0;
}

int cmd_forward(int argc, char **argv)
{
    if (cmd_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    const char *dir = NULL, *batch_path = NULL, *out_path = NULL, *lora_dir = NULL;
    int grads = 0, base_dtype = MODEL_F32;
    double z_coef = 0, clip = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch_path = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
        else if (!strcmp(argv[i], "--grads")) grads = 1;
        else if (!strcmp(argv[i], "--lora") && i + 1 < argc) lora_dir = argv[++i];
        else if (!strcmp(argv[i], "--base-dtype") && i + 1 < argc) {
            const char *v = argv[++i];
            base_dtype = !strcmp(v, "float32") ? MODEL_F32 : !strcmp(v, "bfloat16") ? MODEL_BF16
                         : !strcmp(v, "float16") ? MODEL_F16 : !strcmp(v, "auto") ? CKPT_BASE_AUTO : -2;
            if (base_dtype == -2) {
                fprintf(stderr, "moet forward: --base-dtype must be float32, bfloat16, float16 or auto, not '%s'\n", v);
                return 2;
            }
        }
        else if ((!strcmp(argv[i], "--z-loss") || !strcmp(argv[i], "--clip-grad-norm")) && i + 1 < argc) {
            int z = !strcmp(argv[i], "--z-loss");
            if (cmd_double(argv[i + 1], 0, 1e30, z ? &z_coef : &clip)) {
                fprintf(stderr, "moet forward: %s needs a number >= 0, not '%s'\n", argv[i], err_q(argv[i + 1], -1));
                return 2;
            }
            i++;
        } else if (argv[i][0] != '-' && !dir) dir = argv[i];
        else {
            fprintf(stderr, "moet forward: unexpected argument '%s'\n%s", err_q(argv[i], -1), usage);
            return 2;
        }
    }
    if (!dir || !batch_path || !out_path) {
        fputs(usage, stderr);
        return 2;
    }
    if (grads && !lora_dir && base_dtype != MODEL_F32) {
        fprintf(stderr, "moet forward: --grads without --lora trains the base: it is fp32 (--base-dtype float32)\n");
        return 2;
    }
    char err[ERR_MAX];
    model m;
    st_file *bf = NULL;
    model_acts *a = NULL;
    lora *lo = NULL;
    int32_t *ids = NULL, *labels = NULL;
    float *logits = NULL;
    st_out *outs = NULL;
    int rc = 1, B = 0, T = 0, have_model = 0;
    if (ckpt_load_model_as(&m, dir, grads && !lora_dir, base_dtype, err)) goto fail;
    have_model = 1;
    if (lora_dir) {
        lora_config lc;
        if (peft_read_config(lora_dir, &lc, NULL, 0, err) || lora_create(&lo, &m, &lc, 0, err) ||
            peft_load_weights(lo, lora_dir, err))
            goto fail;
        lora_attach(&m, lo);
    }
    /* what --grads reports: the base parameters, or the adapter's */
    const model_table *gt = lo ? &lo->tab : &m.tab;
    float *gbuf = lo ? lo->g : m.g;
    if (st_open(&bf, batch_path, err)) goto fail;
    if (read_ids(bf, "input_ids", &ids, &B, &T, err)) goto fail;
    if (!ids) {
        err_set(err, "%s: no 'input_ids' tensor", batch_path);
        goto fail;
    }
    if (read_ids(bf, "labels", &labels, &B, &T, err)) goto fail;
    if (model_acts_create(&a, &m, B, T, err)) goto fail;
    size_t V = m.c.vocab, N = (size_t)B * T;
    logits = malloc(N * V * sizeof *logits);
    if (!logits) {
        err_set(err, "out of memory for logits");
        goto fail;
    }
    model_batch b = {B, T, ids, labels, NULL, 0};
    model_stats st;
    if (model_forward(&m, a, &b, m.c.aux_coef, z_coef, logits, &st, err)) goto fail;
    double norm = 0;
    if (grads) {
        double scale = st.n_targets ? 1.0 / st.n_targets : 0;
        if (model_forward_backward(&m, a, &b, scale, m.c.aux_coef, z_coef, 1, &st, err)) goto fail;
        for (size_t i = 0; i < gt->total; i++) norm += (double)gbuf[i] * gbuf[i];
        norm = sqrt(norm);
        if (clip > 0 && norm > clip) { /* torch: coef = max_norm / (norm + 1e-6), clamped to 1 */
            float coef = (float)(clip / (norm + 1e-6));
            for (size_t i = 0; i < gt->total; i++) gbuf[i] *= coef;
        }
    }
    int L = m.c.n_layers, E = m.c.n_experts, nout = 0;
    outs = calloc((size_t)(6 + L + (grads ? gt->n : 0)), sizeof *outs);
    float sc[5] = {(float)st.loss, (float)st.ce, (float)st.aux, (float)st.z, (float)norm};
    outs[nout++] = (st_out){.name = "logits", .ndim = 3, .shape = {B, T, (int64_t)V}, .dtype = ST_F32, .f32 = logits};
    const char *names[4] = {"loss", "ce_loss", "aux_loss", "z_loss"};
    for (int i = 0; i < 4; i++) outs[nout++] = (st_out){.name = names[i], .ndim = 1, .shape = {1}, .dtype = ST_F32, .f32 = &sc[i]};
    char (*rl_names)[48] = calloc((size_t)L, 48);
    for (int l = 0; l < L; l++) {
        if (!model_layer_is_moe(&m.c, l)) continue; /* a dense layer has no router */
        snprintf(rl_names[l], 48, "router_logits.layer%d", l);
        outs[nout++] = (st_out){.name = rl_names[l], .ndim = 2, .shape = {(int64_t)N, E}, .dtype = ST_F32,
                                .f32 = model_router_logits(a, l)};
    }
    if (grads) outs[nout++] = (st_out){.name = "grad_norm", .ndim = 1, .shape = {1}, .dtype = ST_F32, .f32 = &sc[4]};
    char (*gnames)[160] = grads ? calloc((size_t)gt->n, 160) : NULL;
    for (int i = 0; grads && i < gt->n; i++) {
        const model_tensor *t = &gt->t[i];
        snprintf(gnames[i], 160, "grad.%s", t->name);
        outs[nout] = (st_out){.name = gnames[i], .ndim = t->ndim, .dtype = ST_F32, .f32 = gbuf + t->offset};
        for (int d = 0; d < t->ndim; d++) outs[nout].shape[d] = t->shape[d];
        nout++;
    }
    int wrc = st_write(out_path, outs, nout, NULL, err);
    free(rl_names);
    free(gnames);
    if (wrc) goto fail;
    printf("loss %.6f  ce %.6f  aux %.6f  z %.6f  (%ld targets, B=%d T=%d)", st.loss, st.ce, st.aux, st.z,
           st.n_targets, B, T);
    if (grads) printf("  grad_norm %.6f%s", norm, clip > 0 && norm > clip ? " (gradients written clipped)" : "");
    printf("\n");
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "moet forward: %s\n", err);
done:
    free(outs);
    free(logits);
    free(ids);
    free(labels);
    model_acts_free(a);
    st_close(bf);
    lora_free(lo);
    if (have_model) model_free(&m);
    return rc;
}
