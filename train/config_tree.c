/* config_tree: libyaml document -> ytnode tree, command-line overrides, and conversions
 * between subtrees and JSON.  The tree is only a carrier; train/config.c gives it meaning. */
#include "train/config_tree.h"

#include "common/err.h"

#include <math.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

/* Aliases can make a tiny file expand to billions of nodes, or loop (&a [*a]); libyaml's
 * scanner is quadratic in nesting depth (100,000 levels: 68 s before it gives up), so depth
 * and size are bounded before libyaml builds a document (yt_prescan). A mapping's duplicate
 * check is linear per key: bounded too. */
#define YT_MAX_DEPTH 64
#define YT_MAX_NODES 200000
#define YT_MAX_KEYS 4096
#define YT_MAX_BYTES (1 << 20)

struct ytblock {
    ytblock *next;
    alignas(max_align_t) unsigned char data[];
};

static void *yt_alloc(ytarena *a, size_t n)
{
    ytblock *b = malloc(sizeof *b + (n ? n : 1));
    if (!b) return NULL;
    b->next = a->head;
    a->head = b;
    memset(b->data, 0, n);
    return b->data;
}

void yt_arena_free(ytarena *a)
{
    for (ytblock *b = a->head, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    a->head = NULL;
}

static char *yt_strndup(ytarena *a, const char *s, size_t n)
{
    char *d = yt_alloc(a, n + 1);
    if (d) memcpy(d, s, n);
    return d;
}

static ytnode *yt_new(ytarena *a, yt_kind kind, int line)
{
    ytnode *n = yt_alloc(a, sizeof *n);
    if (n) n->kind = kind, n->line = line;
    return n;
}

static ytnode *yt_scalar(ytarena *a, const char *s, int plain, int line)
{
    ytnode *n = yt_new(a, YT_SCALAR, line);
    if (!n || !(n->str = yt_strndup(a, s, strlen(s)))) return NULL;
    n->plain = plain;
    return n;
}

/* Append (key, value) to a mapping or value to a sequence (key NULL).  The arrays grow by
 * doubling (the arena keeps the old ones until it is freed: linear memory in all). */
static int yt_push(ytarena *a, ytnode *parent, const char *key, int key_line, ytnode *value)
{
    int n = parent->n;
    if (n == parent->cap) {
        int cap = n ? 2 * n : 4;
        ytnode **kids = yt_alloc(a, cap * sizeof *kids);
        if (!kids) return -1;
        if (n) memcpy(kids, parent->kids, n * sizeof *kids);
        parent->kids = kids;
        if (parent->kind == YT_MAP) {
            char **keys = yt_alloc(a, cap * sizeof *keys);
            int *lines = yt_alloc(a, cap * sizeof *lines);
            if (!keys || !lines) return -1;
            if (n) memcpy(keys, parent->keys, n * sizeof *keys);
            if (n) memcpy(lines, parent->key_lines, n * sizeof *lines);
            parent->keys = keys;
            parent->key_lines = lines;
        }
        parent->cap = cap;
    }
    parent->kids[n] = value;
    if (parent->kind == YT_MAP) {
        if (!(parent->keys[n] = yt_strndup(a, key, strlen(key)))) return -1;
        parent->key_lines[n] = key_line;
    }
    parent->n = n + 1;
    return 0;
}

ytnode *yt_get(const ytnode *map, const char *key)
{
    if (!map || map->kind != YT_MAP) return NULL;
    for (int i = 0; i < map->n; i++)
        if (!strcmp(map->keys[i], key)) return map->kids[i];
    return NULL;
}

int yt_is_null(const ytnode *n)
{
    return n && n->kind == YT_SCALAR && n->plain &&
           (!n->str[0] || !strcmp(n->str, "~") || !strcmp(n->str, "null") ||
            !strcmp(n->str, "Null") || !strcmp(n->str, "NULL"));
}

const char *yt_describe(const ytnode *n, char *buf, size_t size)
{
    if (n->kind == YT_SEQ) return "a list";
    if (n->kind == YT_MAP) return "a mapping";
    /* Quoted, shortened (whole characters), control bytes and invalid UTF-8 escaped: the
     * message stays one printable line. */
    buf[0] = '"';
    err_quote(buf + 1, (int)size - 2, n->str, -1, 60);
    strcat(buf, "\"");
    return buf;
}

int yt_number(const char *s, double *x)
{
    char *end;
    if (!s[0] || s[0] == ' ') return -1;
    double v = strtod(s, &end);
    if (*end || !isfinite(v)) return -1;
    *x = v;
    return 0;
}

int yt_bool(const char *s)
{
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) return 1;
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) return 0;
    return -1;
}

/* ---- libyaml document -> tree ---- */

typedef struct {
    ytarena *a;
    yaml_document_t *doc;
    int for_override;
    int nodes;
    char path[256];           /* key path of the node being converted, for messages */
    const char *name;
    char *err;
} ytload;

static int yt_line(const ytload *L, const yaml_node_t *y)
{
    return L->for_override ? YT_LINE_OVERRIDE : (int)y->start_mark.line + 1;
}

static int load_err(ytload *L, int line, const char *fmt, const char *arg)
{
    char msg[ERR_MAX];
    snprintf(msg, sizeof msg, fmt, arg);
    if (L->for_override) return err_set(L->err, "%s", msg); /* the caller says which one */
    if (L->name) return err_set(L->err, "%s:%d: %s", L->name, line, msg);
    return err_set(L->err, "line %d: %s", line, msg);
}

static ytnode *yt_convert(ytload *L, yaml_node_t *y, int depth)
{
    int line = yt_line(L, y);
    if (depth > YT_MAX_DEPTH || ++L->nodes > YT_MAX_NODES) {
        load_err(L, line, "%s", "document too deep or too large (recursive or exploding aliases?)");
        return NULL;
    }
    if (y->type == YAML_SCALAR_NODE) {
        if (strlen((char *)y->data.scalar.value) != y->data.scalar.length) {
            load_err(L, line, "%s", "NUL character in a value");
            return NULL;
        }
        ytnode *n = yt_scalar(L->a, (char *)y->data.scalar.value,
                              y->data.scalar.style == YAML_PLAIN_SCALAR_STYLE, line);
        if (!n) load_err(L, line, "%s", "out of memory");
        return n;
    }
    ytnode *n = yt_new(L->a, y->type == YAML_SEQUENCE_NODE ? YT_SEQ : YT_MAP, line);
    if (!n) goto oom;
    if (y->type == YAML_SEQUENCE_NODE) {
        for (yaml_node_item_t *it = y->data.sequence.items.start; it < y->data.sequence.items.top; it++) {
            ytnode *kid = yt_convert(L, yaml_document_get_node(L->doc, *it), depth + 1);
            if (!kid) return NULL;
            if (yt_push(L->a, n, NULL, 0, kid)) goto oom;
        }
        return n;
    }
    for (yaml_node_pair_t *p = y->data.mapping.pairs.start; p < y->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(L->doc, p->key);
        int kline = yt_line(L, k);
        if (k->type != YAML_SCALAR_NODE) {
            load_err(L, kline, "%s", "a mapping key must be a plain name, not a list or mapping");
            return NULL;
        }
        const char *key = (const char *)k->data.scalar.value;
        if (n->n == YT_MAX_KEYS) {
            load_err(L, kline, "%s", "a mapping with more than 4096 keys (not a config?)");
            return NULL;
        }
        size_t plen = strlen(L->path);
        snprintf(L->path + plen, sizeof L->path - plen, "%s%s", plen ? "." : "", key);
        if (yt_get(n, key)) {
            load_err(L, kline, "duplicate key '%s'", err_q(L->path, -1));
            return NULL;
        }
        ytnode *kid = yt_convert(L, yaml_document_get_node(L->doc, p->value), depth + 1);
        if (!kid) return NULL;
        L->path[plen] = 0;
        if (yt_push(L->a, n, key, kline, kid)) goto oom;
    }
    return n;
oom:
    load_err(L, line, "%s", "out of memory");
    return NULL;
}

static int syntax_err(ytload *L, const yaml_parser_t *p)
{
    char msg[ERR_MAX];
    const char *problem = p->problem ? p->problem : "malformed YAML";
    if (p->context && !L->for_override)
        snprintf(msg, sizeof msg, "YAML syntax error: %s (%s on line %zu)", problem, p->context,
                 p->context_mark.line + 1);
    else snprintf(msg, sizeof msg, "YAML syntax error: %s", problem);
    return load_err(L, (int)p->problem_mark.line + 1, "%s", msg);
}

/* The line where the events of text first nest deeper than YT_MAX_DEPTH, or 0. Parsing stops
 * there, so a 100,000-level document costs what 64 levels do; a syntax error ends the scan
 * (the loader then reports it). */
static int yt_prescan(const char *text, size_t len)
{
    yaml_parser_t p;
    yaml_event_t ev;
    int depth = 0, line = 0;
    if (!yaml_parser_initialize(&p)) return 0; /* the loader will say out of memory */
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    while (!line && yaml_parser_parse(&p, &ev)) {
        yaml_event_type_t t = ev.type;
        if (t == YAML_SEQUENCE_START_EVENT || t == YAML_MAPPING_START_EVENT) {
            if (++depth > YT_MAX_DEPTH) line = (int)ev.start_mark.line + 1;
        } else if (t == YAML_SEQUENCE_END_EVENT || t == YAML_MAPPING_END_EVENT) {
            depth--;
        }
        yaml_event_delete(&ev);
        if (t == YAML_STREAM_END_EVENT) break;
    }
    yaml_parser_delete(&p);
    return line;
}

int yt_parse(ytarena *a, const char *text, const char *name, int for_override, ytnode **root,
             char *err)
{
    ytload L = {.a = a, .for_override = for_override, .name = name, .err = err};
    yaml_parser_t p;
    yaml_document_t doc;
    *root = NULL;
    size_t len = strlen(text);
    if (len > YT_MAX_BYTES) return load_err(&L, 1, "%s", "more than 1 MB of YAML (not a config?)");
    int deep = yt_prescan(text, len);
    if (deep) return load_err(&L, deep, "%s", "document nested deeper than 64 levels (not a config?)");
    if (!yaml_parser_initialize(&p)) return err_set(err, "out of memory");
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    int rc = -1;
    if (!yaml_parser_load(&p, &doc)) {
        syntax_err(&L, &p);
        goto done;
    }
    L.doc = &doc;
    yaml_node_t *top = yaml_document_get_root_node(&doc);
    if (top && !(*root = yt_convert(&L, top, 0))) {
        yaml_document_delete(&doc);
        goto done;
    }
    yaml_document_delete(&doc);
    if (top) { /* exactly one document */
        if (!yaml_parser_load(&p, &doc)) {
            syntax_err(&L, &p);
            goto done;
        }
        yaml_node_t *next = yaml_document_get_root_node(&doc);
        int line = next ? (int)next->start_mark.line + 1 : 0;
        yaml_document_delete(&doc);
        if (next) {
            load_err(&L, line, "%s", "a second YAML document ('---'): a config is one document");
            goto done;
        }
    }
    rc = 0;
done:
    yaml_parser_delete(&p);
    if (rc) *root = NULL;
    return rc;
}

/* ---- overrides ---- */

int yt_apply_override(ytarena *a, ytnode **root, const char *ov, char *err)
{
    const char *eq = strchr(ov, '=');
    if (!eq || eq == ov)
        return err_set(err, "command line: '%s': expected key.path=value", err_q(ov, -1));
    char path[256];
    size_t plen = (size_t)(eq - ov);
    if (plen >= sizeof path) return err_set(err, "command line: key path too long in '%s'", err_q(ov, -1));
    memcpy(path, ov, plen);
    path[plen] = 0;
    for (const char *s = path; *s; s++)
        if ((*s == '.' && (s == path || s[1] == '.' || !s[1])) || *s == ' ')
            return err_set(err, "command line: '%s': bad key path '%s'", err_q(ov, -1), err_q(path, -1));

    ytnode *value;
    if (yt_parse(a, eq + 1, NULL, 1, &value, err)) return err_wrap(err, "command line: '%s'", err_q(ov, -1));
    if (!value && !(value = yt_scalar(a, "", 1, YT_LINE_OVERRIDE))) goto oom;
    if (!*root || yt_is_null(*root)) {
        if (!(*root = yt_new(a, YT_MAP, YT_LINE_OVERRIDE))) goto oom;
    } else if ((*root)->kind != YT_MAP) {
        return err_set(err, "command line: the config is not a mapping of sections");
    }

    ytnode *map = *root;
    char *seg = path;
    for (;;) {
        char *dot = strchr(seg, '.');
        if (dot) *dot = 0;
        int i = 0;
        while (i < map->n && strcmp(map->keys[i], seg)) i++;
        if (!dot) { /* the last segment: set or replace */
            if (i < map->n) map->kids[i] = value;
            else if (yt_push(a, map, seg, YT_LINE_OVERRIDE, value)) goto oom;
            return 0;
        }
        if (i == map->n) {
            ytnode *sub = yt_new(a, YT_MAP, YT_LINE_OVERRIDE);
            if (!sub || yt_push(a, map, seg, YT_LINE_OVERRIDE, sub)) goto oom;
        } else if (yt_is_null(map->kids[i])) {
            if (!(map->kids[i] = yt_new(a, YT_MAP, YT_LINE_OVERRIDE))) goto oom;
        } else if (map->kids[i]->kind != YT_MAP) {
            return err_set(err, "command line: cannot set '%s': '%s' is not a mapping", err_q(ov, (long)plen),
                           err_q(path, -1));
        }
        map = map->kids[i];
        *dot = '.';
        seg = dot + 1;
    }
oom:
    return err_set(err, "out of memory");
}

/* ---- JSON ---- */

cJSON *yt_to_json(const ytnode *n)
{
    if (n->kind == YT_SCALAR) {
        double x;
        int b;
        if (!n->plain) return cJSON_CreateString(n->str);
        if (yt_is_null(n)) return cJSON_CreateNull();
        if ((b = yt_bool(n->str)) >= 0) return cJSON_CreateBool(b);
        if (!yt_number(n->str, &x)) return cJSON_CreateNumber(x);
        return cJSON_CreateString(n->str);
    }
    cJSON *j = n->kind == YT_SEQ ? cJSON_CreateArray() : cJSON_CreateObject();
    for (int i = 0; j && i < n->n; i++) {
        cJSON *kid = yt_to_json(n->kids[i]);
        if (!kid || !(n->kind == YT_SEQ ? cJSON_AddItemToArray(j, kid)
                                        : cJSON_AddItemToObject(j, n->keys[i], kid))) {
            cJSON_Delete(kid);
            cJSON_Delete(j);
            return NULL;
        }
    }
    return j;
}

ytnode *yt_from_json(ytarena *a, const cJSON *j)
{
    char num[64];
    if (cJSON_IsString(j)) return yt_scalar(a, j->valuestring, 0, YT_LINE_JSON);
    if (cJSON_IsNumber(j)) {
        snprintf(num, sizeof num, "%.17g", j->valuedouble);
        return yt_scalar(a, num, 1, YT_LINE_JSON);
    }
    if (cJSON_IsBool(j)) return yt_scalar(a, cJSON_IsTrue(j) ? "true" : "false", 1, YT_LINE_JSON);
    if (!cJSON_IsArray(j) && !cJSON_IsObject(j)) return yt_scalar(a, "null", 1, YT_LINE_JSON);
    ytnode *n = yt_new(a, cJSON_IsArray(j) ? YT_SEQ : YT_MAP, YT_LINE_JSON);
    if (!n) return NULL;
    for (const cJSON *k = j->child; k; k = k->next) {
        ytnode *kid = yt_from_json(a, k);
        if (!kid || yt_push(a, n, k->string ? k->string : "", YT_LINE_JSON, kid)) return NULL;
    }
    return n;
}
