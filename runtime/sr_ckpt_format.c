/*
 * sr_ckpt_format.c — what the checkpoint computes and reads back, without any state: XXH64, the
 * checksums of a layer, and the parsers of the checkpoint's files (manifest, unit file,
 * snapshot image) and the snapshot's builder. sr_ckpt.c holds the checkpoint itself.
 *
 * The parsers read files a resume must not trust (fuzzed by tests/fuzz/fuzz_ckpt.c): every
 * length is checked before use, nothing is read past the given length, and a refusal is one
 * line (SR_ERR_IO) naming the file and saying that -f starts over.
 */
#include "sr_ckpt.h"
#include "sr_internal.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SR_CKPT_FORMAT "sparsering-checkpoint-1"
#define SR_SNAP_MAGIC "SRSNAP01"

/* ---------------------------------------------------------------------------------------------
 * XXH64 (xxHash specification, 64-bit variant). Reads little-endian words.
 * ------------------------------------------------------------------------------------------- */

#define XP1 11400714785074694791ULL
#define XP2 14029467366897019727ULL
#define XP3 1609587929392839161ULL
#define XP4 9650029242287828579ULL
#define XP5 2870177450012600261ULL

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t rd64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}
static inline uint32_t rd32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap32(v);
#endif
  return v;
}
static inline uint64_t xround(uint64_t acc, uint64_t in) {
  acc += in * XP2;
  return rotl64(acc, 31) * XP1;
}
static inline uint64_t xmerge(uint64_t acc, uint64_t v) {
  acc ^= xround(0, v);
  return acc * XP1 + XP4;
}

uint64_t sr_xxh64(const void *data, size_t len, uint64_t seed) {
  const uint8_t *p = data, *end = p + len;
  uint64_t h;
  if (len >= 32) {
    const uint8_t *limit = end - 32;
    uint64_t v1 = seed + XP1 + XP2, v2 = seed + XP2, v3 = seed, v4 = seed - XP1;
    do {
      v1 = xround(v1, rd64(p));
      v2 = xround(v2, rd64(p + 8));
      v3 = xround(v3, rd64(p + 16));
      v4 = xround(v4, rd64(p + 24));
      p += 32;
    } while (p <= limit);
    h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
    h = xmerge(h, v1);
    h = xmerge(h, v2);
    h = xmerge(h, v3);
    h = xmerge(h, v4);
  } else {
    h = seed + XP5;
  }
  h += (uint64_t)len;
  for (; p + 8 <= end; p += 8)
    h = rotl64(h ^ xround(0, rd64(p)), 27) * XP1 + XP4;
  if (p + 4 <= end) {
    h = rotl64(h ^ ((uint64_t)rd32(p) * XP1), 23) * XP2 + XP3;
    p += 4;
  }
  for (; p < end; p++)
    h = rotl64(h ^ (*p * XP5), 11) * XP1;
  h ^= h >> 33;
  h *= XP2;
  h ^= h >> 29;
  h *= XP3;
  h ^= h >> 32;
  return h;
}

/* ---------------------------------------------------------------------------------------------
 * Checksums of a layer from memory
 * ------------------------------------------------------------------------------------------- */

const char *const sr_ckpt_dataset_names[SR_CK_N] = {
    "out", "lse", "selection/indptr", "selection/indices", "selection/col_indptr",
    "selection/col_indices"};

uint64_t sr__ckpt_unit_checksum(const uint64_t d[SR_CK_N], int layer) {
  uint8_t le[8 * SR_CK_N];
  /* The column checksums are mixed only when a layer has them: a layer without key columns
   * (dense, block_sparse) keeps the unit checksum of the four datasets it always had. */
  const int n = d[SR_CK_COLPTR] || d[SR_CK_COLIDX] ? SR_CK_N : SR_CK_COLPTR;
  for (int i = 0; i < n; i++)
    for (int b = 0; b < 8; b++)
      le[8 * i + b] = (uint8_t)(d[i] >> (8 * b));
  return sr_xxh64(le, 8 * (size_t)n, (uint64_t)layer);
}

/* Collective. A global CSR row pointer (selection/indptr or col_indptr) from every rank's local
 * one: rank 0 gathers every row length, builds the array as sr_h5 writes it, and hashes it
 * whole into *sum (untouched on other ranks). */
static sr_status global_rowptr_sum(const sr_plan *p, const int64_t *row_ptr, MPI_Comm comm,
                                   uint64_t *sum) {
  int64_t rows_local = (int64_t)p->q_heads * p->nqb_local;
  int64_t rows_global = (int64_t)p->q_heads * p->nqb_global;
  int64_t *counts = malloc(sizeof *counts * (size_t)(rows_local > 0 ? rows_local : 1));
  int64_t *all =
      p->rank == 0 ? malloc(sizeof *all * (size_t)(rows_global > 0 ? rows_global : 1)) : NULL;
  int64_t *indptr = p->rank == 0 ? calloc((size_t)rows_global + 1, sizeof *indptr) : NULL;
  sr_status st = SR_OK;
  if (!counts || (p->rank == 0 && (!all || !indptr)))
    st = sr__seterr(SR_ERR_NOMEM, "out of memory (selection checksum)");
  st = sr_comm_agree(comm, st);
  if (st == SR_OK) {
    for (int64_t r = 0; r < rows_local; r++)
      counts[r] = row_ptr[r + 1] - row_ptr[r];
    st = sr__mpi_check(MPI_Gather(counts, (int)rows_local, MPI_INT64_T, all, (int)rows_local,
                                  MPI_INT64_T, 0, comm),
                       "MPI_Gather", __FILE__, __LINE__);
    st = sr_comm_agree(comm, st);
  }
  if (st == SR_OK && p->rank == 0) {
    for (int r = 0; r < p->nranks; r++)
      for (int h = 0; h < p->q_heads; h++)
        for (int64_t m = 0; m < p->nqb_local; m++) {
          int64_t grow = (int64_t)h * p->nqb_global + sr_plan_qblock_global(p, r, m);
          indptr[grow + 1] = all[(int64_t)r * rows_local + (int64_t)h * p->nqb_local + m];
        }
    for (int64_t r = 0; r < rows_global; r++)
      indptr[r + 1] += indptr[r];
    *sum = sr_xxh64(indptr, sizeof *indptr * (size_t)(rows_global + 1), 0);
  }
  free(indptr);
  free(all);
  free(counts);
  return st;
}

sr_status sr_ckpt_checksums(const sr_plan *p, unsigned write_mask, const float *out,
                            const float *lse, const sr_selection *sel, MPI_Comm comm, int layer,
                            sr_ckpt_sums *s) {
  memset(s, 0, sizeof *s);
  SR_ASSERT(p != NULL && p->bq > 0 && p->n_local % p->bq == 0);
  uint64_t local[SR_CK_N] = {0};
  const size_t bq = (size_t)p->bq, d = (size_t)p->d;
  const int want_sel = (write_mask & SR_WRITE_SELECTION) && sel;
  /* Key columns (vertical_slash, flexprefill): every rank has the same method, so all have
   * them or none. */
  const int want_cols = want_sel && sel->vrow_ptr != NULL;
  /* Local q-block m holds local rows [m*bq, (m+1)*bq): granule (h, global q-block). The sum
   * mod 2^64 does not depend on the order, so the granules are hashed by all threads. */
  const int64_t ng = (int64_t)p->q_heads * p->nqb_local;
  uint64_t s_out = 0, s_lse = 0, s_idx = 0, s_cidx = 0;
#pragma omp parallel for schedule(static) reduction(+ : s_out, s_lse, s_idx, s_cidx)
  for (int64_t lr = 0; lr < ng; lr++) {
    const int64_t h = lr / p->nqb_local, m = lr % p->nqb_local;
    uint64_t g =
        (uint64_t)h * (uint64_t)p->nqb_global + (uint64_t)sr_plan_qblock_global(p, p->rank, m);
    size_t row0 = (size_t)h * (size_t)p->n_local + (size_t)m * bq;
    if ((write_mask & SR_WRITE_OUT) && out)
      s_out += sr_xxh64(out + row0 * d, bq * d * sizeof(float), g);
    if ((write_mask & SR_WRITE_LSE) && lse) s_lse += sr_xxh64(lse + row0, bq * sizeof(float), g);
    if (want_sel) {
      int64_t cnt = sel->row_ptr[lr + 1] - sel->row_ptr[lr];
      s_idx += sr_xxh64(sel->col + sel->row_ptr[lr], (size_t)cnt * sizeof(int32_t), g);
    }
    if (want_cols) {
      int64_t cnt = sel->vrow_ptr[lr + 1] - sel->vrow_ptr[lr];
      s_cidx += sr_xxh64(sel->vcol + sel->vrow_ptr[lr], (size_t)cnt * sizeof(int32_t), g);
    }
  }
  local[SR_CK_OUT] = s_out;
  local[SR_CK_LSE] = s_lse;
  local[SR_CK_INDICES] = s_idx;
  local[SR_CK_COLIDX] = s_cidx;
  sr_status st = SR_OK;
  /* The row pointers are global: hashed whole by rank 0. */
  if (want_sel) SR_TRY(global_rowptr_sum(p, sel->row_ptr, comm, &local[SR_CK_INDPTR]));
  if (want_cols) SR_TRY(global_rowptr_sum(p, sel->vrow_ptr, comm, &local[SR_CK_COLPTR]));
  st = sr__mpi_check(MPI_Allreduce(local, s->d, SR_CK_N, MPI_UINT64_T, MPI_SUM, comm),
                     "MPI_Allreduce", __FILE__, __LINE__);
  if ((st = sr_comm_agree(comm, st)) != SR_OK) return st;
  if (write_mask & SR_WRITE_OUT) s->present |= 1u << SR_CK_OUT;
  if (write_mask & SR_WRITE_LSE) s->present |= 1u << SR_CK_LSE;
  if (write_mask & SR_WRITE_SELECTION) s->present |= (1u << SR_CK_INDPTR) | (1u << SR_CK_INDICES);
  if (want_cols) s->present |= (1u << SR_CK_COLPTR) | (1u << SR_CK_COLIDX);
  for (int i = 0; i < SR_CK_N; i++)
    if (!(s->present & (1u << i))) s->d[i] = 0;
  s->unit = sr__ckpt_unit_checksum(s->d, layer);
  return SR_OK;
}

sr_status sr__ckpt_read_all(int fd, void *buf, size_t len, off_t off, const char *name) {
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t r = pread(fd, p, len, off);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return sr__seterr(SR_ERR_IO, "%s: read failed: %s", name, strerror(errno));
    if (r == 0)
      return sr__seterr(SR_ERR_IO, "%s: unexpected end of file at byte %lld", name, (long long)off);
    p += r;
    len -= (size_t)r;
    off += r;
  }
  return SR_OK;
}

/* ---------------------------------------------------------------------------------------------
 * JSON helpers
 * ------------------------------------------------------------------------------------------- */

void sr__ckpt_hex64(char buf[19], uint64_t v) { snprintf(buf, 19, "0x%016" PRIx64, v); }

static int get_hex(const cJSON *o, const char *key, uint64_t *v) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsString(j) || strncmp(j->valuestring, "0x", 2) != 0 || strlen(j->valuestring) != 18)
    return 0;
  char *end = NULL;
  errno = 0;
  unsigned long long x = strtoull(j->valuestring + 2, &end, 16);
  if (errno || !end || *end) return 0;
  *v = (uint64_t)x;
  return 1;
}

/* An integer in [lo, hi] (JSON numbers are doubles: exact below 2^53). */
static int get_int(const cJSON *o, const char *key, int64_t lo, int64_t hi, int64_t *v) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsNumber(j)) return 0;
  double x = j->valuedouble;
  if (!(x >= (double)lo && x <= (double)hi) || x != (double)(int64_t)x) return 0;
  *v = (int64_t)x;
  return 1;
}

static int get_str(const cJSON *o, const char *key, char *buf, size_t n) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsString(j) || strlen(j->valuestring) >= n) return 0;
  snprintf(buf, n, "%s", j->valuestring);
  return 1;
}

#define SR_MAX_OFFSET ((int64_t)1 << 53)

/* One JSON value of exactly len bytes (whitespace may follow it, nothing else); NULL if not.
 * The text need not be NUL-terminated. */
static cJSON *parse_json(const char *text, size_t len) {
  const char *end = NULL;
  cJSON *o = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  if (!o) return NULL;
  for (const char *p = end; p && p < text + len; p++)
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      cJSON_Delete(o);
      return NULL;
    }
  return o;
}

/* ---------------------------------------------------------------------------------------------
 * Manifest
 * ------------------------------------------------------------------------------------------- */

void sr__manifest_free(sr__manifest *m) {
  free(m->result_yaml);
  free(m->config_yaml);
  free(m->unit_hash);
  memset(m, 0, sizeof *m);
}

sr_status sr__ckpt_bad_file(const char *name, const char *what) {
  return sr__seterr(SR_ERR_IO,
                    "%s: damaged checkpoint file (%s); start over with -f "
                    "(output.overwrite) without --resume",
                    name, what);
}

sr_status sr__ckpt_manifest_parse(const char *text, size_t len, const char *name, sr__manifest *m) {
  memset(m, 0, sizeof *m);
  cJSON *o = parse_json(text, len);
  if (!o) return sr__ckpt_bad_file(name, "not JSON");
  sr_status st = SR_OK;
  char format[64];
  int64_t v[8];
  const cJSON *geo = cJSON_GetObjectItemCaseSensitive(o, "geometry");
  const cJSON *ry = cJSON_GetObjectItemCaseSensitive(o, "result_config");
  const cJSON *cy = cJSON_GetObjectItemCaseSensitive(o, "config");
  const cJSON *units = cJSON_GetObjectItemCaseSensitive(o, "units");
  if (!cJSON_IsObject(o) || !get_str(o, "format", format, sizeof format) ||
      strcmp(format, SR_CKPT_FORMAT) != 0) {
    st = sr__ckpt_bad_file(name, "not a " SR_CKPT_FORMAT " manifest");
  } else if (!get_str(o, "sparsering", m->version, sizeof m->version) ||
             !get_str(o, "hdf5", m->hdf5, sizeof m->hdf5) ||
             !get_str(o, "backend", m->backend, sizeof m->backend) ||
             !get_int(o, "ranks", 1, 1 << 24, &v[0]) || !get_int(o, "layers", 1, 1 << 20, &v[1]) ||
             !get_int(o, "units_done", 1, 1 << 20, &v[2]) ||
             !get_int(o, "file_bytes", 1, SR_MAX_OFFSET, &v[3]) ||
             !get_int(o, "snapshot_bytes", 1, SR_MAX_OFFSET, &v[4]) ||
             !get_hex(o, "result_hash", &m->result_hash) ||
             !get_hex(o, "input_fingerprint", &m->input_fp) ||
             !get_hex(o, "config_hash", &m->config_hash) ||
             !get_hex(o, "snapshot_hash", &m->snapshot_hash) ||
             !get_str(o, "snapshot", m->snapshot, sizeof m->snapshot) || !cJSON_IsObject(geo) ||
             !cJSON_IsString(ry) || !cJSON_IsString(cy) || !cJSON_IsArray(units)) {
    st = sr__ckpt_bad_file(name, "a field is missing or malformed");
  } else if (!get_int(geo, "q_heads", 1, 1 << 20, &m->q_heads) ||
             !get_int(geo, "seq_len", 1, SR_MAX_OFFSET, &m->seq_len) ||
             !get_int(geo, "head_dim", 1, 1 << 20, &m->head_dim) ||
             !get_int(geo, "block_q", 1, 1 << 20, &m->block_q) || m->seq_len % m->block_q != 0) {
    st = sr__ckpt_bad_file(name, "geometry is malformed");
  } else {
    m->ranks = (int)v[0];
    m->layers = (int)v[1];
    m->units_done = (int)v[2];
    m->file_bytes = (uint64_t)v[3];
    m->snapshot_bytes = (uint64_t)v[4];
    char want[64];
    snprintf(want, sizeof want, "snap-%06d.bin", m->units_done - 1);
    if (m->units_done > m->layers || cJSON_GetArraySize(units) != m->units_done) {
      st = sr__ckpt_bad_file(name, "layer counts disagree");
    } else if (strcmp(m->snapshot, want) != 0) {
      st = sr__ckpt_bad_file(name, "snapshot name disagrees with the layer count");
    } else if (!(m->result_yaml = sr__strdup(ry->valuestring)) ||
               !(m->config_yaml = sr__strdup(cy->valuestring)) ||
               !(m->unit_hash = calloc((size_t)m->units_done, sizeof *m->unit_hash))) {
      st = sr__seterr(SR_ERR_NOMEM, "out of memory reading %s", name);
    } else {
      int i = 0;
      const cJSON *u;
      cJSON_ArrayForEach(u, units) {
        char b[19];
        if (!cJSON_IsString(u) || strlen(u->valuestring) != 18 ||
            strncmp(u->valuestring, "0x", 2) != 0) {
          st = sr__ckpt_bad_file(name, "a unit checksum is malformed");
          break;
        }
        snprintf(b, sizeof b, "%s", u->valuestring);
        char *end = NULL;
        m->unit_hash[i++] = strtoull(b + 2, &end, 16);
        if (!end || *end) {
          st = sr__ckpt_bad_file(name, "a unit checksum is malformed");
          break;
        }
      }
    }
  }
  cJSON_Delete(o);
  if (st != SR_OK) sr__manifest_free(m);
  return st;
}

sr_status sr__ckpt_unit_parse(const char *text, size_t len, const char *name, int layer,
                              sr__extent *ext, int *n, uint64_t *unit_sum, char **metrics) {
  *n = 0;
  *metrics = NULL;
  cJSON *o = parse_json(text, len);
  if (!o) return sr__ckpt_bad_file(name, "not JSON");
  sr_status st = SR_OK;
  int64_t l = -1;
  const cJSON *ds = cJSON_GetObjectItemCaseSensitive(o, "datasets");
  const cJSON *mj = cJSON_GetObjectItemCaseSensitive(o, "metrics");
  if (!cJSON_IsObject(o) || !get_int(o, "layer", 0, 1 << 20, &l) || l != layer ||
      !get_hex(o, "checksum", unit_sum) || !cJSON_IsArray(ds) || cJSON_GetArraySize(ds) > SR_CK_N) {
    st = sr__ckpt_bad_file(name, "a field is missing or malformed");
  } else {
    unsigned seen = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, ds) {
      char dname[32];
      int64_t off = 0, bytes = 0;
      uint64_t sum = 0;
      int kind = -1;
      if (get_str(e, "name", dname, sizeof dname))
        for (int k = 0; k < SR_CK_N; k++)
          if (strcmp(dname, sr_ckpt_dataset_names[k]) == 0) kind = k;
      if (kind < 0 || (seen & (1u << kind)) || !get_int(e, "offset", 0, SR_MAX_OFFSET, &off) ||
          !get_int(e, "bytes", 0, SR_MAX_OFFSET, &bytes) || off + bytes > SR_MAX_OFFSET ||
          !get_hex(e, "checksum", &sum)) {
        st = sr__ckpt_bad_file(name, "a dataset entry is malformed");
        break;
      }
      seen |= 1u << kind;
      ext[*n] = (sr__extent){
          .kind = kind, .offset = (uint64_t)off, .bytes = (uint64_t)bytes, .checksum = sum};
      (*n)++;
    }
    if (st == SR_OK && mj) {
      if (!cJSON_IsObject(mj))
        st = sr__ckpt_bad_file(name, "metrics is not an object");
      else if (!(*metrics = cJSON_PrintUnformatted(mj)))
        st = sr__seterr(SR_ERR_NOMEM, "out of memory reading %s", name);
    }
  }
  cJSON_Delete(o);
  if (st != SR_OK) {
    free(*metrics);
    *metrics = NULL;
    *n = 0;
  }
  return st;
}

/* ---------------------------------------------------------------------------------------------
 * Snapshot: every byte of data.h5 below its size that is not raw data of a completed layer.
 * Image: magic (8) | file_bytes u64 | nranges u64 | nranges x (offset u64, length u64) |
 *        range bytes, in order | XXH64 of everything before it (u64). Little-endian.
 * ------------------------------------------------------------------------------------------- */

static void put64(uint8_t *p, uint64_t v) {
  for (int b = 0; b < 8; b++)
    p[b] = (uint8_t)(v >> (8 * b));
}
static uint64_t get64(const uint8_t *p) { return rd64(p); }

static int cmp_extent(const void *a, const void *b) {
  const sr__extent *x = a, *y = b;
  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Sorted copy of the extents with bytes > 0. */
static sr__extent *sorted_raw(const sr__extent *raw, int nraw, int *nout) {
  sr__extent *s = malloc(sizeof *s * (size_t)(nraw > 0 ? nraw : 1));
  int n = 0;
  if (!s) return NULL;
  for (int i = 0; i < nraw; i++)
    if (raw[i].bytes > 0) s[n++] = raw[i];
  qsort(s, (size_t)n, sizeof *s, cmp_extent);
  *nout = n;
  return s;
}

sr_status sr__ckpt_snapshot_parse(const uint8_t *buf, size_t len, const char *name,
                                  uint64_t file_bytes, const sr__extent *raw, int nraw,
                                  uint64_t **ranges, uint64_t *nranges, const uint8_t **payload) {
  *ranges = NULL;
  *nranges = 0;
  *payload = NULL;
  if (len < 32 || memcmp(buf, SR_SNAP_MAGIC, 8) != 0)
    return sr__ckpt_bad_file(name, "not a snapshot");
  if (sr_xxh64(buf, len - 8, 0) != get64(buf + len - 8)) return sr__ckpt_bad_file(name, "checksum");
  uint64_t fb = get64(buf + 8), nr = get64(buf + 16);
  if (fb != file_bytes) return sr__ckpt_bad_file(name, "file size disagrees with the manifest");
  if (nr > (len - 32) / 16) return sr__ckpt_bad_file(name, "range count");
  const uint8_t *tab = buf + 24;
  uint64_t payload_len = 0;
  for (uint64_t i = 0; i < nr; i++) {
    uint64_t l = get64(tab + 16 * i + 8);
    if (l > len) return sr__ckpt_bad_file(name, "range length");
    payload_len += l;
  }
  if (24 + 16 * nr + payload_len + 8 != len) return sr__ckpt_bad_file(name, "length");
  /* The ranges and the raw extents must tile [0, file_bytes): in order, no gap, no overlap. */
  int ns = 0;
  sr__extent *s = sorted_raw(raw, nraw, &ns);
  if (!s) return sr__seterr(SR_ERR_NOMEM, "out of memory (snapshot)");
  uint64_t at = 0, i = 0;
  int j = 0;
  sr_status st = SR_OK;
  while (st == SR_OK && at < file_bytes) {
    if (i < nr && get64(tab + 16 * i) == at && get64(tab + 16 * i + 8) > 0) {
      at += get64(tab + 16 * i + 8);
      i++;
    } else if (j < ns && s[j].offset == at) {
      at += s[j].bytes;
      j++;
    } else {
      st = sr__ckpt_bad_file(name, "ranges do not cover the file");
    }
  }
  if (st == SR_OK && (at != file_bytes || i != nr || j != ns))
    st = sr__ckpt_bad_file(name, "ranges do not cover the file");
  free(s);
  if (st != SR_OK) return st;
  *ranges = malloc(sizeof **ranges * (size_t)(2 * nr + 1));
  if (!*ranges) return sr__seterr(SR_ERR_NOMEM, "out of memory (snapshot)");
  for (uint64_t k = 0; k < 2 * nr; k++)
    (*ranges)[k] = get64(tab + 8 * k);
  *nranges = nr;
  *payload = tab + 16 * nr;
  return SR_OK;
}

/* Rank 0: the snapshot image of `data` (size file_bytes) given every completed raw extent. */
sr_status sr__ckpt_snapshot_build(const char *data, uint64_t file_bytes, const sr__extent *raw,
                                  int nraw, uint8_t **img, size_t *img_len) {
  *img = NULL;
  *img_len = 0;
  int ns = 0;
  sr__extent *s = sorted_raw(raw, nraw, &ns);
  if (!s) return sr__seterr(SR_ERR_NOMEM, "out of memory (snapshot)");
  /* Complement of the extents in [0, file_bytes). */
  uint64_t *rg = malloc(sizeof *rg * (size_t)(2 * (ns + 1)));
  uint64_t nr = 0, at = 0, meta = 0;
  sr_status st = rg ? SR_OK : sr__seterr(SR_ERR_NOMEM, "out of memory (snapshot)");
  for (int j = 0; st == SR_OK && j <= ns; j++) {
    uint64_t next = j < ns ? s[j].offset : file_bytes;
    if (next < at || (j < ns && s[j].offset + s[j].bytes > file_bytes))
      st = sr__seterr(SR_ERR_INTERNAL,
                      "%s: raw data extents overlap or pass the end of the file "
                      "(%" PRIu64 " bytes)",
                      data, file_bytes);
    else if (next > at) {
      rg[2 * nr] = at;
      rg[2 * nr + 1] = next - at;
      meta += next - at;
      nr++;
    }
    if (j < ns) at = s[j].offset + s[j].bytes;
  }
  free(s);
  size_t len = 24 + 16 * (size_t)nr + (size_t)meta + 8;
  uint8_t *b = st == SR_OK ? malloc(len) : NULL;
  if (st == SR_OK && !b) st = sr__seterr(SR_ERR_NOMEM, "out of memory (snapshot)");
  int fd = st == SR_OK ? open(data, O_RDONLY) : -1;
  if (st == SR_OK && fd < 0) st = sr__seterr(SR_ERR_IO, "%s: %s", data, strerror(errno));
  if (st == SR_OK) {
    memcpy(b, SR_SNAP_MAGIC, 8);
    put64(b + 8, file_bytes);
    put64(b + 16, nr);
    uint8_t *pay = b + 24 + 16 * nr;
    for (uint64_t i = 0; i < nr && st == SR_OK; i++) {
      put64(b + 24 + 16 * i, rg[2 * i]);
      put64(b + 24 + 16 * i + 8, rg[2 * i + 1]);
      st = sr__ckpt_read_all(fd, pay, (size_t)rg[2 * i + 1], (off_t)rg[2 * i], data);
      pay += rg[2 * i + 1];
    }
    if (st == SR_OK) put64(b + len - 8, sr_xxh64(b, len - 8, 0));
  }
  if (fd >= 0) close(fd);
  free(rg);
  if (st != SR_OK) {
    free(b);
    return st;
  }
  *img = b;
  *img_len = len;
  return SR_OK;
}
