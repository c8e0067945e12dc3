/*
 * sr_config.h — the run configuration: one struct, filled from YAML by libcyaml (whose schema
 * in sr_config.c is the one table of keys, types, bounds and defaults), then `--set key=value`
 * overrides, then validation. Every rank parses the same file, so every rank reaches the same
 * verdict without communication.
 *
 * YAML layout (dotted names are what --set takes):
 *   model.q_heads, model.kv_heads, model.head_dim, model.layers
 *   input.source (synthetic | hdf5), input.path, input.seed,
 *   input.synthetic.{sink_tokens, sink_strength, locality, rope_base, heavy_hitters,
 *                    heavy_strength, needles, needle_strength, needle_span,
 *                    noise, profile, sink_heads, local_heads, slashes, slash_strength,
 *                    cluster_tokens, cluster_share}
 *   seq_len
 *   shard (zigzag | contiguous)
 *   attention.phase (prefill | decode),
 *   attention.method (dense | block_sparse | vertical_slash | flexprefill; decode: dense |
 *                     quest | snapkv | ada_snapkv), attention.prefill,
 *   attention.token_budget, attention.token_capacity, attention.share_pages,
 *   decode.steps, decode.batch,
 *   attention.block_q, attention.block_k, attention.top_chunks, attention.sparsity,
 *   attention.last_q, attention.verticals, attention.slashes, attention.alpha,
 *   attention.min_budget
 *   exchange (selected | dense_ring)
 *   backend (auto | cpu | cuda), threads
 *   output.path, output.write (list of out | lse | selection), output.overwrite,
 *   output.checkpoint, output.resume
 *   verify.rows (0 = off, -1 = all rows), report.json, report.progress
 */
#ifndef SR_CONFIG_H
#define SR_CONFIG_H

#include "sparsering.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum { SR_INPUT_SYNTHETIC = 0, SR_INPUT_HDF5 = 1 } sr_input_source;
typedef enum { SR_SHARD_ZIGZAG = 0, SR_SHARD_CONTIGUOUS = 1 } sr_shard_scheme;
typedef enum { SR_PHASE_PREFILL = 0, SR_PHASE_DECODE = 1 } sr_phase;
typedef enum {
  SR_METHOD_DENSE = 0,
  SR_METHOD_BLOCK_SPARSE = 1,
  SR_METHOD_VERTICAL_SLASH = 2,
  SR_METHOD_FLEXPREFILL = 3,
  SR_METHOD_QUEST = 4,      /* decode */
  SR_METHOD_SNAPKV = 5,     /* decode */
  SR_METHOD_ADA_SNAPKV = 6  /* decode */
} sr_method;
/* attention.prefill of a decode run: a prefill method, or none (the prompt's K/V are loaded
 * into the cache without computing its attention). */
#define SR_PREFILL_NONE 100
typedef enum { SR_EXCHANGE_SELECTED = 0, SR_EXCHANGE_DENSE_RING = 1 } sr_exchange_mode;
typedef enum { SR_BACKEND_AUTO = 0, SR_BACKEND_CPU = 1, SR_BACKEND_CUDA = 2 } sr_backend_kind;

/* Bit flags for output.write. */
enum { SR_WRITE_OUT = 1u << 0, SR_WRITE_LSE = 1u << 1, SR_WRITE_SELECTION = 1u << 2 };

/* input.synthetic.profile. 0 (what a config zeroed in code holds) is the plain generator. */
typedef enum { SR_SYNTH_PLAIN = 0, SR_SYNTH_CALIBRATED = 1 } sr_synth_profile;

typedef struct sr_synth_params {
  uint32_t sink_tokens;    /* keys at positions < sink_tokens attract every query       */
  float sink_strength;     /* size of the sink component                                 */
  float locality;          /* size of the shared rotated component (recency bias)        */
  float rope_base;         /* RoPE base (10000 in Llama/Qwen)                            */
  uint32_t heavy_hitters;  /* heavy-hitter key positions per kv-head (verticals)         */
  float heavy_strength;
  uint32_t needles;        /* planted (query span, far key span) pairs per kv-head       */
  float needle_strength;   /* logit of each (query token, key token) pair of a needle    */
  uint32_t needle_span;    /* tokens per needle side (1 = single-token needles)          */
  float noise;             /* size of the i.i.d. Gaussian part of q, k, v                */
  /* calibrated profile (docs/SYNTHETIC.md): kv-heads of three types, strengths that follow
   * the causal key count so that the attention curve does not depend on N */
  sr_synth_profile profile; /* plain: every head alike, strengths as given                */
  float sink_heads;        /* fraction of kv-heads that are sink heads                    */
  float local_heads;       /* fraction of kv-heads that are local (vertical-slash) heads  */
  uint32_t slashes;        /* slash lines (fixed query-key offsets) per local kv-head      */
  float slash_strength;    /* logit of a slash line's centre                               */
  uint32_t cluster_tokens; /* tokens per content cluster of the noise (1 = none)           */
  float cluster_share;     /* share of the noise variance common to a cluster              */
} sr_synth_params;

typedef struct sr_config {
  /* model */
  int q_heads, kv_heads, head_dim, layers;
  /* input */
  sr_input_source input_source;
  char *input_path;        /* owned; NULL unless source = hdf5 */
  uint64_t seed;
  bool allow_nonfinite;    /* accept NaN/Inf in q, k, v                                  */
  sr_synth_params synth;
  /* geometry */
  int64_t seq_len;
  sr_shard_scheme shard;
  /* attention */
  sr_phase phase;
  sr_method method;
  int block_q, block_k;
  int top_chunks;          /* > 0: budget in key blocks per query block (>= 3)           */
  double sparsity;         /* used when top_chunks == 0: target sparsity in [0, 1)       */
  int last_q;              /* W: window of last queries (vertical_slash, flexprefill)    */
  int verticals, slashes;  /* V, S (vertical_slash); 0 = from sparsity / = verticals     */
  double alpha;            /* flexprefill coverage; -1 = from sparsity                   */
  int min_budget;          /* flexprefill floor of V and S; 0 = from sparsity            */
  /* decode (attention.phase: decode) */
  int prefill;             /* prefill method before decoding, or SR_PREFILL_NONE          */
  int token_budget;        /* quest: tokens attended per step (multiple of 16); 0 = sparsity */
  int token_capacity;      /* snapkv, ada_snapkv: tokens kept per kv-head; 0 = sparsity   */
  bool share_pages;        /* quest: one page set per kv-head (else per q-head)           */
  int decode_steps;        /* tokens generated per sequence                               */
  int decode_batch;        /* sequences decoded together                                  */
  sr_exchange_mode exchange;
  sr_backend_kind backend;
  int threads;             /* CPU threads per rank; 0 = cores / ranks on the node        */
  /* output */
  char *out_path;          /* owned; NULL = no HDF5 output */
  unsigned write_mask;     /* SR_WRITE_* */
  bool overwrite;
  bool checkpoint;         /* durable per-layer checkpoint in <path>.partial.d (CHECKPOINT.md) */
  bool resume;             /* continue the checkpoint of an interrupted run                */
  /* verify */
  int64_t verify_rows;     /* 0 off, -1 every row, else sampled rows per q-head          */
  double verify_max_relerr; /* > 0 limit per head; 0 off; -1 auto (dense: dtype tolerance) */
  /* report */
  char *report_json;       /* owned; NULL = no JSON file */
  bool progress;           /* print per-layer progress lines */
  /* where the YAML came from ("<embedded demo>" or a path), for messages */
  char *source_name;       /* owned */
} sr_config;

/* Fills *cfg with the schema defaults (every field valid; strings NULL). *cfg is treated as
 * uninitialised: nothing it held is freed. */
void sr_config_defaults(sr_config *cfg);

/* Loads a config: YAML from `path` (NULL = the embedded demo config), then the overrides
 * ("dotted.key=value", value parsed as a YAML scalar or flow sequence) in order, then the
 * schema checks (types, bounds, unknown keys) and the cross-field checks of
 * sr_config_validate. Keys the YAML leaves out take the schema defaults. Messages name
 * "file:line: key: problem" or "--set key: problem". A missing or unreadable file is
 * SR_ERR_IO; everything else that is wrong with the text is SR_ERR_CONFIG. *cfg is treated as
 * uninitialised (call sr_config_free before reusing a loaded one); the caller frees the result
 * with sr_config_free. On failure *cfg holds the defaults. input.path is dropped (NULL) unless
 * input.source is hdf5. */
sr_status sr_config_load(sr_config *cfg, const char *path, const char *const *overrides,
                         int n_overrides);
/* Same, from text in memory; `name` stands for the file name in messages. */
sr_status sr_config_load_string(sr_config *cfg, const char *yaml, size_t len, const char *name,
                                const char *const *overrides, int n_overrides);
/* The schema bounds of every key, then the cross-field checks (kv_heads divides q_heads,
 * input.path set when input.source is hdf5, block_sparse has top_chunks >= 3 or sparsity > 0,
 * output.write not empty when output.path is set), for configs built in code; not including
 * the rank-count-dependent geometry (sr_plan checks that). Messages are "key: problem". */
sr_status sr_config_validate(const sr_config *cfg);
/* Frees the owned strings and resets to defaults. */
void sr_config_free(sr_config *cfg);

/* The effective config as YAML text (malloc'd, caller frees; NULL if out of memory): every
 * key, defaults included, in schema order; loading it gives back an equal config. Printed by
 * rank 0 and stored as an HDF5 attribute. source_name is not part of it. */
char *sr_config_to_yaml(const sr_config *cfg);
/* Stable 64-bit hash of the effective config (FNV-1a over sr_config_to_yaml). */
uint64_t sr_config_hash(const sr_config *cfg);
/* The result-affecting part of the config as YAML (malloc'd; NULL if out of memory): the
 * effective config with the keys that cannot change a result reset to their defaults —
 * threads, input.path (the input's content is fingerprinted instead), output.path,
 * output.overwrite, output.checkpoint, output.resume, report.json, report.progress. Two
 * configs with the same text compute bit-identical datasets (docs/CHECKPOINT.md). */
char *sr_config_result_yaml(const sr_config *cfg);
/* FNV-1a 64 over sr_config_result_yaml; 0 if out of memory. */
uint64_t sr_config_result_hash(const sr_config *cfg);

/* Names as written in the YAML ("block_sparse", "dense_ring", "zigzag"); "?" if out of range. */
const char *sr_method_name(sr_method m);
const char *sr_exchange_name(sr_exchange_mode e);
const char *sr_shard_name(sr_shard_scheme s);

/* The embedded demo config (configs/demo.yaml compiled in). */
extern const char sr_demo_yaml[];

#ifdef SR_CONFIG_INTERNAL
/* Shared by runtime/sr_config*.c only (they define SR_CONFIG_INTERNAL): the schema table and
 * its helpers. Nothing else may rely on these. */
#include "sr_internal.h"

#include <cyaml/cyaml.h>
#include <yaml.h>

/* Bounds checks of a row, beyond libcyaml's own (types, enum names, string lengths). */
enum {
  SR__CHECK_RANGE = 1u << 0,   /* lo <= v <= hi                                             */
  SR__CHECK_HI_OPEN = 1u << 1, /* ... but v < hi                                            */
  SR__CHECK_ZERO_OK = 1u << 2, /* ... or v == 0                                             */
  SR__CHECK_MULT8 = 1u << 3,   /* ... and a multiple of 8                                   */
};
#define SR__MAX_PATH 4095 /* longest path string accepted (libcyaml string max) */
#define SR__MAX_KEYS 96

/* One row of the schema: a key, its libcyaml field, default and bounds. */
typedef struct sr__key {
  const char *parent;         /* dotted name of the enclosing mapping; "" = top level        */
  cyaml_schema_field_t field; /* key, type, member offset within the enclosing struct        */
  double def;                 /* default (enum value, flag mask, 0/1); strings default NULL  */
  unsigned check;             /* SR__CHECK_*                                                 */
  double lo, hi;
  const char *doc;            /* one-line meaning (docs/CONFIG.md says the same)             */
} sr__key;
extern const sr__key sr__keys[];
extern const int sr__n_keys;

/* Derived per row: dotted name, index of the enclosing section row (-1 = top), offset of the
 * member within sr_config. */
typedef struct sr__index {
  char name[SR__MAX_KEYS][48];
  int parent[SR__MAX_KEYS];
  size_t offset[SR__MAX_KEYS];
} sr__index;
void sr__index_build(sr__index *ix);
int sr__index_find(const sr__index *ix, const char *dotted);

int64_t sr__get_int(const sr_config *c, const sr__index *ix, int r);
double sr__get_num(const sr_config *c, const sr__index *ix, int r);
char **sr__string_member(sr_config *c, const sr__index *ix, int r);
void sr__format_real(char *buf, size_t n, double v, bool single);
void sr__format_bound(char *buf, size_t n, double v);
void sr__format_range(char *buf, size_t n, int r);
void sr__format_out_of_range(char *buf, size_t n, int r, const char *shown);

/* Writes into buf the "file:line: " / "--set " prefix of the first of two keys present. */
typedef void (*sr__where_fn)(void *ctx, char *buf, size_t n, const char *key1, const char *key2);
sr_status sr__check_row(const sr_config *c, const sr__index *ix, int r, const char *where,
                        const char *shown);
sr_status sr__check_cross(const sr_config *c, sr__where_fn where, void *ctx);

/* A growing text buffer, and a libyaml emitter writing into one. */
typedef struct sr__text {
  char *buf;
  size_t len, cap;
} sr__text;
int sr__text_write(void *data, unsigned char *bytes, size_t size);
int sr__emit_begin(yaml_emitter_t *em, sr__text *t);
int sr__emit_end(yaml_emitter_t *em);
#endif /* SR_CONFIG_INTERNAL */

#endif
