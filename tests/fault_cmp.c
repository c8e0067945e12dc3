/*
 * fault_cmp.c — are two sparsering output files the same result, bit for bit?
 *
 *   fault_cmp A.h5 B.h5 [--bytes]
 *
 * Walks every object of both files (same names, same kinds, in the same order) and compares:
 *   - every dataset: on-disk type, shape and raw bytes (read in the file type, no conversion);
 *   - every attribute of every object: type and value bytes (variable-length strings by
 *     content), except the timing metrics `time_s` and `metrics_json` of /layers/<l>, which
 *     hold wall-clock times (docs/CHECKPOINT.md says what is and is not bit-identical);
 *   - both files carry complete = 1.
 * With --bytes the two files must also be identical byte for byte (runs made with
 * SR_TEST_FIXED_TIMES=1, whose timing attributes are 0).
 * Exit 0 when they agree; 1 with one line naming the first difference; 2 on usage errors.
 */
#define _POSIX_C_SOURCE 200809L
#include <hdf5.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct walk {
  char **names;
  int *kinds;
  int n, cap;
} walk;

static herr_t visit_cb(hid_t o, const char *name, const H5O_info_t *info, void *data) {
  walk *w = data;
  (void)o;
  if (w->n == w->cap) {
    w->cap = w->cap ? 2 * w->cap : 64;
    w->names = realloc(w->names, sizeof *w->names * (size_t)w->cap);
    w->kinds = realloc(w->kinds, sizeof *w->kinds * (size_t)w->cap);
  }
  w->names[w->n] = strdup(name);
  w->kinds[w->n] = (int)info->type;
  w->n++;
  return 0;
}

static int list_objects(hid_t f, walk *w) {
  memset(w, 0, sizeof *w);
  return H5Ovisit(f, H5_INDEX_NAME, H5_ITER_INC, visit_cb, w) < 0 ? -1 : 0;
}

static int fail(const char *what, const char *where) {
  printf("DIFFER: %s: %s\n", where, what);
  return 1;
}

/* Reads a whole dataset or attribute in its own type; returns malloc'd bytes, *len set. VL
 * data is flattened to its content. */
static unsigned char *read_raw(hid_t obj, int is_attr, size_t *len) {
  hid_t type = is_attr ? H5Aget_type(obj) : H5Dget_type(obj);
  hid_t space = is_attr ? H5Aget_space(obj) : H5Dget_space(obj);
  hssize_t n = H5Sget_simple_extent_npoints(space);
  size_t es = H5Tget_size(type);
  unsigned char *buf = NULL;
  if (n < 0) goto done;
  if (H5Tis_variable_str(type) > 0) {
    char **s = calloc((size_t)(n ? n : 1), sizeof *s);
    herr_t rc =
        is_attr ? H5Aread(obj, type, s) : H5Dread(obj, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, s);
    size_t total = 0;
    for (hssize_t i = 0; rc >= 0 && i < n; i++)
      total += (s[i] ? strlen(s[i]) : 0) + 1;
    buf = malloc(total + 1);
    *len = 0;
    for (hssize_t i = 0; rc >= 0 && i < n; i++) {
      size_t l = s[i] ? strlen(s[i]) : 0;
      if (l) memcpy(buf + *len, s[i], l);
      *len += l;
      buf[(*len)++] = '\0';
    }
    if (rc >= 0) H5Dvlen_reclaim(type, space, H5P_DEFAULT, s);
    free(s);
    if (rc < 0) {
      free(buf);
      buf = NULL;
    }
  } else {
    *len = (size_t)n * es;
    buf = malloc(*len ? *len : 1);
    herr_t rc = *len == 0 ? 0
                : is_attr ? H5Aread(obj, type, buf)
                          : H5Dread(obj, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
    if (rc < 0) {
      free(buf);
      buf = NULL;
    }
  }
done:
  H5Sclose(space);
  H5Tclose(type);
  return buf;
}

static int same_shape_type(hid_t a, hid_t b, int is_attr) {
  hid_t ta = is_attr ? H5Aget_type(a) : H5Dget_type(a),
        tb = is_attr ? H5Aget_type(b) : H5Dget_type(b);
  hid_t sa = is_attr ? H5Aget_space(a) : H5Dget_space(a),
        sb = is_attr ? H5Aget_space(b) : H5Dget_space(b);
  hsize_t da[H5S_MAX_RANK], db[H5S_MAX_RANK];
  int na = H5Sget_simple_extent_dims(sa, da, NULL), nb = H5Sget_simple_extent_dims(sb, db, NULL);
  int ok = H5Tequal(ta, tb) > 0 && na == nb && na >= 0;
  for (int i = 0; ok && i < na; i++)
    ok = da[i] == db[i];
  H5Tclose(ta);
  H5Tclose(tb);
  H5Sclose(sa);
  H5Sclose(sb);
  return ok;
}

static int timing(const char *attr) {
  return strcmp(attr, "time_s") == 0 || strcmp(attr, "metrics_json") == 0;
}

/* Attributes of object `name` in both files. */
static int cmp_attrs(hid_t fa, hid_t fb, const char *name, long *nattrs, long *nskipped) {
  H5O_info_t ia, ib;
  if (H5Oget_info_by_name(fa, name, &ia, H5P_DEFAULT) < 0 ||
      H5Oget_info_by_name(fb, name, &ib, H5P_DEFAULT) < 0)
    return fail("cannot read object info", name);
  if (ia.num_attrs != ib.num_attrs) return fail("different number of attributes", name);
  for (hsize_t i = 0; i < ia.num_attrs; i++) {
    char an[256], bn[256];
    H5Aget_name_by_idx(fa, name, H5_INDEX_NAME, H5_ITER_INC, i, an, sizeof an, H5P_DEFAULT);
    H5Aget_name_by_idx(fb, name, H5_INDEX_NAME, H5_ITER_INC, i, bn, sizeof bn, H5P_DEFAULT);
    char where[600];
    snprintf(where, sizeof where, "%s attribute %s", name, an);
    if (strcmp(an, bn) != 0) return fail("attribute names differ", where);
    hid_t aa = H5Aopen_by_name(fa, name, an, H5P_DEFAULT, H5P_DEFAULT);
    hid_t ab = H5Aopen_by_name(fb, name, bn, H5P_DEFAULT, H5P_DEFAULT);
    int bad = aa < 0 || ab < 0 || !same_shape_type(aa, ab, 1);
    if (!bad && !timing(an)) {
      size_t la = 0, lb = 0;
      unsigned char *x = read_raw(aa, 1, &la), *y = read_raw(ab, 1, &lb);
      bad = !x || !y || la != lb || memcmp(x, y, la) != 0;
      free(x);
      free(y);
    } else if (!bad) {
      (*nskipped)++;
    }
    if (aa >= 0) H5Aclose(aa);
    if (ab >= 0) H5Aclose(ab);
    if (bad) return fail("attribute values differ", where);
    (*nattrs)++;
  }
  return 0;
}

static int complete(hid_t f) {
  int32_t v = 0;
  hid_t a = H5Aexists(f, "complete") > 0 ? H5Aopen(f, "complete", H5P_DEFAULT) : -1;
  if (a < 0) return 0;
  H5Aread(a, H5T_NATIVE_INT32, &v);
  H5Aclose(a);
  return v == 1;
}

static int cmp_bytes(const char *a, const char *b) {
  FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
  int rc = 0;
  long off = 0;
  if (!fa || !fb) rc = fail("cannot open for the byte comparison", a);
  while (!rc) {
    int x = fgetc(fa), y = fgetc(fb);
    if (x != y) {
      char where[64];
      snprintf(where, sizeof where, "byte %ld", off);
      rc = fail("the files differ byte for byte", where);
    }
    if (x == EOF || y == EOF) break;
    off++;
  }
  if (fa) fclose(fa);
  if (fb) fclose(fb);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 3 || (argc == 4 && strcmp(argv[3], "--bytes") != 0) || argc > 4) {
    fprintf(stderr, "usage: fault_cmp A.h5 B.h5 [--bytes]\n");
    return 2;
  }
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t fa = H5Fopen(argv[1], H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t fb = H5Fopen(argv[2], H5F_ACC_RDONLY, H5P_DEFAULT);
  if (fa < 0) return fail("cannot open", argv[1]);
  if (fb < 0) return fail("cannot open", argv[2]);
  if (!complete(fa) || !complete(fb)) return fail("not marked complete", "/");
  walk wa, wb;
  if (list_objects(fa, &wa) < 0 || list_objects(fb, &wb) < 0) return fail("cannot list", "/");
  if (wa.n != wb.n) return fail("different number of objects", "/");
  long ndata = 0, nattrs = 0, nskipped = 0;
  unsigned long long bytes = 0;
  for (int i = 0; i < wa.n; i++) {
    const char *name = wa.names[i];
    if (strcmp(name, wb.names[i]) != 0 || wa.kinds[i] != wb.kinds[i])
      return fail("object lists differ", name);
    if (cmp_attrs(fa, fb, name, &nattrs, &nskipped)) return 1;
    if (wa.kinds[i] != H5O_TYPE_DATASET) continue;
    hid_t da = H5Dopen2(fa, name, H5P_DEFAULT), db = H5Dopen2(fb, name, H5P_DEFAULT);
    if (da < 0 || db < 0 || !same_shape_type(da, db, 0)) return fail("type or shape differs", name);
    size_t la = 0, lb = 0;
    unsigned char *x = read_raw(da, 0, &la), *y = read_raw(db, 0, &lb);
    if (!x || !y || la != lb || memcmp(x, y, la) != 0) return fail("dataset bytes differ", name);
    bytes += la;
    ndata++;
    free(x);
    free(y);
    H5Dclose(da);
    H5Dclose(db);
  }
  H5Fclose(fa);
  H5Fclose(fb);
  if (argc == 4 && cmp_bytes(argv[1], argv[2])) return 1;
  printf("identical: %ld datasets (%llu bytes), %ld attributes (%ld timing attributes not "
         "compared)%s\n",
         ndata, bytes, nattrs, nskipped, argc == 4 ? ", and byte for byte" : "");
  return 0;
}
