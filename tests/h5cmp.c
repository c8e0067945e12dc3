/*
 * h5cmp.c — compares two sparsering output files: same selection (indptr and indices equal
 * exactly), out within a relative tolerance (||a-b||/||b|| over each layer), lse within an
 * absolute tolerance, and both marked complete. Used by the rank-count agreement tests.
 *
 *   h5cmp A.h5 B.h5 LAYERS [RELTOL [LSETOL [MINSAME]]]   exit 0 when they agree, 1 with a reason
 * RELTOL defaults to 1e-6 (fp32 across rank counts); LSETOL to 1e-5 (bf16 runs need ~5e-2).
 * MINSAME (CPU against CUDA, where bf16 scores may reorder near-tied candidates): selections
 * may differ; the entries (blocks and key columns) of each (q-head, q-block) row must overlap
 * by at least MINSAME on average (|A and B| / |A or B|), at least a quarter of the rows must be
 * identical, and out / lse are compared on the identical rows only.
 */
#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *fmt, const char *a, const char *b) {
  fprintf(stderr, fmt, a, b);
  fputc('\n', stderr);
  return 1;
}

/* Reads a whole dataset as `type`; returns element count or -1. */
static long long read_all(hid_t f, const char *path, hid_t type, size_t esize, void **buf) {
  hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
  if (d < 0) return -1;
  hid_t s = H5Dget_space(d);
  long long n = (long long)H5Sget_simple_extent_npoints(s);
  *buf = malloc((size_t)(n > 0 ? n : 1) * esize);
  herr_t rc = H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, *buf);
  H5Sclose(s);
  H5Dclose(d);
  return rc < 0 ? -1 : n;
}

static int complete(hid_t f) {
  int v = 0;
  if (H5Aexists(f, "complete") <= 0) return 0;
  hid_t a = H5Aopen(f, "complete", H5P_DEFAULT);
  H5Aread(a, H5T_NATIVE_INT, &v);
  H5Aclose(a);
  return v == 1;
}

/* Whether CSR row r lists the same entries in both (ia/xa, ib/xb). */
static int same_row(const int64_t *ia, const int32_t *xa, const int64_t *ib, const int32_t *xb,
                    long long r) {
  const int64_t na = ia[r + 1] - ia[r], nb = ib[r + 1] - ib[r];
  return na == nb && memcmp(xa + ia[r], xb + ib[r], (size_t)na * sizeof(int32_t)) == 0;
}

static long long read_attr_i64(hid_t f, const char *obj, const char *name) {
  long long v = -1;
  hid_t a = H5Aopen_by_name(f, obj, name, H5P_DEFAULT, H5P_DEFAULT);
  if (a < 0) return -1;
  if (H5Aread(a, H5T_NATIVE_LLONG, &v) < 0) v = -1;
  H5Aclose(a);
  return v;
}

/* |A and B| and |A or B| of two ascending lists. */
static void overlap(const int32_t *a, int64_t na, const int32_t *b, int64_t nb, double *both,
                    double *any) {
  int64_t i = 0, j = 0, c = 0;
  while (i < na && j < nb) {
    if (a[i] == b[j]) c++, i++, j++;
    else if (a[i] < b[j]) i++;
    else j++;
  }
  *both += (double)c;
  *any += (double)(na + nb - c);
}

/* MINSAME mode for one layer: rows with the same selection, then out and lse on those rows. */
static int compare_overlap(hid_t fa, hid_t fb, int l, double tol, double lse_tol, double minsame) {
  char p[128], g[64];
  snprintf(g, sizeof g, "/layers/%d/selection", l);
  const char *names[4] = {"indptr", "indices", "col_indptr", "col_indices"};
  void *a[4] = {0}, *b[4] = {0};
  long long na[4], nb[4];
  for (int i = 0; i < 4; i++) {
    snprintf(p, sizeof p, "%s/%s", g, names[i]);
    int ea = H5Lexists(fa, p, H5P_DEFAULT) > 0, eb = H5Lexists(fb, p, H5P_DEFAULT) > 0;
    if (ea != eb) return fail("%s exists in only one of the files (%s)", p, "");
    if (!ea) { /* no key columns: empty lists */
      na[i] = nb[i] = 0;
      continue;
    }
    hid_t t = i % 2 ? H5T_NATIVE_INT32 : H5T_NATIVE_INT64;
    size_t es = i % 2 ? 4 : 8;
    na[i] = read_all(fa, p, t, es, &a[i]);
    nb[i] = read_all(fb, p, t, es, &b[i]);
    if (na[i] < 0 || nb[i] < 0) return fail("cannot read %s (%s)", p, "");
  }
  if (na[0] != nb[0] || na[0] < 2) return fail("%s: row counts differ (%s)", g, "");
  const long long rows = na[0] - 1, bq = read_attr_i64(fa, g, "block_q"),
                  nqb = read_attr_i64(fa, g, "nqb");
  if (bq <= 0 || nqb <= 0 || rows % nqb != 0) return fail("%s: no block_q / nqb (%s)", g, "");
  char *same = calloc((size_t)rows, 1);
  long long nsame = 0;
  double jac = 0;
  const int64_t *ia = a[0], *ib = b[0], *ca = a[2], *cb = b[2];
  const int32_t *xa = a[1], *xb = b[1], *va = a[3], *vb = b[3];
  for (long long r = 0; r < rows; r++) {
    same[r] = same_row(ia, xa, ib, xb, r) && (!ca || same_row(ca, va, cb, vb, r));
    nsame += same[r];
    double both = 0, any = 0;
    overlap(xa + ia[r], ia[r + 1] - ia[r], xb + ib[r], ib[r + 1] - ib[r], &both, &any);
    if (ca) overlap(va + ca[r], ca[r + 1] - ca[r], vb + cb[r], cb[r + 1] - cb[r], &both, &any);
    jac += any > 0 ? both / any : 1.0;
  }
  const double frac = (double)nsame / (double)rows;
  jac /= (double)rows;
  printf("layer %d: entries overlap %.4f on average (need %.4f); %lld of %lld rows identical "
         "(%.4f, need 0.25)\n", l, jac, minsame, nsame, rows, frac);
  int rc = 0;
  if (!(jac >= minsame)) rc = fail("%s: selections overlap too little (%s)", g, "");
  if (!(frac >= 0.25)) rc = fail("%s: too few identical rows to compare outputs on (%s)", g, "");
  /* out [H][N][d], lse [H][N]; row r = h * nqb + m covers positions m*bq .. m*bq + bq - 1. */
  void *oa = NULL, *ob = NULL, *la = NULL, *lb = NULL;
  snprintf(p, sizeof p, "/layers/%d/out", l);
  long long no = read_all(fa, p, H5T_NATIVE_FLOAT, 4, &oa);
  if (no < 0 || no != read_all(fb, p, H5T_NATIVE_FLOAT, 4, &ob)) rc = fail("%s: %s", p, "unreadable");
  snprintf(p, sizeof p, "/layers/%d/lse", l);
  long long nl = read_all(fa, p, H5T_NATIVE_FLOAT, 4, &la);
  if (nl < 0 || nl != read_all(fb, p, H5T_NATIVE_FLOAT, 4, &lb)) rc = fail("%s: %s", p, "unreadable");
  if (rc == 0) {
    const long long d = no / nl;
    double num = 0, den = 0, lw = 0;
    for (long long r = 0; r < rows; r++) {
      if (!same[r]) continue;
      const long long h = r / nqb, m = r % nqb, N = nqb * bq;
      for (long long i = m * bq; i < (m + 1) * bq; i++) {
        const float *x = (float *)oa + (h * N + i) * d, *y = (float *)ob + (h * N + i) * d;
        for (long long c = 0; c < d; c++) {
          num += ((double)x[c] - y[c]) * ((double)x[c] - y[c]);
          den += (double)y[c] * y[c];
        }
        const double dl = fabs((double)((float *)la)[h * N + i] - ((float *)lb)[h * N + i]);
        if (!(dl <= lw)) lw = dl;
      }
    }
    const double rel = sqrt(num / (den > 0 ? den : 1));
    printf("layer %d: on those rows out rel. difference %.3e (tolerance %.1e), lse max %.3e "
           "(tolerance %.1e)\n", l, rel, tol, lw, lse_tol);
    if (!(rel <= tol)) rc = fail("layer out differs beyond the tolerance (%s%s)", "", "");
    if (!(lw <= lse_tol)) rc = fail("layer lse differs beyond the tolerance (%s%s)", "", "");
  }
  for (int i = 0; i < 4; i++) free(a[i]), free(b[i]);
  free(oa), free(ob), free(la), free(lb), free(same);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: h5cmp A.h5 B.h5 LAYERS [RELTOL [LSETOL [MINSAME]]]\n");
    return 2;
  }
  double tol = argc > 4 ? atof(argv[4]) : 1e-6;
  double lse_tol = argc > 5 ? atof(argv[5]) : 1e-5;
  int layers = atoi(argv[3]);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t fa = H5Fopen(argv[1], H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t fb = H5Fopen(argv[2], H5F_ACC_RDONLY, H5P_DEFAULT);
  if (fa < 0 || fb < 0) return fail("cannot open %s or %s", argv[1], argv[2]);
  if (!complete(fa) || !complete(fb)) return fail("%s or %s is not marked complete", argv[1], argv[2]);
  if (argc > 6) {
    const double minsame = atof(argv[6]);
    int rc = 0;
    for (int l = 0; l < layers; l++) rc |= compare_overlap(fa, fb, l, tol, lse_tol, minsame);
    H5Fclose(fa);
    H5Fclose(fb);
    if (rc == 0) printf("files agree on the rows with the same selection\n");
    return rc;
  }
  for (int l = 0; l < layers; l++) {
    char p[128];
    void *a = NULL, *b = NULL;
    const struct { const char *name; hid_t t; size_t es; } exact[] = {
        {"selection/indptr", H5T_NATIVE_INT64, 8}, {"selection/indices", H5T_NATIVE_INT32, 4},
        {"selection/col_indptr", H5T_NATIVE_INT64, 8},
        {"selection/col_indices", H5T_NATIVE_INT32, 4}};
    for (int i = 0; i < 4; i++) {
      snprintf(p, sizeof p, "/layers/%d/%s", l, exact[i].name);
      /* Key columns exist for vertical_slash and flexprefill only, a selection not for dense
       * decode: both files or neither. */
      {
        int ea = H5Lexists(fa, p, H5P_DEFAULT) > 0, eb = H5Lexists(fb, p, H5P_DEFAULT) > 0;
        if (ea != eb) return fail("%s exists in only one of the files (%s)", p, "");
        if (!ea) continue;
      }
      long long na = read_all(fa, p, exact[i].t, exact[i].es, &a);
      long long nb = read_all(fb, p, exact[i].t, exact[i].es, &b);
      if (na < 0 || nb < 0) return fail("cannot read %s (%s)", p, "missing dataset");
      if (na != nb || memcmp(a, b, (size_t)na * exact[i].es) != 0)
        return fail("%s differs between the files (%s)", p, "selection must be identical");
      free(a);
      free(b);
    }
    snprintf(p, sizeof p, "/layers/%d/out", l);
    long long na = read_all(fa, p, H5T_NATIVE_FLOAT, 4, &a), nb = read_all(fb, p, H5T_NATIVE_FLOAT, 4, &b);
    if (na < 0 || na != nb) return fail("%s: cannot read or sizes differ (%s)", p, "");
    double num = 0, den = 0;
    for (long long i = 0; i < na; i++) {
      double x = ((float *)a)[i], y = ((float *)b)[i];
      if (!isfinite(x) || !isfinite(y)) return fail("%s holds a non-finite value (%s)", p, "");
      num += (x - y) * (x - y);
      den += y * y;
    }
    free(a);
    free(b);
    double rel = sqrt(num / (den > 0 ? den : 1));
    printf("layer %d: out rel. difference %.3e (tolerance %.1e)\n", l, rel, tol);
    if (!(rel <= tol)) return fail("%s: outputs differ beyond the tolerance (%s)", p, "");
    snprintf(p, sizeof p, "/layers/%d/lse", l);
    na = read_all(fa, p, H5T_NATIVE_FLOAT, 4, &a);
    nb = read_all(fb, p, H5T_NATIVE_FLOAT, 4, &b);
    if (na < 0 || na != nb) return fail("%s: cannot read or sizes differ (%s)", p, "");
    double worst = 0;
    for (long long i = 0; i < na; i++) {
      double dd = fabs((double)((float *)a)[i] - ((float *)b)[i]);
      if (!(dd <= worst)) worst = dd;
    }
    free(a);
    free(b);
    printf("layer %d: lse max abs difference %.3e (tolerance %.1e)\n", l, worst, lse_tol);
    if (!(worst <= lse_tol)) return fail("%s: lse differs (%s)", p, "beyond the tolerance");
  }
  H5Fclose(fa);
  H5Fclose(fb);
  printf("files agree\n");
  return 0;
}
