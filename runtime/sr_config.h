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
 *                    heavy_strength, needles, needle_strength, noise}
 *   seq_len
 *   shard (zigzag | contiguous)
 *   attention.phase (prefill), attention.method (dense | block_sparse),
 *   attention.block_q, attention.block_k, attention.top_chunks, attention.sparsity
 *   exchange (selected | dense_ring)
 *   backend (auto | cpu), threads
 *   output.path, output.write (list of out | lse | selection), output.overwrite
 *   verify.rows (0 = off, -1 = all rows), report.json, report.progress
 */
#ifndef SR_CONFIG_H
#define SR_CONFIG_H

#include "sparsering.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum { SR_INPUT_SYNTHETIC = 0, SR_INPUT_HDF5 = 1 } sr_input_source;
typedef enum { SR_SHARD_ZIGZAG = 0, SR_SHARD_CONTIGUOUS = 1 } sr_shard_scheme;
typedef enum { SR_PHASE_PREFILL = 0 } sr_phase;
typedef enum { SR_METHOD_DENSE = 0, SR_METHOD_BLOCK_SPARSE = 1 } sr_method;
typedef enum { SR_EXCHANGE_SELECTED = 0, SR_EXCHANGE_DENSE_RING = 1 } sr_exchange_mode;
typedef enum { SR_BACKEND_AUTO = 0, SR_BACKEND_CPU = 1 } sr_backend_kind;

/* Bit flags for output.write. */
enum { SR_WRITE_OUT = 1u << 0, SR_WRITE_LSE = 1u << 1, SR_WRITE_SELECTION = 1u << 2 };

typedef struct sr_synth_params {
  uint32_t sink_tokens;    /* keys at positions < sink_tokens attract every query       */
  float sink_strength;     /* size of the sink component                                 */
  float locality;          /* size of the shared rotated component (recency bias)        */
  float rope_base;         /* RoPE base (10000 in Llama/Qwen)                            */
  uint32_t heavy_hitters;  /* heavy-hitter key positions per kv-head (verticals)         */
  float heavy_strength;
  uint32_t needles;        /* planted (query, far key) pairs per kv-head                 */
  float needle_strength;
  float noise;             /* size of the i.i.d. Gaussian part of q, k, v                */
} sr_synth_params;

typedef struct sr_config {
  /* model */
  int q_heads, kv_heads, head_dim, layers;
  /* input */
  sr_input_source input_source;
  char *input_path;        /* owned; NULL unless source = hdf5 */
  uint64_t seed;
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
  sr_exchange_mode exchange;
  sr_backend_kind backend;
  int threads;             /* CPU threads per rank; 0 = cores / ranks on the node        */
  /* output */
  char *out_path;          /* owned; NULL = no HDF5 output */
  unsigned write_mask;     /* SR_WRITE_* */
  bool overwrite;
  /* verify */
  int64_t verify_rows;     /* 0 off, -1 every row, else sampled rows per q-head          */
  /* report */
  char *report_json;       /* owned; NULL = no JSON file */
  bool progress;           /* print per-layer progress lines */
  /* where the YAML came from ("<embedded demo>" or a path), for messages */
  char *source_name;       /* owned */
} sr_config;

/* Fills *cfg with the schema defaults (every field valid; strings NULL). */
void sr_config_defaults(sr_config *cfg);

/* Parses YAML text (name is used in messages as "name:line: key: problem") into *cfg, on top
 * of the defaults. Unknown keys, wrong types and out-of-range values are SR_ERR_CONFIG. */
sr_status sr_config_load_string(sr_config *cfg, const char *yaml, size_t len, const char *name);
/* Reads a file and calls sr_config_load_string. A missing file is SR_ERR_IO. */
sr_status sr_config_load_file(sr_config *cfg, const char *path);
/* Applies one "dotted.key=value" override (value parsed as YAML scalar / flow list). */
sr_status sr_config_set(sr_config *cfg, const char *assignment);
/* Cross-field checks (kv_heads divides q_heads, top_chunks >= 3 or sparsity set, ...), not
 * including the rank-count-dependent geometry (sr_plan checks that). */
sr_status sr_config_validate(const sr_config *cfg);
/* Frees the owned strings and resets to defaults. */
void sr_config_free(sr_config *cfg);

/* The effective config as YAML text (malloc'd, caller frees) — printed by rank 0 and stored as
 * an HDF5 attribute. */
char *sr_config_to_yaml(const sr_config *cfg);
/* Stable 64-bit hash of the effective config (FNV-1a over sr_config_to_yaml). */
uint64_t sr_config_hash(const sr_config *cfg);

const char *sr_method_name(sr_method m);
const char *sr_exchange_name(sr_exchange_mode e);
const char *sr_shard_name(sr_shard_scheme s);

/* The embedded demo config (configs/demo.yaml compiled in). */
extern const char sr_demo_yaml[];

#endif
