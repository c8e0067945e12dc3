/*
 * sr_synth.c — deterministic synthetic q, k, v with dialable attention structure.
 *
 * Invariants (docs/SYNTHETIC.md gives the formulas):
 *   - Every value is a pure function of (seed, layer, which, head, position, dim). Random
 *     numbers come from a counter-based hash (the splitmix64 finaliser applied to a key built
 *     from that tuple), never from a stateful generator, so the rows [a, b) are the same
 *     whether they are asked for in one call or many, on one rank or another.
 *   - The head dimension is cut into three disjoint parts: 2M "locality" dims (M RoPE pairs),
 *     F "free" dims that hold the shared sink / heavy-hitter / needle directions, and the
 *     remaining "noise" dims. Because the parts are disjoint (and a RoPE rotation never
 *     mixes pairs), the logit q_i.k_j / sqrt(d) is exactly the sum of one term per feature:
 *       locality * rho(i - j) + sink_strength [j < sink_tokens] + heavy_strength [j heavy]
 *       + needle_strength [(i, j) a needle pair] + noise * (a standard Gaussian),
 *     so every strength is in logit units (nats), independent of head_dim. (For needles of
 *     span > 1, needle_strength is the mean over the span's pairs; each pair also keeps its
 *     own locality jitter around that mean.)
 *   - v is an i.i.d. standard Gaussian in every dim: values of order 1 whatever the knobs.
 *   - Calibrated profile (rows_calibrated): the same three parts, but every strength lives on
 *     the query side (the key side carries unit amplitudes), so a query row can scale its
 *     strengths with its own causal key count: strength + ln((pos + 1) / SR_SYNTH_REF_KEYS).
 *     Each kv-head has a type (sink / local / retrieval) that sets its strengths; local heads
 *     add slash lines (the locality profile shifted by fixed offsets: a constant complex gain
 *     per RoPE pair on the key side); the noise of q and k is partly shared by the positions
 *     of a cluster. The logit stays exactly the sum of one term per feature.
 */
#define _POSIX_C_SOURCE 200809L
#include "sr_synth.h"
#include "sr_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Stream tags: each kind of random quantity draws from its own stream. */
enum {
  TAG_Q = 1,
  TAG_K = 2,
  TAG_V = 3,
  TAG_PHASE = 4,
  TAG_DIR = 5,
  TAG_HEAVY = 6,
  TAG_NEEDLE_Q = 7,
  TAG_NEEDLE_K = 8,
  TAG_TYPE = 9,
  TAG_SLASH = 10,
  TAG_QCLUSTER = 11,
  TAG_KCLUSTER = 12,
};

#define GOLDEN 0x9E3779B97F4A7C15ull
#define TWO_PI 6.283185307179586476925286766559
#define LO_BITS 10
#define LO_SIZE (1 << LO_BITS)

/* The splitmix64 finaliser: a bijection of 64-bit words with full avalanche. */
static inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Key of a stream: (seed, tag, layer, head). Each field passes through its own mix so that
 * nearby tuples give unrelated keys. */
static uint64_t stream_key(uint64_t seed, int tag, int layer, int head) {
  uint64_t h = mix64(seed + GOLDEN);
  h = mix64(h ^ mix64((uint64_t)tag * 0xD1B54A32D192ED03ull + 1));
  h = mix64(h ^ mix64((uint64_t)(uint32_t)layer + 0x8CB92BA72F3D8DD7ull));
  h = mix64(h ^ mix64((uint64_t)(uint32_t)head + 0xABC98388FB8FAC03ull));
  return h;
}

/* The counter: element `idx` of stream `key` (splitmix64 addressing). */
static inline uint64_t stream_at(uint64_t key, uint64_t idx) {
  return mix64(key + (idx + 1) * GOLDEN);
}

/* Uniform in (0, 1) from the top 53 bits. */
static inline double u01(uint64_t x) { return ((double)(x >> 11) + 0.5) * 0x1.0p-53; }

/* A standard Gaussian from one 64-bit word: the inverse normal CDF of a uniform, by Acklam's
 * rational approximation (relative error < 1.2e-9). The central 95% needs no libm call, which
 * makes it several times faster than Box-Muller; the tails take one log and one sqrt. */
static inline double gauss(uint64_t x) {
  static const double a[6] = {-3.969683028665376e+01, 2.209460984245205e+02,
                              -2.759285104469687e+02, 1.383577518672690e+02,
                              -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[5] = {-5.447609879822406e+01, 1.615858368580409e+02,
                              -1.556989798598866e+02, 6.680131188771972e+01,
                              -1.328068155288572e+01};
  static const double c[6] = {-7.784894002430293e-03, -3.223964580411365e-01,
                              -2.400758277161838e+00, -2.549732539343734e+00,
                              4.374664141464968e+00, 2.938163982698783e+00};
  static const double e[4] = {7.784695709041462e-03, 3.224671290700398e-01,
                              2.445134137142996e+00, 3.754408661907416e+00};
  const double plow = 0.02425;
  double u = u01(x);
  if (u > plow && u < 1.0 - plow) {
    double q = u - 0.5, r = q * q;
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
           (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0);
  }
  double t = sqrt(-2.0 * log(u < 0.5 ? u : 1.0 - u));
  double z = (((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5]) /
             ((((e[0] * t + e[1]) * t + e[2]) * t + e[3]) * t + 1.0);
  return u < 0.5 ? z : -z;
}

/* How the head dimension is split (see the file comment). */
typedef struct geom {
  int d;
  int m;          /* RoPE pairs of the locality part: dims [0, 2m)          */
  int f;          /* free dims [2m, 2m + f): sink / heavy / needle directions */
  int noise0;     /* first noise dim (= 2m + f); noise dims [noise0, d)      */
} geom;

/* The calibrated profile gives the locality more pairs (3d/8: its far-field jitter shrinks as
 * 1/sqrt(pairs), which matters at 1M keys), the free directions d/8 (but room for the sink,
 * the heavy hitters and every needle where d/4 allows: d = 32 with 4 needles gets 6) and the
 * noise at least d/8. For d = 64 and 128: 24 + 8 + 8 and 48 + 16 + 16 pairs / dims / dims. */
static geom make_geom_calibrated(int d, int64_t needles) {
  geom g;
  g.d = d;
  int64_t want = 2 + (needles > 0 ? needles : 0);
  if (want > d / 4) want = d / 4;
  g.f = d / 8 > want ? d / 8 : (int)want;
  g.m = 3 * d / 8;
  if (2 * g.m > d - g.f - d / 8) g.m = (d - g.f - d / 8) / 2;
  if (g.m < 1 && d >= 2) g.m = 1;
  if (2 * g.m + g.f > d) g.f = d - 2 * g.m;
  if (g.f < 0) g.f = 0;
  g.noise0 = 2 * g.m + g.f;
  return g;
}

static geom make_geom(int d) {
  geom g;
  g.d = d;
  g.m = d / 4;
  if (g.m < 1 && d >= 2) g.m = 1;
  g.f = d / 4;
  if (2 * g.m + g.f > d) g.f = d - 2 * g.m;
  if (g.f < 0) g.f = 0;
  g.noise0 = 2 * g.m + g.f;
  return g;
}

/* Amplitudes: a shared direction of unit norm carried with amplitude A by q and sign(S) A by k
 * adds A^2 / sqrt(d) = |S| to the logit. */
static double amp(double strength, int d) { return sqrt(fabs(strength) * sqrt((double)d)); }
static double sgn(double x) { return x < 0 ? -1.0 : 1.0; }

/* Uniform integer in [0, n) from a hash word (n > 0; the modulo bias is < n / 2^64). */
static inline int64_t below(uint64_t x, int64_t n) { return (int64_t)(x % (uint64_t)n); }

/* ---- calibrated profile: head types and their parameters -------------------------------- */

const char *sr_head_type_name(sr_head_type t) {
  switch (t) {
  case SR_HEAD_SINK: return "sink";
  case SR_HEAD_LOCAL: return "local";
  case SR_HEAD_RETRIEVAL: return "retrieval";
  case SR_HEAD_PLAIN: return "plain";
  }
  return "?";
}

static bool calibrated(const sr_config *cfg) { return cfg->synth.profile == SR_SYNTH_CALIBRATED; }

/* Per type: the strengths and noise at the configured defaults (sink_strength 8, locality 6,
 * heavy_strength 6, needle_strength 14, noise 1), fitted to the targets of docs/SYNTHETIC.md;
 * a configured value v scales its column by v / default. Which features a type has. */
static const struct {
  double sink, locality, heavy, needle, noise;
  bool heavies, needles, slashes, window; /* window: locality follows the key count */
} TYPE_FIT[3] = {
    [SR_HEAD_SINK] = {13.75, 10.0, 0.0, 0.0, 0.7, false, false, false, true},
    [SR_HEAD_LOCAL] = {12.7, 16.0, 11.7, 0.0, 0.8, true, false, true, true},
    [SR_HEAD_RETRIEVAL] = {8.0, 8.0, 8.5, 11.0, 2.9, true, true, false, false},
};
static const double DEF_SINK = 8.0, DEF_LOCALITY = 6.0, DEF_HEAVY = 6.0, DEF_NEEDLE = 14.0,
                    DEF_NOISE = 1.0;

/* Kv-heads per type in a layer of kv_heads heads: largest remainders of fraction * kv_heads,
 * ties to retrieval, then local, then sink. */
static void type_counts(const sr_config *cfg, int kv_heads, int cnt[3]) {
  double fs = cfg->synth.sink_heads, fl = cfg->synth.local_heads;
  if (!(fs > 0)) fs = 0; /* also NaN */
  if (!(fl > 0)) fl = 0;
  if (fs > 1) fs = 1;
  if (fl > 1) fl = 1;
  if (fs + fl > 1) {
    double t = fs + fl;
    fs /= t;
    fl /= t;
  }
  double quota[3] = {fs * kv_heads, fl * kv_heads, (1.0 - fs - fl) * kv_heads};
  if (quota[2] < 0) quota[2] = 0;
  int used = 0;
  for (int t = 0; t < 3; t++) {
    cnt[t] = (int)floor(quota[t] + 1e-9);
    used += cnt[t];
  }
  static const int order[3] = {SR_HEAD_RETRIEVAL, SR_HEAD_LOCAL, SR_HEAD_SINK};
  while (used < kv_heads) {
    int best = -1;
    double br = -1;
    for (int o = 0; o < 3; o++) {
      int t = order[o];
      double r = quota[t] - cnt[t];
      if (r > br + 1e-9) {
        br = r;
        best = t;
      }
    }
    cnt[best]++;
    used++;
  }
  while (used > kv_heads) { /* only through rounding slack: take from the largest */
    int t = cnt[2] > 0 ? 2 : cnt[1] > 0 ? 1 : 0;
    cnt[t]--;
    used--;
  }
}

sr_head_type sr_synth_head_type(const sr_config *cfg, int layer, int kv_head) {
  if (!calibrated(cfg)) return SR_HEAD_PLAIN;
  const int kv = cfg->kv_heads > 0 ? cfg->kv_heads : 1;
  if (kv_head < 0 || kv_head >= kv) return SR_HEAD_PLAIN;
  int cnt[3];
  type_counts(cfg, kv, cnt);
  /* The slot of kv_head: its rank among the hashed keys of the layer's kv-heads (ties by
   * index); slots [0, retrieval) retrieve, then local, then sink. */
  const uint64_t key = stream_key(cfg->seed, TAG_TYPE, layer, 0);
  const uint64_t mine = stream_at(key, (uint64_t)kv_head);
  int slot = 0;
  for (int g = 0; g < kv; g++) {
    uint64_t x = stream_at(key, (uint64_t)g);
    if (x < mine || (x == mine && g < kv_head)) slot++;
  }
  if (slot < cnt[SR_HEAD_RETRIEVAL]) return SR_HEAD_RETRIEVAL;
  if (slot < cnt[SR_HEAD_RETRIEVAL] + cnt[SR_HEAD_LOCAL]) return SR_HEAD_LOCAL;
  return SR_HEAD_SINK;
}

void sr_synth_head_params(const sr_config *cfg, int layer, int kv_head, sr_synth_head *h) {
  const sr_synth_params *sp = &cfg->synth;
  memset(h, 0, sizeof *h);
  h->type = sr_synth_head_type(cfg, layer, kv_head);
  h->sink_tokens = (int)(sp->sink_tokens > 0x7fffffff ? 0x7fffffff : sp->sink_tokens);
  h->cluster_tokens = 1;
  if (h->type == SR_HEAD_PLAIN) {
    h->sink = sp->sink_strength;
    h->locality = sp->locality;
    h->heavy = sp->heavy_strength;
    h->needle = sp->needle_strength;
    h->noise = sp->noise;
    h->heavy_hitters = (int)sp->heavy_hitters;
    h->needles = (int)sp->needles;
    return;
  }
  /* Negative values (possible only in configs built in code) count as 0 here. */
#define POS(x) ((x) > 0 ? (double)(x) : 0.0)
  const int t = h->type;
  h->sink = POS(sp->sink_strength) * TYPE_FIT[t].sink / DEF_SINK;
  h->locality = POS(sp->locality) * TYPE_FIT[t].locality / DEF_LOCALITY;
  h->heavy = TYPE_FIT[t].heavies ? POS(sp->heavy_strength) * TYPE_FIT[t].heavy / DEF_HEAVY : 0;
  h->needle = TYPE_FIT[t].needles ? POS(sp->needle_strength) * TYPE_FIT[t].needle / DEF_NEEDLE : 0;
  h->noise = POS(sp->noise) * TYPE_FIT[t].noise / DEF_NOISE;
  h->heavy_hitters = TYPE_FIT[t].heavies ? (int)sp->heavy_hitters : 0;
  h->needles = TYPE_FIT[t].needles ? (int)sp->needles : 0;
  h->slashes = TYPE_FIT[t].slashes && h->locality > 0 ? (int)sp->slashes : 0;
  h->slash = h->slashes > 0 ? POS(sp->slash_strength) : 0;
  if (h->slash == 0) h->slashes = 0;
  h->window = TYPE_FIT[t].window ? 1.0 : 0.0;
  h->cluster_tokens = sp->cluster_tokens > 1 ? (int64_t)sp->cluster_tokens : 1;
  h->cluster_share = sp->cluster_share > 0 ? (sp->cluster_share < 1 ? sp->cluster_share : 1) : 0;
  if (h->cluster_tokens <= 1) h->cluster_share = 0;
#undef POS
}

/* Heavy hitters and needles of (layer, kv_head): the configured counts, or the type's. */
static int64_t heavy_count(const sr_config *cfg, int layer, int kv_head) {
  if (!calibrated(cfg)) return cfg->synth.heavy_hitters;
  sr_head_type t = sr_synth_head_type(cfg, layer, kv_head);
  return t == SR_HEAD_PLAIN || !TYPE_FIT[t].heavies ? 0 : cfg->synth.heavy_hitters;
}
static int64_t needle_count(const sr_config *cfg, int layer, int kv_head) {
  if (!calibrated(cfg)) return cfg->synth.needles;
  sr_head_type t = sr_synth_head_type(cfg, layer, kv_head);
  return t == SR_HEAD_PLAIN || !TYPE_FIT[t].needles ? 0 : cfg->synth.needles;
}

int sr_synth_slashes(const sr_config *cfg, int layer, int kv_head, int64_t *out, int max) {
  sr_synth_head h;
  sr_synth_head_params(cfg, layer, kv_head, &h);
  int n = h.slashes < max ? h.slashes : max;
  /* Offsets log-uniform in [16, 256]: one per stratum of the log range, so they spread. */
  const uint64_t key = stream_key(cfg->seed, TAG_SLASH, layer, kv_head);
  const double lo = log(16.0), hi = log(256.0);
  for (int s = 0; s < n; s++) {
    double u = (s + u01(stream_at(key, (uint64_t)s))) / (double)h.slashes;
    out[s] = (int64_t)llround(exp(lo + u * (hi - lo)));
  }
  return n;
}

int64_t sr_synth_needle_span(const sr_config *cfg) {
  int64_t span = cfg->synth.needle_span > 0 ? (int64_t)cfg->synth.needle_span : 1;
  int64_t half = cfg->seq_len / 2;
  if (span > half) span = half > 1 ? half : 1;
  return span;
}

/* Heavy hitter t of (layer, kv_head) lies in stratum t of [lo, N) (sr_synth_heavy); these find
 * the last / first of them inside [a, b) without listing them all, or return -1. */
static int64_t heavy_at(uint64_t key, int64_t lo, int64_t range, int64_t want, int64_t t) {
  int64_t s0 = lo + (t * range) / want, s1 = lo + ((t + 1) * range) / want;
  return s1 > s0 ? s0 + below(stream_at(key, (uint64_t)t), s1 - s0) : -1;
}

static int64_t heavy_scan(const sr_config *cfg, int layer, int kv_head, int64_t a, int64_t b,
                          bool last) {
  int64_t n = cfg->seq_len, want = heavy_count(cfg, layer, kv_head);
  /* A heavy hitter of strength 0 is none (rows equal those of heavy_hitters 0). */
  if (n < 1 || want <= 0 || a >= b || cfg->synth.heavy_strength == 0) return -1;
  uint64_t key = stream_key(cfg->seed, TAG_HEAVY, layer, kv_head);
  int64_t lo = (int64_t)cfg->synth.sink_tokens;
  if (lo >= n) lo = 0;
  int64_t range = n - lo, found = -1;
  int64_t t = a > lo ? ((a - lo) * want) / range - 1 : 0;
  if (t < 0) t = 0;
  for (; t < want && lo + (t * range) / want < b; t++) {
    int64_t h = heavy_at(key, lo, range, want, t);
    if (h >= a && h < b) {
      found = h;
      if (!last) break;
    }
  }
  return found;
}
static int64_t heavy_in(const sr_config *cfg, int layer, int kv_head, int64_t a, int64_t b) {
  return heavy_scan(cfg, layer, kv_head, a, b, true);
}
static int64_t heavy_in_first(const sr_config *cfg, int layer, int kv_head, int64_t a,
                              int64_t b) {
  return heavy_scan(cfg, layer, kv_head, a, b, false);
}

int sr_synth_needles(const sr_config *cfg, int layer, int kv_head, sr_needle *out, int max) {
  int64_t n = cfg->seq_len;
  int64_t want = needle_count(cfg, layer, kv_head);
  if (n < 2 || want <= 0 || max <= 0) return 0;
  if (want > max) want = max;
  uint64_t kq = stream_key(cfg->seed, TAG_NEEDLE_Q, layer, kv_head);
  uint64_t kk = stream_key(cfg->seed, TAG_NEEDLE_K, layer, kv_head);
  int64_t sinks = (int64_t)cfg->synth.sink_tokens;
  const int64_t span = sr_synth_needle_span(cfg); /* 1 <= span <= N / 2 */
  /* Query spans: one starting in each stratum of [N/2, N), so needles are spread over the
   * second half; the start is drawn where the whole span fits in its stratum (at the stratum's
   * start if it is narrower than the span) and clipped so that the span ends by N. Starts are
   * therefore non-decreasing in t. The strata use the configured needle count, so positions
   * do not depend on `max`. With span 1 this is exactly the single-token rule. */
  int64_t total = cfg->synth.needles;
  int64_t qlo = n / 2, qrange = n - qlo;
  int64_t gap = n / 4 > 1 ? n / 4 : 1;
  int count = 0;
  for (int64_t t = 0; t < want; t++) {
    int64_t s0 = qlo + (t * qrange) / total, s1 = qlo + ((t + 1) * qrange) / total;
    int64_t room = s1 - s0 - (span - 1);
    int64_t qpos = room > 0 ? s0 + below(stream_at(kq, (uint64_t)t), room) : s0;
    if (qpos > n - span) qpos = n - span;
    /* Key span: its last token at least N/4 before the first query token, its first token
     * after the sink tokens, where that leaves room; otherwise anywhere before the query span
     * (kpos + span <= qpos always holds: qpos >= N/2 >= span). */
    int64_t kmax = qpos - gap - (span - 1);
    if (kmax < 0) kmax = qpos - span;
    int64_t kmin = sinks < kmax ? sinks : kmax;
    if (kmin < 0) kmin = 0;
    int64_t kpos = kmin + below(stream_at(kk, (uint64_t)t), kmax - kmin + 1);
    /* The key span holds no heavy hitter (a key that were both would carry the heavy direction
     * without the locality term that the needle's strength compensates): moved just past the
     * heavy hitter, or just before it, where [kmin, kmax] has room; left as drawn otherwise. */
    for (int tries = 0; tries < 8; tries++) {
      int64_t h = heavy_in(cfg, layer, kv_head, kpos, kpos + span);
      if (h < 0) break;
      int64_t first = heavy_in_first(cfg, layer, kv_head, kpos, kpos + span);
      if (h + 1 <= kmax) kpos = h + 1;
      else if (first - span >= kmin) kpos = first - span;
      else break;
    }
    out[count].qpos = qpos;
    out[count].kpos = kpos;
    out[count].span = span;
    count++;
  }
  return count;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

int sr_synth_heavy(const sr_config *cfg, int layer, int kv_head, int64_t *out, int max) {
  int64_t n = cfg->seq_len;
  int64_t want = heavy_count(cfg, layer, kv_head);
  if (n < 1 || want <= 0 || max <= 0) return 0;
  uint64_t key = stream_key(cfg->seed, TAG_HEAVY, layer, kv_head);
  /* One position per stratum of [sink_tokens, N) (of [0, N) if no room is left after the
   * sinks). Strata are disjoint integer ranges, so positions are distinct while the range
   * holds at least one position per heavy hitter; duplicates are dropped below. */
  int64_t lo = (int64_t)cfg->synth.sink_tokens;
  if (lo >= n) lo = 0;
  int64_t range = n - lo;
  int count = 0;
  for (int64_t t = 0; t < want && count < max; t++) {
    int64_t h = heavy_at(key, lo, range, want, t);
    if (h >= 0) out[count++] = h; /* else an empty stratum: more heavy hitters than positions */
  }
  qsort(out, (size_t)count, sizeof *out, cmp_i64);
  int u = 0;
  for (int i = 0; i < count; i++)
    if (u == 0 || out[i] != out[u - 1]) out[u++] = out[i];
  return u;
}

/* Direction `idx` (0 = sink, 1 = heavy, 2 + t = needle t) of (layer, kv_head): a unit vector
 * in the f free dims. The first f directions are made orthonormal by Gram-Schmidt, so their
 * cross terms vanish; any beyond f are independent random unit vectors. `basis` caches the
 * orthonormal ones ([f][f], row b valid once computed); `nbasis` counts the valid rows. */
typedef struct dirs {
  uint64_t key;
  int f;
  int nbasis;
  double *basis;
} dirs;

static void dir_random(const dirs *D, int idx, double *v) {
  uint64_t rk = mix64(D->key ^ (uint64_t)idx);
  for (int x = 0; x < D->f; x++) v[x] = gauss(stream_at(rk, (uint64_t)x));
}

static void normalise(double *v, int f) {
  double s = 0;
  for (int x = 0; x < f; x++) s += v[x] * v[x];
  s = s > 0 ? 1.0 / sqrt(s) : 0.0;
  for (int x = 0; x < f; x++) v[x] *= s;
}

/* Extends the orthonormal basis to its first `upto` directions (at most f). */
static void basis_grow(dirs *D, int upto) {
  while (D->nbasis < upto && D->nbasis < D->f) {
    double *b = D->basis + (size_t)D->nbasis * D->f;
    dir_random(D, D->nbasis, b);
    /* Modified Gram-Schmidt, twice for stability. */
    for (int pass = 0; pass < 2; pass++)
      for (int p = 0; p < D->nbasis; p++) {
        const double *e = D->basis + (size_t)p * D->f;
        double dot = 0;
        for (int x = 0; x < D->f; x++) dot += b[x] * e[x];
        for (int x = 0; x < D->f; x++) b[x] -= dot * e[x];
      }
    normalise(b, D->f);
    D->nbasis++;
  }
}

/* Writes direction idx to v[f]. */
static void dir_get(dirs *D, int idx, double *v) {
  if (D->f == 0) return;
  if (idx < D->f && D->basis != NULL) {
    basis_grow(D, idx + 1);
    memcpy(v, D->basis + (size_t)idx * D->f, (size_t)D->f * sizeof *v);
    return;
  }
  /* More directions than free dims: random, but still orthogonal to the sink and heavy
   * directions (which every query carries) where there is room for that, so extra needles
   * only cross-talk with each other. */
  dir_random(D, idx, v);
  if (D->basis != NULL && D->f >= 3) {
    basis_grow(D, 2);
    for (int pass = 0; pass < 2; pass++)
      for (int p = 0; p < 2; p++) {
        const double *e = D->basis + (size_t)p * D->f;
        double dot = 0;
        for (int x = 0; x < D->f; x++) dot += v[x] * e[x];
        for (int x = 0; x < D->f; x++) v[x] -= dot * e[x];
      }
  }
  normalise(v, D->f);
}

/* Adds scale * direction idx to the free dims of row `r`. */
static void add_dir(dirs *D, int idx, double scale, const geom *g, float *row, double *tmp) {
  if (g->f == 0 || scale == 0) return;
  dir_get(D, idx, tmp);
  for (int x = 0; x < g->f; x++) row[2 * g->m + x] += (float)(scale * tmp[x]);
}

/* Sink and heavy-hitter keys carry no locality component, so their logit is exactly their
 * strength (plus noise) from every query, not strength + locality * rho(distance). */
static void clear_locality(const geom *g, float *row) {
  for (int x = 0; x < 2 * g->m; x++) row[x] = 0.0f;
}

/* Calibrated profile: sink and heavy keys carry neither locality nor noise, so that their
 * logit is exactly their strength from every query row (a sink's weight does not flicker from
 * row to row with the noise). */
static void clear_feature_key(const geom *g, float *row) {
  for (int x = 0; x < 2 * g->m; x++) row[x] = 0.0f;
  for (int x = g->noise0; x < g->d; x++) row[x] = 0.0f;
}

/* Fills the noise dims [from, d) of one row with amplitude `a` from stream `key`. */
static inline void noise_row(uint64_t key, int64_t pos, int from, int d, double a, float *o) {
  uint64_t rk = mix64(key ^ (uint64_t)pos);
  for (int x = from; x < d; x++) o[x] = (float)(a * gauss(stream_at(rk, (uint64_t)x)));
}


/* The rotation tables of one call: hi_rot holds a rotation per run of 2^LO_BITS positions, and
 * lo_tab (calls of at least LO_SIZE rows) the rotations by lo theta. False, nothing held, when
 * memory is short. */
static bool rot_alloc(int64_t nruns, int64_t count, int m, double **hi_rot, double **lo_tab) {
  *hi_rot = malloc((size_t)nruns * 2 * (size_t)m * sizeof **hi_rot);
  *lo_tab = count >= LO_SIZE ? malloc((size_t)LO_SIZE * 2 * (size_t)m * sizeof **lo_tab) : NULL;
  if (*hi_rot && (count < LO_SIZE || *lo_tab)) return true;
  free(*hi_rot);
  free(*lo_tab);
  *hi_rot = *lo_tab = NULL;
  return false;
}

static void fill_lo_table(double *lo_tab, const double *th, int m) {
#pragma omp parallel for schedule(static)
  for (int lo = 0; lo < LO_SIZE; lo++)
    for (int p = 0; p < m; p++) {
      lo_tab[((size_t)lo * m + p) * 2] = cos((double)lo * th[p]);
      lo_tab[((size_t)lo * m + p) * 2 + 1] = sin((double)lo * th[p]);
    }
}

/* The plain profile (and v of both profiles). */
static void rows_plain(const sr_config *cfg, int layer, char which, int head, int64_t pos0,
                       int64_t count, float *out) {
  const int d = cfg->head_dim;
  if (count <= 0 || d <= 0) return;
  const sr_synth_params *sp = &cfg->synth;
  const geom g = make_geom(d);
  const size_t rowlen = (size_t)d;

  if (which == 'v') {
    uint64_t key = stream_key(cfg->seed, TAG_V, layer, head);
#pragma omp parallel for schedule(static) if (count >= 1024)
    for (int64_t r = 0; r < count; r++) noise_row(key, pos0 + r, 0, d, 1.0, out + r * rowlen);
    return;
  }
  if (which != 'q' && which != 'k') {
    sr__poison_f32(out, (size_t)count * rowlen);
    return;
  }
  const bool isq = which == 'q';
  const int group = cfg->kv_heads > 0 && cfg->q_heads >= cfg->kv_heads
                        ? cfg->q_heads / cfg->kv_heads : 1;
  const int kvh = isq ? head / group : head;

  /* Noise: entries of size sigma give a logit term of standard deviation
   * sigma^2 sqrt(nd / d) over the nd noise dims; sigma is chosen so that this is `noise`. */
  const int nd = d - g.noise0;
  const double sigma = nd > 0 ? sqrt(fabs(sp->noise)) * pow((double)d / nd, 0.25) : 0.0;
  const uint64_t nkey = stream_key(cfg->seed, isq ? TAG_Q : TAG_K, layer, head);

  /* Locality: pair p rotates at theta_p = base^(-p/m) (the RoPE ladder over m pairs) with a
   * random phase phi_p per (layer, kv-head); q and k carry it with the same amplitude, so
   * the logit term is locality * mean_p cos((i - j) theta_p). */
  double theta[64], phi[64];
  double *th = theta, *ph = phi, *heap = NULL;
  if (g.m > 64) {
    heap = malloc(2 * (size_t)g.m * sizeof *heap);
    if (!heap) {
      sr__poison_f32(out, (size_t)count * rowlen);
      return;
    }
    th = heap;
    ph = heap + g.m;
  }
  const double base = sp->rope_base > 1.0f ? (double)sp->rope_base : 1.0;
  const uint64_t pkey = stream_key(cfg->seed, TAG_PHASE, layer, kvh);
  for (int p = 0; p < g.m; p++) {
    th[p] = pow(base, -(double)p / g.m);
    ph[p] = TWO_PI * u01(stream_at(pkey, (uint64_t)p));
  }
  const double aloc = g.m > 0 ? sqrt(fabs(sp->locality) * sqrt((double)d) / g.m) : 0.0;
  const double kloc = isq ? aloc : sgn(sp->locality) * aloc;

  /* Shared directions in the free dims. */
  dirs D = {stream_key(cfg->seed, TAG_DIR, layer, kvh), g.f, 0, NULL};
  double *tmp = NULL, *qbase = NULL;
  if (g.f > 0) {
    D.basis = malloc((size_t)g.f * g.f * sizeof *D.basis);
    tmp = malloc(2 * (size_t)g.f * sizeof *tmp);
    if (!D.basis || !tmp) {
      free(D.basis);
      free(tmp);
      free(heap);
      sr__poison_f32(out, (size_t)count * rowlen);
      return;
    }
    qbase = tmp + g.f;
    /* Every query carries the sink and the heavy-hitter directions. */
    for (int x = 0; x < g.f; x++) qbase[x] = 0;
    if (isq) {
      double as = sp->sink_tokens > 0 ? amp(sp->sink_strength, d) : 0.0;
      double ah = sp->heavy_hitters > 0 ? amp(sp->heavy_strength, d) : 0.0;
      dir_get(&D, 0, tmp);
      for (int x = 0; x < g.f; x++) qbase[x] += as * tmp[x];
      dir_get(&D, 1, tmp);
      for (int x = 0; x < g.f; x++) qbase[x] += ah * tmp[x];
    }
  }

  /* Rows are produced in runs of equal pos >> LO_BITS. The rotation angle pos theta + phi is
   * split as (hi 2^LO_BITS theta + phi) + lo theta, and the two rotations are composed: one
   * sincos per pair per run plus one per pair and row (or a table lookup for long calls)
   * instead of a sincos of a large argument per pair and row. The split depends only on pos,
   * so values do not depend on how rows are requested. */
  const int64_t end = pos0 + count;
  const int64_t nruns = ((end - 1) >> LO_BITS) - (pos0 >> LO_BITS) + 1;
  double *lo_tab = NULL, *hi_rot = NULL;
  if (g.m > 0) {
    if (!rot_alloc(nruns, count, g.m, &hi_rot, &lo_tab)) {
      free(D.basis);
      free(tmp);
      free(heap);
      sr__poison_f32(out, (size_t)count * rowlen);
      return;
    }
  }
  if (lo_tab) fill_lo_table(lo_tab, th, g.m);

#pragma omp parallel for schedule(dynamic, 1) if (count >= LO_SIZE)
  for (int64_t run = 0; run < nruns; run++) {
    const int64_t hi = (pos0 >> LO_BITS) + run;
    int64_t r0 = (hi << LO_BITS) - pos0, r1 = ((hi + 1) << LO_BITS) - pos0;
    if (r0 < 0) r0 = 0;
    if (r1 > count) r1 = count;
    double *hr = hi_rot ? hi_rot + (size_t)run * 2 * g.m : NULL;
    for (int p = 0; p < g.m; p++) {
      double a = (double)(hi << LO_BITS) * th[p] + ph[p];
      hr[2 * p] = kloc * cos(a);
      hr[2 * p + 1] = kloc * sin(a);
    }
    for (int64_t r = r0; r < r1; r++) {
      const int64_t pos = pos0 + r;
      const int lo = (int)(pos & (LO_SIZE - 1));
      float *o = out + r * rowlen;
      for (int p = 0; p < g.m; p++) {
        double cb, sb;
        if (lo_tab) {
          cb = lo_tab[((size_t)lo * g.m + p) * 2];
          sb = lo_tab[((size_t)lo * g.m + p) * 2 + 1];
        } else {
          cb = cos((double)lo * th[p]);
          sb = sin((double)lo * th[p]);
        }
        o[2 * p] = (float)(hr[2 * p] * cb - hr[2 * p + 1] * sb);
        o[2 * p + 1] = (float)(hr[2 * p + 1] * cb + hr[2 * p] * sb);
      }
      for (int x = 0; x < g.f; x++) o[2 * g.m + x] = (float)qbase[x];
      if (nd > 0) noise_row(nkey, pos, g.noise0, d, sigma, o);
    }
  }
  free(lo_tab);
  free(hi_rot);

  /* Per-position features, added to the few rows they touch. */
  if (g.f > 0) {
    if (!isq) {
      double as = sgn(sp->sink_strength) * amp(sp->sink_strength, d);
      int64_t s1 = (int64_t)sp->sink_tokens < end ? (int64_t)sp->sink_tokens : end;
      for (int64_t j = pos0 > 0 ? pos0 : 0; j < s1 && as != 0; j++) {
        clear_locality(&g, out + (j - pos0) * rowlen);
        add_dir(&D, 0, as, &g, out + (j - pos0) * rowlen, tmp);
      }
      if (sp->heavy_hitters > 0) {
        int64_t *hv = malloc((size_t)sp->heavy_hitters * sizeof *hv);
        if (hv) {
          int nh = sr_synth_heavy(cfg, layer, kvh, hv, (int)sp->heavy_hitters);
          double ah = sgn(sp->heavy_strength) * amp(sp->heavy_strength, d);
          for (int t = 0; t < nh; t++)
            if (hv[t] >= pos0 && hv[t] < end && ah != 0) {
              clear_locality(&g, out + (hv[t] - pos0) * rowlen);
              add_dir(&D, 1, ah, &g, out + (hv[t] - pos0) * rowlen, tmp);
            }
          free(hv);
        } else {
          sr__poison_f32(out, (size_t)count * rowlen);
        }
      }
    }
    /* A needle of strength 0 is no needle at all (rows equal those of needles = 0). */
    if (sp->needles > 0 && sp->needle_strength != 0) {
      sr_needle *nv = malloc((size_t)sp->needles * sizeof *nv);
      if (nv) {
        int nn = sr_synth_needles(cfg, layer, kvh, nv, (int)sp->needles);
        for (int t = 0; t < nn; t++) {
          const int64_t S = nv[t].span;
          const int64_t first = isq ? nv[t].qpos : nv[t].kpos;
          const int64_t lo = first > pos0 ? first : pos0;
          const int64_t hi = first + S < end ? first + S : end;
          if (lo >= hi) continue;
          /* Every (query, key) pair of the needle shares the direction u_t, so each gets the
           * same needle term tau. tau cancels the locality term on average over the S^2
           * pairs, which would otherwise add a quasi-random +-locality/sqrt(2m) to them: the
           * pairs' distances are dist + delta (dist = qpos - kpos, |delta| < S), delta
           * occurring S - |delta| times, and
           *   sum_delta (S - |delta|) cos((dist + delta) theta) = cos(dist theta) F_S(theta),
           *   F_S(theta) = sin^2(S theta / 2) / sin^2(theta / 2)   (the Fejer kernel),
           * so the mean logit of the pairs is exactly needle_strength. (theta_p is in
           * [1e-9, 1], so sin(theta / 2) is never 0.) With S = 1 the factor is exactly 1: the
           * same numbers as the single-token rule. */
          const int64_t dist = nv[t].qpos - nv[t].kpos;
          double rho = 0;
          for (int p = 0; p < g.m; p++) {
            double fs = 1.0;
            if (S > 1) {
              double a = sin(0.5 * (double)S * th[p]), b = sin(0.5 * th[p]);
              fs = (a * a) / (b * b * (double)S * (double)S);
            }
            rho += cos((double)dist * th[p]) * fs;
          }
          rho = g.m > 0 ? rho / g.m : 0.0;
          double target = (double)sp->needle_strength - (double)sp->locality * rho;
          double an = amp(target, d);
          if (!isq) an *= sgn(target);
          for (int64_t pos = lo; pos < hi; pos++)
            add_dir(&D, 2 + t, an, &g, out + (pos - pos0) * rowlen, tmp);
        }
        free(nv);
      } else {
        sr__poison_f32(out, (size_t)count * rowlen);
      }
    }
  }
  free(D.basis);
  free(tmp);
  free(heap);
}

/* ---- the calibrated profile -------------------------------------------------------------- */

/* ln(n / SR_SYNTH_REF_KEYS) for the causal key count n = pos + 1 of a query row. */
static inline double keys_log(int64_t pos) {
  return log((double)(pos + 1) / (double)SR_SYNTH_REF_KEYS);
}
/* The noise of a query row relative to `noise`: 1 - NOISE_SLOPE ln(n / ref), within
 * [0.5, 1.5]. The top-f share of a heavy-tailed (log-normal) sample grows with the sample's
 * size, as larger samples draw heavier extremes; this keeps the bulk's curve flat in N. */
#define NOISE_SLOPE 0.005
static inline double noise_scale(double lam) {
  double s = 1.0 - NOISE_SLOPE * lam;
  return s < 0.5 ? 0.5 : s > 1.5 ? 1.5 : s;
}
/* How much a strength grows at a query row: ln(n / ref) plus the log of the bulk's mean weight
 * exp(sigma_row^2 / 2), sigma_row = noise x noise_scale: a feature of strength S then weighs
 * exp(S) n / ref times an average ordinary key of the row, i.e. it keeps its share of the row
 * at any key count and any noise. */
static inline double growth(double lam, double noise) {
  const double sr = noise * noise_scale(lam);
  return lam + 0.5 * sr * sr;
}
/* A strength at a query row: S + growth, at least 0; a strength of 0 stays 0. */
static inline double eff(double s, double lam) {
  if (!(s > 0)) return 0.0;
  double v = s + lam;
  return v > 0 ? v : 0.0;
}

/* The locality logit of a query row with per-pair amplitudes w[p] (already scaled, see
 * loc_weights) against the key span [kpos, kpos + S), averaged over the span:
 *   (1/m) sum_p w_p F_p Re(exp(i (D - (S-1)/2) th_p) conj(g_p)),  D = pos - kpos,
 * with g_p the key side's normalised complex gain and F_p = sin(S th_p / 2) / (S sin(th_p / 2))
 * (the mean over the span of exp(-i b th), b = 0..S-1, is exp(-i (S-1) th / 2) F_p). */
static double span_profile(int64_t dist, int64_t S, const double *th, const double *w,
                           const double *gain, int m) {
  if (m <= 0) return 0.0;
  double r = 0;
  const double mid = 0.5 * (double)(S - 1);
  for (int p = 0; p < m; p++) {
    if (w[p] == 0) continue;
    double f = 1.0;
    if (S > 1) {
      double a = sin(0.5 * (double)S * th[p]), b = sin(0.5 * th[p]);
      f = a / (b * (double)S);
    }
    const double ph = ((double)dist - mid) * th[p];
    r += w[p] * f * (gain[2 * p] * cos(ph) + gain[2 * p + 1] * sin(ph));
  }
  return r / m;
}

/* Per-pair locality amplitudes of a query row (in logit units): the base strength L on every
 * pair, plus lam_w (the growth with the key count, heads whose window keeps its share) on the
 * m_h = m/2 fastest pairs, times m / m_h, so that the diagonal gets L + lam_w while the far
 * jitter that the growth adds stays lam_w / sqrt(2 m_h) (the slow pairs, whose cosines do not
 * decay, are not scaled). Then scaled so that the diagonal's logit is exactly
 * max(0, L + lam_w) with the key side's gains. */
static void loc_weights(double L, double lam_w, const double *gain, int m, double *w) {
  if (!(L > 0) || m <= 0) {
    for (int p = 0; p < m; p++) w[p] = 0;
    return;
  }
  const int mh = m / 2 > 0 ? m / 2 : 1;
  double diag = 0;
  for (int p = 0; p < m; p++) {
    double v = L + (p < mh ? lam_w * (double)m / mh : 0.0);
    w[p] = v > 0 ? v : 0.0;
    diag += w[p] * gain[2 * p];
  }
  diag /= m;
  const double want = L + lam_w > 0 ? L + lam_w : 0.0;
  const double sc = diag > 0 ? want / diag : 0.0;
  for (int p = 0; p < m; p++) w[p] *= sc;
}

static void rows_calibrated(const sr_config *cfg, int layer, char which, int head, int64_t pos0,
                            int64_t count, float *out) {
  const int d = cfg->head_dim;
  const geom g = make_geom_calibrated(d, (int64_t)cfg->synth.needles);
  const size_t rowlen = (size_t)d;
  const bool isq = which == 'q';
  const int group = cfg->kv_heads > 0 && cfg->q_heads >= cfg->kv_heads
                        ? cfg->q_heads / cfg->kv_heads : 1;
  const int kvh = isq ? head / group : head;
  sr_synth_head hp;
  sr_synth_head_params(cfg, layer, kvh, &hp);
  const int64_t end = pos0 + count;
  if (g.m > 64) { /* head_dim > 256: beyond the schema's bound */
    sr__poison_f32(out, (size_t)count * rowlen);
    return;
  }

  /* Noise: entries of size sigma give a logit of standard deviation `noise`; a share of the
   * variance is common to the positions of a cluster [c G, (c + 1) G). */
  const int nd = d - g.noise0;
  const double sigma = nd > 0 ? sqrt(hp.noise) * pow((double)d / nd, 0.25) : 0.0;
  const double a_tok = sigma * sqrt(1.0 - hp.cluster_share);
  const double a_cl = sigma * sqrt(hp.cluster_share);
  const int64_t G = hp.cluster_tokens;
  const uint64_t nkey = stream_key(cfg->seed, isq ? TAG_Q : TAG_K, layer, head);
  const uint64_t ckey = stream_key(cfg->seed, isq ? TAG_QCLUSTER : TAG_KCLUSTER, layer, head);

  /* Locality: unit key amplitude a_k per pair (logit = amplitude ratio x profile); the query
   * carries L_eff(pos) a_k. Slash lines: the key side multiplies pair p by the complex gain
   * M_p = 1 + c sum_s exp(i off_s th_p), c = slash / locality. */
  double *th = NULL, *ph = NULL, *gain = NULL, *wtmp = NULL;
  int64_t off[64];
  const int nsl = hp.slashes > 0 ? sr_synth_slashes(cfg, layer, kvh, off, 64) : 0;
  const double csl = nsl > 0 && hp.locality > 0 ? hp.slash / hp.locality : 0.0;
  const double a_k = g.m > 0 ? sqrt(sqrt((double)d) / g.m) : 0.0;
  const double U = pow((double)d, 0.25); /* unit amplitude of a free direction */
  if (g.m > 0) {
    th = malloc(5 * (size_t)g.m * sizeof *th);
    if (!th) {
      sr__poison_f32(out, (size_t)count * rowlen);
      return;
    }
    ph = th + g.m;
    gain = th + 2 * g.m; /* [m][2] */
    wtmp = th + 4 * g.m; /* [m] per-pair amplitudes of one needle row */
    const double base = cfg->synth.rope_base > 1.0f ? (double)cfg->synth.rope_base : 1.0;
    const uint64_t pkey = stream_key(cfg->seed, TAG_PHASE, layer, kvh);
    for (int p = 0; p < g.m; p++) {
      th[p] = pow(base, -(double)p / g.m);
      ph[p] = TWO_PI * u01(stream_at(pkey, (uint64_t)p));
      double re = 1.0, im = 0.0;
      for (int s = 0; s < nsl; s++) {
        re += csl * cos((double)off[s] * th[p]);
        im += csl * sin((double)off[s] * th[p]);
      }
      gain[2 * p] = re;
      gain[2 * p + 1] = im;
    }
    /* Normalised so that the diagonal's logit is the locality: P(0) = mean_p Re M_p. */
    double p0 = 0;
    for (int p = 0; p < g.m; p++) p0 += gain[2 * p];
    p0 /= g.m;
    if (p0 > 0 && nsl > 0)
      for (int p = 0; p < 2 * g.m; p++) gain[p] /= p0;
  }

  /* Shared directions: 0 sink, 1 heavy, 2 + t needle t (as in the plain profile). */
  dirs D = {stream_key(cfg->seed, TAG_DIR, layer, kvh), g.f, 0, NULL};
  double *sdir = NULL, *hdir = NULL, *tmp = NULL;
  if (g.f > 0) {
    D.basis = malloc((size_t)g.f * g.f * sizeof *D.basis);
    sdir = malloc(3 * (size_t)g.f * sizeof *sdir);
    if (!D.basis || !sdir) {
      free(D.basis);
      free(sdir);
      free(th);
      sr__poison_f32(out, (size_t)count * rowlen);
      return;
    }
    hdir = sdir + g.f;
    tmp = sdir + 2 * g.f;
    dir_get(&D, 0, sdir);
    dir_get(&D, 1, hdir);
  }
  const bool has_sink = hp.sink > 0 && hp.sink_tokens > 0;
  const bool has_heavy = hp.heavy > 0 && hp.heavy_hitters > 0;

  const int64_t nruns = ((end - 1) >> LO_BITS) - (pos0 >> LO_BITS) + 1;
  double *lo_tab = NULL, *hi_rot = NULL;
  if (g.m > 0) {
    if (!rot_alloc(nruns, count, g.m, &hi_rot, &lo_tab)) {
      free(D.basis);
      free(sdir);
      free(th);
      sr__poison_f32(out, (size_t)count * rowlen);
      return;
    }
  }
  if (lo_tab) fill_lo_table(lo_tab, th, g.m);

#pragma omp parallel for schedule(dynamic, 1) if (count >= LO_SIZE)
  for (int64_t run = 0; run < nruns; run++) {
    const int64_t hi = (pos0 >> LO_BITS) + run;
    int64_t r0 = (hi << LO_BITS) - pos0, r1 = ((hi + 1) << LO_BITS) - pos0;
    if (r0 < 0) r0 = 0;
    if (r1 > count) r1 = count;
    double *hr = hi_rot ? hi_rot + (size_t)run * 2 * g.m : NULL;
    for (int p = 0; p < g.m; p++) {
      double a = (double)(hi << LO_BITS) * th[p] + ph[p];
      double c = cos(a), s = sin(a);
      if (isq) {
        hr[2 * p] = c;
        hr[2 * p + 1] = s;
      } else { /* times a_k M_p */
        const double gr = gain[2 * p], gi = gain[2 * p + 1];
        hr[2 * p] = a_k * (c * gr - s * gi);
        hr[2 * p + 1] = a_k * (c * gi + s * gr);
      }
    }
    for (int64_t r = r0; r < r1; r++) {
      const int64_t pos = pos0 + r;
      const int lo = (int)(pos & (LO_SIZE - 1));
      float *o = out + r * rowlen;
      const double lam = keys_log(pos), gr = growth(lam, hp.noise);
      double wq[64];
      if (isq) loc_weights(hp.locality, hp.window * gr, gain, g.m, wq);
      for (int p = 0; p < g.m; p++) {
        const double aq = isq ? wq[p] * a_k : 1.0;
        double cb, sb;
        if (lo_tab) {
          cb = lo_tab[((size_t)lo * g.m + p) * 2];
          sb = lo_tab[((size_t)lo * g.m + p) * 2 + 1];
        } else {
          cb = cos((double)lo * th[p]);
          sb = sin((double)lo * th[p]);
        }
        o[2 * p] = (float)(aq * (hr[2 * p] * cb - hr[2 * p + 1] * sb));
        o[2 * p + 1] = (float)(aq * (hr[2 * p + 1] * cb + hr[2 * p] * sb));
      }
      if (isq) {
        const double cs = has_sink ? eff(hp.sink, gr) * U : 0.0;
        const double ch = has_heavy ? eff(hp.heavy, gr) * U : 0.0;
        for (int x = 0; x < g.f; x++) o[2 * g.m + x] = (float)(cs * sdir[x] + ch * hdir[x]);
      } else {
        for (int x = 0; x < g.f; x++) o[2 * g.m + x] = 0.0f;
      }
      if (nd > 0) {
        const uint64_t rk = mix64(nkey ^ (uint64_t)pos);
        const double sq = isq ? noise_scale(lam) : 1.0; /* the row's noise, on the q side */
        if (a_cl > 0) {
          const uint64_t ck = mix64(ckey ^ (uint64_t)(pos / G));
          for (int x = g.noise0; x < d; x++)
            o[x] = (float)(sq * (a_tok * gauss(stream_at(rk, (uint64_t)x)) +
                                 a_cl * gauss(stream_at(ck, (uint64_t)x))));
        } else {
          for (int x = g.noise0; x < d; x++)
            o[x] = (float)(sq * a_tok * gauss(stream_at(rk, (uint64_t)x)));
        }
        if (isq) {
          /* A query's noise vector has the norm its entries have on average, so that its
           * logits against the keys' noise are a Gaussian of standard deviation exactly
           * noise x sq for every row (the keys' entries are Gaussian). */
          double n2 = 0;
          for (int x = g.noise0; x < d; x++) n2 += (double)o[x] * (double)o[x];
          const double want = sq * sigma * sqrt((double)nd);
          const double f = n2 > 0 ? want / sqrt(n2) : 0.0;
          for (int x = g.noise0; x < d; x++) o[x] = (float)(f * (double)o[x]);
        }
      }
    }
  }
  free(lo_tab);
  free(hi_rot);

  /* Per-position features, added to the few rows they touch. */
  if (g.f > 0) {
    if (!isq) {
      int64_t s1 = (int64_t)hp.sink_tokens < end ? (int64_t)hp.sink_tokens : end;
      for (int64_t j = pos0 > 0 ? pos0 : 0; j < s1 && has_sink; j++) {
        clear_feature_key(&g, out + (j - pos0) * rowlen);
        add_dir(&D, 0, U, &g, out + (j - pos0) * rowlen, tmp);
      }
      if (has_heavy) {
        int64_t *hv = malloc((size_t)hp.heavy_hitters * sizeof *hv);
        if (hv) {
          int nh = sr_synth_heavy(cfg, layer, kvh, hv, hp.heavy_hitters);
          for (int t = 0; t < nh; t++)
            if (hv[t] >= pos0 && hv[t] < end) {
              clear_feature_key(&g, out + (hv[t] - pos0) * rowlen);
              add_dir(&D, 1, U, &g, out + (hv[t] - pos0) * rowlen, tmp);
            }
          free(hv);
        } else {
          sr__poison_f32(out, (size_t)count * rowlen);
        }
      }
    }
    if (hp.needles > 0 && hp.needle > 0) {
      sr_needle *nv = malloc((size_t)hp.needles * sizeof *nv);
      if (nv) {
        int nn = sr_synth_needles(cfg, layer, kvh, nv, hp.needles);
        for (int t = 0; t < nn; t++) {
          const int64_t S = nv[t].span;
          const int64_t first = isq ? nv[t].qpos : nv[t].kpos;
          const int64_t lo = first > pos0 ? first : pos0;
          const int64_t hi = first + S < end ? first + S : end;
          for (int64_t pos = lo; pos < hi; pos++) {
            double a = U;
            if (isq) {
              /* tau(i) = S_n,eff - L_eff * (the row's mean locality profile over the key
               * span): the row's mean logit over its key span is exactly S_n,eff. */
              const double gr = growth(keys_log(pos), hp.noise);
              loc_weights(hp.locality, hp.window * gr, gain, g.m, wtmp);
              const double pbar = span_profile(pos - nv[t].kpos, S, th, wtmp, gain, g.m);
              a = (eff(hp.needle, gr) - pbar) * U;
            }
            add_dir(&D, 2 + t, a, &g, out + (pos - pos0) * rowlen, tmp);
          }
        }
        free(nv);
      } else {
        sr__poison_f32(out, (size_t)count * rowlen);
      }
    }
  }
  free(D.basis);
  free(sdir);
  free(th);
}

void sr_synth_rows(const sr_config *cfg, int layer, char which, int head, int64_t pos0,
                   int64_t count, float *out) {
  if (which == 'v' || !calibrated(cfg) || count <= 0 || cfg->head_dim <= 0)
    rows_plain(cfg, layer, which, head, pos0, count, out);
  else if (which != 'q' && which != 'k')
    sr__poison_f32(out, (size_t)count * (size_t)cfg->head_dim);
  else
    rows_calibrated(cfg, layer, which, head, pos0, count, out);
}
