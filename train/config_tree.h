/* config_tree (private to train/config*.c): the YAML document as a small tree that keeps
 * line numbers and quoting, so overrides can edit it before the config is checked.
 * Every node and string lives in one arena, freed at once. */
#ifndef MOET_CONFIG_TREE_H
#define MOET_CONFIG_TREE_H

#include <stddef.h>

#include <cjson/cJSON.h>

/* Where a node came from: a file line (> 0), a command-line override, a JSON snapshot. */
#define YT_LINE_OVERRIDE 0
#define YT_LINE_JSON (-1)

typedef enum { YT_SCALAR, YT_SEQ, YT_MAP } yt_kind;

typedef struct ytnode {
    yt_kind kind;
    int line;
    int plain;                /* scalar written without quotes: may be null, bool, number */
    char *str;                /* scalar text */
    int n, cap;               /* sequence items / mapping pairs; room for them */
    char **keys;              /* mapping keys */
    int *key_lines;
    struct ytnode **kids;     /* sequence items / mapping values */
} ytnode;

typedef struct ytblock ytblock;
typedef struct { ytblock *head; } ytarena;

void yt_arena_free(ytarena *a);

/* Parse one YAML document. *root is NULL for an empty document. Lines are file lines,
 * or all YT_LINE_OVERRIDE when for_override. name prefixes syntax errors ("f.yaml:3: ");
 * NULL gives "line 3: ". Refused at once: over 1 MB, nesting deeper than 64 levels; and
 * over 200,000 nodes (aliases expanded) or 4096 keys in one mapping. */
int yt_parse(ytarena *a, const char *text, const char *name, int for_override, ytnode **root,
             char *err);

/* Apply "a.b.c=value" to the tree (creating mappings on the way, *root included). */
int yt_apply_override(ytarena *a, ytnode **root, const char *override, char *err);

/* The value under key in a mapping, or NULL. */
ytnode *yt_get(const ytnode *map, const char *key);

/* A plain scalar spelled null, ~ or nothing. */
int yt_is_null(const ytnode *n);

/* "a list" / "a mapping" / the scalar quoted (shortened): for "got ..." in messages. */
const char *yt_describe(const ytnode *n, char *buf, size_t size);

/* YAML subtree to JSON with YAML 1.2 core typing of plain scalars. NULL: out of memory. */
cJSON *yt_to_json(const ytnode *n);

/* JSON to a tree (lines YT_LINE_JSON). NULL: out of memory. */
ytnode *yt_from_json(ytarena *a, const cJSON *j);

/* Parse a whole decimal/float scalar: 0 and *x when it is a finite number, else -1. */
int yt_number(const char *s, double *x);

/* true/True/TRUE -> 1, false/False/FALSE -> 0, else -1. */
int yt_bool(const char *s);

#endif
