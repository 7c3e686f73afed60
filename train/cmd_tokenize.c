/* moet tokenize: text on stdin -> token ids on stdout (or ids -> text with --decode);
 * --jsonl does the same for many texts, one JSON line each, loading the tokenizer once. */
#include "train/cmd.h"

#include "common/err.h"
#include "common/json.h"
#include "data/chat.h"
#include "data/tok.h"

#include <cJSON.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moet tokenize TOKENIZER.json [--no-bos] [--jsonl] < text\n"
            "       moet tokenize TOKENIZER.json --decode [--skip-special] [--jsonl] < ids\n"
            "       moet tokenize TOKENIZER.json --chat mistral|chatml [--generation-prompt] [--text] < messages.json\n"
            "       moet tokenize TOKENIZER.json --chat-jinja mistral|chatml\n\n"
            "Reads all of stdin as one text and prints its token ids on one line,\n"
            "separated by single spaces (BOS first unless --no-bos: the tokens the\n"
            "tokenizer's post-processor adds, as Hugging Face's add_special_tokens).\n"
            "--decode reads whitespace-separated ids and prints the text exactly (no\n"
            "newline added); special tokens are kept unless --skip-special.\n"
            "--jsonl: stdin holds one text per line, as a JSON string or {\"text\": ...}; each\n"
            "gets one line of ids, in order (an empty text an empty line).  With --decode\n"
            "each line is a JSON array of ids and gets one line holding a JSON string.\n"
            "--chat: stdin is a conversation (a JSON list of {\"role\", \"content\"}, or\n"
            "{\"messages\": [...]}) rendered with the template as prep renders it (BOS ... EOS), or\n"
            "with --generation-prompt as generate --chat does (ending in the assistant's header);\n"
            "prints the ids and, on a second line, the loss mask (0/1 per id), or with --text the\n"
            "rendered text as a JSON string (what the template's Jinja gives).  --chat-jinja prints\n"
            "the Hugging Face chat_template moet exports for this tokenizer.\n");
}

static int read_stdin(char **buf, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    while (b) {
        n += fread(b + n, 1, cap - n, stdin);
        if (n < cap) break;
        char *nb = realloc(b, cap *= 2);
        if (!nb) free(b);
        b = nb;
    }
    if (!b || ferror(stdin)) {
        free(b);
        return -1;
    }
    *buf = b;
    *len = n;
    return 0;
}

/* ids as one line of decimal numbers into the growable buffer (*out, *len, *cap). */
static int format_ids(const tok_ids *ids, char **out, size_t *len, size_t *cap)
{
    size_t need = ids->n * 12 + 2;
    if (need > *cap) {
        char *b = realloc(*out, need);
        if (!b) return -1;
        *out = b;
        *cap = need;
    }
    char *p = *out;
    for (size_t i = 0; i < ids->n; i++) p += sprintf(p, i ? " %d" : "%d", (int)ids->ids[i]);
    *p++ = '\n';
    *len = (size_t)(p - *out);
    return 0;
}

static int write_out(const char *s, size_t n)
{
    return fwrite(s, 1, n, stdout) != n || fflush(stdout) ? -1 : 0;
}

/* Whitespace-separated decimal ids from text into ids. */
static int parse_ids(const char *s, size_t n, tok_ids *ids, char *err)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r'))) i++;
        if (i == n) break;
        size_t a = i;
        while (i < n && !(s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r'))) i++;
        char word[24];
        size_t k = i - a;
        char *end;
        if (k >= sizeof word) return err_set(err, "'%s' is not a token id", err_q(s + a, (long)k));
        memcpy(word, s + a, k);
        word[k] = 0;
        errno = 0;
        long v = strtol(word, &end, 10);
        if (*end || errno || v < 0 || v > 0x7fffffff)
            return err_set(err, "'%s' is not a token id", err_q(s + a, (long)k));
        if (tok_ids_push(ids, (int32_t)v)) return err_set(err, "out of memory");
    }
    return 0;
}

/* One --jsonl input line: the text of a JSON string or of {"text": "..."} (decoded in
 * place in line), or the ids of a JSON array. */
static int jsonl_text(char *line, size_t n, char **text, size_t *tn, char *err)
{
    json_scan j;
    json_begin(&j, line, n, err);
    int c = json_peek(&j), st = 0, r;
    *text = NULL;
    if (c == '"') {
        if (json_string(&j, text, tn)) return -1;
    } else if (c == '{') {
        char *key;
        size_t kl;
        while ((r = json_object_next(&j, &st, &key, &kl)) == 1) {
            if (json_key_is(key, kl, "text") && json_peek(&j) == '"') r = json_string(&j, text, tn);
            else r = json_skip(&j);
            if (r) return -1;
        }
        if (r < 0) return -1;
        if (!*text) return err_set(err, "the object has no \"text\" string");
    } else {
        return err_set(err, c < 0 ? "an empty line; a JSON string or {\"text\": ...} expected"
                                  : "a JSON string or {\"text\": ...} expected");
    }
    if (json_peek(&j) >= 0) return err_set(err, "text after the JSON value");
    return 0;
}

static int jsonl_ids(char *line, size_t n, tok_ids *ids, char *err)
{
    json_scan j;
    json_begin(&j, line, n, err);
    int st = 0, r;
    if (json_peek(&j) != '[') return err_set(err, "a JSON array of token ids expected");
    while ((r = json_array_next(&j, &st)) == 1) {
        long v;
        if (json_int(&j, 0, 0x7fffffff, &v)) return err_set(err, "a JSON array of token ids expected");
        if (tok_ids_push(ids, (int32_t)v)) return err_set(err, "out of memory");
    }
    if (r < 0) return -1;
    if (json_peek(&j) >= 0) return err_set(err, "text after the JSON array");
    return 0;
}

/* --jsonl: line by line, each answer flushed before the next line is read. */
static int run_jsonl(const tok *t, int decode, int bos, int skip_special)
{
    char *line = NULL, *out = NULL, err[ERR_MAX];
    size_t lcap = 0, ocap = 0, olen;
    long line_no = 0;
    int rc = 1;
    tok_ids ids = {0};
    ssize_t n;
    errno = 0;
    while ((n = getline(&line, &lcap, stdin)) >= 0) {
        line_no++;
        size_t len = (size_t)n - (n > 0 && line[n - 1] == '\n');
        size_t bad;
        ids.n = 0;
        if (json_utf8_check(line, len, &bad)) {
            err_set(err, "not UTF-8 (byte %zu)", bad + 1);
            goto fail;
        }
        if (decode) {
            char *text;
            size_t tl;
            if (jsonl_ids(line, len, &ids, err) || tok_decode_ex(t, ids.ids, ids.n, skip_special, &text, &tl, err))
                goto fail;
            olen = 0;
            int bad_out = json_put_string(&out, &olen, &ocap, text, tl);
            free(text);
            if (bad_out) goto oom;
            out[olen++] = '\n';   /* over the NUL json_put_string keeps after the text */
        } else {
            char *text;
            size_t tl;
            if (jsonl_text(line, len, &text, &tl, err) || tok_encode(t, text, tl, bos, &ids, err)) goto fail;
            if (format_ids(&ids, &out, &olen, &ocap)) goto oom;
        }
        if (write_out(out, olen)) {
            fprintf(stderr, "moet tokenize: cannot write stdout\n");
            goto done;
        }
    }
    if (ferror(stdin)) {
        fprintf(stderr, "moet tokenize: cannot read stdin\n");
        goto done;
    }
    rc = 0;
    goto done;
oom:
    err_set(err, "out of memory");
fail:
    fprintf(stderr, "moet tokenize: stdin line %ld: %s\n", line_no, err);
done:
    free(line);
    free(out);
    tok_ids_free(&ids);
    return rc;
}

/* --chat / --chat-jinja: the chat rendering of data/chat.c, as prep and generate use it. */
static int run_chat(const tok *t, const char *name, int jinja, int gen, int text_out)
{
    char err[ERR_MAX], *in = NULL, *out = NULL;
    size_t n = 0;
    chat_template tpl;
    chat_seq s = {0};
    chat_msg *m = NULL;
    int nm = 0, rc = 1;
    cJSON *doc = NULL;
    if (chat_template_parse(name, &tpl, err)) goto fail;
    if (jinja) {
        if (chat_template_jinja(t, tpl, &out, err)) goto fail;
        fputs(out, stdout);
        rc = 0;
        goto done;
    }
    if (read_stdin(&in, &n)) {
        err_set(err, "cannot read stdin");
        goto fail;
    }
    if (chat_messages_json(in, n, &doc, &m, &nm, err)) goto fail;
    if (text_out) {
        size_t len;
        if (chat_render_text(t, tpl, m, nm, gen, &out, &len, err)) goto fail;
        cJSON *js = cJSON_CreateString(out); /* the text holds no NUL: contents are C strings */
        char *line = js ? cJSON_PrintUnformatted(js) : NULL;
        cJSON_Delete(js);
        if (!line) {
            err_set(err, "out of memory");
            goto fail;
        }
        printf("%s\n", line);
        free(line);
    } else {
        if (chat_render_ex(t, tpl, m, nm, gen, &s, err)) goto fail;
        for (size_t i = 0; i < s.n; i++) printf(i ? " %d" : "%d", (int)s.ids[i]);
        printf("\n");
        for (size_t i = 0; i < s.n; i++) printf(i ? " %d" : "%d", (int)s.mask[i]);
        printf("\n");
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "moet tokenize: %s\n", err);
done:
    chat_seq_free(&s);
    free(m);
    cJSON_Delete(doc);
    free(in);
    free(out);
    return rc;
}

int cmd_tokenize(int argc, char **argv)
{
    if (cmd_wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    const char *path = NULL;
    const char *chat = NULL;
    int bos = 1, decode = 0, skip_special = 0, jsonl = 0, jinja = 0, gen = 0, text_out = 0;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "--chat") || !strcmp(argv[i], "--chat-jinja")) && i + 1 < argc)
            jinja = !strcmp(argv[i], "--chat-jinja"), chat = argv[++i];
        else if (!strcmp(argv[i], "--generation-prompt")) gen = 1;
        else if (!strcmp(argv[i], "--text")) text_out = 1;
        else if (!strcmp(argv[i], "--no-bos")) bos = 0;
        else if (!strcmp(argv[i], "--decode")) decode = 1;
        else if (!strcmp(argv[i], "--skip-special")) skip_special = 1;
        else if (!strcmp(argv[i], "--jsonl")) jsonl = 1;
        else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "moet tokenize: unknown option '%s' (moet tokenize --help)\n", err_q(argv[i], -1));
            return 2;
        } else if (!path) path = argv[i];
        else {
            fprintf(stderr, "moet tokenize: one tokenizer.json expected, got '%s' too\n", err_q(argv[i], -1));
            return 2;
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    if ((gen || text_out) && (!chat || jinja)) {
        fprintf(stderr, "moet tokenize: --generation-prompt and --text go with --chat\n");
        return 2;
    }
    if (chat && (decode || jsonl || !bos)) {
        fprintf(stderr, "moet tokenize: --chat / --chat-jinja go without --decode, --jsonl and --no-bos\n");
        return 2;
    }
    if ((decode && !bos) || (!decode && skip_special)) {
        fprintf(stderr, "moet tokenize: %s goes with %s\n", decode ? "--no-bos" : "--skip-special",
                decode ? "encoding, not --decode" : "--decode");
        return 2;
    }

    char err[ERR_MAX];
    tok *t;
    if (tok_load(&t, path, err)) {
        fprintf(stderr, "moet tokenize: %s\n", err);
        return 1;
    }
    if (chat) {
        int rc = run_chat(t, chat, jinja, gen, text_out);
        tok_free(t);
        return rc;
    }
    if (jsonl) {
        int rc = run_jsonl(t, decode, bos, skip_special);
        tok_free(t);
        return rc;
    }
    char *in = NULL, *out = NULL;
    size_t n = 0, olen, ocap = 0;
    tok_ids ids = {0};
    int rc = 1;
    if (read_stdin(&in, &n)) {
        fprintf(stderr, "moet tokenize: cannot read stdin\n");
        goto done;
    }
    if (!decode) {
        if (tok_encode(t, in, n, bos, &ids, err)) {
            fprintf(stderr, "moet tokenize: %s\n", err);
            goto done;
        }
        if (format_ids(&ids, &out, &olen, &ocap) || write_out(out, olen)) {
            fprintf(stderr, "moet tokenize: cannot write stdout\n");
            goto done;
        }
    } else {
        char *text;
        size_t len;
        if (parse_ids(in, n, &ids, err) ||
            tok_decode_ex(t, ids.ids, ids.n, skip_special, &text, &len, err)) {
            fprintf(stderr, "moet tokenize: %s\n", err);
            goto done;
        }
        int bad = write_out(text, len);
        free(text);
        if (bad) {
            fprintf(stderr, "moet tokenize: cannot write stdout\n");
            goto done;
        }
    }
    rc = 0;
done:
    free(in);
    free(out);
    tok_ids_free(&ids);
    tok_free(t);
    return rc;
}
