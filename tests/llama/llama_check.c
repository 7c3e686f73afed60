/* llama_check: the other side of the GGUF test. Loads a GGUF file with llama.cpp's own C
 * API (the prebuilt libllama of node-llama-cpp, see tools/llama_setup.sh) and reports what
 * llama.cpp makes of it:
 *
 *   llama_check MODEL.gguf tokenize [--no-bos] [--records] < text
 *       llama.cpp's tokenization of all of stdin, ids on one line separated by spaces
 *       (as `moet tokenize` prints them); special tokens in the text are recognised, as
 *       Hugging Face tokenizers does. With --records stdin holds many texts, each as
 *       its byte count in decimal, a newline, then the bytes; each gets its own line.
 *   llama_check MODEL.gguf logits IDS.txt OUT.f32
 *       evaluates the whitespace-separated ids of IDS.txt as one sequence in one batch
 *       (positions 0..T-1) and writes the logits of every position as raw little-endian
 *       float32 [T, n_vocab]; prints "T V" on stdout.
 *   llama_check MODEL.gguf chat-template
 *       prints the model's chat template (tokenizer.chat_template, as llama_model_chat_template
 *       reads it) exactly, no newline added.
 *   llama_check MODEL.gguf chat-apply [--add-ass] < records
 *       formats a conversation with that template through llama_chat_apply_template (llama.cpp's
 *       built-in renderings of the templates it recognises; no Jinja) and prints the text
 *       exactly. stdin: per message "ROLE LEN\n" then LEN bytes of content.
 *   llama_check MODEL.gguf chat-generate N < records
 *       the same conversation with the assistant's header (add_ass), tokenized as llama.cpp
 *       does (its BOS, special tokens parsed), then up to N tokens greedily (stops at an
 *       end-of-generation token); prints the prompt's ids on one line, the generated on the next.
 *   llama_check MODEL.gguf generate N < ids
 *       the same from the prompt's token ids (moet's rendering of a conversation, say).
 *
 * CPU only, fp32 KV cache and no flash attention, so an F32 model is computed in fp32
 * throughout; 2 threads. llama.cpp's log goes to stderr only with LLAMA_CHECK_VERBOSE=1.
 * Exit 0 ok, 1 failure (one line on stderr), 2 usage. */
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef LLAMA_LIB_DIR
#error "compile with -DLLAMA_LIB_DIR=\"...\" (the folder of libggml-cpu-*.so)"
#endif

static void quiet_log(enum ggml_log_level level, const char *text, void *ud)
{
    (void)level, (void)ud;
    if (getenv("LLAMA_CHECK_VERBOSE")) fputs(text, stderr);
}

static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap + 1);
    while (b) {
        n += fread(b + n, 1, cap - n, f);
        if (n < cap) break;
        char *nb = realloc(b, (cap *= 2) + 1);
        if (!nb) free(b);
        b = nb;
    }
    if (!b || ferror(f)) {
        free(b);
        return NULL;
    }
    b[n] = 0;
    *len = n;
    return b;
}

static struct llama_model *load(const char *path, int vocab_only)
{
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.vocab_only = vocab_only;
    struct llama_model *m = llama_model_load_from_file(path, mp);
    if (!m) fprintf(stderr, "llama_check: llama.cpp could not load %s (LLAMA_CHECK_VERBOSE=1 shows why)\n", path);
    return m;
}

static int tokenize_one(const struct llama_vocab *v, const char *text, size_t len, int add_bos)
{
    int cap = (int)len + 8;
    llama_token *ids = malloc((size_t)cap * sizeof *ids);
    int n = ids ? llama_tokenize(v, text, (int32_t)len, ids, cap, add_bos, true) : -1;
    if (n < 0) fprintf(stderr, "llama_check: llama_tokenize failed (%d)\n", n);
    for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    if (n >= 0) printf("\n");
    free(ids);
    return n < 0;
}

static int cmd_tokenize(const char *path, int add_bos, int records)
{
    size_t len;
    char *text = read_all(stdin, &len);
    if (!text) {
        fprintf(stderr, "llama_check: cannot read stdin\n");
        return 1;
    }
    struct llama_model *m = load(path, 1);
    if (!m) {
        free(text);
        return 1;
    }
    const struct llama_vocab *v = llama_model_get_vocab(m);
    int rc = 0;
    if (!records) rc = tokenize_one(v, text, len, add_bos);
    else
        for (size_t a = 0; a < len && !rc;) {
            char *end;
            unsigned long long n = strtoull(text + a, &end, 10);
            if (end == text + a || *end != '\n' || n > len - (size_t)(end + 1 - text)) {
                fprintf(stderr, "llama_check: bad record at byte %zu of stdin\n", a);
                rc = 1;
                break;
            }
            a = (size_t)(end + 1 - text);
            rc = tokenize_one(v, text + a, (size_t)n, add_bos);
            a += (size_t)n;
        }
    free(text);
    llama_model_free(m);
    return rc;
}

static int cmd_logits(const char *path, const char *ids_path, const char *out_path)
{
    FILE *f = fopen(ids_path, "r");
    if (!f) {
        perror(ids_path);
        return 1;
    }
    int cap = 64, T = 0, id;
    llama_token *ids = malloc((size_t)cap * sizeof *ids);
    while (ids && fscanf(f, "%d", &id) == 1) {
        if (T == cap) {
            llama_token *n = realloc(ids, (size_t)(cap *= 2) * sizeof *ids);
            if (!n) free(ids);
            ids = n;
            if (!ids) break;
        }
        ids[T++] = id;
    }
    fclose(f);
    if (!ids || T == 0) {
        fprintf(stderr, "llama_check: no token ids in %s\n", ids_path);
        free(ids);
        return 1;
    }
    struct llama_model *m = load(path, 0);
    if (!m) {
        free(ids);
        return 1;
    }
    int V = llama_vocab_n_tokens(llama_model_get_vocab(m));
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= V) {
            fprintf(stderr, "llama_check: token id %d out of range (vocab %d)\n", ids[t], V);
            llama_model_free(m);
            free(ids);
            return 1;
        }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(T < 16 ? 16 : T);
    cp.n_batch = cp.n_ubatch = (uint32_t)T;
    cp.n_seq_max = 1;
    cp.n_threads = cp.n_threads_batch = 2;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.no_perf = true;
    struct llama_context *ctx = llama_init_from_model(m, cp);
    if (!ctx) {
        fprintf(stderr, "llama_check: cannot create a llama.cpp context\n");
        llama_model_free(m);
        free(ids);
        return 1;
    }
    struct llama_batch b = llama_batch_init(T, 0, 1);
    for (int t = 0; t < T; t++) {
        b.token[t] = ids[t];
        b.pos[t] = t;
        b.n_seq_id[t] = 1;
        b.seq_id[t][0] = 0;
        b.logits[t] = 1;
    }
    b.n_tokens = T;
    int rc = 1, r = llama_decode(ctx, b);
    FILE *o = NULL;
    if (r != 0) {
        fprintf(stderr, "llama_check: llama_decode failed (%d)\n", r);
    } else if (!(o = fopen(out_path, "wb"))) {
        perror(out_path);
    } else {
        rc = 0;
        for (int t = 0; t < T && !rc; t++) {
            const float *lg = llama_get_logits_ith(ctx, t);
            if (!lg || fwrite(lg, sizeof *lg, (size_t)V, o) != (size_t)V) rc = 1;
        }
        if (fclose(o)) rc = 1;
        if (rc) fprintf(stderr, "llama_check: cannot write logits to %s\n", out_path);
        else printf("%d %d\n", T, V);
    }
    llama_batch_free(b);
    llama_free(ctx);
    llama_model_free(m);
    free(ids);
    return rc;
}

/* Greedy continuation of ids[n] (room for n_new more), up to n_new tokens; prints the prompt's
 * ids on one line and the generated ones on the next. Frees ids. */
static int generate_ids(struct llama_model *m, llama_token *ids, int n, int n_new)
{
    const struct llama_vocab *v = llama_model_get_vocab(m);
    int rc = 1;
    for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n + n_new + 8);
    cp.n_batch = cp.n_ubatch = (uint32_t)n;
    cp.n_threads = cp.n_threads_batch = 2;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.no_perf = true;
    struct llama_context *ctx = llama_init_from_model(m, cp);
    struct llama_sampler *smp = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smp, llama_sampler_init_greedy());
    if (ctx && llama_decode(ctx, llama_batch_get_one(ids, n)) == 0) {
        rc = 0;
        for (int k = 0; k < n_new; k++) {
            llama_token t = llama_sampler_sample(smp, ctx, -1);
            if (llama_vocab_is_eog(v, t)) break;
            printf(k ? " %d" : "%d", t);
            ids[n] = t;
            if (llama_decode(ctx, llama_batch_get_one(&ids[n], 1))) {
                rc = 1;
                break;
            }
            n++;
        }
        printf("\n");
    }
    if (rc) fprintf(stderr, "llama_check: llama.cpp could not evaluate the prompt\n");
    llama_sampler_free(smp);
    if (ctx) llama_free(ctx);
    free(ids);
    return rc;
}

/* text tokenized as llama.cpp does (its BOS, special tokens parsed), then generate_ids. */
static int generate(struct llama_model *m, const char *text, int n_new)
{
    const struct llama_vocab *v = llama_model_get_vocab(m);
    int len = (int)strlen(text), cap = len + 8;
    llama_token *ids = malloc((size_t)(cap + n_new) * sizeof *ids);
    int n = ids ? llama_tokenize(v, text, len, ids, cap, llama_vocab_get_add_bos(v), true) : -1;
    if (n <= 0) {
        fprintf(stderr, "llama_check: llama_tokenize failed (%d)\n", n);
        free(ids);
        return 1;
    }
    return generate_ids(m, ids, n, n_new);
}

/* generate N < ids: the prompt as token ids (moet's), no template, no tokenizer. */
static int cmd_generate(const char *path, int n_new)
{
    size_t len;
    char *text = read_all(stdin, &len), *p = text, *end;
    int n = 0, cap = 64;
    llama_token *ids = malloc((size_t)(cap + n_new) * sizeof *ids);
    for (long id; text && ids && (id = strtol(p, &end, 10), end != p); p = end) {
        if (n == cap) {
            llama_token *g = realloc(ids, (size_t)((cap *= 2) + n_new) * sizeof *ids);
            if (!g) break;
            ids = g;
        }
        ids[n++] = (llama_token)id;
    }
    free(text);
    struct llama_model *m = n ? load(path, 0) : NULL;
    if (!m) {
        if (!n) fprintf(stderr, "llama_check: no token ids on stdin\n");
        free(ids);
        return 1;
    }
    int rc = generate_ids(m, ids, n, n_new);
    llama_model_free(m);
    return rc;
}

static int cmd_chat(const char *path, int apply, int add_ass, int n_new)
{
    struct llama_model *m = load(path, n_new < 0);
    if (!m) return 1;
    const char *tmpl = llama_model_chat_template(m, NULL);
    int rc = 1;
    if (!tmpl) {
        fprintf(stderr, "llama_check: %s has no chat template\n", path);
    } else if (!apply) {
        fputs(tmpl, stdout);
        rc = 0;
    } else {
        size_t len, n = 0;
        char *in = read_all(stdin, &len), *roles[64] = {0};
        struct llama_chat_message msg[64];
        for (size_t a = 0; in && a < len && n < 64;) {
            char role[64];
            unsigned long long cl;
            const char *nl = memchr(in + a, '\n', len - a);
            size_t hdr = nl ? (size_t)(nl - (in + a)) + 1 : 0;
            if (!nl || sscanf(in + a, "%63s %llu", role, &cl) != 2 || cl > len - a - hdr) {
                fprintf(stderr, "llama_check: bad message record at byte %zu of stdin\n", a);
                n = 0;
                break;
            }
            size_t rl = strlen(role);
            roles[n] = malloc(rl + 1);
            memcpy(roles[n], role, rl + 1);
            char *c = malloc(cl + 1);
            memcpy(c, in + a + hdr, cl), c[cl] = 0;
            msg[n].role = roles[n], msg[n].content = c;
            n++;
            a += hdr + cl;
        }
        int need = n ? llama_chat_apply_template(tmpl, msg, n, add_ass, NULL, 0) : -1;
        char *buf = need >= 0 ? malloc((size_t)need + 1) : NULL;
        if (buf && llama_chat_apply_template(tmpl, msg, n, add_ass, buf, need + 1) == need) {
            if (n_new >= 0) rc = generate(m, buf, n_new);
            else fwrite(buf, 1, (size_t)need, stdout), rc = 0;
        } else if (n) {
            fprintf(stderr, "llama_check: llama_chat_apply_template does not know this template (%d)\n", need);
        }
        free(buf);
        for (size_t i = 0; i < n; i++) free(roles[i]), free((char *)msg[i].content);
        free(in);
    }
    llama_model_free(m);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 3 ||
        (strcmp(argv[2], "tokenize") && strcmp(argv[2], "logits") && strcmp(argv[2], "chat-template") &&
         strcmp(argv[2], "chat-apply") && strcmp(argv[2], "chat-generate") && strcmp(argv[2], "generate")) ||
        ((!strcmp(argv[2], "chat-generate") || !strcmp(argv[2], "generate")) && argc != 4) ||
        (!strcmp(argv[2], "logits") && argc != 5)) {
        fprintf(stderr, "usage: llama_check MODEL.gguf tokenize [--no-bos] [--records] < text\n"
                        "       llama_check MODEL.gguf logits IDS.txt OUT.f32\n"
                        "       llama_check MODEL.gguf chat-template\n"
                        "       llama_check MODEL.gguf chat-apply [--add-ass] < messages\n"
                        "       llama_check MODEL.gguf chat-generate N < messages\n"
                        "       llama_check MODEL.gguf generate N < ids\n");
        return 2;
    }
    llama_log_set(quiet_log, NULL);
    ggml_backend_load_all_from_path(LLAMA_LIB_DIR);
    llama_backend_init();
    int rc;
    if (!strcmp(argv[2], "tokenize")) {
        int add_bos = 1, records = 0;
        for (int i = 3; i < argc; i++) {
            if (!strcmp(argv[i], "--no-bos")) add_bos = 0;
            else if (!strcmp(argv[i], "--records")) records = 1;
            else {
                fprintf(stderr, "llama_check: unknown option '%s'\n", argv[i]);
                return 2;
            }
        }
        rc = cmd_tokenize(argv[1], add_bos, records);
    } else if (!strcmp(argv[2], "generate")) {
        rc = cmd_generate(argv[1], atoi(argv[3]));
    } else if (!strncmp(argv[2], "chat-", 5)) {
        int gen = !strcmp(argv[2], "chat-generate");
        rc = cmd_chat(argv[1], strcmp(argv[2], "chat-template") != 0, gen || (argc > 3 && !strcmp(argv[3], "--add-ass")),
                      gen ? atoi(argv[3]) : -1);
    } else {
        rc = cmd_logits(argv[1], argv[3], argv[4]);
    }
    llama_backend_free();
    return rc;
}
