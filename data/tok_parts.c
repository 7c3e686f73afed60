/* tok_parts: the pipeline sections of a tokenizer.json -- normalizer, pre_tokenizer,
 * decoder, post_processor -- read from their cJSON values into t.  What moet does not
 * implement is refused by name, never skipped: a skipped step would give other ids
 * than Hugging Face. */
#include "data/tok_internal.h"

#include "common/err.h"

#include <cJSON.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* GPT-2's pre-tokenizer regex, which ByteLevel runs when use_regex is set. */
#define GPT2_REGEX "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

/* The "type" of a section, or an error naming what is there instead. */
static const char *type_of(const cJSON *o, const char *what, char *err)
{
    const char *type = tok_jstr(o, "type");
    if (!type) err_set(err, "%s without a type", what);
    return type;
}

/* ---------------------------------------------------------------- GPT-2 bytes */

/* Printable Latin-1 bytes stand for themselves; the other 68 bytes get U+0100.. in order. */
uint32_t tok_byte_char(int b)
{
    if ((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)) return (uint32_t)b;
    int n = 0;
    for (int k = 0; k < b; k++) n += !((k >= '!' && k <= '~') || (k >= 0xa1 && k <= 0xac) || (k >= 0xae && k <= 0xff));
    return 0x100u + (uint32_t)n;
}

int16_t tok_char_byte_table[0x144];
static pthread_once_t char_byte_once = PTHREAD_ONCE_INIT;

static void char_byte_init(void)
{
    for (int i = 0; i < 0x144; i++) tok_char_byte_table[i] = -1;
    for (int b = 0; b < 256; b++) tok_char_byte_table[tok_byte_char(b)] = (int16_t)b;
}

void tok_char_byte_init(void) { pthread_once(&char_byte_once, char_byte_init); }

/* ------------------------------------------------------------ op chains */

static int push_op(tok_op **ops, int *n, tok_op op)
{
    tok_op *o = realloc(*ops, (size_t)(*n + 1) * sizeof *o);
    if (!o) return -1;
    *ops = o;
    o[(*n)++] = op;
    return 0;
}

static void free_ops(tok_op *ops, int n)
{
    for (int i = 0; i < n; i++) {
        free(ops[i].a);
        free(ops[i].b);
    }
    free(ops);
}

static int prepend_scheme(const cJSON *o, int *scheme)
{
    const char *s = tok_jstr(o, "prepend_scheme");
    if (!s) *scheme = tok_jbool(o, "add_prefix_space", 1) ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
    else if (!strcmp(s, "always")) *scheme = TOK_PREPEND_ALWAYS;
    else if (!strcmp(s, "first")) *scheme = TOK_PREPEND_FIRST;
    else if (!strcmp(s, "never")) *scheme = TOK_PREPEND_NEVER;
    else return -1;
    return 0;
}

/* "\u2581"-style one-char string field, copied. */
static char *one_char(const cJSON *o, const char *key, const char *dflt)
{
    const char *s = tok_jstr(o, key);
    if (!s) s = dflt;
    size_t n = strlen(s);
    if (!n || tok_utf8_len((const unsigned char *)s, n) != n) return NULL;
    return strdup(s);
}

/* Replace's pattern: a String (a Regex pattern is refused). */
static int replace_op(const cJSON *o, const char *what, tok_op *op, char *err)
{
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const char *from = tok_jstr(pat, "String"), *to = tok_jstr(o, "content");
    if (!from) return err_set(err, "unsupported %s Replace with a Regex pattern", what);
    if (!to || !*from) return err_set(err, "bad Replace %s", what);
    *op = (tok_op){.kind = TOK_OP_REPLACE, .a = strdup(from), .alen = strlen(from), .b = strdup(to),
                   .blen = strlen(to)};
    return 0;
}

int tok_parse_normalizer(tok *t, const cJSON *n, char *err)
{
    if (!n || cJSON_IsNull(n)) return 0;
    const char *type = type_of(n, "normalizer", err);
    if (!type) return -1;
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *e;
        if (!cJSON_IsArray(list)) return err_set(err, "Sequence normalizer without a list");
        cJSON_ArrayForEach(e, list) if (tok_parse_normalizer(t, e, err)) return -1;
        return 0;
    }
    static const struct { const char *name; int flags; } unicode[] = {
        {"NFC", UTF8PROC_STABLE | UTF8PROC_COMPOSE},
        {"NFD", UTF8PROC_STABLE | UTF8PROC_DECOMPOSE},
        {"NFKC", UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT},
        {"NFKD", UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT},
    };
    tok_op op = {0};
    int known = 0;
    for (size_t i = 0; i < sizeof unicode / sizeof *unicode; i++)
        if (!strcmp(type, unicode[i].name)) op = (tok_op){.kind = TOK_OP_UNICODE, .start = unicode[i].flags}, known = 1;
    if (known) {
    } else if (!strcmp(type, "Prepend")) {
        const char *p = tok_jstr(n, "prepend");
        if (!p) return err_set(err, "Prepend normalizer without a string");
        op = (tok_op){.kind = TOK_OP_PREPEND, .a = strdup(p), .alen = strlen(p)};
    } else if (!strcmp(type, "Replace")) {
        if (replace_op(n, "normalizer", &op, err)) return -1;
    } else if (!strcmp(type, "Strip")) {
        op = (tok_op){.kind = TOK_OP_WSTRIP, .start = tok_jbool(n, "strip_left", 1), .stop = tok_jbool(n, "strip_right", 1)};
    } else {
        return err_set(err, "unsupported normalizer type '%s'", err_q(type, -1));
    }
    int needs_a = op.kind == TOK_OP_PREPEND || op.kind == TOK_OP_REPLACE;
    if ((needs_a && !op.a) || (op.kind == TOK_OP_REPLACE && !op.b) || push_op(&t->norm_ops, &t->n_norm_ops, op)) {
        free(op.a);
        free(op.b);
        return err_set(err, "out of memory");
    }
    return 0;
}

/* ---------------------------------------------------------- pre-tokenizers */

static int parse_split(tok_pre *s, const cJSON *p, char *err)
{
    static const char *const behaviors[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                            "Contiguous"};
    const char *b = tok_jstr(p, "behavior");
    s->behavior = -1;
    for (int i = 0; b && i < 5; i++)
        if (!strcmp(b, behaviors[i])) s->behavior = i;
    if (s->behavior < 0)
        return err_set(err, "Split pre_tokenizer: unknown behavior %s", b ? err_q(b, -1) : "(none)");
    const cJSON *inv = cJSON_GetObjectItemCaseSensitive(p, "invert");
    if (inv && !cJSON_IsBool(inv)) return err_set(err, "Split pre_tokenizer: invert must be true or false");
    s->invert = cJSON_IsTrue(inv);
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex"), *str = cJSON_GetObjectItemCaseSensitive(pat, "String");
    const cJSON *v = cJSON_IsString(re) ? re : str;
    if (!cJSON_IsString(v)) return err_set(err, "Split pre_tokenizer without a Regex or String pattern");
    /* An empty String is an empty regex, as in HF: it matches between every two chars. */
    if (tok_regex_new(&s->re, v->valuestring, strlen(v->valuestring), v == str, err))
        return err_wrap(err, "Split pre_tokenizer");
    return 0;
}

int tok_parse_pretok(tok *t, const cJSON *p, char *err)
{
    if (!p || cJSON_IsNull(p)) return 0;
    const char *type = type_of(p, "pre_tokenizer", err);
    if (!type) return -1;
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers"), *e;
        if (!cJSON_IsArray(list)) return err_set(err, "Sequence pre_tokenizer without a list");
        cJSON_ArrayForEach(e, list) if (tok_parse_pretok(t, e, err)) return -1;
        return 0;
    }
    if (t->n_pre == TOK_MAX_PRE) return err_set(err, "more than %d pre_tokenizers", TOK_MAX_PRE);
    if (t->n_pre && t->pre[t->n_pre - 1].kind == TOK_PRE_BYTELEVEL)
        return err_set(err, "unsupported pre_tokenizer '%s' after ByteLevel (moet runs ByteLevel last)",
                       err_q(type, -1));
    tok_pre *s = &t->pre[t->n_pre];
    *s = (tok_pre){0};
    if (!strcmp(type, "Metaspace")) {
        char *rep = one_char(p, "replacement", TOK_META);
        if (!rep) return err_set(err, "Metaspace replacement must be one character");
        s->kind = TOK_PRE_METASPACE;
        s->rep_len = strlen(rep);
        memcpy(s->rep, rep, s->rep_len + 1);
        free(rep);
        if (prepend_scheme(p, &s->prepend))
            return err_set(err, "unknown Metaspace prepend_scheme '%s'", err_q(tok_jstr(p, "prepend_scheme"), -1));
        s->split = tok_jbool(p, "split", 1);
    } else if (!strcmp(type, "Split")) {
        s->kind = TOK_PRE_SPLIT;
        if (parse_split(s, p, err)) return -1;
        t->has_regex = 1;
    } else if (!strcmp(type, "ByteLevel")) {
        s->kind = TOK_PRE_BYTELEVEL;
        s->add_prefix_space = tok_jbool(p, "add_prefix_space", 1);
        if (tok_jbool(p, "use_regex", 1)) {
            if (tok_regex_new(&s->re, GPT2_REGEX, strlen(GPT2_REGEX), 0, err)) return err_wrap(err, "ByteLevel");
            t->has_regex = 1;
        }
        t->bytelevel = 1;
    } else {
        return err_set(err, "unsupported pre_tokenizer type '%s'", err_q(type, -1));
    }
    t->n_pre++;
    for (int i = 0; i + 1 < t->n_pre; i++)
        if (t->pre[i].kind == TOK_PRE_METASPACE && t->bytelevel)
            return err_set(err, "unsupported pre_tokenizer: Metaspace together with ByteLevel");
    return 0;
}

/* ---------------------------------------------------------------- decoder */

int tok_parse_decoder(tok *t, const cJSON *d, char *err)
{
    if (!d || cJSON_IsNull(d)) return 0;
    t->has_decoder = 1;
    const char *type = type_of(d, "decoder", err);
    if (!type) return -1;
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders"), *e;
        if (!cJSON_IsArray(list)) return err_set(err, "Sequence decoder without a list");
        cJSON_ArrayForEach(e, list) if (tok_parse_decoder(t, e, err)) return -1;
        return 0;
    }
    tok_op op = {0};
    int ok = 1;
    if (!strcmp(type, "Replace")) {
        if (replace_op(d, "decoder", &op, err)) return -1;
        ok = op.a && op.b;
    } else if (!strcmp(type, "ByteFallback")) {
        op.kind = TOK_OP_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        op.kind = TOK_OP_FUSE;
    } else if (!strcmp(type, "ByteLevel")) {
        op.kind = TOK_OP_BYTELEVEL;
    } else if (!strcmp(type, "Strip")) {
        long start = 0, stop = 0;
        const cJSON *s0 = cJSON_GetObjectItemCaseSensitive(d, "start");
        const cJSON *s1 = cJSON_GetObjectItemCaseSensitive(d, "stop");
        if ((s0 && tok_jint(s0, 0, 1 << 20, &start)) || (s1 && tok_jint(s1, 0, 1 << 20, &stop)))
            return err_set(err, "bad Strip decoder");
        op = (tok_op){.kind = TOK_OP_STRIP, .a = one_char(d, "content", " "), .start = (int)start, .stop = (int)stop};
        if (!op.a) return err_set(err, "Strip decoder content must be one character");
        op.alen = strlen(op.a);
    } else if (!strcmp(type, "Metaspace")) {
        int scheme;
        if (prepend_scheme(d, &scheme)) return err_set(err, "bad Metaspace decoder");
        op = (tok_op){.kind = TOK_OP_METASPACE, .a = one_char(d, "replacement", TOK_META),
                      .start = scheme != TOK_PREPEND_NEVER};
        if (!op.a) return err_set(err, "Metaspace replacement must be one character");
        op.alen = strlen(op.a);
    } else {
        return err_set(err, "unsupported decoder type '%s'", err_q(type, -1));
    }
    if (!ok || push_op(&t->dec_ops, &t->n_dec_ops, op)) {
        free(op.a);
        free(op.b);
        return err_set(err, "out of memory");
    }
    return 0;
}

/* ----------------------------------------------------------- post-processor */

static int push_tpl(tok *t, int pre, long id, char *err)
{
    int32_t *v = pre ? t->tpl_pre : t->tpl_post;
    int *n = pre ? &t->n_tpl_pre : &t->n_tpl_post;
    if (*n == 4) return err_set(err, "post_processor adds more than 4 tokens on one side");
    if (id < 0 || id >= t->n_vocab || !t->piece[id])
        return err_set(err, "post_processor token id %ld is not in the vocab", id);
    v[(*n)++] = (int32_t)id;
    return 0;
}

/* TemplateProcessing "single": special tokens before and after "$A" (their ids from
 * special_tokens, as HF takes them). */
static int template(tok *t, const cJSON *pp, char *err)
{
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single"), *e;
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(pp, "special_tokens");
    if (!cJSON_IsArray(single)) return err_set(err, "TemplateProcessing without a \"single\" template");
    int seen_a = 0;
    cJSON_ArrayForEach(e, single) {
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(e, "Sequence");
        const char *sp = tok_jstr(cJSON_GetObjectItemCaseSensitive(e, "SpecialToken"), "id");
        if (seq) {
            if (seen_a++ || strcmp(tok_jstr(seq, "id") ? tok_jstr(seq, "id") : "", "A"))
                return err_set(err, "TemplateProcessing: the single template must hold $A once");
            continue;
        }
        if (!sp) return err_set(err, "TemplateProcessing: a template piece is neither SpecialToken nor Sequence");
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(specials, sp), "ids"), *x;
        if (!cJSON_IsArray(ids)) return err_set(err, "TemplateProcessing: no ids for special token '%s'", err_q(sp, -1));
        cJSON_ArrayForEach(x, ids) {
            long id;
            if (tok_jint(x, 0, 1L << 30, &id)) return err_set(err, "TemplateProcessing: bad id of '%s'", err_q(sp, -1));
            if (push_tpl(t, !seen_a, id, err)) return -1;
        }
    }
    if (!seen_a) return err_set(err, "TemplateProcessing: the single template has no $A");
    return 0;
}

/* BertProcessing / RobertaProcessing: cls $A sep, each given as [text, id]. */
static int cls_sep(tok *t, const cJSON *pp, char *err)
{
    const char *keys[2] = {"cls", "sep"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(pp, keys[i]);
        long id;
        if (cJSON_GetArraySize(v) != 2 || tok_jint(cJSON_GetArrayItem(v, 1), 0, 1L << 30, &id))
            return err_set(err, "post_processor %s must be [text, id]", keys[i]);
        if (push_tpl(t, i == 0, id, err)) return -1;
    }
    return 0;
}

int tok_parse_post(tok *t, const cJSON *pp, char *err)
{
    if (!pp || cJSON_IsNull(pp)) return 0;
    const char *type = type_of(pp, "post_processor", err);
    if (!type) return -1;
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(pp, "processors"), *e;
        if (!cJSON_IsArray(list)) return err_set(err, "Sequence post_processor without a list");
        cJSON_ArrayForEach(e, list) if (tok_parse_post(t, e, err)) return -1;
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) return 0;   /* offsets only */
    if (!strcmp(type, "TemplateProcessing")) return template(t, pp, err);
    if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) return cls_sep(t, pp, err);
    return err_set(err, "unsupported post_processor type '%s'", err_q(type, -1));
}

void tok_free_parts(tok *t)
{
    free_ops(t->norm_ops, t->n_norm_ops);
    free_ops(t->dec_ops, t->n_dec_ops);
    for (int i = 0; i < t->n_pre; i++) tok_regex_free(t->pre[i].re);
    if (t->n_pre < TOK_MAX_PRE) tok_regex_free(t->pre[t->n_pre].re);   /* one that failed half-way */
}
