/*
 * h5cmp.c — compares two sparsering output files: same selection (indptr and indices equal
 * exactly), out within a relative tolerance (||a-b||/||b|| over each layer), lse within an
 * absolute tolerance, and both marked complete. Used by the rank-count agreement tests.
 *
 *   h5cmp A.h5 B.h5 LAYERS [RELTOL [LSETOL]]   exit 0 when they agree, 1 with a one-line reason
 * RELTOL defaults to 1e-6 (fp32 across rank counts); LSETOL to 1e-5 (bf16 runs need ~5e-2).
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

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: h5cmp A.h5 B.h5 LAYERS [RELTOL [LSETOL]]\n");
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
  for (int l = 0; l < layers; l++) {
    char p[128];
    void *a = NULL, *b = NULL;
    const struct { const char *name; hid_t t; size_t es; } exact[] = {
        {"selection/indptr", H5T_NATIVE_INT64, 8}, {"selection/indices", H5T_NATIVE_INT32, 4},
        {"selection/col_indptr", H5T_NATIVE_INT64, 8},
        {"selection/col_indices", H5T_NATIVE_INT32, 4}};
    for (int i = 0; i < 4; i++) {
      snprintf(p, sizeof p, "/layers/%d/%s", l, exact[i].name);
      /* Key columns exist for vertical_slash and flexprefill only: both files or neither. */
      if (i >= 2) {
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
