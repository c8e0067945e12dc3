/*
 * fuzz_h5_input.c — libFuzzer target for the HDF5 input validation (sr_h5_in_open and the reads
 * behind it, runtime/sr_h5.c).
 *
 * Structure-aware: the input bytes are not an HDF5 image (mutating raw HDF5 bytes fuzzes the
 * HDF5 library's own parser, not ours) but a recipe. They choose a config (layers, heads, GQA,
 * seq_len, head_dim) and, for every /layers/<l>/{q,k,v} (plus a spare layer), what the file
 * holds there: nothing, a group, a soft link (dangling, looping or to another dataset), an
 * external link to a missing file, or a dataset of one of many types (float32 LE/BE, IEEE half,
 * bfloat16, odd custom floats, float64, integers, strings, compound, enum, array, opaque), of
 * the right or a wrong rank and shape (one dimension off, zero-sized, scalar, null), laid out
 * contiguous, chunked, chunked + deflate or compact, filled with bytes from the input. The file
 * is written with serial HDF5, then opened by sr_h5_in_open on MPI_COMM_SELF.
 * Properties (a violation aborts):
 *   - no crash and no sanitizer report;
 *   - a refusal is SR_ERR_IO / SR_ERR_SHAPE / SR_ERR_NOMEM, one line naming the file;
 *   - an acceptance is right: an independent check with plain HDF5 finds every dataset a 2- or
 *     4-byte float of exactly the expected shape; every row then reads (collective and
 *     independent reads), out-of-range reads are refused, and the fingerprint is stable.
 */
#include "sr_h5.h"

#include <hdf5.h>
#include <mpi.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(c)                                                                                   \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      fprintf(stderr, "fuzz_h5_input: property violated: %s (message: %s)\n", #c,                  \
              sr_last_error());                                                                    \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

typedef struct rd {
  const uint8_t *p;
  size_t n, at;
} rd;
static unsigned take(rd *r, unsigned mod) { return r->at < r->n ? r->p[r->at++] % mod : 0; }

static char g_path[256];

static void finalize(void) {
  int done = 0;
  MPI_Finalized(&done);
  if (!done) MPI_Finalize();
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) {
    MPI_Init(argc, argv);
    atexit(finalize);
  }
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
  snprintf(g_path, sizeof g_path, "%s/sr_fuzz_h5_%d.h5", dir ? dir : "/tmp", (int)getpid());
  return 0;
}

/* The element types a recipe can pick. Caller closes the result. */
enum { NTYPES = 16 };
static hid_t make_type(unsigned k) {
  hid_t t = H5I_INVALID_HID;
  switch (k) {
  case 0: return H5Tcopy(H5T_IEEE_F32LE);
  case 1: return H5Tcopy(H5T_IEEE_F32BE);
  case 2: /* IEEE half */
    t = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(t, 15, 10, 5, 0, 10);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 15);
    return t;
  case 3: /* bfloat16 */
    t = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(t, 15, 7, 8, 0, 7);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 127);
    return t;
  case 4: /* an odd 2-byte float: 6 exponent bits, 9 mantissa bits */
    t = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(t, 15, 9, 6, 0, 9);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 31);
    return t;
  case 5: /* a 4-byte float with padding: 24 bits of precision at offset 8 */
    t = H5Tcopy(H5T_IEEE_F32LE);
    if (H5Tset_fields(t, 31, 23, 8, 8, 15) < 0 || H5Tset_offset(t, 0) < 0) {
      H5Tclose(t);
      return H5Tcopy(H5T_IEEE_F32LE);
    }
    return t;
  case 6: return H5Tcopy(H5T_IEEE_F64LE);
  case 7: return H5Tcopy(H5T_STD_I32LE);
  case 8: return H5Tcopy(H5T_STD_U8LE);
  case 9:
    t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, 4);
    return t;
  case 10:
    t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    return t;
  case 11:
    t = H5Tcreate(H5T_COMPOUND, 4);
    H5Tinsert(t, "x", 0, H5T_IEEE_F32LE);
    return t;
  case 12: {
    t = H5Tenum_create(H5T_STD_I16LE);
    short v = 1;
    H5Tenum_insert(t, "one", &v);
    return t;
  }
  case 13: {
    hsize_t two[1] = {2};
    return H5Tarray_create2(H5T_IEEE_F32LE, 1, two);
  }
  case 14:
    t = H5Tcreate(H5T_OPAQUE, 4);
    H5Tset_tag(t, "raw");
    return t;
  default: return H5Tcopy(H5T_NATIVE_LDOUBLE);
  }
}

/* One /layers/<l>/<w> per the recipe. want[3] is the expected shape. */
static void make_object(hid_t file, rd *r, const char *name, const hsize_t want[3]) {
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  unsigned kind = take(r, 14);
  if (kind == 0) goto done; /* missing */
  if (kind == 1) {
    hid_t g = H5Gcreate2(file, name, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (g >= 0) H5Gclose(g);
    goto done;
  }
  if (kind == 2 || kind == 3) {
    static const char *targets[] = {"/nowhere", "/layers/0/q", "/layers/0/k", "/layers"};
    const char *tgt = kind == 2 ? targets[take(r, 4)] : name; /* 3: a link to itself */
    H5Lcreate_soft(tgt, file, name, lcpl, H5P_DEFAULT);
    goto done;
  }
  if (kind == 4) {
    H5Lcreate_external("missing_file.h5", "/x", file, name, lcpl, H5P_DEFAULT);
    goto done;
  }
  /* A dataset. */
  hsize_t dims[4] = {want[0], want[1], want[2], 2};
  int rank = 3;
  switch (take(r, 9)) {
  case 0:
  case 1:
  case 2: break; /* the right shape      */
  case 3: dims[0] += take(r, 2) ? 1 : (dims[0] ? -1 : 1); break;
  case 4: dims[1] += take(r, 2) ? 1 : (dims[1] ? -1 : 1); break;
  case 5: dims[2] = take(r, 2) ? dims[2] + 1 : 0; break;
  case 6:
    rank = 2;
    dims[1] *= dims[2];
    break;
  case 7: rank = 4; break;
  default: rank = take(r, 2) ? 0 : -1; break; /* scalar / null space  */
  }
  hid_t space =
      rank > 0 ? H5Screate_simple(rank, dims, NULL) : H5Screate(rank == 0 ? H5S_SCALAR : H5S_NULL);
  hid_t type = make_type(take(r, NTYPES));
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  hssize_t npts = H5Sget_simple_extent_npoints(space);
  size_t bytes = (size_t)(npts > 0 ? npts : 0) * H5Tget_size(type);
  unsigned layout = take(r, 4);
  int nonzero = rank > 0;
  for (int i = 0; i < rank; i++)
    nonzero &= dims[i] > 0;
  if (layout >= 1 && layout <= 2 && nonzero) {
    hsize_t chunk[4];
    for (int i = 0; i < rank; i++)
      chunk[i] = 1 + take(r, (unsigned)dims[i]);
    H5Pset_chunk(dcpl, rank, chunk);
    if (layout == 2) H5Pset_deflate(dcpl, 1);
  } else if (layout == 3 && bytes < 32768) {
    H5Pset_layout(dcpl, H5D_COMPACT);
  }
  hid_t d = H5Dcreate2(file, name, type, space, lcpl, dcpl, H5P_DEFAULT);
  if (d >= 0 && npts > 0 && H5Tget_class(type) == H5T_FLOAT) {
    /* Values from the recipe, converted by HDF5 from float32. */
    float *v = malloc((size_t)npts * sizeof(float));
    for (hssize_t i = 0; i < npts; i++)
      v[i] = (float)((int)take(r, 256) - 128) / 16.0f;
    H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
    free(v);
  }
  if (d >= 0) H5Dclose(d);
  H5Pclose(dcpl);
  H5Tclose(type);
  H5Sclose(space);
done:
  H5Pclose(lcpl);
  H5Eclear2(H5E_DEFAULT);
}

/* The independent check of an accepted file: every dataset a 2- or 4-byte float of the shape. */
static int really_valid(const sr_config *c) {
  hid_t f = H5Fopen(g_path, H5F_ACC_RDONLY, H5P_DEFAULT);
  int ok = f >= 0;
  for (int l = 0; ok && l < c->layers; l++)
    for (int w = 0; ok && w < 3; w++) {
      char name[64];
      snprintf(name, sizeof name, "/layers/%d/%c", l, "qkv"[w]);
      hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
      ok = d >= 0;
      if (!ok) break;
      hid_t t = H5Dget_type(d), s = H5Dget_space(d);
      hsize_t dims[H5S_MAX_RANK];
      int nd = H5Sget_simple_extent_dims(s, dims, NULL);
      size_t sz = H5Tget_size(t);
      ok = H5Tget_class(t) == H5T_FLOAT && (sz == 2 || sz == 4) && nd == 3 &&
           dims[0] == (hsize_t)(w == 0 ? c->q_heads : c->kv_heads) &&
           dims[1] == (hsize_t)c->seq_len && dims[2] == (hsize_t)c->head_dim;
      H5Tclose(t);
      H5Sclose(s);
      H5Dclose(d);
    }
  if (f >= 0) H5Fclose(f);
  H5Eclear2(H5E_DEFAULT);
  return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  rd r = {data, size, 0};
  sr_config c;
  memset(&c, 0, sizeof c);
  c.layers = 1 + (int)take(&r, 3);
  c.q_heads = 1 + (int)take(&r, 4);
  int divs[4], nd = 0;
  for (int k = 1; k <= c.q_heads; k++)
    if (c.q_heads % k == 0) divs[nd++] = k;
  c.kv_heads = divs[take(&r, (unsigned)nd)];
  c.seq_len = 1 + (int64_t)take(&r, 40);
  c.head_dim = 1 + (int)take(&r, 6);
  const int extra = (int)take(&r, 2);

  hid_t file = H5Fcreate(g_path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) return 0;
  for (int l = 0; l < c.layers + extra; l++)
    for (int w = 0; w < 3; w++) {
      char name[64];
      snprintf(name, sizeof name, "/layers/%d/%c", l, "qkv"[w]);
      hsize_t want[3] = {(hsize_t)(w == 0 ? c.q_heads : c.kv_heads), (hsize_t)c.seq_len,
                         (hsize_t)c.head_dim};
      make_object(file, &r, name, want);
    }
  H5Fclose(file);

  sr_h5_in *in = NULL;
  sr_status st = sr_h5_in_open(&in, MPI_COMM_SELF, g_path, &c);
  if (getenv("SR_FUZZ_VERBOSE")) /* for looking at a corpus: what each input does */
    fprintf(stderr, "%s\n", st == SR_OK ? "accepted" : sr_last_error());
  if (st != SR_OK) {
    const char *msg = sr_last_error();
    CHECK(st == SR_ERR_IO || st == SR_ERR_SHAPE || st == SR_ERR_NOMEM);
    CHECK(in == NULL && msg[0] && strchr(msg, '\n') == NULL && strstr(msg, g_path) != NULL);
  } else {
    CHECK(really_valid(&c));
    size_t rows = (size_t)c.seq_len * (size_t)c.head_dim;
    float *buf = malloc((size_t)c.q_heads * rows * sizeof(float));
    int64_t start = 0;
    for (int l = 0; l < c.layers; l++)
      for (int w = 0; w < 3; w++) {
        int heads = w == 0 ? c.q_heads : c.kv_heads;
        CHECK(sr_h5_read_rows(in, l, "qkv"[w], heads, &start, 1, c.seq_len, buf) == SR_OK);
        CHECK(sr_h5_read_head_rows(in, l, "qkv"[w], heads - 1, 0, c.seq_len, buf) == SR_OK);
      }
    CHECK(sr_h5_read_head_rows(in, 0, 'q', c.q_heads, 0, 1, buf) == SR_ERR_INTERNAL);
    CHECK(sr_h5_read_head_rows(in, 0, 'v', 0, c.seq_len, 1, buf) == SR_ERR_INTERNAL);
    CHECK(sr_h5_read_head_rows(in, c.layers, 'k', 0, 0, 1, buf) == SR_ERR_INTERNAL);
    uint64_t a = 0, b = 1;
    CHECK(sr_h5_in_fingerprint(in, &a) == SR_OK && sr_h5_in_fingerprint(in, &b) == SR_OK && a == b);
    free(buf);
    sr_h5_in_close(in);
  }
  unlink(g_path);
  return 0;
}
