/*
 * sr_config_load.c — YAML text and --set overrides to an sr_config, with one-line errors that
 * name the file, line and dotted key.
 *
 * The path of a config through this file:
 *   1. libyaml parses the text into a document (syntax errors carry the line). A first pass
 *      over libyaml's events bounds the nesting, the number of values and of anchors before
 *      the document is built: libyaml's scanner costs time proportional to the nesting depth
 *      for every token (it rechecks every open flow level for a possible key), so 200 kB of
 *      "[[[[..." took close to a minute; stopped at SR__MAX_NESTING levels it is linear;
 *   2. each override "a.b.c=value" parses `value` as a YAML document of its own (the same
 *      bounds) and grafts it into the main document at a.b.c, creating mappings on the way;
 *      nodes added this way have ids above the last node of the file, which is how a later
 *      error knows to say "--set a.b.c" instead of "file:line". The value of a string key
 *      (input.path, output.path, report.json) is not parsed: it is the file name, byte for
 *      byte, so "null", "#1.h5" or "a: b.h5" name files like any other text (empty = none);
 *   3. a walk over the document records every dotted key with its nodes (the key -> line map)
 *      and rejects unknown and duplicate keys and malformed numbers and booleans: libcyaml
 *      1.3.1 reads "1.5" as the integer 1, "-1" as a huge unsigned, "0.1 0.2" as 0.1 and any
 *      word but false/no/off as true, so those scalars are checked here first;
 *   4. the document is emitted back to text and loaded by libcyaml with the schema assembled
 *      from sr__keys. libcyaml's log (captured, never printed) names the failing field in its
 *      backtrace; the key -> line map turns that into "file:line: key: problem". Lines in
 *      libcyaml's own messages refer to the re-emitted text, so they are not used;
 *   5. keys present in the document replace the defaults; then the bounds of sr__keys and the
 *      cross-field rules are checked, with the same "where" prefix. Strings are taken from the
 *      document, not from libcyaml, which reads a quoted 'null' or '~' as no string: only a
 *      plain ~ / null / empty value (or '') means none, so the effective config (strings
 *      quoted) loads back to the same file names.
 */
#define _POSIX_C_SOURCE 200809L
#define SR_CONFIG_INTERNAL
#include "sr_config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define SR__MAX_FILE_BYTES (16u << 20) /* a config larger than this is a mistake              */
#define SR__MAX_NESTING 32 /* collections inside collections, in the text or a --set value (a
                              config needs 3); also bounds libyaml's per-token cost            */
#define SR__MAX_DEPTH 48   /* nesting of copied / emitted nodes: SR__MAX_NESTING plus the
                              sections a --set path adds; more is aliases (a loop)             */
#define SR__MAX_NODES 100000   /* values in the text, and emitted after alias expansion         */
#define SR__MAX_ANCHORS 1000   /* libyaml looks anchors up one by one: bounded, so is the cost  */
#define SR__MAX_OVERRIDES 4096 /* each is grafted with a scan of the top-level keys             */
#define SR__NAME_SHOWN 256     /* a longer config file name is shown as head...tail             */

/* One key of the document: its dotted name and the ids of its key and value nodes. */
typedef struct sr__entry {
  char *dotted;
  int key_id, value_id;
} sr__entry;

typedef struct sr__load {
  const char *name; /* file name in messages (shortened when long: the reason must show) */
  const char *full_name; /* the file name itself (cfg->source_name) */
  char name_buf[SR__NAME_SHOWN];
  sr__index ix;
  yaml_document_t doc;
  bool have_doc;
  int n_file_nodes; /* nodes with larger ids came from --set */
  sr__entry *map;
  int n_map, cap_map;
  size_t emitted; /* nodes emitted so far (alias bomb guard) */
  int aliases;    /* aliases in the text and the overrides (for messages)            */
  char log[4096]; /* libcyaml's log of the failed load */
  size_t log_len;
} sr__load;

/* ---- document helpers ------------------------------------------------------------------------ */

static yaml_node_t *node(sr__load *L, int id) { return yaml_document_get_node(&L->doc, id); }

static int node_count(const yaml_document_t *d) { return (int)(d->nodes.top - d->nodes.start); }

/* A scalar as shown in a message: at most 60 bytes, control characters replaced. */
static const char *shown(char *buf, size_t n, const yaml_node_t *v) {
  if (!v || v->type != YAML_SCALAR_NODE) {
    snprintf(buf, n, "%s", !v ? "?" : v->type == YAML_MAPPING_NODE ? "a mapping" : "a list");
    return buf;
  }
  size_t len = v->data.scalar.length, i;
  for (i = 0; i < len && i < 60 && i + 4 < n; i++) {
    unsigned char c = v->data.scalar.value[i];
    buf[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
  }
  buf[i] = '\0';
  if (i < len && i + 4 <= n) strcpy(buf + i, "...");
  return buf;
}

/* "file:line: " for a node of the file, "--set " for a node an override added. */
static void where_node(sr__load *L, int id, char *buf, size_t n) {
  yaml_node_t *v = node(L, id);
  if (id > L->n_file_nodes || !v)
    snprintf(buf, n, "--set ");
  else
    snprintf(buf, n, "%s:%lu: ", L->name, (unsigned long)v->start_mark.line + 1);
}

static sr__entry *find_entry(sr__load *L, const char *dotted) {
  for (int i = 0; i < L->n_map; i++)
    if (strcmp(L->map[i].dotted, dotted) == 0) return &L->map[i];
  return NULL;
}

/* sr__where_fn over the key -> line map: the place of the first of two keys that is present. */
static void where_keys(void *ctx, char *buf, size_t n, const char *k1, const char *k2) {
  sr__load *L = ctx;
  sr__entry *e = find_entry(L, k1);
  if (!e && k2) e = find_entry(L, k2);
  if (e)
    where_node(L, e->value_id, buf, n);
  else
    snprintf(buf, n, "%s: ", L->name);
}

static int scalar_is(const yaml_node_t *v, const char *s) {
  return v && v->type == YAML_SCALAR_NODE && v->data.scalar.length == strlen(s) &&
         memcmp(v->data.scalar.value, s, v->data.scalar.length) == 0;
}

/* ---- messages -------------------------------------------------------------------------------- */

static int edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 47 || lb > 47) return 99;
  int row[48];
  for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
  for (size_t i = 1; i <= la; i++) {
    int diag = row[0];
    row[0] = (int)i;
    for (size_t j = 1; j <= lb; j++) {
      int up = row[j];
      int best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

/* " (did you mean model.q_heads?)" for a near miss in the same section, else "". */
static void suggestion(const sr__index *ix, const char *dotted, char *buf, size_t n) {
  const char *dot = strrchr(dotted, '.');
  size_t plen = dot ? (size_t)(dot - dotted) : 0;
  const char *leaf = dot ? dot + 1 : dotted;
  int best = -1, best_d = 3;
  for (int r = 0; r < sr__n_keys; r++) {
    const char *parent = sr__keys[r].parent;
    if (strlen(parent) != plen || strncmp(parent, dotted, plen) != 0) continue;
    int d = edit_distance(leaf, sr__keys[r].field.key);
    if (d < best_d) best_d = d, best = r;
  }
  if (best >= 0)
    snprintf(buf, n, " (did you mean %s?)", ix->name[best]);
  else if (n)
    buf[0] = '\0';
}

/* "one of a, b, c" from an enum or flags table. */
static void names_list(const cyaml_schema_value_t *v, char *buf, size_t n) {
  size_t at = 0;
  buf[0] = '\0';
  for (uint32_t i = 0; i < v->enumeration.count && at < n; i++)
    at += (size_t)snprintf(buf + at, n - at, "%s%s", i ? ", " : "", v->enumeration.strings[i].str);
}

static sr_status range_error(sr__load *L, int r, int value_id, const char *dotted) {
  char w[300], s[80], range[96], problem[200];
  where_node(L, value_id, w, sizeof w);
  shown(s, sizeof s, node(L, value_id));
  if (sr__keys[r].check) {
    sr__format_out_of_range(problem, sizeof problem, r, s);
    return sr__seterr(SR_ERR_CONFIG, "%s%s: %s", w, dotted, problem);
  } else {
    const cyaml_schema_value_t *v = &sr__keys[r].field.value;
    bool u = v->type == CYAML_UINT, wide = v->data_size == 8;
    snprintf(range, sizeof range, "[%s, %s]",
             u      ? "0"
             : wide ? "-9223372036854775808"
                    : "-2147483648",
             u ? (wide ? "18446744073709551615" : "4294967295")
               : (wide ? "9223372036854775807" : "2147483647"));
  }
  return sr__seterr(SR_ERR_CONFIG, "%s%s: %s is outside %s", w, dotted, s, range);
}

/* ---- step 1: parse --------------------------------------------------------------------------- */

static sr_status syntax_error(const char *name, const yaml_parser_t *p) {
  const char *problem = p->problem ? p->problem : "malformed YAML";
  if (p->error == YAML_READER_ERROR)
    return sr__seterr(SR_ERR_CONFIG, "%s: not UTF-8 text: %s at byte %lu", name, problem,
                      (unsigned long)p->problem_offset);
  if (p->context)
    return sr__seterr(SR_ERR_CONFIG, "%s:%lu: YAML syntax error: %s (%s at line %lu)", name,
                      (unsigned long)p->problem_mark.line + 1, problem, p->context,
                      (unsigned long)p->context_mark.line + 1);
  return sr__seterr(SR_ERR_CONFIG, "%s:%lu: YAML syntax error: %s", name,
                    (unsigned long)p->problem_mark.line + 1, problem);
}

static const char *printable(char *buf, size_t n, const char *s);

/* Where a prescan failure is reported: "file:line: " for the config text, "--set key: " for an
 * override's value. */
typedef struct scan_where {
  const char *name;    /* file name, or NULL for an override */
  const char *set_key; /* the override's key                 */
  const char *value;   /* the override's value text          */
} scan_where;

static sr_status scan_error(const scan_where *at, unsigned long line, const char *problem) {
  if (at->name) return sr__seterr(SR_ERR_CONFIG, "%s:%lu: %s", at->name, line + 1, problem);
  return sr__seterr(SR_ERR_CONFIG, "--set %s: %s", at->set_key, problem);
}

/* One pass over the events of text before a document is built from it: refuses nesting deeper
 * than SR__MAX_NESTING, more than SR__MAX_NODES values and more than SR__MAX_ANCHORS anchors,
 * stopping at the first event past a bound, so that the cost of any input is linear in its
 * length (libyaml's scanner pays for every open flow level on every token; its loader looks
 * each alias up among all anchors). Syntax errors are reported as the loader would. Adds the
 * aliases seen to L->aliases. */
static sr_status prescan(sr__load *L, const scan_where *at, const char *text, size_t len) {
  yaml_parser_t p;
  yaml_event_t ev;
  if (!yaml_parser_initialize(&p)) return sr__seterr(SR_ERR_NOMEM, "out of memory (libyaml)");
  yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
  sr_status s = SR_OK;
  int depth = 0, nodes = 0, anchors = 0;
  char why[96];
  for (bool end = false; s == SR_OK && !end;) {
    if (!yaml_parser_parse(&p, &ev)) {
      if (at->name) {
        s = syntax_error(at->name, &p);
      } else {
        char sh[80];
        s = sr__seterr(SR_ERR_CONFIG, "--set %s: '%s' is not a YAML value (%s)", at->set_key,
                       printable(sh, sizeof sh, at->value), p.problem ? p.problem : "syntax error");
      }
      break;
    }
    unsigned long line = (unsigned long)ev.start_mark.line;
    const yaml_char_t *anchor = NULL;
    switch (ev.type) {
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
      anchor = ev.type == YAML_SEQUENCE_START_EVENT ? ev.data.sequence_start.anchor
                                                    : ev.data.mapping_start.anchor;
      nodes++;
      if (++depth > SR__MAX_NESTING) {
        snprintf(why, sizeof why, "nesting deeper than %d levels of lists and mappings",
                 SR__MAX_NESTING);
        s = scan_error(at, line, why);
      }
      break;
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT: depth--; break;
    case YAML_SCALAR_EVENT:
      anchor = ev.data.scalar.anchor;
      nodes++;
      break;
    case YAML_ALIAS_EVENT:
      nodes++;
      L->aliases++;
      break;
    case YAML_STREAM_END_EVENT: end = true; break;
    default: break;
    }
    if (s == SR_OK && nodes > SR__MAX_NODES) {
      snprintf(why, sizeof why, "more than %d values", SR__MAX_NODES);
      s = scan_error(at, line, why);
    }
    if (s == SR_OK && anchor && ++anchors > SR__MAX_ANCHORS) {
      snprintf(why, sizeof why, "more than %d anchors (&name)", SR__MAX_ANCHORS);
      s = scan_error(at, line, why);
    }
    yaml_event_delete(&ev);
  }
  yaml_parser_delete(&p);
  return s;
}

static sr_status parse_text(sr__load *L, const char *text, size_t len) {
  scan_where at = {.name = L->name};
  L->n_file_nodes = 0;
  SR_TRY(prescan(L, &at, text, len));
  yaml_parser_t p;
  if (!yaml_parser_initialize(&p)) return sr__seterr(SR_ERR_NOMEM, "out of memory (libyaml)");
  yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
  sr_status s = SR_OK;
  if (!yaml_parser_load(&p, &L->doc)) {
    s = syntax_error(L->name, &p);
  } else {
    L->have_doc = true;
    yaml_node_t *root = yaml_document_get_root_node(&L->doc);
    if (!root) {
      s = sr__seterr(SR_ERR_CONFIG, "%s: empty configuration (no keys)", L->name);
    } else if (root->type != YAML_MAPPING_NODE) {
      s = sr__seterr(SR_ERR_CONFIG, "%s:%lu: the top level must be a mapping of keys", L->name,
                     (unsigned long)root->start_mark.line + 1);
    } else {
      /* A second document ("---") would be silently ignored: refuse it. */
      yaml_document_t extra;
      if (!yaml_parser_load(&p, &extra)) {
        s = syntax_error(L->name, &p);
      } else {
        yaml_node_t *r2 = yaml_document_get_root_node(&extra);
        if (r2)
          s = sr__seterr(SR_ERR_CONFIG, "%s:%lu: a second YAML document; a config is one", L->name,
                         (unsigned long)r2->start_mark.line + 1);
        yaml_document_delete(&extra);
      }
    }
  }
  yaml_parser_delete(&p);
  L->n_file_nodes = L->have_doc ? node_count(&L->doc) : 0;
  return s;
}

/* ---- step 2: overrides ----------------------------------------------------------------------- */

static int add_scalar(yaml_document_t *d, const char *s) {
  return yaml_document_add_scalar(d, NULL, (yaml_char_t *)s, (int)strlen(s),
                                  YAML_PLAIN_SCALAR_STYLE);
}

/* Copies node `id` of src (and what it contains) into dst; 0 on failure or runaway nesting. */
static int copy_node(sr__load *L, yaml_document_t *src, int id, int depth) {
  yaml_node_t *n = yaml_document_get_node(src, id);
  yaml_document_t *dst = &L->doc;
  if (!n || depth > SR__MAX_DEPTH || ++L->emitted > SR__MAX_NODES) return 0;
  switch (n->type) {
  case YAML_SCALAR_NODE:
    return yaml_document_add_scalar(dst, NULL, n->data.scalar.value, (int)n->data.scalar.length,
                                    n->data.scalar.style);
  case YAML_SEQUENCE_NODE: {
    int seq = yaml_document_add_sequence(dst, NULL, n->data.sequence.style);
    for (yaml_node_item_t *it = n->data.sequence.items.start;
         seq && it < n->data.sequence.items.top; it++) {
      int c = copy_node(L, src, *it, depth + 1);
      if (!c || !yaml_document_append_sequence_item(dst, seq, c)) return 0;
    }
    return seq;
  }
  case YAML_MAPPING_NODE: {
    int map = yaml_document_add_mapping(dst, NULL, n->data.mapping.style);
    for (yaml_node_pair_t *pr = n->data.mapping.pairs.start; map && pr < n->data.mapping.pairs.top;
         pr++) {
      int k = copy_node(L, src, pr->key, depth + 1);
      int v = k ? copy_node(L, src, pr->value, depth + 1) : 0;
      if (!v || !yaml_document_append_mapping_pair(dst, map, k, v)) return 0;
    }
    return map;
  }
  default: return 0;
  }
}

/* Index of the pair of mapping `map_id` whose key is `key` (length len), or -1. */
static int find_pair(sr__load *L, int map_id, const char *key, size_t len) {
  yaml_node_t *m = node(L, map_id);
  for (yaml_node_pair_t *pr = m->data.mapping.pairs.start; pr < m->data.mapping.pairs.top; pr++) {
    yaml_node_t *k = node(L, pr->key);
    if (k && k->type == YAML_SCALAR_NODE && k->data.scalar.length == len &&
        memcmp(k->data.scalar.value, key, len) == 0)
      return (int)(pr - m->data.mapping.pairs.start);
  }
  return -1;
}

/* Puts node value_id at the dotted path, creating or replacing mappings on the way. Node
 * pointers are re-fetched after every add: adding may move the node array. */
static bool set_path(sr__load *L, const char *dotted, int value_id) {
  int cur = 1; /* the root */
  const char *comp = dotted;
  for (;;) {
    const char *dot = strchr(comp, '.');
    size_t len = dot ? (size_t)(dot - comp) : strlen(comp);
    char key[64];
    snprintf(key, sizeof key, "%.*s", (int)len, comp);
    int j = find_pair(L, cur, comp, len);
    if (!dot) {
      if (j >= 0) {
        node(L, cur)->data.mapping.pairs.start[j].value = value_id;
        return true;
      }
      int k = add_scalar(&L->doc, key);
      return k && yaml_document_append_mapping_pair(&L->doc, cur, k, value_id);
    }
    int next = j >= 0 ? node(L, cur)->data.mapping.pairs.start[j].value : 0;
    if (!next || node(L, next)->type != YAML_MAPPING_NODE) {
      next = yaml_document_add_mapping(&L->doc, NULL, YAML_BLOCK_MAPPING_STYLE);
      if (!next) return false;
      if (j >= 0) {
        node(L, cur)->data.mapping.pairs.start[j].value = next;
      } else {
        int k = add_scalar(&L->doc, key);
        if (!k || !yaml_document_append_mapping_pair(&L->doc, cur, k, next)) return false;
      }
    }
    cur = next;
    comp = dot + 1;
  }
}

/* Text from the command line as shown in a one-line message: at most 60 bytes, control
 * characters replaced (like shown() for document scalars). */
static const char *printable(char *buf, size_t n, const char *s) {
  size_t i, len = strlen(s);
  for (i = 0; i < len && i < 60 && i + 4 < n; i++)
    buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
  buf[i] = '\0';
  if (i < len && i + 4 <= n) strcpy(buf + i, "...");
  return buf;
}

/* Whether s[0..len) is well-formed UTF-8 (what libyaml accepts in a scalar). */
static bool utf8_valid(const char *s, size_t len) {
  const unsigned char *u = (const unsigned char *)s;
  for (size_t i = 0; i < len;) {
    unsigned c = u[i];
    size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (!n || i + n > len) return false;
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < n; k++) {
      if ((u[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (u[i + k] & 0x3F);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n;
  }
  return true;
}

static sr_status apply_override(sr__load *L, const char *assign) {
  const char *eq = strchr(assign, '=');
  char sh[80];
  if (!eq || eq == assign)
    return sr__seterr(SR_ERR_CONFIG, "--set '%s': expected key=value",
                      printable(sh, sizeof sh, assign));
  char key[128];
  size_t klen = (size_t)(eq - assign);
  while (klen && isspace((unsigned char)assign[klen - 1])) klen--;
  while (klen && isspace((unsigned char)*assign)) assign++, klen--;
  snprintf(key, sizeof key, "%.*s", (int)klen, assign);
  if (sr__index_find(&L->ix, key) < 0) {
    char hint[96];
    suggestion(&L->ix, key, hint, sizeof hint);
    return sr__seterr(SR_ERR_CONFIG, "--set %s: unknown key%s", printable(sh, sizeof sh, key),
                      hint);
  }
  const char *value = eq + 1;
  int row = sr__index_find(&L->ix, key), id;
  if (sr__keys[row].field.value.type == CYAML_STRING && value[0]) {
    /* A file name from the command line is the name, byte for byte: parsed as YAML, "null"
     * would mean no output, "#1.h5" would be a comment and "a: b.h5" a mapping. The node is
     * quoted, so that it is emitted (and read back by libcyaml) as a string. */
    if (!utf8_valid(value, strlen(value)))
      return sr__seterr(SR_ERR_CONFIG, "--set %s: the value is not UTF-8 text", key);
    id = yaml_document_add_scalar(&L->doc, NULL, (yaml_char_t *)value, (int)strlen(value),
                                  YAML_SINGLE_QUOTED_SCALAR_STYLE);
    if (!id) return sr__seterr(SR_ERR_NOMEM, "out of memory applying --set %s", key);
  } else {
    scan_where at = {.set_key = key, .value = value};
    SR_TRY(prescan(L, &at, value, strlen(value)));
    yaml_parser_t p;
    yaml_document_t vdoc;
    if (!yaml_parser_initialize(&p)) return sr__seterr(SR_ERR_NOMEM, "out of memory (libyaml)");
    yaml_parser_set_input_string(&p, (const unsigned char *)value, strlen(value));
    if (!yaml_parser_load(&p, &vdoc)) {
      sr_status s =
          sr__seterr(SR_ERR_CONFIG, "--set %s: '%s' is not a YAML value (%s)", key,
                     printable(sh, sizeof sh, value), p.problem ? p.problem : "syntax error");
      yaml_parser_delete(&p);
      return s;
    }
    yaml_parser_delete(&p);
    /* An empty value is an empty scalar: null for strings, an error for numbers. */
    id = yaml_document_get_root_node(&vdoc) ? copy_node(L, &vdoc, 1, 0) : add_scalar(&L->doc, "");
    yaml_document_delete(&vdoc);
    /* The prescan bounded the nesting and the count of the text: what is left is aliases. */
    if (!id)
      return sr__seterr(SR_ERR_CONFIG, "--set %s: aliases nest deeper than %d levels or expand "
                        "to more than %d values", key, SR__MAX_DEPTH, SR__MAX_NODES);
  }
  if (!set_path(L, key, id))
    return sr__seterr(SR_ERR_NOMEM, "out of memory applying --set %s", key);
  return SR_OK;
}

/* ---- step 3: the walk ------------------------------------------------------------------------ */

static sr_status add_entry(sr__load *L, const char *dotted, int key_id, int value_id) {
  if (L->n_map == L->cap_map) {
    int cap = L->cap_map ? 2 * L->cap_map : 64;
    sr__entry *m = realloc(L->map, (size_t)cap * sizeof *m);
    if (!m) return sr__seterr(SR_ERR_NOMEM, "out of memory reading the config");
    L->map = m;
    L->cap_map = cap;
  }
  char *d = strdup(dotted);
  if (!d) return sr__seterr(SR_ERR_NOMEM, "out of memory reading the config");
  L->map[L->n_map++] = (sr__entry){d, key_id, value_id};
  return SR_OK;
}

static sr_status check_int(sr__load *L, int r, int vid, const char *dotted) {
  const cyaml_schema_value_t *v = &sr__keys[r].field.value;
  const char *text = (const char *)node(L, vid)->data.scalar.value;
  const char *s = text;
  char w[300], sh[80];
  bool neg = false;
  if (*s == '+' || *s == '-') neg = *s++ == '-';
  bool hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
  const char *d = hex ? s + 2 : s;
  bool ok = *d != '\0';
  for (const char *c = d; *c; c++)
    ok = ok && (hex ? isxdigit((unsigned char)*c) : isdigit((unsigned char)*c));
  if (!ok || (!hex && s[0] == '0' && s[1] != '\0')) {
    where_node(L, vid, w, sizeof w);
    return sr__seterr(SR_ERR_CONFIG, "%s%s: '%s' is not an integer%s", w, dotted,
                      shown(sh, sizeof sh, node(L, vid)),
                      ok ? " (leading zeros are not allowed)" : "");
  }
  errno = 0;
  bool fits;
  if (v->type == CYAML_UINT) {
    uint64_t u = neg ? 0 : strtoull(text, NULL, 0);
    fits =
        !(neg && strcmp(d, "0") != 0) && errno != ERANGE && (v->data_size == 8 || u <= UINT32_MAX);
  } else {
    int64_t i = strtoll(text, NULL, 0);
    fits = errno != ERANGE && (v->data_size == 8 || (i >= INT32_MIN && i <= INT32_MAX));
  }
  return fits ? SR_OK : range_error(L, r, vid, dotted);
}

static sr_status check_scalar(sr__load *L, int r, int vid, const char *dotted) {
  const cyaml_schema_value_t *v = &sr__keys[r].field.value;
  const char *text = (const char *)node(L, vid)->data.scalar.value;
  char w[300], sh[80];
  switch (v->type) {
  case CYAML_INT:
  case CYAML_UINT: return check_int(L, r, vid, dotted);
  case CYAML_FLOAT: {
    char *end = NULL;
    errno = 0;
    double x = v->data_size == 4 ? strtof(text, &end) : strtod(text, &end);
    if (end == text || *end != '\0') {
      where_node(L, vid, w, sizeof w);
      return sr__seterr(SR_ERR_CONFIG, "%s%s: '%s' is not a number", w, dotted,
                        shown(sh, sizeof sh, node(L, vid)));
    }
    /* Underflow to zero is fine; overflow is out of range. */
    if (errno == ERANGE && isinf(x)) return range_error(L, r, vid, dotted);
    return SR_OK;
  }
  case CYAML_BOOL: {
    static const char *const words[] = {"true", "false", "yes", "no", "on", "off"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
      if (strcasecmp(text, words[i]) == 0) return SR_OK;
    where_node(L, vid, w, sizeof w);
    return sr__seterr(SR_ERR_CONFIG, "%s%s: '%s' is not a boolean (true or false)", w, dotted,
                      shown(sh, sizeof sh, node(L, vid)));
  }
  case CYAML_STRING:
    /* A NUL would silently cut the name (C strings); libcyaml checks the length. */
    if (memchr(text, '\0', node(L, vid)->data.scalar.length)) {
      where_node(L, vid, w, sizeof w);
      return sr__seterr(SR_ERR_CONFIG, "%s%s: '%s' contains a NUL byte", w, dotted,
                        shown(sh, sizeof sh, node(L, vid)));
    }
    return SR_OK;
  default: return SR_OK; /* enums, flags: libcyaml checks them */
  }
}

/* Records every key of mapping map_id (section row `sec`, -1 = top) and checks it. */
static sr_status walk(sr__load *L, int map_id, int sec, const char *prefix) {
  yaml_node_t *m = node(L, map_id);
  for (yaml_node_pair_t *pr = m->data.mapping.pairs.start; pr < m->data.mapping.pairs.top; pr++) {
    yaml_node_t *k = node(L, pr->key), *v = node(L, pr->value);
    char w[300], dotted[160], sh[80];
    if (k->type != YAML_SCALAR_NODE) {
      where_node(L, pr->key, w, sizeof w);
      return sr__seterr(SR_ERR_CONFIG, "%s%s: a key must be a plain name, not %s", w,
                        prefix[0] ? prefix : "(top level)", shown(sh, sizeof sh, k));
    }
    snprintf(dotted, sizeof dotted, "%s%s%s", prefix, prefix[0] ? "." : "",
             shown(sh, sizeof sh, k));
    sr__entry *first = find_entry(L, dotted);
    if (first) {
      where_node(L, pr->key, w, sizeof w);
      return sr__seterr(SR_ERR_CONFIG, "%s%s: duplicate key (first at line %lu)", w, dotted,
                        (unsigned long)node(L, first->key_id)->start_mark.line + 1);
    }
    SR_TRY(add_entry(L, dotted, pr->key, pr->value));
    int r = sr__index_find(&L->ix, dotted);
    if (r < 0 || L->ix.parent[r] != sec) {
      char hint[96];
      where_node(L, pr->key, w, sizeof w);
      suggestion(&L->ix, dotted, hint, sizeof hint);
      return sr__seterr(SR_ERR_CONFIG, "%s%s: unknown key%s", w, dotted, hint);
    }
    if (sr__keys[r].field.value.type == CYAML_MAPPING) {
      if (v->type == YAML_MAPPING_NODE) SR_TRY(walk(L, pr->value, r, dotted));
    } else if (v->type == YAML_SCALAR_NODE) {
      SR_TRY(check_scalar(L, r, pr->value, dotted));
    }
  }
  return SR_OK;
}

/* ---- step 4: emit and load with libcyaml ----------------------------------------------------- */

/* 1 emitted, 0 libyaml failed (memory), -1 nested deeper than SR__MAX_DEPTH, -2 more than
 * SR__MAX_NODES nodes. */
static int emit_node(sr__load *L, yaml_emitter_t *em, int id, int depth) {
  yaml_node_t *n = node(L, id);
  yaml_event_t ev;
  if (!n) return 0;
  if (depth > SR__MAX_DEPTH) return -1;
  if (++L->emitted > SR__MAX_NODES) return -2;
  switch (n->type) {
  case YAML_SCALAR_NODE:
    if (!yaml_scalar_event_initialize(&ev, NULL, NULL, n->data.scalar.value,
                                      (int)n->data.scalar.length, 1, 1, n->data.scalar.style))
      return 0;
    return yaml_emitter_emit(em, &ev);
  case YAML_SEQUENCE_NODE:
    if (!yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_ANY_SEQUENCE_STYLE) ||
        !yaml_emitter_emit(em, &ev))
      return 0;
    for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
         it++) {
      int rc = emit_node(L, em, *it, depth + 1);
      if (rc != 1) return rc;
    }
    if (!yaml_sequence_end_event_initialize(&ev)) return 0;
    return yaml_emitter_emit(em, &ev);
  case YAML_MAPPING_NODE: {
    if (!yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_ANY_MAPPING_STYLE) ||
        !yaml_emitter_emit(em, &ev))
      return 0;
    /* The document is not modified while emitting, so node pointers stay valid. */
    for (yaml_node_pair_t *pr = n->data.mapping.pairs.start; pr < n->data.mapping.pairs.top; pr++) {
      int rc = emit_node(L, em, pr->key, depth + 1);
      if (rc == 1) rc = emit_node(L, em, pr->value, depth + 1);
      if (rc != 1) return rc;
    }
    if (!yaml_mapping_end_event_initialize(&ev)) return 0;
    return yaml_emitter_emit(em, &ev);
  }
  default: return 0;
  }
}

/* Keeps libcyaml's error lines, each cut to 200 bytes so that a long value in one line cannot
 * push the backtrace out of the buffer. */
static void log_capture(cyaml_log_t level, void *ctx, const char *fmt, va_list ap) {
  sr__load *L = ctx;
  char one[200];
  if (level < CYAML_LOG_ERROR) return;
  vsnprintf(one, sizeof one, fmt, ap);
  size_t len = strcspn(one, "\n"), room = sizeof L->log - L->log_len;
  if (len + 2 > room) return;
  memcpy(L->log + L->log_len, one, len);
  L->log_len += len;
  L->log[L->log_len++] = '\n';
  L->log[L->log_len] = '\0';
}

/* Plain malloc/free, so that strings libcyaml allocates can be freed with free(). */
static void *cyaml_plain_mem(void *ctx, void *ptr, size_t size) {
  (void)ctx;
  if (size == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, size);
}

/* The libcyaml schema assembled from sr__keys: each section's fields contiguous and
 * terminated, section rows pointing at their fields. */
typedef struct sr__schema {
  cyaml_schema_field_t fields[2 * SR__MAX_KEYS + 2];
  cyaml_schema_value_t top;
} sr__schema;

static void schema_build(sr__schema *s, const sr__index *ix) {
  int queue[SR__MAX_KEYS + 1], at[SR__MAX_KEYS], head = 0, tail = 0;
  size_t n = 0;
  queue[tail++] = -1;
  while (head < tail) {
    int sec = queue[head++];
    size_t start = n;
    for (int r = 0; r < sr__n_keys; r++) {
      if (ix->parent[r] != sec) continue;
      at[r] = (int)n;
      s->fields[n++] = sr__keys[r].field;
      if (sr__keys[r].field.value.type == CYAML_MAPPING) queue[tail++] = r;
    }
    memset(&s->fields[n++], 0, sizeof s->fields[0]); /* CYAML_FIELD_END */
    if (sec >= 0) s->fields[at[sec]].value.mapping.fields = &s->fields[start];
  }
  s->top = (cyaml_schema_value_t){CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, sr_config, s->fields)};
}

/* Turns libcyaml's captured log into "where: key: problem". The log is a problem line
 * ("Load: Invalid ENUM value: foo") then a backtrace, innermost field first
 * ("  in mapping field 'method' (line ...)"). */
static sr_status cyaml_failure(sr__load *L, cyaml_err_t err) {
  if (err == CYAML_ERR_OOM) return sr__seterr(SR_ERR_NOMEM, "out of memory reading %s", L->name);
  char problem[300] = "", fields[8][64], dotted[300] = "", w[300], sh[80], text[400];
  int nf = 0;
  for (char *line = L->log; line && *line;) {
    char *nl = strchr(line, '\n'), one[300];
    snprintf(one, sizeof one, "%.*s", (int)(nl ? (size_t)(nl - line) : strlen(line)), line);
    const char *f = strstr(one, "in mapping field '");
    if (f && nf < 8) {
      f += 18;
      const char *q = strchr(f, '\'');
      if (q) snprintf(fields[nf++], sizeof fields[0], "%.*s", (int)(q - f), f);
    } else if (!f && !problem[0] && strncmp(one, "Load: ", 6) == 0 &&
               strncmp(one, "Load: Backtrace", 15) != 0) {
      snprintf(problem, sizeof problem, "%s", one + 6);
    }
    line = nl ? nl + 1 : NULL;
  }
  for (int i = nf - 1; i >= 0; i--)
    snprintf(dotted + strlen(dotted), sizeof dotted - strlen(dotted), "%s%s",
             i == nf - 1 ? "" : ".", fields[i]);
  if (!problem[0]) snprintf(problem, sizeof problem, "%s", cyaml_strerror(err));

  const char *arg = strstr(problem, ": ");
  arg = arg ? arg + 2 : "";
  if (strncmp(problem, "Unexpected key: ", 16) == 0) {
    /* The walk rejects unknown keys first; this is the fallback. */
    snprintf(dotted + strlen(dotted), sizeof dotted - strlen(dotted), "%s%s", dotted[0] ? "." : "",
             arg);
    sr__entry *e = find_entry(L, dotted);
    if (e)
      where_node(L, e->key_id, w, sizeof w);
    else
      snprintf(w, sizeof w, "%s: ", L->name);
    return sr__seterr(SR_ERR_CONFIG, "%s%s: unknown key", w, dotted);
  }
  sr__entry *e = find_entry(L, dotted);
  int r = sr__index_find(&L->ix, dotted);
  if (!e || r < 0)
    return sr__seterr(SR_ERR_CONFIG, "%s: %s%s%s", L->name, dotted, dotted[0] ? ": " : "", problem);
  where_node(L, e->value_id, w, sizeof w);
  yaml_node_t *v = node(L, e->value_id);
  const cyaml_schema_value_t *sv = &sr__keys[r].field.value;

  if (strncmp(problem, "Expecting ", 10) == 0) {
    const char *want = sv->type == CYAML_MAPPING ? "a mapping of keys"
                       : sv->type == CYAML_FLAGS ? "a list like [a, b]"
                                                 : "a single value";
    if (v->type == YAML_SCALAR_NODE)
      snprintf(text, sizeof text, "expected %s, got '%s'", want, shown(sh, sizeof sh, v));
    else
      snprintf(text, sizeof text, "expected %s, got %s", want, shown(sh, sizeof sh, v));
  } else if (sv->type == CYAML_ENUM || sv->type == CYAML_FLAGS) {
    char names[160];
    names_list(sv, names, sizeof names);
    /* Show the value from the document (libcyaml's copy may be cut); for a flag, point at
     * the offending list entry. */
    snprintf(sh, sizeof sh, "%.60s", arg);
    if (v->type == YAML_SCALAR_NODE) shown(sh, sizeof sh, v);
    if (sv->type == CYAML_FLAGS && v->type == YAML_SEQUENCE_NODE)
      for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
           it++)
        if (scalar_is(node(L, *it), arg)) {
          where_node(L, *it, w, sizeof w);
          shown(sh, sizeof sh, node(L, *it));
          break;
        }
    snprintf(text, sizeof text, "'%s' is not one of %s", sh, names);
  } else if (strstr(problem, "length")) {
    snprintf(text, sizeof text, "longer than %u characters", (unsigned)sv->string.max);
  } else {
    snprintf(text, sizeof text, "%s", problem);
  }
  return sr__seterr(SR_ERR_CONFIG, "%s%s: %s", w, dotted, text);
}

static sr_status cyaml_read(sr__load *L, sr_config **raw) {
  sr__text t = {0};
  yaml_emitter_t em;
  int rc = sr__emit_begin(&em, &t) ? emit_node(L, &em, 1, 0) : 0;
  if (rc == 1) rc = sr__emit_end(&em);
  yaml_emitter_delete(&em);
  if (rc != 1) {
    free(t.buf);
    /* The text and every override passed the prescan's bounds: only aliases (a node used in
     * several places, or inside itself) can go past them here. */
    if (rc == -1)
      return sr__seterr(SR_ERR_CONFIG, "%s: aliases nest deeper than %d levels%s", L->name,
                        SR__MAX_DEPTH, L->aliases ? " (an alias inside its own anchor?)" : "");
    if (rc == -2)
      return sr__seterr(SR_ERR_CONFIG, "%s: more than %d values%s", L->name, SR__MAX_NODES,
                        L->aliases ? " once aliases are expanded" : "");
    return sr__seterr(SR_ERR_NOMEM, "out of memory re-emitting %s", L->name);
  }
  sr__schema schema;
  schema_build(&schema, &L->ix);
  cyaml_config_t cc = {.log_fn = log_capture,
                       .log_ctx = L,
                       .mem_fn = cyaml_plain_mem,
                       .log_level = CYAML_LOG_ERROR,
                       .flags = CYAML_CFG_DEFAULT};
  cyaml_err_t err =
      cyaml_load_data((const uint8_t *)t.buf, t.len, &cc, &schema.top, (cyaml_data_t **)raw, NULL);
  free(t.buf);
  if (err != CYAML_OK) return cyaml_failure(L, err);
  if (!*raw && !(*raw = calloc(1, sizeof **raw)))
    return sr__seterr(SR_ERR_NOMEM, "out of memory reading %s", L->name);
  return SR_OK;
}

/* ---- step 5: defaults, bounds, cross-field --------------------------------------------------- */

/* Whether a string key's value means "none": a plain ~, null (Null, NULL) or empty value, an
 * explicit !!null, or '' / "". A quoted 'null' is the file name null. */
static bool null_string(const yaml_node_t *v) {
  if (v->type != YAML_SCALAR_NODE) return true;
  const char *t = (const char *)v->data.scalar.value;
  size_t len = v->data.scalar.length;
  if (len == 0 || (v->tag && strcmp((const char *)v->tag, YAML_NULL_TAG) == 0)) return true;
  if (v->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
  return strcmp(t, "~") == 0 || strcmp(t, "null") == 0 || strcmp(t, "Null") == 0 ||
         strcmp(t, "NULL") == 0;
}

/* Moves the members the document sets from raw into cfg (which holds the defaults). Strings
 * come from the document itself (libcyaml's copy has lost the quotes: 'null' is NULL there). */
static sr_status take_present(sr__load *L, sr_config *cfg, sr_config *raw) {
  sr_status st = SR_OK;
  for (int r = 0; r < sr__n_keys; r++) {
    const cyaml_schema_value_t *v = &sr__keys[r].field.value;
    if (v->type == CYAML_MAPPING) continue;
    sr__entry *e = find_entry(L, L->ix.name[r]);
    if (v->type == CYAML_STRING) {
      char **dst = sr__string_member(cfg, &L->ix, r), **src = sr__string_member(raw, &L->ix, r);
      free(*src);
      *src = NULL;
      if (e && st == SR_OK) {
        yaml_node_t *n = node(L, e->value_id);
        free(*dst);
        *dst = NULL;
        if (!null_string(n)) {
          size_t len = n->data.scalar.length;
          if ((*dst = malloc(len + 1)) == NULL) {
            st = sr__seterr(SR_ERR_NOMEM, "out of memory reading %s", L->name);
          } else {
            memcpy(*dst, n->data.scalar.value, len);
            (*dst)[len] = '\0';
          }
        }
      }
    } else if (e) {
      memcpy((char *)cfg + L->ix.offset[r], (char *)raw + L->ix.offset[r], v->data_size);
    }
  }
  free(raw);
  return st;
}

static sr_status check_bounds(sr__load *L, const sr_config *cfg) {
  for (int r = 0; r < sr__n_keys; r++) {
    sr__entry *e = find_entry(L, L->ix.name[r]);
    if (!e || !sr__keys[r].check) continue; /* defaults are in range */
    char w[300], sh[80];
    where_node(L, e->value_id, w, sizeof w);
    SR_TRY(sr__check_row(cfg, &L->ix, r, w, shown(sh, sizeof sh, node(L, e->value_id))));
  }
  return SR_OK;
}

static sr_status load_doc(sr__load *L, sr_config *cfg, const char *yaml, size_t len,
                          const char *const *overrides, int n_overrides) {
  SR_TRY(parse_text(L, yaml, len));
  if (n_overrides > SR__MAX_OVERRIDES)
    return sr__seterr(SR_ERR_CONFIG, "--set given %d times (at most %d)", n_overrides,
                      SR__MAX_OVERRIDES);
  for (int i = 0; i < n_overrides; i++) SR_TRY(apply_override(L, overrides[i]));
  SR_TRY(walk(L, 1, -1, ""));
  L->emitted = 0;
  sr_config *raw = NULL;
  SR_TRY(cyaml_read(L, &raw));
  SR_TRY(take_present(L, cfg, raw));
  /* Vertical-Slash and FlexPrefill tile with the paper's 64 x 64 unless the blocks are given. */
  if (cfg->method == SR_METHOD_VERTICAL_SLASH || cfg->method == SR_METHOD_FLEXPREFILL) {
    if (!find_entry(L, "attention.block_q")) cfg->block_q = 64;
    if (!find_entry(L, "attention.block_k")) cfg->block_k = 64;
  }
  if (!(cfg->source_name = strdup(L->full_name)))
    return sr__seterr(SR_ERR_NOMEM, "out of memory reading %s", L->name);
  SR_TRY(check_bounds(L, cfg));
  SR_TRY(sr__check_cross(cfg, where_keys, L));
  if (cfg->input_source != SR_INPUT_HDF5) {
    free(cfg->input_path);
    cfg->input_path = NULL;
  }
  return SR_OK;
}

sr_status sr_config_load_string(sr_config *cfg, const char *yaml, size_t len, const char *name,
                                const char *const *overrides, int n_overrides) {
  if (!cfg) return sr__seterr(SR_ERR_INTERNAL, "sr_config_load_string: cfg is NULL");
  sr_config_defaults(cfg);
  if (!yaml || (n_overrides > 0 && !overrides))
    return sr__seterr(SR_ERR_INTERNAL, "sr_config_load_string: NULL text or overrides");
  sr__load *L = calloc(1, sizeof *L);
  if (!L) return sr__seterr(SR_ERR_NOMEM, "out of memory reading the config");
  L->full_name = name ? name : "<string>";
  L->name = sr__short(L->name_buf, sizeof L->name_buf, L->full_name);
  sr__index_build(&L->ix);
  sr_status s = load_doc(L, cfg, yaml, len, overrides, n_overrides);
  for (int i = 0; i < L->n_map; i++) free(L->map[i].dotted);
  free(L->map);
  if (L->have_doc) yaml_document_delete(&L->doc);
  free(L);
  if (s != SR_OK) sr_config_free(cfg);
  return s;
}

sr_status sr_config_load(sr_config *cfg, const char *path, const char *const *overrides,
                         int n_overrides) {
  if (!path)
    return sr_config_load_string(cfg, sr_demo_yaml, strlen(sr_demo_yaml), "<embedded demo>",
                                 overrides, n_overrides);
  if (!cfg) return sr__seterr(SR_ERR_INTERNAL, "sr_config_load: cfg is NULL");
  sr_config_defaults(cfg);
  char why[128], shown_path[SR__NAME_SHOWN];
  const char *sp = sr__short(shown_path, sizeof shown_path, path);
  /* Only a regular file: opening a FIFO for reading waits for a writer (forever, and every rank
   * reads the config), a directory or device is no config. stat first, so that nothing else is
   * ever opened; O_NONBLOCK and fstat after, for a file swapped in between. */
  struct stat sb;
  int fd = stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)
               ? -2
               : open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd >= 0 && (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))) {
    close(fd);
    fd = -2;
  }
  if (fd == -2)
    return sr__seterr(SR_ERR_IO, "%s: not a regular file (%s); the config must be a file every "
                      "rank can read", sp, sr__file_kind(sb.st_mode));
  FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
  if (!f) {
    int e = errno;
    if (fd >= 0) close(fd);
    if (strerror_r(e, why, sizeof why) != 0) snprintf(why, sizeof why, "error %d", e);
    return sr__seterr(SR_ERR_IO, "%s: %s", sp, why);
  }
  /* Blocking reads again (a regular file never blocks; this only undoes O_NONBLOCK). */
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  size_t len = 0, cap = 4096;
  char *buf = malloc(cap);
  sr_status s = SR_OK;
  while (buf) {
    if (len == cap) {
      if (cap >= SR__MAX_FILE_BYTES) {
        s = sr__seterr(SR_ERR_CONFIG, "%s: larger than %u MiB, not a config file", sp,
                       SR__MAX_FILE_BYTES >> 20);
        break;
      }
      char *p = realloc(buf, cap * 2);
      if (!p) {
        s = sr__seterr(SR_ERR_NOMEM, "out of memory reading %s", sp);
        break;
      }
      buf = p;
      cap *= 2;
    }
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (got == 0) {
      if (ferror(f)) {
        int e = errno;
        if (strerror_r(e, why, sizeof why) != 0) snprintf(why, sizeof why, "read error");
        s = sr__seterr(SR_ERR_IO, "%s: %s", sp, why);
      }
      break;
    }
  }
  fclose(f);
  if (!buf) s = sr__seterr(SR_ERR_NOMEM, "out of memory reading %s", sp);
  if (s == SR_OK) s = sr_config_load_string(cfg, buf, len, path, overrides, n_overrides);
  free(buf);
  return s;
}
