/*
 * test_synth_calib.c — the calibrated synthetic profile and the attention inspector.
 *
 *   - sr_inspect against float64 references computed here (a hand-built row function with
 *     known weights, and a full sort of every sampled row of generated input), the same sums
 *     split over simulated ranks, and through an HDF5 dump read with sr_h5_read_head_rows;
 *   - head types: counts per mix, per-layer assignment, which features each type has;
 *   - the calibrated generator: rows independent of how they are asked for, logits exactly the
 *     documented sum of feature terms (noise 0);
 *   - the fit: every calibration goal of docs/SYNTHETIC.md met at N = 16K and 64K (head_dim 64)
 *     and at one long N with few rows (1M, head_dim 128); the plain profile misses the
 *     published anchors (so the check can fail).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sr_h5.h"
#include "sr_inspect.h"
#include "sr_synth.h"
#include "sr_test.h"
#include "sr_verify.h"

static uint64_t g_seed;

/* A calibrated config as the schema defaults give it. */
static void calib_cfg(sr_config *c, int64_t n, int d, int q_heads, int kv_heads) {
  sr_config_defaults(c);
  c->seed = g_seed;
  c->seq_len = n;
  c->head_dim = d;
  c->q_heads = q_heads;
  c->kv_heads = kv_heads;
  c->layers = 2;
  c->method = SR_METHOD_DENSE;
  c->verify_rows = 0;
}

/* ---- the inspector against references ------------------------------------------------- */

/* Row function with known logits: q = (1, 0, ...), k_j = (ln w(j) sqrt(d), 0, ...), so the
 * logit of key j is ln w(j) and its weight is proportional to w(j) = 1 + (j * 7919) % 101. */
static double known_w(int64_t j) { return 1.0 + (double)((j * 7919) % 101); }
static sr_status known_rows(void *ctx, int layer, char which, int head, int64_t pos0,
                            int64_t count, float *out) {
  const sr_config *c = ctx;
  (void)layer;
  (void)head;
  const int d = c->head_dim;
  memset(out, 0, sizeof(float) * (size_t)count * d);
  for (int64_t r = 0; r < count; r++) {
    if (which == 'q') out[r * d] = 1.0f;
    if (which == 'k') out[r * d] = (float)(log(known_w(pos0 + r)) * sqrt((double)d));
  }
  return SR_OK;
}

static int cmp_desc(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x < y) - (x > y);
}

/* The measures of one row from its logits, by full sort (the reference). */
static void ref_row(const double *s_in, int64_t n, const sr_inspect_opts *o, double *mass,
                    double *win, double *s4, double *above) {
  double *w = malloc(sizeof(double) * (size_t)n);
  double m = -INFINITY, tot = 0;
  for (int64_t j = 0; j < n; j++) m = s_in[j] > m ? s_in[j] : m;
  *win = *s4 = 0;
  int64_t ab = 0;
  for (int64_t j = 0; j < n; j++) {
    w[j] = exp(s_in[j] - m);
    tot += w[j];
    if (j < o->sinks || j >= n - o->recent) *win += w[j];
    if (j < 4) *s4 += w[j];
    ab += w[j] >= 0.01;
  }
  *win /= tot;
  *s4 /= tot;
  *above = (double)ab / (double)n;
  qsort(w, (size_t)n, sizeof *w, cmp_desc);
  for (int c = 0; c < o->nk; c++) {
    int64_t k = (int64_t)ceil(o->k[c] * (double)n - 1e-9);
    if (k < 1) k = 1;
    double s = 0;
    for (int64_t j = 0; j < k; j++) s += w[j];
    mass[c] = s / tot;
  }
  free(w);
}

static void small_opts(sr_inspect_opts *o) {
  sr_inspect_opts_default(o);
  o->rows = 6;
  o->from = 0.3;
  o->nk = 4;
  o->k[0] = 0.01;
  o->k[1] = 0.05;
  o->k[2] = 0.2;
  o->k[3] = 0.5;
  o->sinks = 8;
  o->recent = 32;
}

static void test_inspect_known(void **state) {
  (void)state;
  sr_config c;
  calib_cfg(&c, 1000, 16, 2, 1);
  c.input_source = SR_INPUT_HDF5; /* no head types */
  sr_inspect_opts o;
  small_opts(&o);
  sr_inspect_curve cur;
  assert_int_equal(sr_inspect_init(&cur, 2, &o), SR_OK);
  assert_int_equal(sr_inspect_layer(&c, 0, known_rows, &c, &o, 0, 1, &cur), SR_OK);
  for (int h = 0; h < 2; h++) {
    assert_int_equal(cur.type[h], -1);
    assert_int_equal(cur.rows[h], 6);
    int64_t *pos, np;
    assert_int_equal(sr_inspect_sample(&c, 0, h, &o, &pos, &np), SR_OK);
    assert_int_equal(np, 6);
    double want[4] = {0}, ww = 0, ws = 0, wa = 0;
    for (int64_t i = 0; i < np; i++) {
      assert_true(pos[i] >= 300 && pos[i] < 1000);
      if (i) assert_true(pos[i] > pos[i - 1]);
      /* by hand: the weights are w(j) themselves */
      const int64_t n = pos[i] + 1;
      double *s = malloc(sizeof(double) * (size_t)n), m[4], a, b, e;
      const double sc = 1.0 / sqrt((double)c.head_dim);
      for (int64_t j = 0; j < n; j++) /* the stored float key, times the scaled query */
        s[j] = sc * (double)(float)(log(known_w(j)) * sqrt((double)c.head_dim));
      ref_row(s, n, &o, m, &a, &b, &e);
      for (int k = 0; k < 4; k++) want[k] += m[k];
      ww += a;
      ws += b;
      wa += e;
      free(s);
    }
    free(pos);
    for (int k = 0; k < 4; k++)
      assert_true(fabs(cur.mass[h * 4 + k] - want[k]) < 1e-9 * np);
    assert_true(fabs(cur.window[h] - ww) < 1e-9 * np);
    assert_true(fabs(cur.sink4[h] - ws) < 1e-9 * np);
    assert_true(fabs(cur.above[h] - wa) < 1e-12);
  }
  /* The weights span 1..101: only the keys of weight 1 (about 1 in 101) fall below 1% of the
   * largest, and the top 50% carry more than half. */
  const double ab = sr_inspect_mean(&cur, -1, -3, NULL);
  assert_true(ab > 0.97 && ab < 1.0);
  assert_true(sr_inspect_mean(&cur, -1, 3, NULL) > 0.5);
  sr_inspect_free(&cur);
}

/* Generated rows: the inspector equals a full-sort reference of every sampled row, and the
 * sums of 3 simulated ranks equal one rank's. */
static void test_inspect_generated(void **state) {
  (void)state;
  for (int prof = 0; prof < 2; prof++) {
    sr_config c;
    calib_cfg(&c, 1536, 32, 4, 2);
    if (prof) c.synth.profile = SR_SYNTH_PLAIN;
    sr_inspect_opts o;
    small_opts(&o);
    sr_inspect_curve one, three;
    assert_int_equal(sr_inspect_init(&one, 4, &o), SR_OK);
    assert_int_equal(sr_inspect_init(&three, 4, &o), SR_OK);
    assert_int_equal(sr_inspect_layer(&c, 1, sr_verify_synth_rows, &c, &o, 0, 1, &one), SR_OK);
    for (int r = 0; r < 3; r++)
      assert_int_equal(sr_inspect_layer(&c, 1, sr_verify_synth_rows, &c, &o, r, 3, &three), SR_OK);
    const int d = c.head_dim;
    float *K = malloc(sizeof(float) * (size_t)c.seq_len * d), q[32];
    double *s = malloc(sizeof(double) * (size_t)c.seq_len);
    for (int h = 0; h < 4; h++) {
      assert_int_equal(one.type[h], prof ? SR_HEAD_PLAIN : (int)sr_synth_head_type(&c, 1, h / 2));
      assert_int_equal(three.rows[h], one.rows[h]);
      sr_synth_rows(&c, 1, 'k', h / 2, 0, c.seq_len, K);
      int64_t *pos, np;
      assert_int_equal(sr_inspect_sample(&c, 1, h, &o, &pos, &np), SR_OK);
      double want[4] = {0}, ww = 0;
      for (int64_t i = 0; i < np; i++) {
        sr_synth_rows(&c, 1, 'q', h, pos[i], 1, q);
        for (int64_t j = 0; j <= pos[i]; j++) {
          double x = 0;
          for (int t = 0; t < d; t++) x += (double)q[t] * (double)K[j * d + t];
          s[j] = x / sqrt((double)d);
        }
        double m[4], a, b, e;
        ref_row(s, pos[i] + 1, &o, m, &a, &b, &e);
        for (int k = 0; k < 4; k++) want[k] += m[k];
        ww += a;
      }
      free(pos);
      for (int k = 0; k < 4; k++) {
        assert_true(fabs(one.mass[h * 4 + k] - want[k]) < 1e-9);
        assert_true(fabs(three.mass[h * 4 + k] - one.mass[h * 4 + k]) < 1e-12);
      }
      assert_true(fabs(one.window[h] - ww) < 1e-9);
      assert_true(fabs(three.window[h] - one.window[h]) < 1e-12);
    }
    free(K);
    free(s);
    sr_inspect_free(&one);
    sr_inspect_free(&three);
  }
}

/* An HDF5 dump of the generated rows, read through sr_h5_read_head_rows, gives the same
 * numbers (float32 rows stored and read back unchanged). */
static void h5_write(hid_t file, const char *name, hsize_t heads, hsize_t n, hsize_t d,
                     const float *buf) {
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hsize_t dims[3] = {heads, n, d};
  hid_t space = H5Screate_simple(3, dims, NULL);
  hid_t dset = H5Dcreate2(file, name, H5T_IEEE_F32LE, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  assert_true(dset >= 0);
  assert_true(H5Dwrite(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
  H5Dclose(dset);
  H5Sclose(space);
  H5Pclose(lcpl);
}

static sr_status h5_rows(void *ctx, int layer, char which, int head, int64_t pos0,
                         int64_t count, float *out) {
  return sr_h5_read_head_rows((sr_h5_in *)ctx, layer, which, head, pos0, count, out);
}

static void test_inspect_hdf5(void **state) {
  (void)state;
  sr_config c;
  calib_cfg(&c, 1024, 32, 4, 2);
  c.layers = 1;
  char path[] = "/tmp/sr_inspect_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  const int d = c.head_dim;
  const int64_t n = c.seq_len;
  float *buf = malloc(sizeof(float) * 4 * (size_t)n * d);
  hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  assert_true(file >= 0);
  for (int w = 0; w < 3; w++) {
    const int heads = w == 0 ? 4 : 2;
    for (int h = 0; h < heads; h++) sr_synth_rows(&c, 0, "qkv"[w], h, 0, n, buf + (size_t)h * n * d);
    char name[32];
    snprintf(name, sizeof name, "/layers/0/%c", "qkv"[w]);
    h5_write(file, name, (hsize_t)heads, (hsize_t)n, (hsize_t)d, buf);
  }
  H5Fclose(file);
  free(buf);

  sr_inspect_opts o;
  small_opts(&o);
  sr_inspect_curve syn, dump;
  assert_int_equal(sr_inspect_init(&syn, 4, &o), SR_OK);
  assert_int_equal(sr_inspect_init(&dump, 4, &o), SR_OK);
  assert_int_equal(sr_inspect_layer(&c, 0, sr_verify_synth_rows, &c, &o, 0, 1, &syn), SR_OK);
  sr_config ch = c;
  ch.input_source = SR_INPUT_HDF5;
  ch.input_path = path;
  sr_h5_in *in = NULL;
  assert_int_equal(sr_h5_in_open(&in, MPI_COMM_WORLD, path, &ch), SR_OK);
  assert_int_equal(sr_inspect_layer(&ch, 0, h5_rows, in, &o, 0, 1, &dump), SR_OK);
  sr_h5_in_close(in);
  unlink(path);
  for (int h = 0; h < 4; h++) {
    assert_int_equal(dump.type[h], -1); /* no types for real input */
    assert_int_equal(dump.rows[h], syn.rows[h]);
    for (int k = 0; k < 4; k++) assert_true(dump.mass[h * 4 + k] == syn.mass[h * 4 + k]);
    assert_true(dump.window[h] == syn.window[h]);
  }
  sr_inspect_free(&syn);
  sr_inspect_free(&dump);
}

/* ---- head types ------------------------------------------------------------------------ */

static void counts(const sr_config *c, int layer, int cnt[SR_HEAD_TYPES]) {
  memset(cnt, 0, sizeof(int) * SR_HEAD_TYPES);
  for (int g = 0; g < c->kv_heads; g++) cnt[sr_synth_head_type(c, layer, g)]++;
}

static void test_head_types(void **state) {
  (void)state;
  sr_config c;
  int cnt[SR_HEAD_TYPES];
  /* kv_heads -> (sink, local, retrieval) at the default fractions 1/4, 1/4 */
  static const int want[][4] = {{1, 0, 0, 1}, {2, 0, 1, 1}, {4, 1, 1, 2}, {8, 2, 2, 4},
                                {16, 4, 4, 8}, {6, 1, 2, 3}, {3, 1, 1, 1}};
  for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
    calib_cfg(&c, 4096, 64, want[i][0], want[i][0]);
    for (int layer = 0; layer < 4; layer++) {
      counts(&c, layer, cnt);
      assert_int_equal(cnt[SR_HEAD_SINK], want[i][1]);
      assert_int_equal(cnt[SR_HEAD_LOCAL], want[i][2]);
      assert_int_equal(cnt[SR_HEAD_RETRIEVAL], want[i][3]);
    }
  }
  /* Other fractions; sums above 1 are scaled to 1. */
  calib_cfg(&c, 4096, 64, 10, 10);
  c.synth.sink_heads = 0.3f;
  c.synth.local_heads = 0.0f;
  counts(&c, 0, cnt);
  assert_int_equal(cnt[SR_HEAD_SINK], 3);
  assert_int_equal(cnt[SR_HEAD_LOCAL], 0);
  assert_int_equal(cnt[SR_HEAD_RETRIEVAL], 7);
  c.synth.sink_heads = 0.9f;
  c.synth.local_heads = 0.9f;
  counts(&c, 0, cnt);
  assert_int_equal(cnt[SR_HEAD_SINK], 5);
  assert_int_equal(cnt[SR_HEAD_LOCAL], 5);
  assert_int_equal(cnt[SR_HEAD_RETRIEVAL], 0);
  /* The assignment moves between layers (8 kv-heads, 420 ways: some layer of 8 differs). */
  calib_cfg(&c, 4096, 64, 8, 8);
  bool moved = false;
  for (int layer = 1; layer < 8; layer++)
    for (int g = 0; g < 8; g++) moved |= sr_synth_head_type(&c, layer, g) != sr_synth_head_type(&c, 0, g);
  assert_true(moved);
  /* What each type has. */
  for (int g = 0; g < 8; g++) {
    sr_synth_head hp;
    sr_synth_head_params(&c, 0, g, &hp);
    sr_needle nd[8];
    int64_t hv[8], sl[8];
    const int nn = sr_synth_needles(&c, 0, g, nd, 8), nh = sr_synth_heavy(&c, 0, g, hv, 8),
              ns = sr_synth_slashes(&c, 0, g, sl, 8);
    assert_int_equal(nn, hp.type == SR_HEAD_RETRIEVAL ? 4 : 0);
    assert_int_equal(nh, hp.type == SR_HEAD_SINK ? 0 : 4);
    assert_int_equal(ns, hp.type == SR_HEAD_LOCAL ? 4 : 0);
    for (int s = 0; s < ns; s++) assert_true(sl[s] >= 16 && sl[s] <= 256 && (!s || sl[s] >= sl[s - 1]));
    assert_true(hp.sink > 0 && hp.locality > 0 && hp.noise > 0);
    assert_true(hp.window == (hp.type == SR_HEAD_RETRIEVAL ? 0.0 : 1.0));
  }
  /* The plain profile: every head alike, the counts as configured. */
  c.synth.profile = SR_SYNTH_PLAIN;
  for (int g = 0; g < 8; g++) {
    sr_synth_head hp;
    sr_synth_head_params(&c, 0, g, &hp);
    assert_int_equal(hp.type, SR_HEAD_PLAIN);
    assert_true(hp.sink == c.synth.sink_strength && hp.noise == c.synth.noise);
    sr_needle nd[8];
    assert_int_equal(sr_synth_needles(&c, 0, g, nd, 8), 4);
  }
  assert_string_equal(sr_head_type_name(SR_HEAD_RETRIEVAL), "retrieval");
}

/* ---- the calibrated generator ----------------------------------------------------------- */

static void test_calibrated_chunking(void **state) {
  (void)state;
  sr_config c;
  calib_cfg(&c, 8192, 64, 8, 4);
  const int d = 64;
  const int64_t n = 2600, p0 = 5000; /* crosses 1024-position and cluster boundaries */
  float *one = malloc(sizeof(float) * n * d), *many = malloc(sizeof(float) * n * d);
  for (int w = 0; w < 2; w++)
    for (int head = 0; head < (w ? 4 : 8); head++) {
      sr_synth_rows(&c, 1, "qk"[w], head, p0, n, one);
      for (int k = 0; k < 13; k++)
        sr_synth_rows(&c, 1, "qk"[w], head, p0 + k * 200, 200, many + (size_t)k * 200 * d);
      assert_memory_equal(one, many, sizeof(float) * n * d);
      for (int64_t r = 0; r < n; r += 89) {
        float row[64];
        sr_synth_rows(&c, 1, "qk"[w], head, p0 + r, 1, row);
        assert_memory_equal(row, one + r * d, sizeof row);
      }
      for (int64_t i = 0; i < n * d; i++) assert_true(isfinite(one[i]));
      /* Calls that start inside needle spans. */
      sr_needle nd[4];
      int nn = sr_synth_needles(&c, 1, w ? head : head / 2, nd, 4);
      for (int t = 0; t < nn; t++) {
        int64_t a = (w ? nd[t].kpos : nd[t].qpos) - 3, len = nd[t].span + 6;
        sr_synth_rows(&c, 1, "qk"[w], head, a, len, one);
        for (int64_t r = 0; r < len; r += 5) {
          int64_t cnt = len - r < 5 ? len - r : 5;
          sr_synth_rows(&c, 1, "qk"[w], head, a + r, cnt, many);
          assert_memory_equal(many, one + r * d, sizeof(float) * cnt * d);
        }
      }
    }
  /* Another seed, layer or profile gives other rows. */
  sr_config c2 = c;
  c2.seed = g_seed + 1;
  sr_synth_rows(&c, 0, 'k', 1, 100, 64, one);
  sr_synth_rows(&c2, 0, 'k', 1, 100, 64, many);
  assert_memory_not_equal(one, many, sizeof(float) * 64 * d);
  c2 = c;
  c2.synth.profile = SR_SYNTH_PLAIN;
  sr_synth_rows(&c, 0, 'q', 1, 100, 64, one);
  sr_synth_rows(&c2, 0, 'q', 1, 100, 64, many);
  assert_memory_not_equal(one, many, sizeof(float) * 64 * d);
  free(one);
  free(many);
}

/* With noise 0 the logit of a query row at position i (n = i + 1 keys, lam = ln(n / 16384))
 * against key j is exactly (docs/SYNTHETIC.md):
 *   sink key        S_s + lam          heavy key   S_h + lam
 *   ordinary key    the locality profile of the head at distance i - j (recomputed here from
 *                   the documented formula: RoPE pairs, slash gains, fast-pair growth)
 *   needle row      mean over its key span = S_n + lam. */
static double profile_logit(const sr_config *c, int kvh, const sr_synth_head *hp, double grow,
                            int64_t dist) {
  const int d = c->head_dim, m = 3 * d / 8, mh = m / 2;
  int64_t off[64];
  const int ns = sr_synth_slashes(c, 0, kvh, off, 64);
  const double cs = ns ? hp->slash / hp->locality : 0.0;
  double gr[64], gi[64], w[64], p0 = 0, diag = 0, r = 0;
  for (int p = 0; p < m; p++) {
    const double th = pow((double)c->synth.rope_base, -(double)p / m);
    gr[p] = 1.0;
    gi[p] = 0.0;
    for (int s = 0; s < ns; s++) {
      gr[p] += cs * cos((double)off[s] * th);
      gi[p] += cs * sin((double)off[s] * th);
    }
    p0 += gr[p] / m;
  }
  for (int p = 0; p < m; p++) {
    gr[p] /= p0;
    gi[p] /= p0;
    w[p] = hp->locality + (p < mh ? hp->window * grow * m / mh : 0.0);
    if (w[p] < 0) w[p] = 0;
    diag += w[p] * gr[p] / m;
  }
  const double want = hp->locality + hp->window * grow;
  for (int p = 0; p < m; p++) {
    const double th = pow((double)c->synth.rope_base, -(double)p / m);
    r += w[p] * (want / diag) * (gr[p] * cos((double)dist * th) + gi[p] * sin((double)dist * th));
  }
  return r / m;
}

static void test_calibrated_logits(void **state) {
  (void)state;
  sr_config c;
  calib_cfg(&c, 65536, 64, 4, 4);
  c.synth.noise = 0;
  const int d = 64;
  const double sc = 1.0 / sqrt((double)d);
  float q[64], *K = malloc(sizeof(float) * 65536 * d);
  int seen[SR_HEAD_TYPES] = {0};
  for (int kvh = 0; kvh < 4; kvh++) {
    sr_synth_head hp;
    sr_synth_head_params(&c, 0, kvh, &hp);
    seen[hp.type]++;
    sr_synth_rows(&c, 0, 'k', kvh, 0, 65536, K);
    int64_t hv[8];
    const int nh = sr_synth_heavy(&c, 0, kvh, hv, 8);
    sr_needle nd[8];
    const int nn = sr_synth_needles(&c, 0, kvh, nd, 8);
    static const int64_t rows[] = {20000, 40001, 65535};
    for (int r = 0; r < 3; r++) {
      const int64_t i = rows[r];
      const double lam = log((double)(i + 1) / SR_SYNTH_REF_KEYS);
      sr_synth_rows(&c, 0, 'q', kvh, i, 1, q);
      for (int64_t j = 0; j <= i; j += (j < 64 ? 1 : 97)) {
        bool heavy = false, needle = false;
        for (int t = 0; t < nh; t++) heavy |= hv[t] == j;
        for (int t = 0; t < nn; t++) needle |= j >= nd[t].kpos && j < nd[t].kpos + nd[t].span;
        if (needle) continue;
        double s = 0;
        for (int x = 0; x < d; x++) s += (double)q[x] * (double)K[j * d + x];
        s *= sc;
        double want = j < 4 ? hp.sink + lam : heavy ? hp.heavy + lam
                                                    : profile_logit(&c, kvh, &hp, lam, i - j);
        assert_true(fabs(s - want) < 2e-3 * (1 + fabs(want)));
      }
      /* The diagonal is exactly the locality (plus its growth in window heads). */
      double s = 0;
      for (int x = 0; x < d; x++) s += (double)q[x] * (double)K[i * d + x];
      assert_true(fabs(s * sc - (hp.locality + hp.window * lam)) < 2e-3 * (1 + hp.locality));
    }
    /* Needle rows: the mean logit over the key span is the needle strength. */
    for (int t = 0; t < nn; t++)
      for (int64_t i = nd[t].qpos; i < nd[t].qpos + nd[t].span; i += 5) {
        sr_synth_rows(&c, 0, 'q', kvh, i, 1, q);
        double mean = 0;
        for (int64_t j = nd[t].kpos; j < nd[t].kpos + nd[t].span; j++) {
          double s = 0;
          for (int x = 0; x < d; x++) s += (double)q[x] * (double)K[j * d + x];
          mean += s * sc / (double)nd[t].span;
        }
        const double lam = log((double)(i + 1) / SR_SYNTH_REF_KEYS);
        assert_true(fabs(mean - (hp.needle + lam)) < 2e-3 * (1 + hp.needle));
      }
  }
  assert_true(seen[SR_HEAD_SINK] == 1 && seen[SR_HEAD_LOCAL] == 1 && seen[SR_HEAD_RETRIEVAL] == 2);
  free(K);
}

/* ---- the fit ----------------------------------------------------------------------------- */

/* Runs the inspector with the default fractions and counts the goals met / checked; prints the
 * per-type means. */
static void fit(const sr_config *c, int64_t rows, int *met, int *checked, bool print) {
  sr_inspect_opts o;
  sr_inspect_opts_default(&o);
  o.rows = rows;
  sr_inspect_curve cur;
  assert_int_equal(sr_inspect_init(&cur, c->q_heads, &o), SR_OK);
  assert_int_equal(sr_inspect_layer(c, 0, sr_verify_synth_rows, (void *)c, &o, 0, 1, &cur), SR_OK);
  const int64_t min_keys = (int64_t)floor(o.from * (double)c->seq_len) + 1;
  *met = *checked = 0;
  for (int t = -1; t < SR_HEAD_TYPES; t++) {
    int64_t r = 0;
    sr_inspect_mean(&cur, t, 0, &r);
    if (r == 0) continue;
    if (print) {
      fprintf(stderr, "# N %7lld d %3d %-9s", (long long)c->seq_len, c->head_dim,
              t < 0 ? "all" : sr_head_type_name((sr_head_type)t));
      for (int k = 0; k < o.nk; k++) fprintf(stderr, " %.4f", sr_inspect_mean(&cur, t, k, NULL));
      fprintf(stderr, " | window %.3f sink4 %.3f\n", sr_inspect_mean(&cur, t, -1, NULL),
              sr_inspect_mean(&cur, t, -2, NULL));
    }
    for (int m = 0; m < 4; m++)
      for (int k = 0; k < (m == 0 ? o.nk : 1); k++) {
        sr_inspect_goal g;
        if (!sr_inspect_goal_of(c, t, (sr_goal_measure)m, o.k[k], min_keys, &g)) continue;
        const double v = sr_inspect_mean(&cur, t, m == 0 ? k : -m, NULL);
        const bool ok = sr_inspect_goal_met(&g, v);
        if (print && !ok)
          fprintf(stderr, "#   missed: type %d measure %d k %g: %.4f vs %s%.3f (tol %.3f)\n", t,
                  m, o.k[k], v, g.sense > 0 ? ">" : g.sense < 0 ? "<" : "", g.value, g.tol);
        (*checked)++;
        *met += ok;
      }
  }
  sr_inspect_free(&cur);
}

static void test_fit_cheap(void **state) {
  (void)state;
  sr_config c;
  int met, checked;
  /* 32 q-heads over 8 kv-heads (2 sink, 2 local, 4 retrieval), head_dim 64. */
  static const int64_t ns[2] = {16384, 65536};
  for (int i = 0; i < 2; i++) {
    calib_cfg(&c, ns[i], 64, 32, 8);
    fit(&c, i == 0 ? 8 : 2, &met, &checked, true);
    fprintf(stderr, "# N %lld: %d of %d calibration goals met\n", (long long)ns[i], met, checked);
    assert_true(checked >= 16);
    assert_int_equal(met, checked);
  }
  /* The plain profile (every head alike, fixed strengths) misses the published anchors. */
  calib_cfg(&c, 16384, 64, 32, 8);
  c.synth.profile = SR_SYNTH_PLAIN;
  sr_inspect_opts o;
  sr_inspect_opts_default(&o);
  o.rows = 4;
  sr_inspect_curve cur;
  assert_int_equal(sr_inspect_init(&cur, c.q_heads, &o), SR_OK);
  assert_int_equal(sr_inspect_layer(&c, 0, sr_verify_synth_rows, &c, &o, 0, 1, &cur), SR_OK);
  sr_config cal = c;
  cal.synth.profile = SR_SYNTH_CALIBRATED;
  sr_inspect_goal g;
  assert_true(sr_inspect_goal_of(&cal, -1, SR_GOAL_MASS, 0.03125, 8193, &g));
  const double plain = sr_inspect_mean(&cur, -1, 3, NULL);
  fprintf(stderr, "# plain profile, N 16K: top-3.125%% mass %.4f (goal %.3f +- %.3f)\n", plain,
          g.value, g.tol);
  assert_false(sr_inspect_goal_met(&g, plain));
  sr_inspect_free(&cur);
}

/* One long sequence, few rows: 1M keys, head_dim 128, 4 kv-heads (1 sink, 1 local, 2 retrieval). */
static void test_fit_long(void **state) {
  (void)state;
  sr_config c;
  int met, checked;
  calib_cfg(&c, 1048576, 128, 4, 4);
  fit(&c, 4, &met, &checked, true);
  fprintf(stderr, "# N 1M: %d of %d calibration goals met\n", met, checked);
  assert_true(checked >= 20);
  assert_int_equal(met, checked);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  g_seed = sr_test_seed("test_synth_calib");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_inspect_known),       cmocka_unit_test(test_inspect_generated),
      cmocka_unit_test(test_inspect_hdf5),        cmocka_unit_test(test_head_types),
      cmocka_unit_test(test_calibrated_chunking), cmocka_unit_test(test_calibrated_logits),
      cmocka_unit_test(test_fit_cheap),           cmocka_unit_test(test_fit_long),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  MPI_Finalize();
  return rc;
}
