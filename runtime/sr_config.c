/*
 * sr_config.c — the config schema (one table of keys, types, bounds and defaults), defaults,
 * validation, the effective config as YAML, its hash and the enum names.
 *
 * The table sr__keys is the single source of truth. Each row holds a libcyaml field (key, type,
 * C member, enum table), the dotted name of the mapping it sits in, its default and its bounds.
 * sr_config_load.c assembles the libcyaml schema from these rows; sr_config_defaults,
 * sr_config_validate and sr_config_to_yaml walk the same rows. libcyaml 1.3.1 has neither
 * defaults nor numeric bounds, so those two columns are ours.
 *
 * The YAML sections `model`, `input`, `attention`, `output`, `verify` and `report` have no
 * struct of their own in sr_config: their libcyaml mapping fields sit at offset 0 with the size
 * of the whole sr_config, so the keys inside them address sr_config members directly.
 * `input.synthetic` is the one real nested struct (sr_synth_params).
 */
#define _POSIX_C_SOURCE 200809L
#define SR_CONFIG_INTERNAL
#include "sr_config.h"

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- enum names: one table each, shared by libcyaml, to_yaml and the *_name functions ---- */

static const cyaml_strval_t sr__source_names[] = {{"synthetic", SR_INPUT_SYNTHETIC},
                                                  {"hdf5", SR_INPUT_HDF5}};
static const cyaml_strval_t sr__profile_names[] = {{"plain", SR_SYNTH_PLAIN},
                                                   {"calibrated", SR_SYNTH_CALIBRATED}};
static const cyaml_strval_t sr__shard_names[] = {{"zigzag", SR_SHARD_ZIGZAG},
                                                 {"contiguous", SR_SHARD_CONTIGUOUS}};
static const cyaml_strval_t sr__phase_names[] = {{"prefill", SR_PHASE_PREFILL},
                                                 {"decode", SR_PHASE_DECODE}};
static const cyaml_strval_t sr__method_names[] = {
    {"dense", SR_METHOD_DENSE},
    {"block_sparse", SR_METHOD_BLOCK_SPARSE},
    {"vertical_slash", SR_METHOD_VERTICAL_SLASH},
    {"flexprefill", SR_METHOD_FLEXPREFILL},
    {"quest", SR_METHOD_QUEST},
    {"snapkv", SR_METHOD_SNAPKV},
    {"ada_snapkv", SR_METHOD_ADA_SNAPKV}};
static const cyaml_strval_t sr__prefill_names[] = {
    {"none", SR_PREFILL_NONE},
    {"dense", SR_METHOD_DENSE},
    {"block_sparse", SR_METHOD_BLOCK_SPARSE},
    {"vertical_slash", SR_METHOD_VERTICAL_SLASH},
    {"flexprefill", SR_METHOD_FLEXPREFILL}};
static const cyaml_strval_t sr__exchange_names[] = {{"selected", SR_EXCHANGE_SELECTED},
                                                    {"dense_ring", SR_EXCHANGE_DENSE_RING}};
static const cyaml_strval_t sr__backend_names[] = {
    {"auto", SR_BACKEND_AUTO}, {"cpu", SR_BACKEND_CPU}, {"cuda", SR_BACKEND_CUDA}};
static const cyaml_strval_t sr__write_names[] = {
    {"out", SR_WRITE_OUT}, {"lse", SR_WRITE_LSE}, {"selection", SR_WRITE_SELECTION}};

/* ---- the schema ----------------------------------------------------------------------------- */

/* clang-format off */
#define OPT CYAML_FLAG_OPTIONAL
#define ENUMF (CYAML_FLAG_OPTIONAL | CYAML_FLAG_STRICT)
#define STRF (CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER_NULL_STR)
#define SECTION(_parent, _key)                                                                     \
  .parent = _parent, .field = {                                                                    \
    .key = _key,                                                                                   \
    .data_offset = 0,                                                                              \
    .value = {.type = CYAML_MAPPING, .flags = OPT, .data_size = sizeof(sr_config)},                \
  }
#define ENUM(_parent, _key, _member, _names)                                                       \
  .parent = _parent,                                                                               \
  .field = CYAML_FIELD_ENUM(_key, ENUMF, sr_config, _member, _names, CYAML_ARRAY_LEN(_names))
#define RANGE(_lo, _hi) .check = SR__CHECK_RANGE, .lo = (_lo), .hi = (_hi)
#define SYNTH_F(_key, _member) .parent = "input.synthetic",                                       \
  .field = CYAML_FIELD_FLOAT(_key, OPT, sr_synth_params, _member)
#define SYNTH_U(_key, _member) .parent = "input.synthetic",                                       \
  .field = CYAML_FIELD_UINT(_key, OPT, sr_synth_params, _member)
#define SYNTH_E(_key, _member, _names) .parent = "input.synthetic",                               \
  .field = CYAML_FIELD_ENUM(_key, ENUMF, sr_synth_params, _member, _names, CYAML_ARRAY_LEN(_names))

#define SR__MAX_TOKENS 1099511627776.0 /* 2^40 */
#define SR__MAX_STRENGTH 1e6

/* Rows are in output order; a section row comes before the rows inside it. */
const sr__key sr__keys[] = {
    {SECTION("", "model"), .doc = "model shape"},
    {.parent = "model", .field = CYAML_FIELD_INT("q_heads", OPT, sr_config, q_heads), .def = 8,
     RANGE(1, 1024), .doc = "query heads"},
    {.parent = "model", .field = CYAML_FIELD_INT("kv_heads", OPT, sr_config, kv_heads), .def = 2,
     RANGE(1, 1024), .doc = "key/value heads (GQA); must divide model.q_heads"},
    {.parent = "model", .field = CYAML_FIELD_INT("head_dim", OPT, sr_config, head_dim), .def = 64,
     .check = SR__CHECK_RANGE | SR__CHECK_MULT8, .lo = 8, .hi = 256,
     .doc = "dimension of one head; a multiple of 8"},
    {.parent = "model", .field = CYAML_FIELD_INT("layers", OPT, sr_config, layers), .def = 1,
     RANGE(1, 4096), .doc = "attention layers to run"},

    {SECTION("", "input"), .doc = "where q, k, v come from"},
    {ENUM("input", "source", input_source, sr__source_names), .def = SR_INPUT_SYNTHETIC,
     .doc = "synthetic (generated on every rank) or hdf5 (read from input.path)"},
    {.parent = "input",
     .field = CYAML_FIELD_STRING_PTR("path", STRF, sr_config, input_path, 0, SR__MAX_PATH),
     .doc = "HDF5 input file; required when input.source is hdf5, dropped otherwise"},
    {.parent = "input", .field = CYAML_FIELD_UINT("seed", OPT, sr_config, seed), .def = 1234,
     .doc = "seed of the synthetic generator"},
    {.parent = "input", .field = CYAML_FIELD_BOOL("allow_nonfinite", OPT, sr_config, allow_nonfinite),
     .def = 0, .doc = "accept NaN or infinite values in q, k, v (refused by default)"},
    {.parent = "input", .field = CYAML_FIELD_MAPPING("synthetic", OPT, sr_config, synth, NULL),
     .doc = "structure of the synthetic input (docs/SYNTHETIC.md)"},
    {SYNTH_U("sink_tokens", sink_tokens), .def = 4, RANGE(0, 1048576),
     .doc = "keys at positions < sink_tokens attract every query"},
    {SYNTH_F("sink_strength", sink_strength), .def = 8.0, RANGE(0, SR__MAX_STRENGTH),
     .doc = "size of the sink component"},
    {SYNTH_F("locality", locality), .def = 6.0, RANGE(0, SR__MAX_STRENGTH),
     .doc = "size of the shared RoPE-rotated component (recency bias)"},
    {SYNTH_F("rope_base", rope_base), .def = 10000.0, RANGE(1, 1e9),
     .doc = "RoPE base of the locality component"},
    {SYNTH_U("heavy_hitters", heavy_hitters), .def = 4, RANGE(0, 1048576),
     .doc = "heavy-hitter key positions per kv-head (vertical lines)"},
    {SYNTH_F("heavy_strength", heavy_strength), .def = 6.0, RANGE(0, SR__MAX_STRENGTH),
     .doc = "size of the heavy-hitter component"},
    {SYNTH_U("needles", needles), .def = 4, RANGE(0, 1048576),
     .doc = "planted (query, far key) pairs per kv-head"},
    {SYNTH_F("needle_strength", needle_strength), .def = 14.0, RANGE(0, SR__MAX_STRENGTH),
     .doc = "size of the needle component"},
    {SYNTH_U("needle_span", needle_span), .def = 16, RANGE(1, 4096),
     .doc = "tokens per needle: a run of query tokens and a run of key tokens; 1 = single-token"},
    {SYNTH_F("noise", noise), .def = 1.0, RANGE(0, SR__MAX_STRENGTH),
     .doc = "standard deviation of the i.i.d. Gaussian part of q, k, v"},
    {SYNTH_E("profile", profile, sr__profile_names), .def = SR_SYNTH_CALIBRATED,
     .doc = "calibrated (head types, strengths follow the causal key count) or plain (every head alike)"},
    {SYNTH_F("sink_heads", sink_heads), .def = 0.25, RANGE(0, 1),
     .doc = "calibrated: fraction of kv-heads that are sink heads"},
    {SYNTH_F("local_heads", local_heads), .def = 0.25, RANGE(0, 1),
     .doc = "calibrated: fraction of kv-heads that are local (vertical-slash) heads; the rest retrieve"},
    {SYNTH_U("slashes", slashes), .def = 4, RANGE(0, 64),
     .doc = "calibrated: slash lines (fixed query-key offsets) per local kv-head"},
    {SYNTH_F("slash_strength", slash_strength), .def = 6.0, RANGE(0, SR__MAX_STRENGTH),
     .doc = "calibrated: strength of a slash line; its centre is slash_strength / locality of the diagonal"},
    {SYNTH_U("cluster_tokens", cluster_tokens), .def = 32, RANGE(1, 1048576),
     .doc = "calibrated: tokens per content cluster of the noise; 1 = no clusters"},
    {SYNTH_F("cluster_share", cluster_share), .def = 0.5, RANGE(0, 1),
     .doc = "calibrated: share of the noise variance common to a cluster"},

    {.parent = "", .field = CYAML_FIELD_INT("seq_len", OPT, sr_config, seq_len), .def = 16384,
     RANGE(1, SR__MAX_TOKENS), .doc = "tokens in the sequence (N)"},
    {ENUM("", "shard", shard, sr__shard_names), .def = SR_SHARD_ZIGZAG,
     .doc = "how the sequence is split over ranks (zigzag balances causal work)"},

    {SECTION("", "attention"), .doc = "the attention computed"},
    {ENUM("attention", "phase", phase, sr__phase_names), .def = SR_PHASE_PREFILL,
     .doc = "prefill (every query attends causally) or decode (new tokens on a sharded KV cache)"},
    {ENUM("attention", "method", method, sr__method_names), .def = SR_METHOD_BLOCK_SPARSE,
     .doc = "prefill: dense (exact), block_sparse, vertical_slash or flexprefill; decode: dense, quest, snapkv or ada_snapkv (docs/METHODS.md)"},
    {ENUM("attention", "prefill", prefill, sr__prefill_names), .def = SR_METHOD_DENSE,
     .doc = "decode: the prefill method computed before the first step (its budget from its own keys or sparsity), or none (the prompt's K/V only fill the cache)"},
    {.parent = "attention", .field = CYAML_FIELD_INT("block_q", OPT, sr_config, block_q),
     .def = 16, RANGE(1, 4096), .doc = "query block size in tokens (vertical_slash, flexprefill: 64 unless given)"},
    {.parent = "attention", .field = CYAML_FIELD_INT("block_k", OPT, sr_config, block_k),
     .def = 16, RANGE(1, 4096), .doc = "key block size in tokens (vertical_slash, flexprefill: 64 unless given)"},
    {.parent = "attention", .field = CYAML_FIELD_INT("top_chunks", OPT, sr_config, top_chunks),
     .def = 0, .check = SR__CHECK_RANGE | SR__CHECK_ZERO_OK, .lo = 3, .hi = 1048576,
     .doc = "key blocks kept per query block (sink + local + selected); 0 = use sparsity"},
    {.parent = "attention", .field = CYAML_FIELD_FLOAT("sparsity", OPT, sr_config, sparsity),
     .def = 0.9, .check = SR__CHECK_RANGE | SR__CHECK_HI_OPEN, .lo = 0, .hi = 1,
     .doc = "target sparsity; sets the budget when top_chunks (block_sparse), verticals (vertical_slash) or min_budget (flexprefill) is 0"},
    {.parent = "attention", .field = CYAML_FIELD_INT("last_q", OPT, sr_config, last_q),
     .def = 256, RANGE(1, 65536),
     .doc = "vertical_slash, flexprefill: W, the last queries whose attention estimates the pattern (the paper: 256, 512 for retrieval tasks)"},
    {.parent = "attention", .field = CYAML_FIELD_INT("verticals", OPT, sr_config, verticals),
     .def = 0, .check = SR__CHECK_RANGE | SR__CHECK_ZERO_OK, .lo = 4, .hi = 1 << 30,
     .doc = "vertical_slash: key columns per q-head (V, >= 4); 0 = from sparsity (the paper's Table 3)"},
    {.parent = "attention", .field = CYAML_FIELD_INT("slashes", OPT, sr_config, slashes),
     .def = 0, .check = SR__CHECK_RANGE | SR__CHECK_ZERO_OK, .lo = 64, .hi = 1 << 30,
     .doc = "vertical_slash: diagonals per q-head (S, >= 64); 0 = the same as verticals"},
    {.parent = "attention", .field = CYAML_FIELD_FLOAT("alpha", OPT, sr_config, alpha),
     .def = -1, RANGE(-1, 1),
     .doc = "flexprefill: coverage alpha in [0, 1]; -1 = from sparsity (the paper's Table 3)"},
    {.parent = "attention", .field = CYAML_FIELD_INT("min_budget", OPT, sr_config, min_budget),
     .def = 0, .check = SR__CHECK_RANGE | SR__CHECK_ZERO_OK, .lo = 64, .hi = 1 << 30,
     .doc = "flexprefill: least verticals and slashes per q-head (>= 64); 0 = from sparsity (the paper's Table 3)"},
    {.parent = "attention", .field = CYAML_FIELD_INT("token_budget", OPT, sr_config, token_budget),
     .def = 0, .check = SR__CHECK_RANGE | SR__CHECK_ZERO_OK, .lo = 16, .hi = 1 << 30,
     .doc = "quest: tokens attended per step besides the current page (a multiple of 16); 0 = (1 - sparsity) x prompt to the nearest page"},
    {.parent = "attention", .field = CYAML_FIELD_INT("token_capacity", OPT, sr_config, token_capacity),
     .def = 0, .check = SR__CHECK_RANGE | SR__CHECK_ZERO_OK, .lo = 133, .hi = 1 << 30,
     .doc = "snapkv, ada_snapkv: prompt tokens kept per kv-head (> 132); 0 = (1 - sparsity) x prompt"},
    {.parent = "attention", .field = CYAML_FIELD_BOOL("share_pages", OPT, sr_config, share_pages),
     .def = 1, .doc = "quest: one page set per kv-head, scores summed over its q-heads (false: per q-head)"},

    {SECTION("", "decode"), .doc = "the decode loop (attention.phase: decode)"},
    {.parent = "decode", .field = CYAML_FIELD_INT("steps", OPT, sr_config, decode_steps),
     .def = 16, RANGE(1, 1 << 20), .doc = "new tokens per sequence"},
    {.parent = "decode", .field = CYAML_FIELD_INT("batch", OPT, sr_config, decode_batch),
     .def = 1, RANGE(1, 1024), .doc = "sequences decoded together (each with its own prompt)"},

    {ENUM("", "exchange", exchange, sr__exchange_names), .def = SR_EXCHANGE_SELECTED,
     .doc = "selected (move only the KV blocks chosen) or dense_ring (move all)"},
    {ENUM("", "backend", backend, sr__backend_names), .def = SR_BACKEND_AUTO,
     .doc = "compute backend; auto = cuda when a GPU is usable, else cpu"},
    {.parent = "", .field = CYAML_FIELD_INT("threads", OPT, sr_config, threads), .def = 0,
     RANGE(0, 4096), .doc = "CPU threads per rank; 0 = cores / ranks on the node"},

    {SECTION("", "output"), .doc = "what is written"},
    {.parent = "output",
     .field = CYAML_FIELD_STRING_PTR("path", STRF, sr_config, out_path, 0, SR__MAX_PATH),
     .doc = "HDF5 output file; null = write nothing"},
    {.parent = "output",
     .field = CYAML_FIELD_FLAGS("write", ENUMF, sr_config, write_mask, sr__write_names,
                                CYAML_ARRAY_LEN(sr__write_names)),
     .def = SR_WRITE_OUT | SR_WRITE_LSE | SR_WRITE_SELECTION,
     .doc = "datasets written when output.path is set"},
    {.parent = "output", .field = CYAML_FIELD_BOOL("overwrite", OPT, sr_config, overwrite),
     .def = 0, .doc = "replace an existing output file"},
    {.parent = "output", .field = CYAML_FIELD_BOOL("checkpoint", OPT, sr_config, checkpoint),
     .def = 1, .doc = "durable per-layer checkpoint in <output.path>.partial.d, continued by --resume"},
    {.parent = "output", .field = CYAML_FIELD_BOOL("resume", OPT, sr_config, resume),
     .def = 0, .doc = "continue the checkpoint of an interrupted run; none found = start from layer 0"},

    {SECTION("", "verify"), .doc = "checking against exact dense attention"},
    {.parent = "verify", .field = CYAML_FIELD_INT("rows", OPT, sr_config, verify_rows), .def = 64,
     RANGE(-1, SR__MAX_TOKENS), .doc = "rows per q-head checked; 0 = off, -1 = every row"},
    {.parent = "verify", .field = CYAML_FIELD_FLOAT("max_relerr", OPT, sr_config, verify_max_relerr),
     .def = -1, RANGE(-1, SR__MAX_STRENGTH),
     .doc = "fail the run when a head's relative error exceeds this; -1 = the storage type's tolerance for dense and off for sparse methods, 0 = off"},

    {SECTION("", "report"), .doc = "what is reported"},
    {.parent = "report",
     .field = CYAML_FIELD_STRING_PTR("json", STRF, sr_config, report_json, 0, SR__MAX_PATH),
     .doc = "JSON report file; null = none"},
    {.parent = "report", .field = CYAML_FIELD_BOOL("progress", OPT, sr_config, progress),
     .def = 1, .doc = "print per-layer progress lines"},
};
/* clang-format on */
const int sr__n_keys = (int)(sizeof sr__keys / sizeof sr__keys[0]);
_Static_assert(sizeof sr__keys / sizeof sr__keys[0] <= SR__MAX_KEYS, "raise SR__MAX_KEYS");

/* ---- the index: dotted names, parents and absolute offsets of the rows ---------------------- */

void sr__index_build(sr__index *ix) {
  for (int r = 0; r < sr__n_keys; r++) {
    const sr__key *k = &sr__keys[r];
    if (k->parent[0])
      snprintf(ix->name[r], sizeof ix->name[r], "%s.%s", k->parent, k->field.key);
    else
      snprintf(ix->name[r], sizeof ix->name[r], "%s", k->field.key);
    ix->parent[r] = -1;
    ix->offset[r] = k->field.data_offset;
    if (k->parent[0]) {
      /* Parents precede their children in the table, so their offsets are final. */
      for (int p = 0; p < r; p++)
        if (strcmp(ix->name[p], k->parent) == 0) {
          ix->parent[r] = p;
          ix->offset[r] += ix->offset[p];
          break;
        }
    }
  }
}

int sr__index_find(const sr__index *ix, const char *dotted) {
  for (int r = 0; r < sr__n_keys; r++)
    if (strcmp(ix->name[r], dotted) == 0) return r;
  return -1;
}

/* ---- generic access to a row's member ------------------------------------------------------- */

static unsigned char *member(sr_config *c, const sr__index *ix, int r) {
  return (unsigned char *)c + ix->offset[r];
}
static const unsigned char *cmember(const sr_config *c, const sr__index *ix, int r) {
  return (const unsigned char *)c + ix->offset[r];
}

int64_t sr__get_int(const sr_config *c, const sr__index *ix, int r) {
  const unsigned char *p = cmember(c, ix, r);
  const cyaml_schema_value_t *v = &sr__keys[r].field.value;
  switch (v->type) {
  case CYAML_INT:
    if (v->data_size == 8) {
      int64_t x;
      memcpy(&x, p, 8);
      return x;
    } else {
      int32_t x;
      memcpy(&x, p, 4);
      return x;
    }
  case CYAML_UINT:
    if (v->data_size == 8) {
      uint64_t x;
      memcpy(&x, p, 8);
      return (int64_t)x;
    } else {
      uint32_t x;
      memcpy(&x, p, 4);
      return x;
    }
  case CYAML_BOOL: return *(const bool *)p;
  case CYAML_ENUM:
  case CYAML_FLAGS: {
    int32_t x;
    memcpy(&x, p, 4);
    return x;
  }
  default: return 0;
  }
}

double sr__get_num(const sr_config *c, const sr__index *ix, int r) {
  const cyaml_schema_value_t *v = &sr__keys[r].field.value;
  const unsigned char *p = cmember(c, ix, r);
  if (v->type == CYAML_FLOAT) {
    if (v->data_size == 8) {
      double x;
      memcpy(&x, p, 8);
      return x;
    }
    float x;
    memcpy(&x, p, 4);
    return x;
  }
  if (v->type == CYAML_UINT && v->data_size == 8) {
    uint64_t x;
    memcpy(&x, p, 8);
    return (double)x;
  }
  return (double)sr__get_int(c, ix, r);
}

/* Writes a default (always an exactly representable small number). */
static void set_num(sr_config *c, const sr__index *ix, int r, double d) {
  unsigned char *p = member(c, ix, r);
  const cyaml_schema_value_t *v = &sr__keys[r].field.value;
  switch (v->type) {
  case CYAML_INT:
  case CYAML_ENUM:
  case CYAML_FLAGS:
    if (v->data_size == 8) {
      int64_t x = (int64_t)d;
      memcpy(p, &x, 8);
    } else {
      int32_t x = (int32_t)d;
      memcpy(p, &x, 4);
    }
    break;
  case CYAML_UINT:
    if (v->data_size == 8) {
      uint64_t x = (uint64_t)d;
      memcpy(p, &x, 8);
    } else {
      uint32_t x = (uint32_t)d;
      memcpy(p, &x, 4);
    }
    break;
  case CYAML_BOOL: *(bool *)p = d != 0; break;
  case CYAML_FLOAT:
    if (v->data_size == 8) {
      memcpy(p, &d, 8);
    } else {
      float x = (float)d;
      memcpy(p, &x, 4);
    }
    break;
  default: break;
  }
}

char **sr__string_member(sr_config *c, const sr__index *ix, int r) {
  return (char **)(void *)member(c, ix, r);
}

/* ---- number formatting ---------------------------------------------------------------------- */

/* Shortest text that reads back (strtod / strtof, as libcyaml does) to the same value, with a
 * ".0" on integral values so that the YAML still reads as a float to other tools. */
void sr__format_real(char *buf, size_t n, double v, bool single) {
  if (buf == NULL || n == 0) return;
  if (isnan(v) || isinf(v)) {
    snprintf(buf, n, "%s", isnan(v) ? ".nan" : v > 0 ? ".inf" : "-.inf");
    return;
  }
  if (v == floor(v) && fabs(v) < 1e15) {
    snprintf(buf, n, "%.1f", v);
    return;
  }
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(buf, n, "%.*g", prec, v);
    if (single ? strtof(buf, NULL) == (float)v : strtod(buf, NULL) == v) break;
  }
  if (strpbrk(buf, ".eE") == NULL && strlen(buf) + 3 <= n) strcat(buf, ".0");
}

/* Bounds print as integers when they are integers ("1099511627776", not "1.09951e+12"). */
void sr__format_bound(char *buf, size_t n, double v) {
  if (v == floor(v) && fabs(v) < 1e16)
    snprintf(buf, n, "%.0f", v);
  else
    snprintf(buf, n, "%g", v);
}

/* "[lo, hi]" or "[lo, hi)" of a row. */
void sr__format_range(char *buf, size_t n, int r) {
  const sr__key *k = &sr__keys[r];
  char lo[32], hi[32];
  sr__format_bound(lo, sizeof lo, k->lo);
  sr__format_bound(hi, sizeof hi, k->hi);
  snprintf(buf, n, "[%s, %s%c", lo, hi, (k->check & SR__CHECK_HI_OPEN) ? ')' : ']');
}

/* "1.3 is outside [0, 1)" / "2 is neither 0 nor in [3, 1048576]". */
void sr__format_out_of_range(char *buf, size_t n, int r, const char *shown) {
  char range[80];
  sr__format_range(range, sizeof range, r);
  snprintf(buf, n, "%s is %s %s", shown,
           (sr__keys[r].check & SR__CHECK_ZERO_OK) ? "neither 0 nor in" : "outside", range);
}

/* ---- defaults, free, names ------------------------------------------------------------------- */

void sr_config_defaults(sr_config *cfg) {
  sr__index ix;
  sr__index_build(&ix);
  memset(cfg, 0, sizeof *cfg);
  for (int r = 0; r < sr__n_keys; r++) {
    cyaml_type_e t = sr__keys[r].field.value.type;
    if (t != CYAML_MAPPING && t != CYAML_STRING) set_num(cfg, &ix, r, sr__keys[r].def);
  }
}

void sr_config_free(sr_config *cfg) {
  if (!cfg) return;
  free(cfg->input_path);
  free(cfg->out_path);
  free(cfg->report_json);
  free(cfg->source_name);
  sr_config_defaults(cfg);
}

static const char *strval_name(const cyaml_strval_t *t, size_t n, int64_t v) {
  for (size_t i = 0; i < n; i++)
    if (t[i].val == v) return t[i].str;
  return "?";
}
const char *sr_method_name(sr_method m) {
  return strval_name(sr__method_names, CYAML_ARRAY_LEN(sr__method_names), m);
}
const char *sr_exchange_name(sr_exchange_mode e) {
  return strval_name(sr__exchange_names, CYAML_ARRAY_LEN(sr__exchange_names), e);
}
const char *sr_shard_name(sr_shard_scheme s) {
  return strval_name(sr__shard_names, CYAML_ARRAY_LEN(sr__shard_names), s);
}

/* ---- validation ----------------------------------------------------------------------------- */

/* Bounds of one row. `shown` is the value as the user wrote it (NULL: format the member). */
sr_status sr__check_row(const sr_config *c, const sr__index *ix, int r, const char *where,
                        const char *shown) {
  const sr__key *k = &sr__keys[r];
  if (!k->check) return SR_OK;
  double v = sr__get_num(c, ix, r);
  char text[48], problem[160];
  if (!shown) {
    if (k->field.value.type == CYAML_FLOAT)
      sr__format_real(text, sizeof text, v, k->field.value.data_size == 4);
    else
      snprintf(text, sizeof text, "%" PRId64, sr__get_int(c, ix, r));
    shown = text;
  }
  bool in = v >= k->lo && ((k->check & SR__CHECK_HI_OPEN) ? v < k->hi : v <= k->hi);
  if ((k->check & SR__CHECK_ZERO_OK) && v == 0) in = true;
  if (!in) {
    sr__format_out_of_range(problem, sizeof problem, r, shown);
    return sr__seterr(SR_ERR_CONFIG, "%s%s: %s", where, ix->name[r], problem);
  }
  if ((k->check & SR__CHECK_MULT8) && sr__get_int(c, ix, r) % 8 != 0)
    return sr__seterr(SR_ERR_CONFIG, "%s%s: %s is not a multiple of 8", where, ix->name[r], shown);
  return SR_OK;
}

/* Cross-field rules. where(ctx, keys...) names the place of the first key the user wrote. */
sr_status sr__check_cross(const sr_config *c, sr__where_fn where, void *ctx) {
  char w[512];
  if (c->kv_heads >= 1 && c->q_heads % c->kv_heads != 0) {
    where(ctx, w, sizeof w, "model.kv_heads", "model.q_heads");
    return sr__seterr(SR_ERR_CONFIG, "%smodel.kv_heads: %d does not divide model.q_heads (%d)", w,
                      c->kv_heads, c->q_heads);
  }
  if (c->input_source == SR_INPUT_HDF5 && c->input_path == NULL) {
    where(ctx, w, sizeof w, "input.path", "input.source");
    return sr__seterr(SR_ERR_CONFIG, "%sinput.path: required when input.source is hdf5", w);
  }
  /* Dense attention ignores top_chunks and sparsity; Block-Sparse needs one of them. */
  if (c->method == SR_METHOD_BLOCK_SPARSE && c->top_chunks == 0 && c->sparsity == 0) {
    where(ctx, w, sizeof w, "attention.sparsity", "attention.top_chunks");
    return sr__seterr(SR_ERR_CONFIG,
                      "%sattention.sparsity: block_sparse needs attention.top_chunks >= 3 or "
                      "attention.sparsity > 0 (use method dense for exact attention)",
                      w);
  }
  if (c->method == SR_METHOD_VERTICAL_SLASH && c->verticals == 0 && c->sparsity == 0) {
    where(ctx, w, sizeof w, "attention.sparsity", "attention.verticals");
    return sr__seterr(SR_ERR_CONFIG,
                      "%sattention.sparsity: vertical_slash needs attention.verticals >= 4 or "
                      "attention.sparsity > 0 (use method dense for exact attention)",
                      w);
  }
  if (c->method == SR_METHOD_FLEXPREFILL && (c->alpha < 0 || c->min_budget == 0) &&
      c->sparsity == 0) {
    where(ctx, w, sizeof w, "attention.sparsity", "attention.alpha");
    return sr__seterr(SR_ERR_CONFIG,
                      "%sattention.sparsity: flexprefill needs attention.alpha in [0, 1] and "
                      "attention.min_budget >= 64, or attention.sparsity > 0",
                      w);
  }
  /* Phase and method belong together. */
  const bool decode_method = c->method == SR_METHOD_QUEST || c->method == SR_METHOD_SNAPKV ||
                             c->method == SR_METHOD_ADA_SNAPKV;
  if (c->phase == SR_PHASE_PREFILL && decode_method) {
    where(ctx, w, sizeof w, "attention.method", "attention.phase");
    return sr__seterr(SR_ERR_CONFIG, "%sattention.method: %s is a decode method (set "
                      "attention.phase: decode)", w, sr_method_name(c->method));
  }
  if (c->phase == SR_PHASE_DECODE && !decode_method && c->method != SR_METHOD_DENSE) {
    where(ctx, w, sizeof w, "attention.method", "attention.phase");
    return sr__seterr(SR_ERR_CONFIG, "%sattention.method: %s is a prefill method; decode runs "
                      "dense, quest, snapkv or ada_snapkv (attention.prefill names the prefill "
                      "method)", w, sr_method_name(c->method));
  }
  if (c->phase == SR_PHASE_DECODE) {
    if (c->seq_len % 16 != 0) {
      where(ctx, w, sizeof w, "seq_len", "attention.phase");
      return sr__seterr(SR_ERR_CONFIG, "%sseq_len: %lld is not a multiple of 16 (decode keeps "
                        "the cache in pages of 16 tokens)", w, (long long)c->seq_len);
    }
    if (c->method == SR_METHOD_QUEST) {
      if (c->token_budget == 0 && c->sparsity == 0) {
        where(ctx, w, sizeof w, "attention.sparsity", "attention.token_budget");
        return sr__seterr(SR_ERR_CONFIG, "%sattention.sparsity: quest needs "
                          "attention.token_budget or attention.sparsity > 0", w);
      }
      if (c->token_budget % 16 != 0) {
        where(ctx, w, sizeof w, "attention.token_budget", NULL);
        return sr__seterr(SR_ERR_CONFIG, "%sattention.token_budget: %d is not a multiple of 16 "
                          "(whole pages)", w, c->token_budget);
      }
      /* sr_decode_quest_budget's rule (runtime/decode/decode_rules.c) */
      const int64_t budget =
          c->token_budget
              ? c->token_budget
              : (int64_t)floor(floor((1.0 - c->sparsity) * (double)c->seq_len + 1e-6) / 16 + 0.5) *
                    16;
      if (budget < 16 || budget + 16 > c->seq_len) {
        where(ctx, w, sizeof w, c->token_budget ? "attention.token_budget" : "attention.sparsity",
              "seq_len");
        return sr__seterr(SR_ERR_CONFIG, "%s%s: quest's budget of %lld tokens needs 16 <= budget "
                          "<= seq_len - 16 (seq_len %lld)", w,
                          c->token_budget ? "attention.token_budget" : "attention.sparsity",
                          (long long)budget, (long long)c->seq_len);
      }
    }
    if (c->method == SR_METHOD_SNAPKV || c->method == SR_METHOD_ADA_SNAPKV) {
      if (c->token_capacity == 0 && c->sparsity == 0) {
        where(ctx, w, sizeof w, "attention.sparsity", "attention.token_capacity");
        return sr__seterr(SR_ERR_CONFIG, "%sattention.sparsity: %s needs "
                          "attention.token_capacity or attention.sparsity > 0", w,
                          sr_method_name(c->method));
      }
      const int64_t cap = c->token_capacity
                              ? (c->token_capacity < c->seq_len ? c->token_capacity : c->seq_len)
                              : (int64_t)floor((1.0 - c->sparsity) * (double)c->seq_len + 1e-6);
      if (cap <= 132) {
        where(ctx, w, sizeof w, c->token_capacity ? "attention.token_capacity" : "attention.sparsity",
              "seq_len");
        return sr__seterr(SR_ERR_CONFIG, "%s%s: %s's capacity of %lld tokens must exceed 132 "
                          "(the 4 sink and 128 local tokens it always keeps)", w,
                          c->token_capacity ? "attention.token_capacity" : "attention.sparsity",
                          sr_method_name(c->method), (long long)cap);
      }
    }
    if (c->input_source == SR_INPUT_HDF5 && c->decode_batch > 1) {
      where(ctx, w, sizeof w, "decode.batch", "input.source");
      return sr__seterr(SR_ERR_CONFIG, "%sdecode.batch: an HDF5 input holds one sequence "
                        "(batch 1); synthetic input decodes any batch", w);
    }
  }
  if (c->out_path != NULL && c->write_mask == 0) {
    where(ctx, w, sizeof w, "output.write", "output.path");
    return sr__seterr(SR_ERR_CONFIG, "%soutput.write: empty, but output.path is set", w);
  }
  /* Resuming needs something to resume: an output and its checkpoint. */
  if (c->resume && c->out_path == NULL) {
    where(ctx, w, sizeof w, "output.resume", "output.path");
    return sr__seterr(SR_ERR_CONFIG, "%soutput.resume: needs output.path (the checkpoint is "
                      "<output.path>.partial.d)", w);
  }
  if (c->resume && !c->checkpoint) {
    where(ctx, w, sizeof w, "output.resume", "output.checkpoint");
    return sr__seterr(SR_ERR_CONFIG, "%soutput.resume: needs output.checkpoint: true", w);
  }
  return SR_OK;
}

static void where_nowhere(void *ctx, char *buf, size_t n, const char *k1, const char *k2) {
  (void)ctx, (void)k1, (void)k2;
  if (n) buf[0] = '\0';
}

sr_status sr_config_validate(const sr_config *cfg) {
  if (!cfg) return sr__seterr(SR_ERR_INTERNAL, "sr_config_validate: cfg is NULL");
  sr__index ix;
  sr__index_build(&ix);
  for (int r = 0; r < sr__n_keys; r++) SR_TRY(sr__check_row(cfg, &ix, r, "", NULL));
  unsigned all = SR_WRITE_OUT | SR_WRITE_LSE | SR_WRITE_SELECTION;
  if (cfg->write_mask & ~all)
    return sr__seterr(SR_ERR_CONFIG, "output.write: unknown bits 0x%x", cfg->write_mask & ~all);
  return sr__check_cross(cfg, where_nowhere, NULL);
}

/* ---- the effective config as YAML ------------------------------------------------------------ */

static int emit_scalar(yaml_emitter_t *em, const char *s, yaml_scalar_style_t style) {
  yaml_event_t ev;
  if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)strlen(s), 1, 1, style))
    return 0;
  return yaml_emitter_emit(em, &ev);
}

static int emit_value(yaml_emitter_t *em, const sr_config *c, const sr__index *ix, int r) {
  const cyaml_schema_value_t *v = &sr__keys[r].field.value;
  char buf[64];
  switch (v->type) {
  case CYAML_INT: snprintf(buf, sizeof buf, "%" PRId64, sr__get_int(c, ix, r)); break;
  case CYAML_UINT: {
    uint64_t u = v->data_size == 8 ? (uint64_t)sr__get_int(c, ix, r)
                                   : (uint64_t)(uint32_t)sr__get_int(c, ix, r);
    snprintf(buf, sizeof buf, "%" PRIu64, u);
    break;
  }
  case CYAML_FLOAT:
    sr__format_real(buf, sizeof buf, sr__get_num(c, ix, r), v->data_size == 4);
    break;
  case CYAML_BOOL: snprintf(buf, sizeof buf, "%s", sr__get_int(c, ix, r) ? "true" : "false"); break;
  case CYAML_ENUM:
    return emit_scalar(
        em, strval_name(v->enumeration.strings, v->enumeration.count, sr__get_int(c, ix, r)),
        YAML_PLAIN_SCALAR_STYLE);
  case CYAML_STRING: {
    const char *s = *(char *const *)(const void *)cmember(c, ix, r);
    /* null is written as ~; a string is quoted, so that no YAML reader takes "yes" or "12"
     * for a boolean or a number. */
    return s ? emit_scalar(em, s, YAML_SINGLE_QUOTED_SCALAR_STYLE)
             : emit_scalar(em, "~", YAML_PLAIN_SCALAR_STYLE);
  }
  case CYAML_FLAGS: {
    yaml_event_t ev;
    int64_t mask = sr__get_int(c, ix, r);
    if (!yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_FLOW_SEQUENCE_STYLE) ||
        !yaml_emitter_emit(em, &ev))
      return 0;
    for (uint32_t i = 0; i < v->enumeration.count; i++)
      if (mask & v->enumeration.strings[i].val &&
          !emit_scalar(em, v->enumeration.strings[i].str, YAML_PLAIN_SCALAR_STYLE))
        return 0;
    if (!yaml_sequence_end_event_initialize(&ev)) return 0;
    return yaml_emitter_emit(em, &ev);
  }
  default: return 0;
  }
  return emit_scalar(em, buf, YAML_PLAIN_SCALAR_STYLE);
}

static int emit_section(yaml_emitter_t *em, const sr_config *c, const sr__index *ix, int sec) {
  yaml_event_t ev;
  if (!yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE) ||
      !yaml_emitter_emit(em, &ev))
    return 0;
  for (int r = 0; r < sr__n_keys; r++) {
    if (ix->parent[r] != sec) continue;
    if (!emit_scalar(em, sr__keys[r].field.key, YAML_PLAIN_SCALAR_STYLE)) return 0;
    int ok = sr__keys[r].field.value.type == CYAML_MAPPING ? emit_section(em, c, ix, r)
                                                           : emit_value(em, c, ix, r);
    if (!ok) return 0;
  }
  if (!yaml_mapping_end_event_initialize(&ev)) return 0;
  return yaml_emitter_emit(em, &ev);
}

int sr__text_write(void *data, unsigned char *bytes, size_t size) {
  sr__text *t = data;
  if (t->len + size + 1 > t->cap) {
    size_t cap = t->cap ? t->cap : 1024;
    while (cap < t->len + size + 1) cap *= 2;
    char *p = realloc(t->buf, cap);
    if (!p) return 0;
    t->buf = p;
    t->cap = cap;
  }
  memcpy(t->buf + t->len, bytes, size);
  t->len += size;
  t->buf[t->len] = '\0';
  return 1;
}

/* Opens an emitter writing into *t: UTF-8, no line folding, an implicit document. */
int sr__emit_begin(yaml_emitter_t *em, sr__text *t) {
  yaml_event_t ev;
  if (!yaml_emitter_initialize(em)) return 0;
  yaml_emitter_set_output(em, sr__text_write, t);
  yaml_emitter_set_unicode(em, 1);
  yaml_emitter_set_width(em, -1);
  if (!yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING) || !yaml_emitter_emit(em, &ev))
    return 0;
  if (!yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1)) return 0;
  return yaml_emitter_emit(em, &ev);
}

int sr__emit_end(yaml_emitter_t *em) {
  yaml_event_t ev;
  if (!yaml_document_end_event_initialize(&ev, 1) || !yaml_emitter_emit(em, &ev)) return 0;
  if (!yaml_stream_end_event_initialize(&ev) || !yaml_emitter_emit(em, &ev)) return 0;
  return yaml_emitter_flush(em);
}

char *sr_config_to_yaml(const sr_config *cfg) {
  if (!cfg) return NULL;
  sr__index ix;
  sr__index_build(&ix);
  sr__text t = {0};
  yaml_emitter_t em;
  int ok = sr__emit_begin(&em, &t) && emit_section(&em, cfg, &ix, -1) && sr__emit_end(&em);
  yaml_emitter_delete(&em);
  if (!ok) {
    free(t.buf);
    sr__seterr(SR_ERR_NOMEM, "out of memory writing the config as YAML");
    return NULL;
  }
  return t.buf;
}

static uint64_t fnv1a(const char *text) {
  uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a 64 */
  for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
    h ^= *p;
    h *= 0x100000001b3ull;
  }
  return h;
}

uint64_t sr_config_hash(const sr_config *cfg) {
  char *text = sr_config_to_yaml(cfg);
  if (!text) return 0;
  uint64_t h = fnv1a(text);
  free(text);
  return h;
}

/* The keys that never change a dataset, metric or selection: how many threads compute it, where
 * files are, whether an old file may be replaced, whether a checkpoint is kept or continued,
 * and what is reported on the side. input.path is here because a moved input file is the same
 * input; its content is fingerprinted by the checkpoint instead (sr_h5_in_fingerprint). */
char *sr_config_result_yaml(const sr_config *cfg) {
  if (!cfg) return NULL;
  sr_config c = *cfg; /* shallow: the strings below are only cleared, never freed */
  sr_config d;
  sr_config_defaults(&d);
  c.threads = d.threads;
  c.input_path = NULL;
  c.out_path = NULL;
  c.overwrite = d.overwrite;
  c.checkpoint = d.checkpoint;
  c.resume = d.resume;
  c.report_json = NULL;
  c.progress = d.progress;
  c.source_name = NULL;
  return sr_config_to_yaml(&c);
}

uint64_t sr_config_result_hash(const sr_config *cfg) {
  char *text = sr_config_result_yaml(cfg);
  if (!text) return 0;
  uint64_t h = fnv1a(text);
  free(text);
  return h;
}
