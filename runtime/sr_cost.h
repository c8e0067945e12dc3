/*
 * sr_cost.h — the cost model of The Sparse Frontier (v3, Appendix B) for whole models: prefill
 * FLOPs and decode memory traffic per sequence length, sparsity and batch, for the models the
 * paper evaluates (Qwen2.5, Llama-3.1, Gemma-3), and the `sparsering cost` subcommand.
 *
 * Symbols as in the paper: L sequence length, d hidden size, h q-heads, d_h head dim, n_kv KV
 * heads, N layers, d_mlp MLP size, |V| vocabulary, rho = 1 - sparsity, B batch.
 *
 * Prefill (FLOPs), per sequence, times B:
 *   emb    = 2 L d
 *   proj   = N 2 L d (2 h d_h + 2 d_h n_kv)        paper: 2Ld(d + 2 d_h n_kv + d), h d_h = d
 *   score  = rho (4 h d_h + 3 h) P                 paper: rho (2hL^2 d_h + 3hL^2 + 2hL^2 d_h)
 *            P = L^2 per layer as the paper prints it (no causal 1/2); with `causal`,
 *            P = L(L+1)/2, the pairs the runtime computes and measures sparsity against
 *   mlp    = N (6 L d d_mlp + 2 L d_mlp)
 *   logits = 2 L d |V|
 *   attention = proj + score (the paper's "attn" term; its attention shares count both),
 *   other = emb + mlp + logits.
 * Decode (elements read per step, bytes = 2 x elements for bf16):
 *   weights = N (4 d h d_h + 3 d d_mlp) + d |V| + d   paper: N(4d^2 + 3 d d_mlp) + d|V| + d
 *   kv      = B sum over layers 2 d_h n_kv rho L
 * Gemma 3's sliding-window layers (5 of every 6, window 1024): P = L min(L, W) (causal: the
 * pairs of the band) and KV = min(L, W) tokens, never sparsified; as in the paper, sparsity
 * acts on the global layers only. The VS and Quest indexing terms are not counted.
 * docs/COST.md has the derivation, the presets and worked examples.
 */
#ifndef SR_COST_H
#define SR_COST_H

#include "sparsering.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define SR_COST_BYTES_PER_ELEMENT 2 /* bf16 weights and KV cache */

typedef struct sr_cost_model {
  const char *name;  /* command-line name, lower case: "qwen2.5-7b" */
  const char *label; /* as printed: "Qwen2.5-7B" */
  int layers, hidden, q_heads, kv_heads, head_dim, intermediate;
  int64_t vocab;
  int window;       /* sliding window of the local layers; 0: every layer is global */
  int global_every; /* layer i is global when (i + 1) % global_every == 0; 0: all global */
} sr_cost_model;

typedef enum sr_cost_phase { SR_COST_PREFILL = 0, SR_COST_DECODE = 1 } sr_cost_phase;

/* Prefill FLOPs of B sequences of L tokens. */
typedef struct sr_cost_prefill {
  double emb, proj, score, score_dense, mlp, logits;
  double attention; /* proj + score */
  double other;     /* emb + mlp + logits */
  double total;     /* attention + other */
  double share;     /* attention / total */
} sr_cost_prefill;

/* Decode: elements read per step (one new token for each of the B sequences). */
typedef struct sr_cost_decode {
  double weights, kv, kv_dense, total;
  double kv_share; /* kv / total */
} sr_cost_decode;

/* The presets, in table order. */
const sr_cost_model *sr_cost_models(int *count);
/* A preset by name, or NULL: case-insensitive, '_' for '-' ("Qwen2.5-7B", "qwen2.5_7b"). */
const sr_cost_model *sr_cost_find(const char *name);
/* The valid names, comma separated (for error messages). */
const char *sr_cost_names(void);

/* Layers with full (global) attention. */
int sr_cost_global_layers(const sr_cost_model *m);
/* Weight elements as the decode term counts them (the size used to rank models). */
double sr_cost_weights(const sr_cost_model *m);

/* Query-key pairs of one layer: L^2 (paper) or L(L+1)/2 (causal), or the sliding band. */
double sr_cost_pairs(int64_t L, int window, bool causal);
/* The score FLOPs of one attention layer for one sequence: rho (4 h d_h + 3 h) pairs. */
double sr_cost_attn_layer_flops(int64_t L, int q_heads, int head_dim, double sparsity,
                                bool causal);

sr_cost_prefill sr_cost_prefill_flops(const sr_cost_model *m, int64_t L, double sparsity,
                                      int64_t batch, bool causal);
sr_cost_decode sr_cost_decode_elems(const sr_cost_model *m, int64_t L, double sparsity,
                                    int64_t batch);

/* One number per phase: prefill FLOPs, or decode bytes per step (bf16). */
double sr_cost_of(const sr_cost_model *m, sr_cost_phase phase, int64_t L, double sparsity,
                  int64_t batch, bool causal);

/* Which of `models` fit a budget (FLOPs or bytes) at this L, sparsity and batch: ratio[i] =
 * cost / budget (fits when <= 1). Returns the index of the largest fitting model (by
 * sr_cost_weights), or -1 when none fits. ratio may be NULL. */
int sr_cost_fit(const sr_cost_model *const *models, int count, sr_cost_phase phase, int64_t L,
                double sparsity, int64_t batch, bool causal, double budget, double *ratio);

/* `sparsering cost ...`: argv[0] is "cost". Returns the process exit code. */
int sr_cost_main(int argc, char **argv);

#endif
