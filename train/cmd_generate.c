/* moet generate: text from a model or training checkpoint. The prompt goes through the
 * KV-cache prefill, then one token at a time is sampled (model/sample) and fed back
 * (model/infer), its text streamed to stdout as soon as it forms whole characters. */
#include "checkpoints/ckpt.h"
#include "checkpoints/hf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "data/chat.h"
#include "data/tok.h"
#include "model/infer.h"
#include "model/sample.h"
#include "train/cmd.h"
#include "train/load.h"

#include <cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "usage: moet generate MODEL_OR_CHECKPOINT --prompt TEXT | --chat TEXT [--system TEXT] |\n"
    "                     --chat-file MESSAGES.json [--chat-template mistral|chatml] [--prompt-ids]\n"
    "                     [--max-new-tokens N] [--temperature T]\n"
    "                     [--top-k K] [--top-p P] [--repetition-penalty R] [--seed S]\n"
    "                     [--tokenizer tokenizer.json] [--no-stream] [--ids] [--base DIR]\n"
    "  MODEL_OR_CHECKPOINT: an HF dir, a training checkpoint, or a PEFT adapter dir (on --base DIR,\n"
    "  else its base_model_name_or_path).\n"
    "  Encodes TEXT (with BOS), then generates until EOS or N new tokens (default 128; the\n"
    "  model's max_position_embeddings also ends it) and writes the continuation (not the\n"
    "  prompt) to stdout as it is generated, then a newline; a stats line goes to stderr.\n"
    "  Sampling defaults come from generation_config.json when the model dir has one\n"
    "  (do_sample, temperature, top_k, top_p, repetition_penalty), else greedy. --temperature 0\n"
    "  is greedy; --top-k / --top-p without --temperature sample at temperature 1. --seed fixes\n"
    "  the draws (default: from the clock, printed in the stats line).\n"
    "  Tokenizer: --tokenizer, else the checkpoint config's `tokenizer`, else\n"
    "  model.init_from/tokenizer.json, else MODEL_DIR/tokenizer.json.\n"
    "  --no-stream prints the text once at the end; --ids prints the generated token ids\n"
    "  (space separated) instead of text.\n"
    "  --chat TEXT: TEXT as a user turn (after --system TEXT when given) in the chat template,\n"
    "  then the assistant's header; --chat-file: a JSON list of {\"role\", \"content\"} (or\n"
    "  {\"messages\": [...]}, a prep line). Rendered by the code prep renders training chats with,\n"
    "  so the ids are those training saw. Template: --chat-template, else the run's (trainer_state.json),\n"
    "  else the tokenizer_config.json chat_template beside the tokenizer (by its markers), else the\n"
    "  tokenizer's own (chatml when it has <|im_start|>, else mistral); chatml also stops at <|im_end|>.\n"
    "  --prompt-ids prints the prompt's token ids on one line and exits without generating.\n";

#define MAX_STOP 8

typedef struct {
    const char *path, *prompt, *tokenizer, *base;
    const char *chat, *system, *chat_file, *chat_template;
    int prompt_ids;
    int max_new, stream, ids_out, seed_given, temp_given, filter_given, rep_given;
    uint64_t seed;
    sample_params sp;
} gen_opts;

/* The model (HF dir, full checkpoint, or LoRA checkpoint with its adapter folded in, so
 * generation runs at the speed of the plain model; on a 16-bit base the adapter stays
 * attached and runs unmerged) and the tokenizer's path. */
static int load_model(model *m, const gen_opts *o, char *tok_path, size_t cap, char *run_tpl, char *err)
{
    lora *lo;
    char *state;
    if (load_any_model_ex(o->path, CKPT_BASE_AUTO, o->base, m, &lo, &state, err)) return -1;
    if (lo && m->base_dtype == MODEL_F32) { /* a 16-bit base keeps its adapter attached: run unmerged */
        lora_merge(m, err);
        lora_free(lo);
    }
    int rc = load_find_tokenizer(o->path, state, o->tokenizer, tok_path, cap, err);
    cJSON *st = state ? cJSON_Parse(state) : NULL; /* the template the run's shards were prepped with */
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(st, "chat_template");
    if (cJSON_IsString(ct)) snprintf(run_tpl, 16, "%.15s", ct->valuestring);
    cJSON_Delete(st);
    free(state);
    if (!rc && !tok_path[0])
        rc = err_set(err, "no tokenizer found for %s (looked for %s/tokenizer.json): pass --tokenizer tokenizer.json",
                     o->path, o->path);
    if (rc) model_free(m);
    return rc;
}

/* Sampling defaults and extra EOS ids from DIR/generation_config.json, as HF generate()
 * reads them; a missing or unreadable file leaves greedy. */
static void read_generation_config(const char *dir, sample_params *sp, int32_t *stop, int *n_stop)
{
    char path[4096], *text = NULL, err[ERR_MAX];
    size_t len;
    fs_path_join(path, sizeof path, dir, "generation_config.json");
    if (!fs_exists(path) || fs_read_file(path, &text, &len, err)) return;
    cJSON *g = cJSON_Parse(text);
    free(text);
    if (!g) return;
    const cJSON *x;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(g, "do_sample"))) {
        *sp = (sample_params){1.0f, 50, 1.0f, 1.0f}; /* HF's GenerationConfig defaults */
        if (cJSON_IsNumber(x = cJSON_GetObjectItemCaseSensitive(g, "temperature"))) sp->temperature = (float)x->valuedouble;
        if (cJSON_IsNumber(x = cJSON_GetObjectItemCaseSensitive(g, "top_k"))) sp->top_k = x->valueint;
        if (cJSON_IsNumber(x = cJSON_GetObjectItemCaseSensitive(g, "top_p"))) sp->top_p = (float)x->valuedouble;
    }
    if (cJSON_IsNumber(x = cJSON_GetObjectItemCaseSensitive(g, "repetition_penalty")))
        sp->repetition_penalty = (float)x->valuedouble;
    x = cJSON_GetObjectItemCaseSensitive(g, "eos_token_id");
    if (cJSON_IsNumber(x) && *n_stop < MAX_STOP) stop[(*n_stop)++] = x->valueint;
    const cJSON *e;
    if (cJSON_IsArray(x))
        cJSON_ArrayForEach(e, x) if (cJSON_IsNumber(e) && *n_stop < MAX_STOP) stop[(*n_stop)++] = e->valueint;
    cJSON_Delete(g);
}

/* ------------------------------------------------------------------ streaming text */

/* Bytes of s[0..len) up to the start of a trailing, incomplete UTF-8 sequence. */
static size_t utf8_complete(const char *s, size_t len)
{
    for (size_t back = 1; back <= 4 && back <= len; back++) {
        unsigned char c = (unsigned char)s[len - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation byte: look further back */
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > back ? len - back : len;
    }
    return len;
}

/* Decoding a window ids[anchor..n) and printing what was not printed yet: the decoder's
 * leading-space strip then only ever touches the window's first token, which is already
 * out, so the text comes out exactly as decoding the whole continuation at once would
 * give it (after the prompt), and a character split over byte tokens waits to be whole. */
typedef struct {
    const tok *t;
    int anchor;
    size_t printed; /* bytes of decode(ids[anchor..n)) already written */
} streamer;

static int decode_span(const tok *t, const int32_t *ids, int n, char **text, size_t *len, char *err)
{
    return tok_decode_ex(t, ids, (size_t)n, 1, text, len, err);
}

static int stream_begin(streamer *s, const tok *t, const int32_t *ids, int n_prompt, char *err)
{
    char *text;
    size_t len;
    s->t = t;
    s->anchor = n_prompt - 1; /* the last prompt token: the continuation keeps its leading space */
    if (decode_span(t, ids + s->anchor, 1, &text, &len, err)) return -1;
    s->printed = len;
    free(text);
    return 0;
}

/* Write the new text of ids[0..n) to out; final flushes an incomplete character too. */
static int stream_push(streamer *s, const int32_t *ids, int n, int final, FILE *out, char *err)
{
    char *text;
    size_t len;
    if (decode_span(s->t, ids + s->anchor, n - s->anchor, &text, &len, err)) return -1;
    size_t upto = final ? len : utf8_complete(text, len);
    if (upto > s->printed) {
        fwrite(text + s->printed, 1, upto - s->printed, out);
        fflush(out);
        s->printed = upto;
    }
    free(text);
    if (s->printed == len && n - s->anchor > 1) { /* all out: slide the window to the last token */
        if (decode_span(s->t, ids + n - 1, 1, &text, &len, err)) return -1;
        if (len > 0) s->anchor = n - 1, s->printed = len; /* (an empty token could not carry the strip) */
        free(text);
    }
    return 0;
}

/* ------------------------------------------------------------------------ command */

static int parse_args(gen_opts *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    o->max_new = 128;
    o->stream = 1;
    o->sp = SAMPLE_GREEDY;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        errno = 0;
        int takes = 1;
        if (!strcmp(a, "--prompt") && v) o->prompt = v;
        else if (!strcmp(a, "--chat") && v) o->chat = v;
        else if (!strcmp(a, "--system") && v) o->system = v;
        else if (!strcmp(a, "--chat-file") && v) o->chat_file = v;
        else if (!strcmp(a, "--chat-template") && v) o->chat_template = v;
        else if (!strcmp(a, "--tokenizer") && v) o->tokenizer = v;
        else if (!strcmp(a, "--base") && v) o->base = v;
        else if (!strcmp(a, "--max-new-tokens") && v) o->max_new = (int)strtol(v, &end, 10);
        else if (!strcmp(a, "--temperature") && v) o->sp.temperature = strtof(v, &end), o->temp_given = 1;
        else if (!strcmp(a, "--top-k") && v) o->sp.top_k = (int)strtol(v, &end, 10), o->filter_given = 1;
        else if (!strcmp(a, "--top-p") && v) o->sp.top_p = strtof(v, &end), o->filter_given = 1;
        else if (!strcmp(a, "--repetition-penalty") && v) o->sp.repetition_penalty = strtof(v, &end), o->rep_given = 1;
        else if (!strcmp(a, "--seed") && v) o->seed = strtoull(v, &end, 10), o->seed_given = 1;
        else {
            takes = 0;
            if (!strcmp(a, "--no-stream")) o->stream = 0;
            else if (!strcmp(a, "--ids")) o->ids_out = 1;
            else if (!strcmp(a, "--prompt-ids")) o->prompt_ids = 1;
            else if (a[0] != '-' && !o->path) o->path = a;
            else {
                fprintf(stderr, "moet generate: %s '%s'\n%s", a[0] == '-' ? "unknown option or missing value" :
                        "unexpected argument", err_q(a, -1), usage);
                return 2;
            }
        }
        if (end && (end == v || *end || errno == ERANGE || (!strcmp(a, "--seed") && !isdigit((unsigned char)v[0])))) {
            fprintf(stderr, "moet generate: %s needs a number%s, not '%s'\n", a,
                    !strcmp(a, "--seed") ? " in [0, 2^64)" : "", err_q(v, -1));
            return 2;
        }
        i += takes;
    }
    int inputs = !!o->prompt + !!o->chat + !!o->chat_file;
    if (!o->path || inputs != 1) {
        fprintf(stderr, "moet generate: %s\n%s", !o->path ? "MODEL_OR_CHECKPOINT is required" :
                inputs ? "give one of --prompt, --chat and --chat-file" :
                "--prompt TEXT is required (or --chat TEXT, or --chat-file FILE)", usage);
        return 2;
    }
    if (o->system && !o->chat) {
        fprintf(stderr, "moet generate: --system goes with --chat\n");
        return 2;
    }
    chat_template tpl;
    char err0[ERR_MAX];
    if (o->chat_template && chat_template_parse(o->chat_template, &tpl, err0)) {
        fprintf(stderr, "moet generate: --chat-template: %s\n", err0);
        return 2;
    }
    if (o->max_new < 0) {
        fprintf(stderr, "moet generate: --max-new-tokens must be >= 0\n");
        return 2;
    }
    char err[ERR_MAX];
    if (sample_check(&o->sp, err)) { /* a usage error like the rest of the flags */
        fprintf(stderr, "moet generate: %s\n", err);
        return 2;
    }
    return 0;
}

/* The chat template: given, else the run's, else the one tokenizer_config.json beside the
 * tokenizer names (by its markers), else the tokenizer's own. */
static chat_template pick_template(const gen_opts *o, const tok *t, const char *run_tpl, const char *tok_path)
{
    chat_template tpl;
    if (o->chat_template && chat_template_parse(o->chat_template, &tpl, NULL) == 0) return tpl;
    if (run_tpl[0] && chat_template_parse(run_tpl, &tpl, NULL) == 0) return tpl;
    char *j = load_tokenizer_chat_template(tok_path);
    int found = j && chat_template_detect(j, &tpl) == 0;
    free(j);
    if (found) return tpl;
    return chat_template_default(t);
}

/* The prompt's ids: --prompt encoded with BOS, or a conversation rendered with a generation prompt. */
static int build_prompt(const gen_opts *o, const tok *t, chat_template tpl, tok_ids *ids, char *err)
{
    if (o->prompt) return tok_encode(t, o->prompt, strlen(o->prompt), 1, ids, err);
    chat_msg m[2], *msgs = m;
    int n = 0, rc = -1;
    cJSON *doc = NULL;
    char *text = NULL;
    if (o->chat_file) {
        size_t len;
        if (fs_read_file(o->chat_file, &text, &len, err)) return -1;
        if (chat_messages_json(text, len, &doc, &msgs, &n, err)) {
            err_wrap(err, "--chat-file %s", o->chat_file);
            free(text);
            return -1;
        }
    } else {
        if (o->system) m[n++] = (chat_msg){"system", o->system, strlen(o->system)};
        m[n++] = (chat_msg){"user", o->chat, strlen(o->chat)};
    }
    chat_seq s = {0};
    if (chat_render_ex(t, tpl, msgs, n, 1, &s, err)) {
        if (o->chat_file) err_wrap(err, "--chat-file %s (%s template)", o->chat_file, chat_template_name(tpl));
        else err_wrap(err, "--chat (%s template)", chat_template_name(tpl));
    } else {
        rc = 0;
        for (size_t i = 0; i < s.n && !rc; i++) rc = tok_ids_push(ids, s.ids[i]);
        if (rc) err_set(err, "out of memory");
    }
    chat_seq_free(&s);
    if (msgs != m) free(msgs);
    cJSON_Delete(doc);
    free(text);
    return rc;
}

static int is_stop(int32_t id, const int32_t *stop, int n)
{
    for (int i = 0; i < n; i++)
        if (stop[i] == id) return 1;
    return 0;
}

int cmd_generate(int argc, char **argv)
{
    if (cmd_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    gen_opts o;
    int prc = parse_args(&o, argc, argv);
    if (prc) return prc;
    char err[ERR_MAX], tok_path[4096], run_tpl[16] = "";
    model m;
    tok *t = NULL;
    infer *st = NULL;
    sampler *smp = NULL;
    tok_ids ids = {0};
    float *logits = NULL;
    int have_model = 0, rc = 1, n_stop = 0;
    int32_t stop[MAX_STOP];
    if (o.prompt && !o.prompt[0]) {
        err_set(err, "the prompt is empty");
        goto fail;
    }
    /* generation_config.json first, so that flags override it */
    sample_params flags = o.sp;
    o.sp = SAMPLE_GREEDY;
    read_generation_config(o.path, &o.sp, stop, &n_stop);
    if (o.temp_given) o.sp.temperature = flags.temperature;
    else if (o.filter_given && o.sp.temperature == 0) o.sp.temperature = 1;
    if (o.filter_given) o.sp.top_k = flags.top_k, o.sp.top_p = flags.top_p;
    if (o.rep_given) o.sp.repetition_penalty = flags.repetition_penalty;
    if (sample_check(&o.sp, err)) goto fail;
    if (!o.seed_given) o.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);

    if (load_model(&m, &o, tok_path, sizeof tok_path, run_tpl, err)) goto fail;
    have_model = 1;
    if (tok_load(&t, tok_path, err)) goto fail;
    if (tok_vocab_size(t) > m.c.vocab) {
        err_set(err, "tokenizer %s has %d tokens, more than the model's vocab_size %d", tok_path, tok_vocab_size(t),
                m.c.vocab);
        goto fail;
    }
    if (tok_eos_id(t) >= 0 && n_stop < MAX_STOP) stop[n_stop++] = tok_eos_id(t);
    if (m.c.eos_id >= 0 && n_stop < MAX_STOP) stop[n_stop++] = m.c.eos_id;
    chat_template tpl = pick_template(&o, t, run_tpl, tok_path);
    if (!o.prompt && tpl == CHAT_CHATML && tok_id_of(t, "<|im_end|>") >= 0 && n_stop < MAX_STOP)
        stop[n_stop++] = tok_id_of(t, "<|im_end|>"); /* the end of the assistant's turn */
    if (build_prompt(&o, t, tpl, &ids, err)) goto fail;
    if (o.prompt_ids) { /* what the model would be given, and nothing else */
        for (size_t i = 0; i < ids.n; i++) printf("%s%d", i ? " " : "", ids.ids[i]);
        printf("\n");
        if (!o.prompt) fprintf(stderr, "[%zu prompt tokens, %s template]\n", ids.n, chat_template_name(tpl));
        rc = 0;
        goto done;
    }
    int n_prompt = (int)ids.n, limit = m.c.max_pos;
    if (n_prompt == 0) {   /* a tokenizer without BOS whose normalizer removed the whole prompt */
        err_set(err, "the prompt gives no tokens");
        goto fail;
    }
    if (n_prompt >= limit) {
        err_set(err, "the prompt is %d tokens; the model's context (max_position_embeddings) is %d", n_prompt, limit);
        goto fail;
    }
    int max_new = o.max_new < limit - n_prompt ? o.max_new : limit - n_prompt;
    if (infer_create(&st, &m, n_prompt + (max_new > 0 ? max_new : 1), err) ||
        sample_create(&smp, m.c.vocab, &o.sp, o.seed, err))
        goto fail;
    logits = malloc((size_t)m.c.vocab * sizeof *logits);
    if (!logits) {
        err_set(err, "out of memory");
        goto fail;
    }

    double t0 = clock_seconds();
    if (infer_prefill(st, ids.ids, n_prompt, logits, NULL, err)) goto fail;
    double t1 = clock_seconds();
    streamer sm;
    if (o.stream && !o.ids_out && stream_begin(&sm, t, ids.ids, n_prompt, err)) goto fail;
    const char *why = max_new < o.max_new ? "the context limit" : "max-new-tokens";
    int n_new = 0;
    while (n_new < max_new) {
        int32_t next = sample_next(smp, logits, ids.ids, (int)ids.n);
        if (is_stop(next, stop, n_stop)) {
            why = "EOS";
            break;
        }
        if (next >= tok_vocab_size(t)) {
            err_set(err, "the model generated token %d, which tokenizer %s does not have", next, tok_path);
            goto fail;
        }
        if (tok_ids_push(&ids, next)) {
            err_set(err, "out of memory");
            goto fail;
        }
        n_new++;
        if (o.ids_out) printf("%s%d", n_new > 1 ? " " : "", next), fflush(stdout);
        else if (o.stream && stream_push(&sm, ids.ids, (int)ids.n, 0, stdout, err)) goto fail;
        if (n_new < max_new && infer_step(st, next, logits, err)) goto fail;
    }
    double t2 = clock_seconds();
    if (!o.ids_out) {
        if (o.stream) {
            if (stream_push(&sm, ids.ids, (int)ids.n, 1, stdout, err)) goto fail;
        } else if (n_new > 0) { /* the same text the stream gives: decoded after the last prompt token */
            char *a, *b;
            size_t la, lb;
            if (decode_span(t, ids.ids + n_prompt - 1, 1, &a, &la, err)) goto fail;
            if (decode_span(t, ids.ids + n_prompt - 1, n_new + 1, &b, &lb, err)) {
                free(a);
                goto fail;
            }
            fwrite(b + la, 1, lb - la, stdout);
            free(a);
            free(b);
        }
    }
    printf("\n");
    fflush(stdout);
    char how[96];
    if (o.sp.temperature == 0 || o.sp.top_k == 1) snprintf(how, sizeof how, "greedy");
    else
        snprintf(how, sizeof how, "temperature %g, top-k %d, top-p %g, seed %llu", o.sp.temperature, o.sp.top_k,
                 o.sp.top_p, (unsigned long long)o.seed);
    char rep[48] = "";
    if (o.sp.repetition_penalty != 1) snprintf(rep, sizeof rep, ", repetition penalty %g", o.sp.repetition_penalty);
    fprintf(stderr, "[prompt %d tokens, %.1f tok/s | generated %d tokens, %.1f tok/s | stopped at %s | %s%s]\n",
            n_prompt, n_prompt / (t1 - t0), n_new, n_new ? n_new / (t2 - t1) : 0.0, why, how, rep);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "moet generate: %s\n", err);
done:
    free(logits);
    tok_ids_free(&ids);
    sample_free(smp);
    infer_free(st);
    tok_free(t);
    if (have_model) {
        lora_free(m.lora); /* attached on a 16-bit base */
        model_free(&m);
    }
    return rc;
}
