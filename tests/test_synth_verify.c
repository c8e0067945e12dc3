/*
 * test_synth_verify.c — the synthetic generator (determinism, structure that appears and
 * disappears with its strength) and the float64 verifier (exact inputs give zero error and
 * full recall; perturbations, partial selections and missed needles are measured exactly;
 * the sums do not depend on the rank count).
 *
 * Structure is measured with exact attention computed here in float64 from the generated
 * rows, independently of sr_verify. Every structure check is run twice: with the proposed
 * default strength it must pass, with that strength set to 0 it must fail.
 *
 * Needles span needle_span tokens on each side (default 16); span 1 (single-token needles)
 * must give bit for bit the rows of the generator before spans existed (golden hashes).
 *
 * Configs are built here zeroed, which is the plain profile (input.synthetic.profile 0): every
 * structure test below is of the plain generator, whose rows the calibrated profile leaves
 * unchanged. The verifier tests also run on the calibrated profile (test_verify_exact,
 * test_verify_rank_count); the calibrated generator itself is tested in test_synth_calib.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "sr_plan.h"
#include "sr_select.h"
#include "sr_synth.h"
#include "sr_test.h"
#include "sr_verify.h"

static uint64_t g_seed;

/* The proposed defaults (docs/SYNTHETIC.md). */
static void synth_defaults(sr_synth_params *s) {
  s->sink_tokens = 4;
  s->sink_strength = 8.0f;
  s->locality = 6.0f;
  s->rope_base = 10000.0f;
  s->heavy_hitters = 4;
  s->heavy_strength = 6.0f;
  s->needles = 4;
  s->needle_strength = 14.0f;
  s->needle_span = 16;
  s->noise = 1.0f;
}

static void make_cfg(sr_config *c, int64_t n, int d, int q_heads, int kv_heads, int b) {
  memset(c, 0, sizeof *c);
  c->q_heads = q_heads;
  c->kv_heads = kv_heads;
  c->head_dim = d;
  c->layers = 2;
  c->input_source = SR_INPUT_SYNTHETIC;
  c->seed = g_seed;
  synth_defaults(&c->synth);
  c->seq_len = n;
  c->shard = SR_SHARD_ZIGZAG;
  c->method = SR_METHOD_DENSE;
  c->block_q = b;
  c->block_k = b;
  c->verify_rows = 0;
}

/* ---- generator --------------------------------------------------------------------------- */

static void test_chunking_invariance(void **state) {
  (void)state;
  sr_config c;
  const int d = 64;
  const int64_t n = 3000, p0 = 700; /* crosses 1024-position boundaries at odd offsets */
  float *one = malloc(sizeof(float) * n * d), *many = malloc(sizeof(float) * n * d);
  const char *which = "qkv";
  for (int sp = 0; sp < 2; sp++) {
    make_cfg(&c, 4096, 64, 4, 2, 16);
    c.synth.needle_span = sp ? 16 : 1;
    for (int w = 0; w < 3; w++) {
      for (int layer = 0; layer < 2; layer++) {
        for (int head = 0; head < (which[w] == 'q' ? 4 : 2); head++) {
          sr_synth_rows(&c, layer, which[w], head, p0, n, one);
          /* Ten calls of 300, then single rows at scattered places. */
          for (int k = 0; k < 10; k++)
            sr_synth_rows(&c, layer, which[w], head, p0 + k * 300, 300, many + (size_t)k * 300 * d);
          assert_memory_equal(one, many, sizeof(float) * n * d);
          for (int64_t r = 0; r < n; r += 97) {
            float row[64];
            sr_synth_rows(&c, layer, which[w], head, p0 + r, 1, row);
            assert_memory_equal(row, one + r * d, sizeof row);
          }
          for (int64_t i = 0; i < n * d; i++) assert_true(isfinite(one[i]));
          /* Calls that start or end inside a needle span. */
          if (which[w] == 'v') continue;
          sr_needle nd[4];
          int nn = sr_synth_needles(&c, layer, which[w] == 'q' ? head / 2 : head, nd, 4);
          for (int t = 0; t < nn; t++) {
            int64_t a = (which[w] == 'q' ? nd[t].qpos : nd[t].kpos) - 5, len = nd[t].span + 10;
            if (a < 0) a = 0;
            sr_synth_rows(&c, layer, which[w], head, a, len, one);
            for (int64_t r = 0; r < len; r += 3) {
              int64_t cnt = len - r < 3 ? len - r : 3;
              sr_synth_rows(&c, layer, which[w], head, a + r, cnt, many);
              assert_memory_equal(many, one + r * d, sizeof(float) * cnt * d);
            }
          }
        }
      }
    }
  }
  free(one);
  free(many);
}

/* FNV-1a 64 over bytes. */
static uint64_t fnv64(const void *p, size_t n, uint64_t h) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) {
    h ^= b[i];
    h *= 1099511628211ull;
  }
  return h;
}

/* needle_span 1 is the single-token generator exactly: the rows and needle positions of a
 * fixed config (seed 1234, N 4096, d 64, 4 q-heads, 2 kv-heads, default strengths) equal,
 * bit for bit, those of the generator before needle_span existed. The hashes were taken
 * with that generator (GCC 12, x86-64, glibc libm); the code computes every value in a fixed
 * order in ISO C mode, where GCC does not contract a*b+c into an FMA, so the rows are the same
 * on any such build. A compiler that contracts by default (clang) may round differently:
 * there only the positions are compared. */
static void test_span1_is_single_token(void **state) {
  (void)state;
  sr_config c;
  make_cfg(&c, 4096, 64, 4, 2, 16);
  c.seed = 1234;
  c.synth.needle_span = 1;
  static const int64_t want_pos[2][2][4][2] = {
      {{{2098, 532}, {2867, 825}, {3338, 1919}, {3785, 2316}},
       {{2416, 183}, {2599, 699}, {3516, 65}, {3595, 553}}},
      {{{2544, 255}, {2940, 1345}, {3127, 1474}, {3900, 2695}},
       {{2431, 1177}, {2944, 871}, {3172, 168}, {3631, 273}}}};
  static const uint64_t want_q[2] = {0xe52d5e100537bcdeull, 0xa098481dc788ea39ull};
  static const uint64_t want_k[2] = {0x4ba398ce9ad266dcull, 0xc848d3def8efee00ull};
  const int64_t n = 4096;
  const int d = 64;
  float *buf = malloc(sizeof(float) * n * d);
  for (int layer = 0; layer < 2; layer++) {
    for (int kvh = 0; kvh < 2; kvh++) {
      sr_needle nd[4];
      assert_int_equal(sr_synth_needles(&c, layer, kvh, nd, 4), 4);
      for (int t = 0; t < 4; t++) {
        assert_true(nd[t].qpos == want_pos[layer][kvh][t][0]);
        assert_true(nd[t].kpos == want_pos[layer][kvh][t][1]);
        assert_true(nd[t].span == 1);
      }
    }
    uint64_t hq = 1469598103934665603ull, hk = hq;
    for (int h = 0; h < 4; h++) {
      sr_synth_rows(&c, layer, 'q', h, 0, n, buf);
      hq = fnv64(buf, sizeof(float) * n * d, hq);
    }
    for (int h = 0; h < 2; h++) {
      sr_synth_rows(&c, layer, 'k', h, 0, n, buf);
      hk = fnv64(buf, sizeof(float) * n * d, hk);
    }
#if defined(__GNUC__) && !defined(__clang__)
    if (hq != want_q[layer] || hk != want_k[layer])
      fprintf(stderr, "# layer %d: q %016llx k %016llx\n", layer, (unsigned long long)hq,
              (unsigned long long)hk);
    assert_true(hq == want_q[layer]);
    assert_true(hk == want_k[layer]);
#else
    (void)want_q;
    (void)want_k;
#endif
  }
  /* A span of 0 (a config built in code) counts as 1. */
  sr_config z = c;
  z.synth.needle_span = 0;
  float *b2 = malloc(sizeof(float) * 512 * d);
  sr_needle nd1[4], nd0[4];
  sr_synth_needles(&c, 0, 1, nd1, 4);
  sr_synth_needles(&z, 0, 1, nd0, 4);
  assert_memory_equal(nd1, nd0, sizeof nd1);
  for (int w = 0; w < 2; w++) {
    sr_synth_rows(&c, 0, "qk"[w], 1, 2000, 512, buf);
    sr_synth_rows(&z, 0, "qk"[w], 1, 2000, 512, b2);
    assert_memory_equal(buf, b2, sizeof(float) * 512 * d);
  }
  free(b2);
  free(buf);
}

/* Fraction of values that differ between two configs / heads / layers. */
static double frac_differ(const float *a, const float *b, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) k += a[i] != b[i];
  return (double)k / (double)n;
}

static void test_streams_differ(void **state) {
  (void)state;
  sr_config c, c2;
  make_cfg(&c, 4096, 64, 4, 2, 16);
  c2 = c;
  c2.seed = g_seed + 1;
  const int d = 64, n = 512;
  float *a = malloc(sizeof(float) * n * d), *b = malloc(sizeof(float) * n * d);
  const char *which = "qkv";
  for (int w = 0; w < 3; w++) {
    sr_synth_rows(&c, 0, which[w], 1, 1000, n, a);
    sr_synth_rows(&c2, 0, which[w], 1, 1000, n, b);
    assert_true(frac_differ(a, b, (size_t)n * d) > 0.4); /* other seed */
    sr_synth_rows(&c, 1, which[w], 1, 1000, n, b);
    assert_true(frac_differ(a, b, (size_t)n * d) > 0.4); /* other layer */
    sr_synth_rows(&c, 0, which[w], 0, 1000, n, b);
    assert_true(frac_differ(a, b, (size_t)n * d) > 0.2); /* other head */
  }
  /* v: standard Gaussian entries. */
  sr_synth_rows(&c, 0, 'v', 0, 0, n, a);
  double s = 0, s2 = 0;
  for (int i = 0; i < n * d; i++) {
    s += a[i];
    s2 += (double)a[i] * a[i];
  }
  s /= n * d;
  s2 = s2 / (n * d) - s * s;
  assert_true(fabs(s) < 0.03);
  assert_true(fabs(s2 - 1.0) < 0.05);
  free(a);
  free(b);
}

/* The placement rules of docs/SYNTHETIC.md for any N and span: both spans inside [0, N), the
 * key span before the query span, query starts non-decreasing; the span is
 * min(needle_span, N / 2). */
static void check_needles(const sr_config *c, const sr_needle *nd, int nn) {
  const int64_t n = c->seq_len;
  int64_t want_span = c->synth.needle_span ? (int64_t)c->synth.needle_span : 1;
  if (want_span > n / 2) want_span = n / 2 > 1 ? n / 2 : 1;
  assert_true(sr_synth_needle_span(c) == want_span);
  for (int t = 0; t < nn; t++) {
    assert_true(nd[t].span == want_span);
    assert_true(nd[t].qpos >= n / 2 && nd[t].qpos + nd[t].span <= n);
    assert_true(nd[t].kpos >= 0 && nd[t].kpos + nd[t].span <= nd[t].qpos);
    if (t) assert_true(nd[t].qpos >= nd[t - 1].qpos);
  }
}

static void test_positions(void **state) {
  (void)state;
  sr_config c;
  for (int sp = 0; sp < 3; sp++) {
    make_cfg(&c, 65536, 64, 4, 2, 64);
    c.synth.needles = 7;
    c.synth.heavy_hitters = 9;
    c.synth.needle_span = sp == 0 ? 1 : sp == 1 ? 16 : 4096;
    for (int kvh = 0; kvh < 2; kvh++) {
      sr_needle nd[16];
      int nn = sr_synth_needles(&c, 0, kvh, nd, 16);
      assert_int_equal(nn, 7);
      check_needles(&c, nd, nn);
      for (int t = 0; t < nn; t++) {
        const int64_t S = nd[t].span;
        assert_true(S == (int64_t)c.synth.needle_span);
        assert_true(nd[t].qpos >= c.seq_len / 2 && nd[t].qpos + S <= c.seq_len);
        assert_true(nd[t].kpos >= (int64_t)c.synth.sink_tokens);
        /* Every (query, key) pair at least N/4 apart; each query span inside its stratum. */
        assert_true(nd[t].qpos - (nd[t].kpos + S - 1) >= c.seq_len / 4);
        int64_t s0 = c.seq_len / 2 + t * (c.seq_len / 2) / 7;
        int64_t s1 = c.seq_len / 2 + (t + 1) * (c.seq_len / 2) / 7;
        assert_true(nd[t].qpos >= s0 && nd[t].qpos + S <= s1);
      }
      /* Fewer slots than needles: a prefix of the same list. */
      sr_needle nd3[3];
      assert_int_equal(sr_synth_needles(&c, 0, kvh, nd3, 3), 3);
      assert_memory_equal(nd3, nd, sizeof nd3);
      int64_t hv[16];
      int nh = sr_synth_heavy(&c, 0, kvh, hv, 16);
      assert_int_equal(nh, 9);
      for (int t = 0; t < nh; t++) {
        assert_true(hv[t] >= (int64_t)c.synth.sink_tokens && hv[t] < c.seq_len);
        if (t) assert_true(hv[t] > hv[t - 1]);
      }
      /* No needle key span holds a heavy hitter, where room is plenty (spans 1 and 16; a
       * 4096-token span between heavy hitters 7000 apart may find none). */
      for (int t = 0; t < nn && nd[0].span <= 16; t++)
        for (int u = 0; u < nh; u++)
          assert_false(hv[u] >= nd[t].kpos && hv[u] < nd[t].kpos + nd[t].span);
    }
  }
  /* Every N from 2 to 300 with spans 1, 3, 16 and 4096, more needles than room. */
  for (int64_t n = 2; n <= 300; n++)
    for (int sp = 0; sp < 4; sp++) {
      make_cfg(&c, n, 64, 4, 2, 16);
      c.synth.needles = 9;
      c.synth.needle_span = sp == 0 ? 1 : sp == 1 ? 3 : sp == 2 ? 16 : 4096;
      sr_needle nd[9];
      int nn = sr_synth_needles(&c, 1, 1, nd, 9);
      assert_int_equal(nn, 9);
      check_needles(&c, nd, nn);
    }
  make_cfg(&c, 65536, 64, 4, 2, 64);
  c.synth.needles = 7;
  /* The other kv-head and the other layer have other positions. */
  sr_needle a[7], b[7];
  sr_synth_needles(&c, 0, 0, a, 7);
  sr_synth_needles(&c, 0, 1, b, 7);
  assert_memory_not_equal(a, b, sizeof a);
  sr_synth_needles(&c, 1, 0, b, 7);
  assert_memory_not_equal(a, b, sizeof a);
  /* Tiny sequences and zero counts. */
  c.seq_len = 1;
  sr_needle one[4];
  assert_int_equal(sr_synth_needles(&c, 0, 0, one, 4), 0);
  c.seq_len = 2;
  assert_true(sr_synth_needles(&c, 0, 0, one, 4) > 0);
  assert_true(one[0].kpos < one[0].qpos);
  c.seq_len = 4096;
  c.synth.needles = 0;
  c.synth.heavy_hitters = 0;
  assert_int_equal(sr_synth_needles(&c, 0, 0, one, 4), 0);
  int64_t h1[4];
  assert_int_equal(sr_synth_heavy(&c, 0, 0, h1, 4), 0);
}

/* Strength 0 switches a feature off: the rows equal those with the feature's count at 0. */
static void test_zero_strength_is_off(void **state) {
  (void)state;
  sr_config on, off;
  make_cfg(&on, 4096, 64, 4, 2, 16);
  const int n = 4096, d = 64;
  float *a = malloc(sizeof(float) * n * d), *b = malloc(sizeof(float) * n * d);
  for (int f = 0; f < 3; f++) {
    make_cfg(&on, 4096, 64, 4, 2, 16);
    off = on;
    /* (Heavy and needle positions avoid the sinks, so they move with sink_tokens.) */
    if (f == 0) {
      on.synth.heavy_hitters = on.synth.needles = 0;
      off = on;
      on.synth.sink_strength = 0;
      off.synth.sink_tokens = 0;
    }
    if (f == 1) { on.synth.heavy_strength = 0; off.synth.heavy_hitters = 0; }
    if (f == 2) { on.synth.needle_strength = 0; off.synth.needles = 0; }
    for (int w = 0; w < 2; w++) {
      sr_synth_rows(&on, 0, "qk"[w], 1, 0, n, a);
      sr_synth_rows(&off, 0, "qk"[w], 1, 0, n, b);
      assert_memory_equal(a, b, sizeof(float) * n * d);
    }
  }
  /* Odd and tiny head dims still give finite rows. */
  for (int dd = 1; dd <= 9; dd++) {
    make_cfg(&on, 256, dd, 4, 2, 16);
    for (int w = 0; w < 3; w++) {
      sr_synth_rows(&on, 0, "qkv"[w], 0, 0, 256, a);
      for (int i = 0; i < 256 * dd; i++) assert_true(isfinite(a[i]));
    }
  }
  free(a);
  free(b);
}

/* ---- structure, measured with exact attention ------------------------------------------ */

typedef struct structure {
  double sink_ratio;    /* mean sink mass / (sink_tokens / keys)                          */
  double recency_ratio; /* mean weight of the ordinary keys among the last 64 / mean weight
                           of the ordinary keys further back                              */
  double heavy_ratio;   /* mean weight of a heavy key / mean weight of ordinary keys       */
  double needle_mass;   /* mean weight of the needle's key span on a query of its span     */
  double needle_x_pos;  /* needle_mass * (pos + 1) / span: the span vs uniform keys        */
} structure;

/* Probabilities of row (h, pos) over keys 0..pos of K (kv-head rows [N][d]). */
static void row_probs(const sr_config *c, int h, int64_t pos, const float *K, double *p) {
  const int d = c->head_dim;
  float *q = malloc(sizeof(float) * d);
  sr_synth_rows(c, 0, 'q', h, pos, 1, q);
  double m = -INFINITY, l = 0, sc = 1.0 / sqrt((double)d);
  for (int64_t j = 0; j <= pos; j++) {
    double s = 0;
    for (int x = 0; x < d; x++) s += (double)q[x] * K[j * d + x];
    p[j] = s * sc;
    if (p[j] > m) m = p[j];
  }
  for (int64_t j = 0; j <= pos; j++) l += (p[j] = exp(p[j] - m));
  for (int64_t j = 0; j <= pos; j++) p[j] /= l;
  free(q);
}

static void measure(const sr_config *c, structure *s) {
  const int64_t n = c->seq_len;
  const int d = c->head_dim, group = c->q_heads / c->kv_heads;
  const int64_t T = c->synth.sink_tokens;
  float *K = malloc(sizeof(float) * n * d);
  double *p = malloc(sizeof(double) * n);
  char *special = malloc((size_t)n);
  memset(s, 0, sizeof *s);
  int rows = 0, hrows = 0, nrows = 0;
  for (int kvh = 0; kvh < c->kv_heads; kvh++) {
    sr_synth_rows(c, 0, 'k', kvh, 0, n, K);
    int64_t hv[64];
    int nh = sr_synth_heavy(c, 0, kvh, hv, 64);
    sr_needle nd[64];
    int nn = sr_synth_needles(c, 0, kvh, nd, 64);
    memset(special, 0, (size_t)n);
    for (int64_t j = 0; j < T && j < n; j++) special[j] = 1;
    for (int t = 0; t < nh; t++) special[hv[t]] = 1;
    for (int t = 0; t < nn; t++)
      for (int64_t j = nd[t].kpos; j < nd[t].kpos + nd[t].span; j++) special[j] = 1;
    for (int g = 0; g < group; g++) {
      const int h = kvh * group + g;
      for (int r = 0; r < 12; r++) {
        int64_t pos = n / 2 + 17 + r * (n / 2 - 40) / 12;
        /* Not a needle query row (those are measured below: a needle row attends to its key
         * span, which may hold a heavy hitter). */
        for (bool moved = true; moved;) {
          moved = false;
          for (int t = 0; t < nn; t++)
            if (pos >= nd[t].qpos && pos < nd[t].qpos + nd[t].span) {
              pos = nd[t].qpos + nd[t].span;
              moved = true;
            }
        }
        if (pos >= n) continue;
        row_probs(c, h, pos, K, p);
        double sink = 0, last = 0, ord = 0;
        int64_t nord = 0, nlast = 0;
        for (int64_t j = 0; j < T; j++) sink += p[j];
        for (int64_t j = pos - 63; j <= pos; j++)
          if (!special[j]) {
            last += p[j];
            nlast++;
          }
        for (int64_t j = 0; j <= pos - 64; j++)
          if (!special[j]) {
            ord += p[j];
            nord++;
          }
        ord /= (double)nord;
        s->sink_ratio += sink / ((double)T / (double)(pos + 1));
        s->recency_ratio += last / (double)nlast / ord;
        rows++;
        double hm = 0;
        int hk = 0;
        for (int t = 0; t < nh; t++)
          if (hv[t] <= pos - 64) {
            hm += p[hv[t]];
            hk++;
          }
        if (hk) {
          s->heavy_ratio += hm / hk / ord;
          hrows++;
        }
      }
      for (int t = 0; t < nn; t++)
        for (int64_t i = nd[t].qpos; i < nd[t].qpos + nd[t].span; i++) {
          row_probs(c, h, i, K, p);
          double ms = 0;
          for (int64_t j = nd[t].kpos; j < nd[t].kpos + nd[t].span; j++) ms += p[j];
          s->needle_mass += ms;
          s->needle_x_pos += ms * (double)(i + 1) / (double)nd[t].span;
          nrows++;
        }
    }
  }
  s->sink_ratio /= rows;
  s->recency_ratio /= rows;
  s->heavy_ratio = hrows ? s->heavy_ratio / hrows : 0;
  s->needle_mass = nrows ? s->needle_mass / nrows : 0;
  s->needle_x_pos = nrows ? s->needle_x_pos / nrows : 0;
  free(K);
  free(p);
  free(special);
}

/* The checks: each states what "the feature is visible" means. */
static bool sinks_visible(const structure *s) { return s->sink_ratio > 20; }
static bool recency_visible(const structure *s) { return s->recency_ratio > 3; }
static bool heavy_visible(const structure *s) { return s->heavy_ratio > 20; }
static bool needle_visible(const structure *s) {
  return s->needle_mass > 0.3 && s->needle_x_pos > 50;
}

static void print_structure(const char *what, const structure *s) {
  fprintf(stderr,
          "# %-16s sink x%.1f  recency x%.1f  heavy x%.1f  needle mass %.3f (x%.0f uniform)\n",
          what, s->sink_ratio, s->recency_ratio, s->heavy_ratio, s->needle_mass, s->needle_x_pos);
}

/* Bits 0..3: sinks, recency, heavy hitters, needles visible. */
static unsigned visible(const structure *s) {
  return (unsigned)sinks_visible(s) | (unsigned)recency_visible(s) << 1 |
         (unsigned)heavy_visible(s) << 2 | (unsigned)needle_visible(s) << 3;
}

static void test_structure(void **state) {
  (void)state;
  sr_config c;
  structure s;
  make_cfg(&c, 4096, 64, 4, 2, 16);
  measure(&c, &s);
  print_structure("defaults", &s);
  assert_int_equal(visible(&s), 0xF);

  /* Each strength at 0 removes its structure and only that one. */
  static const char *const knob[4] = {"sink_strength 0", "locality 0", "heavy_strength 0",
                                      "needle_strength 0"};
  for (unsigned k = 0; k < 4; k++) {
    make_cfg(&c, 4096, 64, 4, 2, 16);
    float *field[4] = {&c.synth.sink_strength, &c.synth.locality, &c.synth.heavy_strength,
                       &c.synth.needle_strength};
    *field[k] = 0;
    measure(&c, &s);
    print_structure(knob[k], &s);
    assert_int_equal(visible(&s), 0xF & ~(1u << k));
  }

  /* Single-token needles. */
  make_cfg(&c, 4096, 64, 4, 2, 16);
  c.synth.needle_span = 1;
  measure(&c, &s);
  print_structure("span 1", &s);
  assert_true(sinks_visible(&s) && recency_visible(&s) && heavy_visible(&s));
  assert_true(needle_visible(&s));
  c.synth.needle_strength = 0;
  measure(&c, &s);
  print_structure("span 1, needle 0", &s);
  assert_false(needle_visible(&s));
}

/* Exact float64 attention of every query row of every needle span (all q-heads) on its key
 * span, at N = 16K and the default strengths: min and mean over the rows. */
static void span_mass(const sr_config *c, double *mn, double *mean, int64_t *rows) {
  const int64_t n = c->seq_len;
  const int d = c->head_dim, group = c->q_heads / c->kv_heads;
  float *K = malloc(sizeof(float) * n * d);
  double *p = malloc(sizeof(double) * n);
  *mn = INFINITY;
  *mean = 0;
  *rows = 0;
  for (int kvh = 0; kvh < c->kv_heads; kvh++) {
    sr_synth_rows(c, 0, 'k', kvh, 0, n, K);
    sr_needle nd[8];
    int nn = sr_synth_needles(c, 0, kvh, nd, 8);
    for (int g = 0; g < group; g++)
      for (int t = 0; t < nn; t++)
        for (int64_t i = nd[t].qpos; i < nd[t].qpos + nd[t].span; i++) {
          row_probs(c, kvh * group + g, i, K, p);
          double ms = 0;
          for (int64_t j = nd[t].kpos; j < nd[t].kpos + nd[t].span; j++) ms += p[j];
          if (ms < *mn) *mn = ms;
          *mean += ms;
          (*rows)++;
        }
  }
  *mean /= (double)*rows;
  free(K);
  free(p);
}

static void test_span_mass(void **state) {
  (void)state;
  sr_config c;
  double mn, mean;
  int64_t rows;
  make_cfg(&c, 16384, 64, 4, 2, 16);
  assert_int_equal(c.synth.needle_span, 16);
  span_mass(&c, &mn, &mean, &rows);
  fprintf(stderr, "# span 16, N 16K: key-span mass of %lld needle rows: min %.4f mean %.4f\n",
          (long long)rows, mn, mean);
  assert_int_equal(rows, 2 * 2 * 4 * 16);
  assert_true(mn > 0.5);
  c.synth.needle_strength = 0;
  span_mass(&c, &mn, &mean, &rows);
  fprintf(stderr, "# span 16, N 16K, needle_strength 0: min %.4f mean %.4f\n", mn, mean);
  assert_false(mn > 0.5);
  assert_true(mean < 0.05);
}

/* With noise 0 the logits are exactly the sum of the feature terms (docs/SYNTHETIC.md). */
static void test_exact_logits(void **state) {
  (void)state;
  sr_config c;
  make_cfg(&c, 8192, 64, 4, 2, 16);
  c.synth.needle_span = 1;
  c.synth.noise = 0;
  const int d = 64, m = d / 4;
  const double sc = 1.0 / sqrt((double)d);
  sr_needle nd[4];
  int nn = sr_synth_needles(&c, 0, 1, nd, 4);
  int64_t hv[4];
  int nh = sr_synth_heavy(&c, 0, 1, hv, 4);
  float q[64], k[64];
  /* Needle pairs: exactly needle_strength. */
  for (int t = 0; t < nn; t++) {
    sr_synth_rows(&c, 0, 'q', 2, nd[t].qpos, 1, q);
    sr_synth_rows(&c, 0, 'k', 1, nd[t].kpos, 1, k);
    double s = 0;
    for (int x = 0; x < d; x++) s += (double)q[x] * k[x];
    assert_true(fabs(s * sc - c.synth.needle_strength) < 1e-3);
  }
  /* Sinks and heavies: exactly their strength; ordinary keys: locality * rho. */
  int64_t qpos = 6000;
  sr_synth_rows(&c, 0, 'q', 3, qpos, 1, q);
  for (int64_t j = 0; j < 4000; j += 1) {
    sr_synth_rows(&c, 0, 'k', 1, j, 1, k);
    double s = 0;
    for (int x = 0; x < d; x++) s += (double)q[x] * k[x];
    double want;
    bool heavy = false, needle = false;
    for (int t = 0; t < nh; t++) heavy |= hv[t] == j;
    for (int t = 0; t < nn; t++) needle |= nd[t].kpos == j;
    if (needle) continue; /* its u is orthogonal to the query's: locality * rho like others */
    if (j < 4) want = c.synth.sink_strength;
    else if (heavy) want = c.synth.heavy_strength;
    else {
      double rho = 0;
      for (int p = 0; p < m; p++) rho += cos((double)(qpos - j) * pow(10000.0, -(double)p / m));
      want = c.synth.locality * rho / m;
    }
    assert_true(fabs(s * sc - want) < 2e-3);
  }
}

/* Needles of span 16, noise 0: every (query, key) pair of a needle has the logit
 * needle_strength + locality (rho(i - j) - mean rho over the pairs), so the mean over the
 * S^2 pairs is exactly needle_strength; a query of the span sees every other key as before. */
static void test_exact_span_logits(void **state) {
  (void)state;
  sr_config c;
  make_cfg(&c, 8192, 64, 4, 2, 16);
  c.synth.noise = 0;
  const int d = 64, m = d / 4;
  const double sc = 1.0 / sqrt((double)d);
  sr_needle nd[4];
  int nn = sr_synth_needles(&c, 0, 1, nd, 4);
  int64_t hv[4];
  int nh = sr_synth_heavy(&c, 0, 1, hv, 4);
  const int64_t S = 16;
  float Q[16 * 64], K[16 * 64], k[64];
  double th[16];
  for (int p = 0; p < m; p++) th[p] = pow(10000.0, -(double)p / m);
  for (int t = 0; t < nn; t++) {
    assert_true(nd[t].span == S);
    bool heavy_in_span = false;
    for (int x = 0; x < nh; x++) heavy_in_span |= hv[x] >= nd[t].kpos && hv[x] < nd[t].kpos + S;
    if (heavy_in_span) continue; /* (a heavy key drops its locality part) */
    for (int h = 2; h < 4; h++) {
      sr_synth_rows(&c, 0, 'q', h, nd[t].qpos, S, Q);
      sr_synth_rows(&c, 0, 'k', 1, nd[t].kpos, S, K);
      double rho[16][16], rbar = 0, mean = 0;
      for (int a = 0; a < S; a++)
        for (int b = 0; b < S; b++) {
          double r = 0;
          for (int p = 0; p < m; p++) r += cos((double)(nd[t].qpos + a - nd[t].kpos - b) * th[p]);
          rho[a][b] = r / m;
          rbar += rho[a][b] / (double)(S * S);
        }
      for (int a = 0; a < S; a++)
        for (int b = 0; b < S; b++) {
          double s = 0;
          for (int x = 0; x < d; x++) s += (double)Q[a * d + x] * K[b * d + x];
          s *= sc;
          mean += s / (double)(S * S);
          assert_true(fabs(s - (c.synth.needle_strength + c.synth.locality * (rho[a][b] - rbar))) <
                      2e-3);
        }
      assert_true(fabs(mean - c.synth.needle_strength) < 1e-3);
      /* The span's last query against ordinary keys: locality * rho. */
      const int64_t i = nd[t].qpos + S - 1;
      for (int64_t j = 4; j < i; j += 37) {
        bool special = false;
        for (int x = 0; x < nh; x++) special |= hv[x] == j;
        for (int u = 0; u < nn; u++) special |= j >= nd[u].kpos && j < nd[u].kpos + S;
        if (special) continue;
        sr_synth_rows(&c, 0, 'k', 1, j, 1, k);
        double s = 0, r = 0;
        for (int x = 0; x < d; x++) s += (double)Q[(S - 1) * d + x] * k[x];
        for (int p = 0; p < m; p++) r += cos((double)(i - j) * th[p]);
        assert_true(fabs(s * sc - c.synth.locality * r / m) < 2e-3);
      }
    }
  }
}

/* ---- verifier -------------------------------------------------------------------------- */

/* The float64 truth of a small problem: out, lse and per-key-block masses of every row. */
typedef struct truth {
  int64_t n;
  int d, q_heads, nkb, bk;
  double *out;   /* [h][n][d] */
  double *lse;   /* [h][n] */
  double *bmass; /* [h][n][nkb] */
} truth;

static void truth_build(const sr_config *c, truth *t) {
  const int64_t n = c->seq_len;
  const int d = c->head_dim, group = c->q_heads / c->kv_heads;
  t->n = n;
  t->d = d;
  t->q_heads = c->q_heads;
  t->bk = c->block_k;
  t->nkb = (int)(n / c->block_k);
  t->out = calloc((size_t)c->q_heads * n * d, sizeof(double));
  t->lse = calloc((size_t)c->q_heads * n, sizeof(double));
  t->bmass = calloc((size_t)c->q_heads * n * t->nkb, sizeof(double));
  float *K = malloc(sizeof(float) * n * d), *V = malloc(sizeof(float) * n * d);
  float *Q = malloc(sizeof(float) * n * d);
  double *p = malloc(sizeof(double) * n);
  const double sc = 1.0 / sqrt((double)d);
  for (int h = 0; h < c->q_heads; h++) {
    sr_synth_rows(c, 0, 'k', h / group, 0, n, K);
    sr_synth_rows(c, 0, 'v', h / group, 0, n, V);
    sr_synth_rows(c, 0, 'q', h, 0, n, Q);
    for (int64_t i = 0; i < n; i++) {
      double m = -INFINITY, l = 0;
      for (int64_t j = 0; j <= i; j++) {
        double s = 0;
        for (int x = 0; x < d; x++) s += (double)Q[i * d + x] * K[j * d + x];
        p[j] = s * sc;
        if (p[j] > m) m = p[j];
      }
      for (int64_t j = 0; j <= i; j++) l += (p[j] = exp(p[j] - m));
      double *o = t->out + ((size_t)h * n + i) * d;
      for (int64_t j = 0; j <= i; j++) {
        double w = p[j] / l;
        for (int x = 0; x < d; x++) o[x] += w * V[j * d + x];
        t->bmass[((size_t)h * n + i) * t->nkb + j / t->bk] += w;
      }
      t->lse[(size_t)h * n + i] = m + log(l);
    }
  }
  free(K);
  free(V);
  free(Q);
  free(p);
}

static void truth_free(truth *t) {
  free(t->out);
  free(t->lse);
  free(t->bmass);
}

/* Selection rules: does q-block qb (global) list key block b? */
typedef bool (*rule_fn)(const sr_config *c, int h, int64_t qb, int64_t b);

static bool rule_full(const sr_config *c, int h, int64_t qb, int64_t b) {
  (void)c;
  (void)h;
  (void)qb;
  (void)b;
  return true;
}
/* Sink block, the diagonal and every third block. */
static bool rule_partial(const sr_config *c, int h, int64_t qb, int64_t b) {
  (void)c;
  (void)h;
  return b == 0 || b == qb || b % 3 == 1;
}
/* Does [a, a + n) meet block `blk` of size bs? */
static bool span_meets(int64_t a, int64_t n, int64_t blk, int bs) {
  return a < (blk + 1) * bs && a + n > blk * bs;
}
/* Everything but the blocks of the needle key spans, for the q-blocks holding needle query
 * rows. */
static bool rule_no_needles(const sr_config *c, int h, int64_t qb, int64_t b) {
  sr_needle nd[16];
  int nn = sr_synth_needles(c, 0, h / (c->q_heads / c->kv_heads), nd, 16);
  for (int t = 0; t < nn; t++)
    if (span_meets(nd[t].qpos, nd[t].span, qb, c->block_q) &&
        span_meets(nd[t].kpos, nd[t].span, b, c->block_k))
      return false;
  return true;
}
/* Of the key-span blocks, only the first one (kpos / bk), for the q-blocks holding needle
 * query rows: a row hits only if the key it weighs most lies in that block. */
static bool rule_first_span_block(const sr_config *c, int h, int64_t qb, int64_t b) {
  sr_needle nd[16];
  int nn = sr_synth_needles(c, 0, h / (c->q_heads / c->kv_heads), nd, 16);
  for (int t = 0; t < nn; t++)
    if (span_meets(nd[t].qpos, nd[t].span, qb, c->block_q) &&
        span_meets(nd[t].kpos, nd[t].span, b, c->block_k) && b != nd[t].kpos / c->block_k)
      return false;
  return true;
}

/* The CSR selection of one rank under a rule (causal blocks only). */
static void build_sel(const sr_config *c, const sr_plan *p, rule_fn rule, sr_selection *sel) {
  memset(sel, 0, sizeof *sel);
  sel->q_heads = p->q_heads;
  sel->nqb = p->nqb_local;
  int64_t rows = (int64_t)p->q_heads * p->nqb_local;
  sel->row_ptr = calloc((size_t)rows + 1, sizeof(int64_t));
  sel->col = malloc(sizeof(int32_t) * (size_t)rows * p->nkb_global);
  int64_t e = 0;
  for (int h = 0; h < p->q_heads; h++)
    for (int64_t m = 0; m < p->nqb_local; m++) {
      int64_t qb = sr_plan_qblock_global(p, p->rank, m);
      int64_t last = qb * p->bq + p->bq - 1;
      for (int64_t b = 0; b * p->bk <= last; b++)
        if (rule(c, h, qb, b)) sel->col[e++] = (int32_t)b;
      sel->row_ptr[h * p->nqb_local + m + 1] = e;
    }
  sel->nnz = e;
}

static void free_sel(sr_selection *sel) {
  free(sel->row_ptr);
  free(sel->col);
}

/* Counts the rows the verifier asks for, by kind. */
typedef struct counting {
  const sr_config *cfg;
  int64_t krows[8], qrows, calls;
} counting;

static sr_status count_rows(void *ctx, int layer, char which, int head, int64_t pos0,
                            int64_t count, float *out) {
  counting *cc = ctx;
  cc->calls++;
  if (which == 'k') cc->krows[head] += count;
  if (which == 'q') cc->qrows += count;
  return sr_verify_synth_rows((void *)cc->cfg, layer, which, head, pos0, count, out);
}

/* Perturbation of row (h, pos): a fixed pattern of norm `amp`. */
static double delta(int h, int64_t pos, int x, int d, double amp) {
  uint64_t s = (uint64_t)(h * 1000003 + pos) * 2654435761u + (uint64_t)x;
  double u = sr_test_uniform(&s);
  (void)d;
  return amp * u;
}

/* Runs the verifier over `nranks` simulated ranks (each with its own plan, local out/lse and
 * selection) into one accumulator: what the MPI reduction would give. */
static void verify_sim(const sr_config *c, const truth *t, int nranks, rule_fn rule, double amp,
                       sr_quality *q, counting *cc) {
  assert_int_equal(sr_quality_init(q, c->q_heads), SR_OK);
  const int d = c->head_dim;
  for (int r = 0; r < nranks; r++) {
    sr_plan p;
    assert_int_equal(sr_plan_init(&p, c, nranks, r), SR_OK);
    float *out = malloc(sizeof(float) * p.q_heads * p.n_local * d);
    float *lse = malloc(sizeof(float) * p.q_heads * p.n_local);
    for (int h = 0; h < p.q_heads; h++)
      for (int64_t i = 0; i < p.n_local; i++) {
        int64_t pos = sr_plan_global_pos(&p, r, i);
        for (int x = 0; x < d; x++)
          out[((size_t)h * p.n_local + i) * d + x] =
              (float)(t->out[((size_t)h * t->n + pos) * d + x] + delta(h, pos, x, d, amp));
        lse[(size_t)h * p.n_local + i] = (float)t->lse[(size_t)h * t->n + pos];
      }
    sr_selection sel;
    build_sel(c, &p, rule, &sel);
    sr_status st =
        cc ? sr_verify_layer(c, &p, 0, count_rows, cc, out, lse, &sel, q)
           : sr_verify_layer(c, &p, 0, sr_verify_synth_rows, (void *)c, out, lse, &sel, q);
    assert_int_equal(st, SR_OK);
    free_sel(&sel);
    free(out);
    free(lse);
  }
}

static void small_cfg(sr_config *c) {
  /* d = 32 leaves 8 free dims: sink, heavy and the 4 needles get orthogonal directions. */
  make_cfg(c, 512, 32, 4, 2, 16);
  c->verify_rows = 24;
}

/* The calibrated profile with the schema's defaults for its keys (docs/SYNTHETIC.md). */
static void calibrate(sr_config *c) {
  sr_config d;
  sr_config_defaults(&d);
  c->synth.profile = SR_SYNTH_CALIBRATED;
  c->synth.sink_heads = d.synth.sink_heads;
  c->synth.local_heads = d.synth.local_heads;
  c->synth.slashes = d.synth.slashes;
  c->synth.slash_strength = d.synth.slash_strength;
  c->synth.cluster_tokens = d.synth.cluster_tokens;
  c->synth.cluster_share = d.synth.cluster_share;
}

static void test_verify_exact(void **state) {
  (void)state;
  sr_config c;
  truth t;
  sr_quality q;
  sr_quality_summary s;
  /* sp 0: single-token needles, 1: span 16, 2: span 16 on the calibrated profile (needles only
   * in retrieval heads). */
  for (int sp = 0; sp < 3; sp++) {
    small_cfg(&c);
    c.synth.needle_span = sp ? 16 : 1;
    if (sp == 2) calibrate(&c);
    int retrieval_kv = 0;
    for (int g = 0; g < c.kv_heads; g++)
      retrieval_kv += sp < 2 || sr_synth_head_type(&c, 0, g) == SR_HEAD_RETRIEVAL;
    assert_true(retrieval_kv >= 1);
    const int64_t S = sr_synth_needle_span(&c);
    assert_true(S == (sp ? 16 : 1));
    truth_build(&c, &t);
    counting cc = {.cfg = &c};
    verify_sim(&c, &t, 1, rule_full, 0.0, &q, &cc);
    sr_quality_summarize(&q, &s);
    /* 24 strata per head plus every row of the needle query spans of its group (distinct
     * positions). */
    int64_t want_rows = 0;
    for (int h = 0; h < c.q_heads; h++) {
      int64_t *pos, np;
      assert_int_equal(sr_verify_sample(&c, 0, h, &pos, &np), SR_OK);
      assert_true(np >= 24 && np <= 24 + 4 * S);
      for (int64_t i = 1; i < np; i++) assert_true(pos[i] > pos[i - 1]);
      sr_needle nd[4];
      int nn = sr_synth_needles(&c, 0, h / 2, nd, 4);
      assert_int_equal(nn, sp < 2 || sr_synth_head_type(&c, 0, h / 2) == SR_HEAD_RETRIEVAL ? 4 : 0);
      for (int u = 0; u < nn; u++)
        for (int64_t i = nd[u].qpos; i < nd[u].qpos + S; i++) {
          bool found = false;
          for (int64_t x = 0; x < np; x++) found |= pos[x] == i;
          assert_true(found);
        }
      assert_int_equal(q.rows[h], np);
      want_rows += np;
      free(pos);
    }
    assert_int_equal(s.rows, want_rows);
    fprintf(stderr,
            "# exact, span %lld%s: rel err %.2e, lse err %.2e, recall %.12f, needles "
            "%lld/%lld, needle mass %.3f\n",
            (long long)S, sp == 2 ? " (calibrated)" : "", s.rel_err, s.lse_maxerr, s.recall,
            (long long)s.needle_hits, (long long)s.needles, s.needle_mass);
    assert_true(s.rel_err < 1e-6);
    assert_true(s.lse_maxerr < 1e-5);
    assert_true(fabs(s.recall - 1.0) < 1e-12);
    /* 4 needles x span rows x 2 q-heads per group x the groups with needles */
    assert_int_equal(s.needles, 4 * S * 2 * retrieval_kv);
    assert_int_equal(s.needle_hits, s.needles);
    assert_true(s.needle_mass > (sp == 2 ? 0.5 : sp ? 0.9 : 0.3));
    /* Each kv-head's keys were generated once (plus each needle's key span once per batch),
     * never per head. */
    for (int kvh = 0; kvh < 2; kvh++) assert_true(cc.krows[kvh] <= c.seq_len + 4 * S);
    sr_quality_free(&q);
    truth_free(&t);
  }
  small_cfg(&c);
  truth_build(&c, &t);

  /* All rows. */
  c.verify_rows = -1;
  verify_sim(&c, &t, 2, rule_full, 0.0, &q, NULL);
  sr_quality_summarize(&q, &s);
  assert_int_equal(s.rows, c.seq_len * c.q_heads);
  assert_true(s.rel_err < 1e-6 && fabs(s.recall - 1.0) < 1e-12);
  sr_quality_free(&q);

  /* verify_rows 0: nothing. */
  c.verify_rows = 0;
  verify_sim(&c, &t, 1, rule_full, 0.0, &q, NULL);
  sr_quality_summarize(&q, &s);
  assert_int_equal(s.rows, 0);
  assert_true(isnan(s.rel_err));
  sr_quality_free(&q);
  truth_free(&t);
}

static void test_verify_perturbed(void **state) {
  (void)state;
  sr_config c;
  small_cfg(&c);
  truth t;
  truth_build(&c, &t);
  const double amp = 1e-2;
  sr_quality q;
  verify_sim(&c, &t, 2, rule_full, amp, &q, NULL);
  for (int h = 0; h < c.q_heads; h++) {
    int64_t *pos, np;
    assert_int_equal(sr_verify_sample(&c, 0, h, &pos, &np), SR_OK);
    double e2 = 0, r2 = 0;
    for (int64_t i = 0; i < np; i++)
      for (int x = 0; x < c.head_dim; x++) {
        double dl = delta(h, pos[i], x, c.head_dim, amp);
        double ref = t.out[((size_t)h * t.n + pos[i]) * c.head_dim + x];
        e2 += dl * dl;
        r2 += ref * ref;
      }
    free(pos);
    assert_true(fabs(sqrt(q.err2[h]) / sqrt(e2) - 1.0) < 1e-3);
    assert_true(fabs(q.ref2[h] / r2 - 1.0) < 1e-12);
    assert_true(fabs(sr_quality_rel_err(&q, h) / sqrt(e2 / r2) - 1.0) < 1e-3);
  }
  sr_quality_free(&q);

  /* A poisoned output is reported, not hidden. */
  sr_plan p;
  assert_int_equal(sr_plan_init(&p, &c, 1, 0), SR_OK);
  float *out = malloc(sizeof(float) * p.q_heads * p.n_local * p.d);
  float *lse = malloc(sizeof(float) * p.q_heads * p.n_local);
  for (size_t i = 0; i < (size_t)p.q_heads * p.n_local * p.d; i++) out[i] = NAN;
  for (size_t i = 0; i < (size_t)p.q_heads * p.n_local; i++) lse[i] = NAN;
  assert_int_equal(sr_quality_init(&q, c.q_heads), SR_OK);
  assert_int_equal(sr_verify_layer(&c, &p, 0, sr_verify_synth_rows, &c, out, lse, NULL, &q), SR_OK);
  sr_quality_summary s;
  sr_quality_summarize(&q, &s);
  assert_false(s.rel_err < 1.0);
  assert_false(s.rel_err_max < 1.0);
  assert_true(isinf(s.lse_maxerr));
  assert_true(isnan(s.recall)); /* no selection given */
  sr_quality_free(&q);
  free(out);
  free(lse);
  truth_free(&t);
}

static void test_verify_recall_and_needles(void **state) {
  (void)state;
  sr_config c;
  small_cfg(&c);
  truth t;
  truth_build(&c, &t);
  sr_quality q;
  sr_quality_summary s;

  /* Partial selection: recall equals the mass on the listed blocks, computed here. */
  verify_sim(&c, &t, 2, rule_partial, 0.0, &q, NULL);
  sr_quality_summarize(&q, &s);
  double want = 0;
  int64_t nrows = 0;
  for (int h = 0; h < c.q_heads; h++) {
    int64_t *pos, np;
    assert_int_equal(sr_verify_sample(&c, 0, h, &pos, &np), SR_OK);
    for (int64_t i = 0; i < np; i++) {
      int64_t qb = pos[i] / c.block_q;
      for (int64_t b = 0; b <= pos[i] / c.block_k; b++)
        if (rule_partial(&c, h, qb, b)) want += t.bmass[((size_t)h * t.n + pos[i]) * t.nkb + b];
      nrows++;
    }
    free(pos);
  }
  want /= (double)nrows;
  fprintf(stderr, "# partial selection: recall %.6f (by hand %.6f), needle hits %lld/%lld\n",
          s.recall, want, (long long)s.needle_hits, (long long)s.needles);
  assert_true(s.recall < 0.99);
  assert_true(fabs(s.recall - want) < 1e-9);
  sr_quality_free(&q);

  /* Missing needle blocks: every needle row is missed, recall drops by about the needle
   * mass. */
  const int64_t S = sr_synth_needle_span(&c);
  assert_true(S == 16);
  verify_sim(&c, &t, 2, rule_no_needles, 0.0, &q, NULL);
  sr_quality_summarize(&q, &s);
  assert_int_equal(s.needles, 16 * S);
  assert_int_equal(s.needle_hits, 0);
  assert_true(s.needle_hit_rate == 0.0);
  assert_true(s.recall < 1.0);
  assert_true(s.needle_mass > 0.9); /* the reference mass does not depend on the selection */
  sr_quality_free(&q);

  /* Only the first block of each key span: a row hits exactly when the span key its
   * reference weighs most lies in that block (computed here from the generated rows). */
  verify_sim(&c, &t, 2, rule_first_span_block, 0.0, &q, NULL);
  sr_quality_summarize(&q, &s);
  int64_t want_hits = 0, nrows_needle = 0;
  const int d = c.head_dim;
  float *qr = malloc(sizeof(float) * d), *kr = malloc(sizeof(float) * S * d);
  for (int h = 0; h < c.q_heads; h++) {
    sr_needle nd[4];
    int nn = sr_synth_needles(&c, 0, h / 2, nd, 4);
    for (int u = 0; u < nn; u++) {
      sr_synth_rows(&c, 0, 'k', h / 2, nd[u].kpos, S, kr);
      for (int64_t i = nd[u].qpos; i < nd[u].qpos + S; i++) {
        sr_synth_rows(&c, 0, 'q', h, i, 1, qr);
        double best = -INFINITY;
        int64_t bj = 0;
        for (int64_t j = 0; j < S; j++) {
          double dot = 0;
          for (int x = 0; x < d; x++) dot += (double)qr[x] * (double)kr[j * d + x];
          if (dot > best) {
            best = dot;
            bj = nd[u].kpos + j;
          }
        }
        want_hits += rule_first_span_block(&c, h, i / c.block_q, bj / c.block_k);
        nrows_needle++;
      }
    }
  }
  free(qr);
  free(kr);
  fprintf(stderr, "# first span block only: needle hits %lld/%lld (by hand %lld)\n",
          (long long)s.needle_hits, (long long)s.needles, (long long)want_hits);
  assert_int_equal(s.needles, nrows_needle);
  assert_int_equal(s.needle_hits, want_hits);
  /* The strict rule really decides: some rows hit, some miss (spans straddle blocks). */
  assert_true(want_hits > 0 && want_hits < nrows_needle);
  sr_quality_free(&q);
  truth_free(&t);
}

/* The sums do not depend on the rank count (same rows checked, same numbers). */
static void rank_count_check(sr_config *c) {
  truth t;
  truth_build(c, &t);
  sr_quality q1;
  c->shard = SR_SHARD_ZIGZAG;
  verify_sim(c, &t, 1, rule_partial, 1e-3, &q1, NULL);
  for (int np = 2; np <= 8; np *= 2) {
    for (int sh = 0; sh < 2; sh++) {
      c->shard = sh ? SR_SHARD_CONTIGUOUS : SR_SHARD_ZIGZAG;
      sr_quality qn;
      verify_sim(c, &t, np, rule_partial, 1e-3, &qn, NULL);
      for (int h = 0; h < c->q_heads; h++) {
        assert_int_equal(qn.rows[h], q1.rows[h]);
        assert_int_equal(qn.needles[h], q1.needles[h]);
        assert_int_equal(qn.needle_hits[h], q1.needle_hits[h]);
        assert_true(fabs(qn.err2[h] - q1.err2[h]) <= 1e-12 * q1.err2[h]);
        assert_true(fabs(qn.recall[h] - q1.recall[h]) < 1e-12);
      }
      assert_true(fabs(qn.lse_maxerr - q1.lse_maxerr) < 1e-12);
      sr_quality_free(&qn);
    }
  }
  sr_quality_free(&q1);

  /* MPI reduction (singleton world): sums unchanged, callable collectively. */
  c->shard = SR_SHARD_ZIGZAG;
  verify_sim(c, &t, 1, rule_partial, 1e-3, &q1, NULL);
  sr_quality_summary a, b;
  sr_quality_summarize(&q1, &a);
  assert_int_equal(sr_quality_reduce(&q1, MPI_COMM_WORLD), SR_OK);
  sr_quality_summarize(&q1, &b);
  assert_int_equal(a.rows, b.rows);
  assert_true(a.rel_err == b.rel_err && a.recall == b.recall && a.lse_maxerr == b.lse_maxerr);
  sr_quality_free(&q1);
  truth_free(&t);
}

static void test_verify_rank_count(void **state) {
  (void)state;
  sr_config c;
  small_cfg(&c);
  rank_count_check(&c);
  small_cfg(&c);
  calibrate(&c);
  rank_count_check(&c);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  g_seed = sr_test_seed("test_synth_verify");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_chunking_invariance),
      cmocka_unit_test(test_span1_is_single_token),
      cmocka_unit_test(test_streams_differ),
      cmocka_unit_test(test_positions),
      cmocka_unit_test(test_zero_strength_is_off),
      cmocka_unit_test(test_structure),
      cmocka_unit_test(test_exact_logits),
      cmocka_unit_test(test_exact_span_logits),
      cmocka_unit_test(test_span_mass),
      cmocka_unit_test(test_verify_exact),
      cmocka_unit_test(test_verify_perturbed),
      cmocka_unit_test(test_verify_recall_and_needles),
      cmocka_unit_test(test_verify_rank_count),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  MPI_Finalize();
  return rc;
}
