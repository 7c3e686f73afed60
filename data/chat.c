/* chat: the mistral and chatml templates, rendered piece by piece (see chat.h). */
#include "data/chat.h"

#include "common/err.h"

#include <stdlib.h>
#include <string.h>

int chat_template_parse(const char *name, chat_template *out, char *err)
{
    if (!strcmp(name, "mistral")) *out = CHAT_MISTRAL;
    else if (!strcmp(name, "chatml")) *out = CHAT_CHATML;
    else return err_set(err, "unknown chat template '%s' (mistral or chatml)", err_q(name, -1));
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

static int push_id(chat_seq *s, int32_t id, uint8_t mask, char *err)
{
    return chat_seq_push(s, &id, 1, mask) ? err_set(err, "out of memory") : 0;
}

/* "[INST] {system}\n\n{user} [/INST]" as one piece; system may be NULL. */
static int mistral_user(chat_seq *s, const tok *t, const chat_msg *sys, const chat_msg *user, char *err)
{
    size_t n = 7 + (sys ? sys->content_len + 2 : 0) + user->content_len + 8;
    char *text = malloc(n + 1), *p = text;
    if (!text) return err_set(err, "out of memory");
    memcpy(p, "[INST] ", 7), p += 7;
    if (sys) memcpy(p, sys->content, sys->content_len), p += sys->content_len, memcpy(p, "\n\n", 2), p += 2;
    memcpy(p, user->content, user->content_len), p += user->content_len;
    memcpy(p, " [/INST]", 8), p += 8;
    int rc = chat_seq_encode(s, t, text, (size_t)(p - text), 0, err);
    free(text);
    return rc;
}

static int render_mistral(const tok *t, const chat_msg *m, int n, chat_seq *s, char *err)
{
    int eos = tok_eos_id(t), i = 0;
    const chat_msg *sys = NULL;
    if (n > 0 && !strcmp(m[0].role, "system")) sys = &m[0], i = 1;
    if (i == n) return err_set(err, "conversation has no user message");
    for (int k = 0; i < n; i++, k++) {
        const char *want = k % 2 == 0 ? "user" : "assistant";
        if (strcmp(m[i].role, want)) {
            if (strcmp(m[i].role, "user") && strcmp(m[i].role, "assistant") && strcmp(m[i].role, "system"))
                return err_set(err, "messages[%d]: unknown role '%s' for the mistral template", i, err_q(m[i].role, -1));
            return err_set(err, "messages[%d]: role '%s' where '%s' was due (mistral wants an optional system, "
                                "then user/assistant alternating)", i, err_q(m[i].role, -1), want);
        }
        if (k % 2 == 0) {
            if (mistral_user(s, t, k == 0 ? sys : NULL, &m[i], err)) return -1;
        } else {
            if (chat_seq_encode(s, t, m[i].content, m[i].content_len, 1, err) || push_id(s, eos, 1, err))
                return -1;
        }
    }
    return strcmp(m[n - 1].role, "assistant") ? push_id(s, eos, 0, err) : 0;
}

/* A marker such as "<|im_end|>": its id when the tokenizer has it, else its text. */
static int push_marker(chat_seq *s, const tok *t, const char *marker, uint8_t mask, char *err)
{
    int id = tok_id_of(t, marker);
    return id >= 0 ? push_id(s, id, mask, err) : chat_seq_encode(s, t, marker, strlen(marker), mask, err);
}

static int render_chatml(const tok *t, const chat_msg *m, int n, chat_seq *s, char *err)
{
    for (int i = 0; i < n; i++) {
        size_t rl = strlen(m[i].role);
        if (rl == 0) return err_set(err, "messages[%d]: empty role", i);
        uint8_t target = !strcmp(m[i].role, "assistant");
        char *header = malloc(rl + 2);
        if (!header) return err_set(err, "out of memory");
        memcpy(header, m[i].role, rl), header[rl] = '\n';
        int rc = push_marker(s, t, "<|im_start|>", 0, err) || chat_seq_encode(s, t, header, rl + 1, 0, err) ||
                 chat_seq_encode(s, t, m[i].content, m[i].content_len, target, err) ||
                 push_marker(s, t, "<|im_end|>", target, err) || chat_seq_encode(s, t, "\n", 1, 0, err);
        free(header);
        if (rc) return -1;
    }
    return push_id(s, tok_eos_id(t), 0, err);
}

int chat_render(const tok *t, chat_template tpl, const chat_msg *msgs, int n, chat_seq *out, char *err)
{
    if (tok_eos_id(t) < 0) return err_set(err, "the tokenizer has no EOS token");
    if (n < 1) return err_set(err, "\"messages\" is empty");
    if (tok_bos_id(t) >= 0 && push_id(out, tok_bos_id(t), 0, err)) return -1;   /* Qwen and gpt-oss have none */
    return tpl == CHAT_MISTRAL ? render_mistral(t, msgs, n, out, err) : render_chatml(t, msgs, n, out, err);
}
