/* chat: the mistral and chatml templates, rendered piece by piece into ids or text, and
 * their Jinja strings (see chat.h). */
#include "data/chat.h"

#include "common/err.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int chat_template_parse(const char *name, chat_template *out, char *err)
{
    if (!strcmp(name, "mistral")) *out = CHAT_MISTRAL;
    else if (!strcmp(name, "chatml")) *out = CHAT_CHATML;
    else return err_set(err, "unknown chat template '%s' (mistral or chatml)", err_q(name, -1));
    return 0;
}

const char *chat_template_name(chat_template tpl) { return tpl == CHAT_CHATML ? "chatml" : "mistral"; }

chat_template chat_template_default(const tok *t)
{
    return tok_id_of(t, "<|im_start|>") >= 0 ? CHAT_CHATML : CHAT_MISTRAL;
}

int chat_prefix_space(const tok *t)
{
    tok_ids v = {0};
    const char *p = NULL;
    if (tok_encode(t, "a", 1, 0, &v, NULL) == 0 && v.n > 0) p = tok_piece(t, v.ids[0]);
    tok_ids_free(&v);
    return p && (!strncmp(p, "\xe2\x96\x81", 3) || !strncmp(p, "\xc4\xa0", 2)); /* "▁" or "Ġ" */
}

int chat_template_detect(const char *jinja, chat_template *out)
{
    if (strstr(jinja, "<|im_start|>")) *out = CHAT_CHATML;
    else if (strstr(jinja, "[INST]")) *out = CHAT_MISTRAL;
    else return -1;
    return 0;
}

int chat_seq_push(chat_seq *s, const int32_t *ids, size_t n, uint8_t mask)
{
    if (n == 0) return 0; /* an empty piece ("content": ""): ids may be NULL, nothing to copy */
    if (s->n + n > s->cap) {
        size_t cap = s->cap ? s->cap : 64;
        while (cap < s->n + n) cap *= 2;
        int32_t *ids2 = realloc(s->ids, cap * sizeof *ids2);
        if (!ids2) return -1;
        s->ids = ids2;
        uint8_t *mask2 = realloc(s->mask, cap);
        if (!mask2) return -1;
        s->mask = mask2;
        s->cap = cap;
    }
    memcpy(s->ids + s->n, ids, n * sizeof *ids);
    memset(s->mask + s->n, mask, n);
    s->n += n;
    return 0;
}

int chat_seq_encode(chat_seq *s, const tok *t, const char *text, size_t len, uint8_t mask, char *err)
{
    tok_ids v = {0};
    if (tok_encode(t, text, len, 0, &v, err)) {
        tok_ids_free(&v);
        return -1;
    }
    int rc = chat_seq_push(s, v.ids, v.n, mask);
    tok_ids_free(&v);
    return rc ? err_set(err, "out of memory") : 0;
}

void chat_seq_free(chat_seq *s)
{
    free(s->ids);
    free(s->mask);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------ the walk */

/* Where the pieces go: ids (seq) or text. */
typedef struct {
    const tok *t;
    chat_seq *seq;            /* ids and mask, or NULL: text */
    char *text;
    size_t len, cap;
    int space;                /* the tokenizer prepends a space to every piece */
} sink;

static int text_add(sink *k, const char *s, size_t n, char *err)
{
    if (k->len + n + 1 > k->cap) {
        size_t cap = k->cap ? k->cap : 256;
        while (cap < k->len + n + 1) cap *= 2;
        char *p = realloc(k->text, cap);
        if (!p) return err_set(err, "out of memory");
        k->text = p, k->cap = cap;
    }
    memcpy(k->text + k->len, s, n);
    k->len += n;
    k->text[k->len] = 0;
    return 0;
}

/* A text piece, encoded on its own. */
static int put_text(sink *k, const char *s, size_t n, uint8_t mask, char *err)
{
    if (k->seq) return chat_seq_encode(k->seq, k->t, s, n, mask, err);
    if (n == 0) return 0;
    return (k->space && text_add(k, " ", 1, err)) || text_add(k, s, n, err) ? -1 : 0;
}

static int put_id(sink *k, int32_t id, uint8_t mask, char *err)
{
    if (k->seq) return chat_seq_push(k->seq, &id, 1, mask) ? err_set(err, "out of memory") : 0;
    const char *p = tok_piece(k->t, id);
    return text_add(k, p ? p : "", p ? strlen(p) : 0, err);
}

/* A marker such as "<|im_end|>": its id when the tokenizer has it, else its text. */
static int put_marker(sink *k, const char *marker, uint8_t mask, char *err)
{
    int id = tok_id_of(k->t, marker);
    return id >= 0 ? put_id(k, id, mask, err) : put_text(k, marker, strlen(marker), mask, err);
}

/* A piece that starts with a space: written by the tokenizer (space kind) or into the text. */
static int put_spaced(sink *k, const char *a, size_t na, const char *b, size_t nb, const char *c, size_t nc,
                      uint8_t mask, char *err)
{
    size_t n = !k->space + na + nb + nc;
    char *s = malloc(n + 1), *p = s;
    if (!s) return err_set(err, "out of memory");
    if (!k->space) *p++ = ' ';
    memcpy(p, a, na), p += na;
    memcpy(p, b, nb), p += nb;
    memcpy(p, c, nc), p += nc;
    int rc = put_text(k, s, n, mask, err);
    free(s);
    return rc;
}

/* "[INST] {system}\n\n{user} [/INST]" as one piece; system may be NULL. */
static int mistral_user(sink *k, const chat_msg *sys, const chat_msg *user, char *err)
{
    size_t n = 7 + (sys ? sys->content_len + 2 : 0);
    char *head = malloc(n + 1), *p = head;
    if (!head) return err_set(err, "out of memory");
    memcpy(p, "[INST] ", 7), p += 7;
    if (sys) memcpy(p, sys->content, sys->content_len), p += sys->content_len, memcpy(p, "\n\n", 2), p += 2;
    int rc = put_spaced(k, head, n, user->content, user->content_len, " [/INST]", 8, 0, err);
    free(head);
    return rc;
}

static int render_mistral(sink *k, const chat_msg *m, int n, int gen, char *err)
{
    int eos = tok_eos_id(k->t), i = 0;
    const chat_msg *sys = NULL;
    if (n > 0 && !strcmp(m[0].role, "system")) sys = &m[0], i = 1;
    if (i == n) return err_set(err, "conversation has no user message");
    for (int j = 0; i < n; i++, j++) {
        const char *want = j % 2 == 0 ? "user" : "assistant";
        if (strcmp(m[i].role, want)) {
            if (strcmp(m[i].role, "user") && strcmp(m[i].role, "assistant") && strcmp(m[i].role, "system"))
                return err_set(err, "messages[%d]: unknown role '%s' for the mistral template", i, err_q(m[i].role, -1));
            return err_set(err, "messages[%d]: role '%s' where '%s' was due (mistral wants an optional system, "
                                "then user/assistant alternating)", i, err_q(m[i].role, -1), want);
        }
        if (j % 2 == 0) {
            if (mistral_user(k, j == 0 ? sys : NULL, &m[i], err)) return -1;
        } else {
            if ((m[i].content_len && put_spaced(k, "", 0, m[i].content, m[i].content_len, "", 0, 1, err)) ||
                put_id(k, eos, 1, err))
                return -1;
        }
    }
    int last_user = strcmp(m[n - 1].role, "assistant") != 0;
    if (gen && !last_user) return err_set(err, "the conversation ends with an assistant turn: nothing to reply to");
    return last_user && !gen ? put_id(k, eos, 0, err) : 0;
}

static int render_chatml(sink *k, const chat_msg *m, int n, int gen, char *err)
{
    for (int i = 0; i < n; i++) {
        size_t rl = strlen(m[i].role);
        if (rl == 0) return err_set(err, "messages[%d]: empty role", i);
        uint8_t target = !strcmp(m[i].role, "assistant");
        char *header = malloc(rl + 2);
        if (!header) return err_set(err, "out of memory");
        memcpy(header, m[i].role, rl), header[rl] = '\n';
        int rc = put_marker(k, "<|im_start|>", 0, err) || put_text(k, header, rl + 1, 0, err) ||
                 put_text(k, m[i].content, m[i].content_len, target, err) ||
                 put_marker(k, "<|im_end|>", target, err) || put_text(k, "\n", 1, 0, err);
        free(header);
        if (rc) return -1;
    }
    if (gen) return put_marker(k, "<|im_start|>", 0, err) || put_text(k, "assistant\n", 10, 0, err) ? -1 : 0;
    return put_id(k, tok_eos_id(k->t), 0, err);
}

static int render(sink *k, chat_template tpl, const chat_msg *msgs, int n, int gen, char *err)
{
    if (tok_eos_id(k->t) < 0) return err_set(err, "the tokenizer has no EOS token");
    if (n < 1) return err_set(err, "\"messages\" is empty");
    k->space = chat_prefix_space(k->t);
    if (tok_bos_id(k->t) >= 0 && put_id(k, tok_bos_id(k->t), 0, err)) return -1; /* Qwen and gpt-oss have none */
    return tpl == CHAT_MISTRAL ? render_mistral(k, msgs, n, gen, err) : render_chatml(k, msgs, n, gen, err);
}

int chat_render_ex(const tok *t, chat_template tpl, const chat_msg *msgs, int n, int add_generation_prompt,
                   chat_seq *out, char *err)
{
    sink k = {.t = t, .seq = out};
    return render(&k, tpl, msgs, n, add_generation_prompt, err);
}

int chat_render(const tok *t, chat_template tpl, const chat_msg *msgs, int n, chat_seq *out, char *err)
{
    return chat_render_ex(t, tpl, msgs, n, 0, out, err);
}

int chat_render_text(const tok *t, chat_template tpl, const chat_msg *msgs, int n, int add_generation_prompt,
                     char **text, size_t *len, char *err)
{
    sink k = {.t = t};
    if (text_add(&k, "", 0, err) || render(&k, tpl, msgs, n, add_generation_prompt, err)) {
        free(k.text);
        return -1;
    }
    *text = k.text, *len = k.len;
    return 0;
}

/* ------------------------------------------------------------------ Jinja */

/* s as the body of a single-quoted Jinja string literal. */
static void jq(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '\'' || *s == '\\') fputc('\\', f), fputc(*s, f);
        else if (*s == '\n') fputs("\\n", f);
        else fputc(*s, f);
    }
}

/* The templates say in Jinja what render() does: BOS / EOS and the markers are the tokenizer's
 * texts; SP is the space a space tokenizer puts before each piece (the mistral pieces carry
 * theirs in the text already: " [INST] ", " " + reply). llama.cpp recognises both by their
 * markers ("' [INST] ' + system_message": Mistral v1; "<|im_start|>": ChatML). */
int chat_template_jinja(const tok *t, chat_template tpl, char **out, char *err)
{
    int bos = tok_bos_id(t), eos = tok_eos_id(t), space = chat_prefix_space(t);
    if (eos < 0) return err_set(err, "the tokenizer has no EOS token");
    const char *B = bos >= 0 ? tok_piece(t, bos) : NULL, *E = tok_piece(t, eos);
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f) return err_set(err, "out of memory");
    if (tpl == CHAT_MISTRAL) {
        fputs("{%- if messages[0]['role'] == 'system' %}\n"
              "    {%- set system_message = messages[0]['content'] %}\n"
              "    {%- set loop_messages = messages[1:] %}\n"
              "{%- else %}\n"
              "    {%- set loop_messages = messages %}\n"
              "{%- endif %}\n", f);
        if (B) fputs("{{- '", f), jq(f, B), fputs("' }}\n", f);
        fputs("{%- for message in loop_messages %}\n"
              "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
              "        {{- raise_exception('After the optional system message, conversation roles must alternate "
              "user/assistant/user/assistant...') }}\n"
              "    {%- endif %}\n"
              "    {%- if message['role'] == 'user' %}\n"
              "        {%- if loop.first and system_message is defined %}\n"
              "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
              "        {%- else %}\n"
              "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
              "        {%- endif %}\n"
              "    {%- elif message['role'] == 'assistant' %}\n"
              "        {%- if message['content'] %}\n"
              "            {{- ' ' + message['content'] }}\n"
              "        {%- endif %}\n"
              "        {{- '", f);
        jq(f, E);
        fputs("' }}\n"
              "    {%- else %}\n"
              "        {{- raise_exception('Only user and assistant roles are supported, with the exception of an "
              "initial optional system message!') }}\n"
              "    {%- endif %}\n"
              "{%- endfor %}\n"
              "{%- if loop_messages[-1]['role'] == 'user' and not add_generation_prompt %}\n"
              "    {{- '", f);
        jq(f, E);
        fputs("' }}\n{%- endif %}", f);
    } else {
        const char *sp = space ? " " : "";
        char ims[64], ime[64]; /* a marker the tokenizer lacks is a piece of text like any other */
        snprintf(ims, sizeof ims, "%s<|im_start|>", tok_id_of(t, "<|im_start|>") >= 0 ? "" : sp);
        snprintf(ime, sizeof ime, "%s<|im_end|>", tok_id_of(t, "<|im_end|>") >= 0 ? "" : sp);
        if (B) fputs("{{- '", f), jq(f, B), fputs("' }}\n", f);
        fprintf(f, "{%%- for message in messages %%}\n"
                   "    {{- '%s%s' + message['role'] + '\\n' }}\n"
                   "    {%%- if message['content'] %%}\n"
                   "        {{- %smessage['content'] }}\n"
                   "    {%%- endif %%}\n"
                   "    {{- '%s%s\\n' }}\n"
                   "{%%- endfor %%}\n"
                   "{%%- if add_generation_prompt %%}\n"
                   "    {{- '%s%sassistant\\n' }}\n"
                   "{%%- else %%}\n"
                   "    {{- '",
                ims, sp, space ? "' ' + " : "", ime, sp, ims, sp);
        jq(f, E);
        fputs("' }}\n{%- endif %}", f);
    }
    if (fclose(f) || !buf) {
        free(buf);
        return err_set(err, "out of memory");
    }
    *out = buf;
    return 0;
}

/* ------------------------------------------------------------------ messages.json */

int chat_messages_json(const char *json, size_t len, cJSON **doc, chat_msg **msgs, int *n, char *err)
{
    *doc = NULL, *msgs = NULL, *n = 0;
    cJSON *d = cJSON_ParseWithLength(json, len);
    if (!d) return err_set(err, "not valid JSON (near byte %ld)", (long)(cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - json : 0));
    const cJSON *list = d;
    if (cJSON_IsObject(d)) list = cJSON_GetObjectItemCaseSensitive(d, "messages"); /* {"messages": [...]} as in prep */
    if (!cJSON_IsArray(list)) {
        cJSON_Delete(d);
        return err_set(err, "expected a JSON list of {\"role\", \"content\"} messages");
    }
    int k = cJSON_GetArraySize(list), i = 0;
    chat_msg *m = calloc(k ? k : 1, sizeof *m);
    if (!m) {
        cJSON_Delete(d);
        return err_set(err, "out of memory");
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, list) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        const char *why = !cJSON_IsObject(e) ? "is not an object" : !cJSON_IsString(role) ? "has no string \"role\""
                          : !cJSON_IsString(content) ? "has no string \"content\"" : NULL;
        if (why) {
            free(m);
            cJSON_Delete(d);
            return err_set(err, "messages[%d] %s", i, why);
        }
        m[i].role = role->valuestring;
        m[i].content = content->valuestring;
        m[i].content_len = strlen(content->valuestring);
        i++;
    }
    *doc = d, *msgs = m, *n = k;
    return 0;
}
