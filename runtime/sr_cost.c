/*
 * sr_cost.c — the paper's cost model (The Sparse Frontier v3, Appendix B) over model presets,
 * and the `sparsering cost` subcommand. The formulas are in sr_cost.h and docs/COST.md.
 *
 * Everything here is closed-form arithmetic in double precision: no MPI, no allocation beyond
 * the option lists and the optional JSON report.
 */
#define _POSIX_C_SOURCE 200809L
#include "sr_cost.h"
#include "sr_internal.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* The presets. Sources:
 *   - Qwen2.5 (layers, q-heads, KV heads, hidden, d_mlp; vocabulary 152064 and head_dim 128):
 *     the paper's own table of evaluated models, which agrees with the published config.json
 *     of each model.
 *   - Llama-3.1 and Gemma-3: the paper names them but gives no shapes; the values are the
 *     published Hugging Face configs (Gemma 3: the text_config of the -it checkpoints:
 *     sliding_window 1024, sliding_window_pattern 6, i.e. every sixth layer global, which is
 *     what the paper describes: "5 of 6 layers use sliding-window attention with a 1024
 *     window"). Note Gemma's q_heads x head_dim differs from hidden (12B: 16 x 256 = 4096 vs
 *     3840), which is why the projection terms are written with h d_h rather than d. */
static const sr_cost_model presets[] = {
    /* name          label          layers hidden  h  kv d_h  d_mlp   vocab  window every */
    {"qwen2.5-7b", "Qwen2.5-7B", 28, 3584, 28, 4, 128, 18944, 152064, 0, 0},   /* paper */
    {"qwen2.5-14b", "Qwen2.5-14B", 48, 5120, 40, 8, 128, 13824, 152064, 0, 0}, /* paper */
    {"qwen2.5-32b", "Qwen2.5-32B", 64, 5120, 40, 8, 128, 27648, 152064, 0, 0}, /* paper */
    {"qwen2.5-72b", "Qwen2.5-72B", 80, 8192, 64, 8, 128, 29568, 152064, 0, 0}, /* paper */
    {"llama-3.1-8b", "Llama-3.1-8B", 32, 4096, 32, 8, 128, 14336, 128256, 0, 0},   /* config */
    {"llama-3.1-70b", "Llama-3.1-70B", 80, 8192, 64, 8, 128, 28672, 128256, 0, 0}, /* config */
    {"gemma-3-4b", "Gemma-3-4B", 34, 2560, 8, 4, 256, 10240, 262208, 1024, 6},     /* config */
    {"gemma-3-12b", "Gemma-3-12B", 48, 3840, 16, 8, 256, 15360, 262208, 1024, 6},  /* config */
    {"gemma-3-27b", "Gemma-3-27B", 62, 5376, 32, 16, 128, 21504, 262208, 1024, 6}, /* config */
};
#define NPRESETS ((int)(sizeof presets / sizeof *presets))

const sr_cost_model *sr_cost_models(int *count) {
  if (count) *count = NPRESETS;
  return presets;
}

/* Compares ignoring case and treating '_' as '-'. */
static bool name_eq(const char *a, const char *b) {
  for (; *a && *b; a++, b++) {
    int x = tolower((unsigned char)(*a == '_' ? '-' : *a));
    int y = tolower((unsigned char)(*b == '_' ? '-' : *b));
    if (x != y) return false;
  }
  return *a == *b;
}

const sr_cost_model *sr_cost_find(const char *name) {
  for (int i = 0; i < NPRESETS; i++)
    if (name_eq(name, presets[i].name)) return &presets[i];
  return NULL;
}

const char *sr_cost_names(void) {
  static char buf[512];
  if (!buf[0]) {
    size_t off = 0;
    for (int i = 0; i < NPRESETS; i++)
      off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s", i ? ", " : "", presets[i].name);
  }
  return buf;
}

int sr_cost_global_layers(const sr_cost_model *m) {
  return m->global_every > 0 ? m->layers / m->global_every : m->layers;
}

double sr_cost_weights(const sr_cost_model *m) {
  double d = m->hidden, hd = (double)m->q_heads * m->head_dim;
  return m->layers * (4.0 * d * hd + 3.0 * d * m->intermediate) + d * (double)m->vocab + d;
}

double sr_cost_pairs(int64_t L, int window, bool causal) {
  double l = (double)L;
  if (window <= 0 || window >= L) return causal ? l * (l + 1) / 2 : l * l;
  double w = window;
  /* Causal band: query i sees min(i + 1, W) keys. The paper's count: W keys per query. */
  return causal ? w * (w + 1) / 2 + (l - w) * w : l * w;
}

double sr_cost_attn_layer_flops(int64_t L, int q_heads, int head_dim, double sparsity,
                                bool causal) {
  return (1.0 - sparsity) * (4.0 * q_heads * head_dim + 3.0 * q_heads) *
         sr_cost_pairs(L, 0, causal);
}

sr_cost_prefill sr_cost_prefill_flops(const sr_cost_model *m, int64_t L, double sparsity,
                                      int64_t batch, bool causal) {
  sr_cost_prefill c;
  const double l = (double)L, d = m->hidden, h = m->q_heads, dh = m->head_dim;
  const double nkv = m->kv_heads, n = m->layers, ng = sr_cost_global_layers(m);
  const double per_pair = 4.0 * h * dh + 3.0 * h;
  c.emb = 2 * l * d;
  c.proj = n * 2 * l * d * (2 * h * dh + 2 * dh * nkv);
  const double global = ng * per_pair * sr_cost_pairs(L, 0, causal);
  const double local = (n - ng) * per_pair * sr_cost_pairs(L, m->window, causal);
  c.score_dense = global + local;
  c.score = (1.0 - sparsity) * global + local;
  c.mlp = n * (6 * l * d * m->intermediate + 2 * l * m->intermediate);
  c.logits = 2 * l * d * (double)m->vocab;
  const double b = (double)batch;
  c.emb *= b, c.proj *= b, c.score *= b, c.score_dense *= b, c.mlp *= b, c.logits *= b;
  c.attention = c.proj + c.score;
  c.other = c.emb + c.mlp + c.logits;
  c.total = c.attention + c.other;
  c.share = c.total > 0 ? c.attention / c.total : 0;
  return c;
}

sr_cost_decode sr_cost_decode_elems(const sr_cost_model *m, int64_t L, double sparsity,
                                    int64_t batch) {
  sr_cost_decode c;
  const double l = (double)L, ng = sr_cost_global_layers(m), nl = m->layers - ng;
  const double per_token = 2.0 * m->head_dim * m->kv_heads;
  const double local = nl * per_token * (m->window > 0 && m->window < L ? m->window : l);
  const double global = ng * per_token * l;
  c.weights = sr_cost_weights(m);
  c.kv_dense = (double)batch * (global + local);
  c.kv = (double)batch * ((1.0 - sparsity) * global + local);
  c.total = c.weights + c.kv;
  c.kv_share = c.total > 0 ? c.kv / c.total : 0;
  return c;
}

double sr_cost_of(const sr_cost_model *m, sr_cost_phase phase, int64_t L, double sparsity,
                  int64_t batch, bool causal) {
  if (phase == SR_COST_PREFILL) return sr_cost_prefill_flops(m, L, sparsity, batch, causal).total;
  return sr_cost_decode_elems(m, L, sparsity, batch).total * SR_COST_BYTES_PER_ELEMENT;
}

int sr_cost_fit(const sr_cost_model *const *models, int count, sr_cost_phase phase, int64_t L,
                double sparsity, int64_t batch, bool causal, double budget, double *ratio) {
  int best = -1;
  for (int i = 0; i < count; i++) {
    double r = sr_cost_of(models[i], phase, L, sparsity, batch, causal) / budget;
    if (ratio) ratio[i] = r;
    if (r <= 1.0 && (best < 0 || sr_cost_weights(models[i]) > sr_cost_weights(models[best])))
      best = i;
  }
  return best;
}

/* ---------------------------------------------------------------- the subcommand */

static void usage(FILE *f) {
  fprintf(f,
          "Usage: sparsering cost [options]\n"
          "\n"
          "The Sparse Frontier's cost model (v3, Appendix B) for whole models: prefill FLOPs\n"
          "(attention vs the rest) and decode memory traffic per step (weights + KV cache), per\n"
          "sequence length N, attention sparsity and batch. No MPI, nothing is run.\n"
          "\n"
          "Options:\n"
          "  -m, --model NAMES      comma-separated presets, or all (default all):\n"
          "                         qwen2.5-7b, qwen2.5-14b, qwen2.5-32b, qwen2.5-72b,\n"
          "                         llama-3.1-8b, llama-3.1-70b,\n"
          "                         gemma-3-4b, gemma-3-12b, gemma-3-27b\n"
          "  -n, --n LIST           sequence lengths, e.g. 16384,64K,128000 (K = 1024);\n"
          "                         default 16384,65536,131072\n"
          "  -s, --sparsity LIST    attention sparsities in [0, 1), default 0,0.9,0.95\n"
          "  -b, --batch LIST       batch sizes, default 1\n"
          "  -p, --phase PHASE      prefill, decode or both (default both)\n"
          "      --causal           count prefill scores over the causal triangle L(L+1)/2\n"
          "                         instead of the paper's L^2\n"
          "  -c, --compare MODEL    budget = MODEL dense at each N and batch; say for every\n"
          "                         model and sparsity whether it fits, and the largest that does\n"
          "  -j, --json FILE        also write the numbers as JSON\n"
          "  -h, --help             this help\n"
          "\n"
          "Prefill counts FLOPs (TFLOP = 1e12); attention = the QKVO projections plus the\n"
          "scores, which sparsity scales, as the paper's attention share counts it. Decode\n"
          "counts bytes read per step in bf16 (GB = 1e9); KV sparsity scales the cache read.\n"
          "Gemma 3: sliding-window layers are never sparsified. Formulas: docs/COST.md.\n"
          "Exit codes: 0 ok, 2 usage error, 4 the JSON file cannot be written.\n");
}

/* One list element: a positive integer with an optional K (x1024) or M (x1048576). */
static bool parse_len(const char *s, int64_t *out) {
  errno = 0;
  char *end;
  long long v = strtoll(s, &end, 10);
  if (end == s || errno) return false;
  long long mult = 1;
  if (*end == 'k' || *end == 'K') mult = 1024, end++;
  else if (*end == 'm' || *end == 'M') mult = 1024 * 1024, end++;
  if (*end || v <= 0 || v > (1LL << 40) / mult) return false;
  *out = v * mult;
  return true;
}

/* Splits a comma-separated list; calls each(item) for every element. Empty items refused. */
typedef sr_status (*item_fn)(const char *item, void *ctx);
static sr_status each_item(const char *opt, const char *list, item_fn fn, void *ctx) {
  if (!list[0]) return sr__seterr(SR_ERR_USAGE, "%s: empty list (see cost --help)", opt);
  char *copy = strdup(list);
  if (!copy) return sr__seterr(SR_ERR_NOMEM, "out of memory");
  sr_status st = SR_OK;
  char *p = copy;
  for (;;) {
    char *comma = strchr(p, ',');
    if (comma) *comma = '\0';
    if (!*p) {
      st = sr__seterr(SR_ERR_USAGE, "%s: empty element in '%s' (see cost --help)", opt, list);
      break;
    }
    if ((st = fn(p, ctx)) != SR_OK) break;
    if (!comma) break;
    p = comma + 1;
  }
  free(copy);
  return st;
}

#define MAXLIST 64
typedef struct lists {
  const sr_cost_model *model[MAXLIST];
  int nm;
  int64_t n[MAXLIST];
  int nn;
  double sp[MAXLIST];
  int ns;
  int64_t batch[MAXLIST];
  int nb;
} lists;

static sr_status add_model(const char *item, void *ctx) {
  lists *l = ctx;
  if (name_eq(item, "all")) {
    for (int i = 0; i < NPRESETS && l->nm < MAXLIST; i++) l->model[l->nm++] = &presets[i];
    return SR_OK;
  }
  const sr_cost_model *m = sr_cost_find(item);
  if (!m)
    return sr__seterr(SR_ERR_USAGE, "--model: unknown model '%s' (valid: %s, all)", item,
                      sr_cost_names());
  if (l->nm >= MAXLIST) return sr__seterr(SR_ERR_USAGE, "--model: more than %d models", MAXLIST);
  l->model[l->nm++] = m;
  return SR_OK;
}

static sr_status add_n(const char *item, void *ctx) {
  lists *l = ctx;
  int64_t v;
  if (!parse_len(item, &v))
    return sr__seterr(SR_ERR_USAGE, "--n: '%s' is not a positive length (e.g. 16384 or 16K)", item);
  if (l->nn >= MAXLIST) return sr__seterr(SR_ERR_USAGE, "--n: more than %d lengths", MAXLIST);
  l->n[l->nn++] = v;
  return SR_OK;
}

static sr_status add_sp(const char *item, void *ctx) {
  lists *l = ctx;
  errno = 0;
  char *end;
  double v = strtod(item, &end);
  if (end == item || *end || errno || !(v >= 0 && v < 1))
    return sr__seterr(SR_ERR_USAGE, "--sparsity: '%s' is not a number in [0, 1)", item);
  if (l->ns >= MAXLIST) return sr__seterr(SR_ERR_USAGE, "--sparsity: more than %d values", MAXLIST);
  l->sp[l->ns++] = v;
  return SR_OK;
}

static sr_status add_batch(const char *item, void *ctx) {
  lists *l = ctx;
  errno = 0;
  char *end;
  long long v = strtoll(item, &end, 10);
  if (end == item || *end || errno || v <= 0 || v > (1LL << 30))
    return sr__seterr(SR_ERR_USAGE, "--batch: '%s' is not a positive integer", item);
  if (l->nb >= MAXLIST) return sr__seterr(SR_ERR_USAGE, "--batch: more than %d values", MAXLIST);
  l->batch[l->nb++] = v;
  return SR_OK;
}

static sr_status write_json(const char *path, cJSON *root) {
  char *s = cJSON_Print(root);
  sr_status st = sr__write_text_atomic(path, s, "JSON report");
  free(s);
  return st;
}

static const char *phase_name(sr_cost_phase p) { return p == SR_COST_PREFILL ? "prefill" : "decode"; }

/* "0.9" rather than "0.9000" in sentences. */
static void fmt_sp(char *buf, size_t n, double s) {
  snprintf(buf, n, "%.4f", s);
  char *e = buf + strlen(buf) - 1;
  while (e > buf && *e == '0') *e-- = '\0';
  if (*e == '.') *e = '\0';
}

/* The comparison section: budget = `ref` dense at each (phase, N, batch). */
static void compare(const lists *l, const sr_cost_model *ref, const bool phases[2], bool causal,
                    cJSON *jroot) {
  cJSON *jc = jroot ? cJSON_AddArrayToObject(jroot, "compare") : NULL;
  printf("#\n# compare: budget = %s dense at the same N and batch; ratio = cost / budget "
         "(prefill FLOPs, decode bytes per step)\n", ref->label);
  printf("# %-7s %-14s %8s %5s %8s %10s %7s %5s\n", "phase", "model", "N", "batch", "sparsity",
         "cost", "ratio", "fits");
  double ratio[MAXLIST];
  for (int p = 0; p < 2; p++) {
    if (!phases[p]) continue;
    const double scale = p == SR_COST_PREFILL ? 1e12 : 1e9;
    for (int in = 0; in < l->nn; in++)
      for (int ib = 0; ib < l->nb; ib++) {
        const double budget = sr_cost_of(ref, (sr_cost_phase)p, l->n[in], 0.0, l->batch[ib], causal);
        for (int is = 0; is < l->ns; is++) {
          sr_cost_fit(l->model, l->nm, (sr_cost_phase)p, l->n[in], l->sp[is], l->batch[ib],
                      causal, budget, ratio);
          for (int im = 0; im < l->nm; im++)
            printf("  %-7s %-14s %8lld %5lld %8.4f %10.3f %7.3f %5s\n", phase_name(p),
                   l->model[im]->label, (long long)l->n[in], (long long)l->batch[ib], l->sp[is],
                   ratio[im] * budget / scale, ratio[im], ratio[im] <= 1.0 ? "yes" : "no");
        }
      }
  }
  printf("#\n");
  for (int p = 0; p < 2; p++) {
    if (!phases[p]) continue;
    const char *unit = p == SR_COST_PREFILL ? "TFLOP" : "GB per step";
    const double scale = p == SR_COST_PREFILL ? 1e12 : 1e9;
    for (int in = 0; in < l->nn; in++)
      for (int ib = 0; ib < l->nb; ib++) {
        const double budget = sr_cost_of(ref, (sr_cost_phase)p, l->n[in], 0.0, l->batch[ib], causal);
        for (int is = 0; is < l->ns; is++) {
          char sps[32];
          fmt_sp(sps, sizeof sps, l->sp[is]);
          int best = sr_cost_fit(l->model, l->nm, (sr_cost_phase)p, l->n[in], l->sp[is],
                                 l->batch[ib], causal, budget, ratio);
          for (int im = 0; im < l->nm; im++) {
            if (l->model[im] == ref && l->sp[is] == 0) continue;
            printf("# at N=%lld, %s, batch %lld: %s at sparsity %s costs %.3fx of %s dense "
                   "(%.3f vs %.3f %s): %s\n",
                   (long long)l->n[in], phase_name(p), (long long)l->batch[ib],
                   l->model[im]->label, sps, ratio[im], ref->label, ratio[im] * budget / scale,
                   budget / scale, unit, ratio[im] <= 1.0 ? "within the budget" : "over the budget");
          }
          if (best >= 0)
            printf("# answer: at N=%lld, %s, batch %lld, sparsity %s: the largest model within "
                   "%s dense's budget is %s (%.3fx)\n",
                   (long long)l->n[in], phase_name(p), (long long)l->batch[ib], sps, ref->label,
                   l->model[best]->label, ratio[best]);
          else
            printf("# answer: at N=%lld, %s, batch %lld, sparsity %s: no listed model fits "
                   "within %s dense's budget\n",
                   (long long)l->n[in], phase_name(p), (long long)l->batch[ib], sps, ref->label);
          if (jc) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "phase", phase_name(p));
            cJSON_AddNumberToObject(o, "n", (double)l->n[in]);
            cJSON_AddNumberToObject(o, "batch", (double)l->batch[ib]);
            cJSON_AddNumberToObject(o, "sparsity", l->sp[is]);
            cJSON_AddStringToObject(o, "budget_model", ref->name);
            cJSON_AddNumberToObject(o, "budget", budget);
            cJSON *r = cJSON_AddObjectToObject(o, "ratio");
            for (int im = 0; im < l->nm; im++) cJSON_AddNumberToObject(r, l->model[im]->name, ratio[im]);
            if (best >= 0) cJSON_AddStringToObject(o, "largest_fitting", l->model[best]->name);
            else cJSON_AddNullToObject(o, "largest_fitting");
            cJSON_AddItemToArray(jc, o);
          }
        }
      }
  }
}

int sr_cost_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'},   {"n", required_argument, 0, 'n'},
      {"sparsity", required_argument, 0, 's'}, {"batch", required_argument, 0, 'b'},
      {"phase", required_argument, 0, 'p'},   {"causal", no_argument, 0, 'C'},
      {"compare", required_argument, 0, 'c'}, {"json", required_argument, 0, 'j'},
      {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
  static lists l; /* large-ish; one per process */
  memset(&l, 0, sizeof l);
  const char *models = NULL, *ns = NULL, *sps = NULL, *bs = NULL, *json = NULL;
  const sr_cost_model *ref = NULL;
  bool phases[2] = {true, true}, causal = false;
  sr_status st = SR_OK;
  opterr = 0;
  optind = 1;
  int c;
  while (st == SR_OK && (c = getopt_long(argc, argv, ":m:n:s:b:p:c:j:h", opts, NULL)) != -1) {
    switch (c) {
    case 'm': models = optarg; break;
    case 'n': ns = optarg; break;
    case 's': sps = optarg; break;
    case 'b': bs = optarg; break;
    case 'C': causal = true; break;
    case 'p':
      if (strcmp(optarg, "prefill") == 0) phases[0] = true, phases[1] = false;
      else if (strcmp(optarg, "decode") == 0) phases[0] = false, phases[1] = true;
      else if (strcmp(optarg, "both") == 0) phases[0] = phases[1] = true;
      else st = sr__seterr(SR_ERR_USAGE, "--phase: '%s' (expected prefill, decode or both)", optarg);
      break;
    case 'c':
      if (!(ref = sr_cost_find(optarg)))
        st = sr__seterr(SR_ERR_USAGE, "--compare: unknown model '%s' (valid: %s)", optarg,
                        sr_cost_names());
      break;
    case 'j':
      if (!optarg[0])
        st = sr__seterr(SR_ERR_USAGE, "option -j/--json needs a file name, got an empty one "
                        "(see cost --help)");
      json = optarg;
      break;
    case 'h': usage(stdout); return 0;
    case ':':
      st = sr__seterr(SR_ERR_USAGE, "option %s needs a value (see cost --help)", argv[optind - 1]);
      break;
    default:
      st = sr__seterr(SR_ERR_USAGE, "unknown option '%s' (see cost --help)", argv[optind - 1]);
    }
  }
  if (st == SR_OK && optind < argc)
    st = sr__seterr(SR_ERR_USAGE, "unexpected argument '%s' (see cost --help)", argv[optind]);
  if (st == SR_OK) st = each_item("--model", models ? models : "all", add_model, &l);
  if (st == SR_OK) st = each_item("--n", ns ? ns : "16384,65536,131072", add_n, &l);
  if (st == SR_OK) st = each_item("--sparsity", sps ? sps : "0,0.9,0.95", add_sp, &l);
  if (st == SR_OK) st = each_item("--batch", bs ? bs : "1", add_batch, &l);
  if (st != SR_OK) {
    fprintf(stderr, "sparsering: error: %s\n", sr_last_error());
    return sr_exit_code(st);
  }

  /* The JSON file's place is checked before anything is printed: no table followed by a
   * failure to save it. */
  if (json) {
    char sp[200], *tmp = malloc(strlen(json) + sizeof ".partial");
    sr__short(sp, sizeof sp, json);
    if (!tmp) st = sr__seterr(SR_ERR_NOMEM, "out of memory");
    else {
      sprintf(tmp, "%s.partial", json);
      FILE *f = fopen(tmp, "w");
      if (!f) st = sr__seterr(SR_ERR_IO, "%s: cannot write the JSON report: %s", sp, strerror(errno));
      else fclose(f), unlink(tmp);
      free(tmp);
    }
    if (st != SR_OK) {
      fprintf(stderr, "sparsering: error: %s\n", sr_last_error());
      return sr_exit_code(st);
    }
  }
  cJSON *root = json ? cJSON_CreateObject() : NULL;
  cJSON *jrows = NULL;
  if (root) {
    cJSON_AddStringToObject(root, "cost_model", "The Sparse Frontier v3, Appendix B");
    cJSON_AddStringToObject(root, "sparsering", sr_version());
    cJSON_AddBoolToObject(root, "causal", causal);
    cJSON_AddNumberToObject(root, "bytes_per_element", SR_COST_BYTES_PER_ELEMENT);
    jrows = cJSON_AddArrayToObject(root, "rows");
  }

  printf("# sparsering %s cost: The Sparse Frontier's cost model (v3, Appendix B); docs/COST.md\n",
         sr_version());
  if (phases[0])
    printf("# prefill: TFLOP for the batch; attn = QKVO projections + scores (%s, sparsity scales "
           "the scores), other = embedding + MLP + logits; share = attn / total; x = dense total / "
           "this total\n", causal ? "causal L(L+1)/2 pairs" : "the paper's L^2 pairs");
  if (phases[1])
    printf("# decode: GB read per step (bf16), weights + KV cache of the batch (sparsity scales "
           "the KV read); kv_share = KV / total; x = dense / this\n");
  printf("# %-14s %8s %8s %5s", "model", "N", "sparsity", "batch");
  if (phases[0])
    printf(" %10s %10s %10s %10s %6s %6s", "attn_TF", "score_TF", "other_TF", "total_TF",
           "share", "x");
  if (phases[1]) printf(" %9s %9s %9s %8s %6s", "wts_GB", "kv_GB", "step_GB", "kv_share", "x");
  printf("\n");
  for (int im = 0; im < l.nm; im++)
    for (int in = 0; in < l.nn; in++)
      for (int ib = 0; ib < l.nb; ib++)
        for (int is = 0; is < l.ns; is++) {
          const sr_cost_model *m = l.model[im];
          const int64_t n = l.n[in], b = l.batch[ib];
          const double s = l.sp[is];
          printf("  %-14s %8lld %8.4f %5lld", m->label, (long long)n, s, (long long)b);
          sr_cost_prefill pf = sr_cost_prefill_flops(m, n, s, b, causal);
          sr_cost_prefill pd = sr_cost_prefill_flops(m, n, 0, b, causal);
          sr_cost_decode df = sr_cost_decode_elems(m, n, s, b);
          sr_cost_decode dd = sr_cost_decode_elems(m, n, 0, b);
          const double B = SR_COST_BYTES_PER_ELEMENT;
          if (phases[0])
            printf(" %10.3f %10.3f %10.3f %10.3f %6.3f %6.3f", pf.attention / 1e12,
                   pf.score / 1e12, pf.other / 1e12, pf.total / 1e12, pf.share,
                   pd.total / pf.total);
          if (phases[1])
            printf(" %9.3f %9.3f %9.3f %8.3f %6.3f", df.weights * B / 1e9, df.kv * B / 1e9,
                   df.total * B / 1e9, df.kv_share, dd.total / df.total);
          printf("\n");
          if (jrows) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "model", m->name);
            cJSON_AddNumberToObject(o, "n", (double)n);
            cJSON_AddNumberToObject(o, "sparsity", s);
            cJSON_AddNumberToObject(o, "batch", (double)b);
            if (phases[0]) {
              cJSON *p = cJSON_AddObjectToObject(o, "prefill_flops");
              cJSON_AddNumberToObject(p, "embedding", pf.emb);
              cJSON_AddNumberToObject(p, "projections", pf.proj);
              cJSON_AddNumberToObject(p, "scores", pf.score);
              cJSON_AddNumberToObject(p, "scores_dense", pf.score_dense);
              cJSON_AddNumberToObject(p, "mlp", pf.mlp);
              cJSON_AddNumberToObject(p, "logits", pf.logits);
              cJSON_AddNumberToObject(p, "attention", pf.attention);
              cJSON_AddNumberToObject(p, "other", pf.other);
              cJSON_AddNumberToObject(p, "total", pf.total);
              cJSON_AddNumberToObject(p, "attention_share", pf.share);
              cJSON_AddNumberToObject(p, "speedup_vs_dense", pd.total / pf.total);
            }
            if (phases[1]) {
              cJSON *p = cJSON_AddObjectToObject(o, "decode_bytes_per_step");
              cJSON_AddNumberToObject(p, "weights", df.weights * B);
              cJSON_AddNumberToObject(p, "kv", df.kv * B);
              cJSON_AddNumberToObject(p, "total", df.total * B);
              cJSON_AddNumberToObject(p, "kv_share", df.kv_share);
              cJSON_AddNumberToObject(p, "speedup_vs_dense", dd.total / df.total);
            }
            cJSON_AddItemToArray(jrows, o);
          }
        }
  if (ref) compare(&l, ref, phases, causal, root);
  fflush(stdout);
  if (root) {
    st = write_json(json, root);
    cJSON_Delete(root);
    if (st != SR_OK) {
      fprintf(stderr, "sparsering: error: %s\n", sr_last_error());
      return sr_exit_code(st);
    }
  }
  return 0;
}
