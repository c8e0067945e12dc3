/*
 * sr_h5_in.c — parallel HDF5 (MPI-IO) input of activations: /layers/<l>/{q,k,v} shaped
 * [heads, tokens, head_dim] in float32, float16 or bfloat16 (docs/HDF5.md "Input"), every rank
 * reading only its rows with collective I/O. The invariants of sr_h5.c hold here too
 * (collective entry points but sr_h5_read_head_rows, agreement before returning, one-line
 * errors naming file and dataset, hid_t closed on every path).
 */
#define _POSIX_C_SOURCE 200809L /* st_mtim */
#include "sr_ckpt.h" /* sr_xxh64 */
#include "sr_h5_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct sr_h5_in {
  MPI_Comm comm;
  int rank, nranks;
  hid_t file;
  hid_t dxpl_coll;
  char *path;
  int layers;
  hid_t *dset;     /* [layers][3]: q, k, v, opened and checked once */
  int heads[3];    /* q_heads, kv_heads, kv_heads                   */
  int64_t n;    /* rows per dataset: seq_len (+ decode.steps in a decode run) */
  bool decode;
  int d;
  /* What the file was when opened (rank 0), re-checked before and after every layer's reads:
   * a file truncated, rewritten or replaced under a running job must stop it, not feed it
   * zeros (MPI-IO reads past the end of a file return zeros and success). */
  struct stat id;  /* device, inode, size, mtime */
  uint64_t *fp;    /* [layers][3] fingerprint of each dataset (fingerprint_dataset) */
};

/* ---------------------------------------------------------------------------------------------
 * Input
 * ------------------------------------------------------------------------------------------- */

static const char sr__which[3] = {'q', 'k', 'v'};

static int which_index(char which) {
  for (int i = 0; i < 3; i++)
    if (sr__which[i] == which) return i;
  return -1;
}

static void in_free(sr_h5_in *f) {
  if (!f) return;
  if (f->dset)
    for (int i = 0; i < 3 * f->layers; i++)
      if (f->dset[i] >= 0) H5Dclose(f->dset[i]);
  free(f->dset);
  free(f->fp);
  if (f->dxpl_coll >= 0) H5Pclose(f->dxpl_coll);
  if (f->file >= 0) H5Fclose(f->file);
  if (f->comm != MPI_COMM_NULL) MPI_Comm_free(&f->comm);
  free(f->path);
  free(f);
}

static const char *file_kind(mode_t m) {
  return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO" : S_ISSOCK(m) ? "a socket"
         : S_ISCHR(m) ? "a character device" : S_ISBLK(m) ? "a block device" : "not a regular file";
}

/* Rank 0: does the input exist, is it a regular file (a FIFO would block the open forever) and
 * is it HDF5? */
static sr_status in_precheck(const char *path) {
  struct stat sb;
  if (stat(path, &sb) != 0) return sr__seterr(SR_ERR_IO, "%s: %s", path, strerror(errno));
  if (!S_ISREG(sb.st_mode))
    return sr__seterr(SR_ERR_IO, "%s: is %s, not a regular HDF5 file", path, file_kind(sb.st_mode));
  if (access(path, R_OK) != 0) return sr__seterr(SR_ERR_IO, "%s: %s", path, strerror(errno));
  htri_t is = H5Fis_hdf5(path);
  H5Eclear2(H5E_DEFAULT);
  if (is <= 0) return sr__seterr(SR_ERR_IO, "%s: not an HDF5 file", path);
  return SR_OK;
}

/* Opens /layers/<l>/<which> and checks rank, shape and element type. */
static sr_status in_check_dataset(sr_h5_in *f, int l, int w) {
  sr_status st = SR_OK;
  hid_t dset = H5I_INVALID_HID, space = H5I_INVALID_HID, type = H5I_INVALID_HID;
  char obj[64], want[224], es[96];
  hsize_t expect[3] = {(hsize_t)f->heads[w], (hsize_t)f->n, (hsize_t)f->d};
  snprintf(obj, sizeof obj, "/layers/%d/%c", l, sr__which[w]);
  sr__h5_dims_str(es, sizeof es, 3, expect);
  snprintf(want, sizeof want, "float32 or float16 %s ([%s][%s][head_dim])", es,
           w == 0 ? "q_heads" : "kv_heads", f->decode ? "seq_len + decode.steps" : "seq_len");

  /* Walk the path so that a missing group reads as the missing dataset it implies. */
  char prefix[64];
  for (const char *c = obj + 1;; c++) {
    if (*c != '/' && *c != '\0') continue;
    size_t len = (size_t)(c - obj);
    memcpy(prefix, obj, len);
    prefix[len] = '\0';
    htri_t ex = H5Lexists(f->file, prefix, H5P_DEFAULT);
    if (ex < 0) return sr__h5_fail(SR_ERR_IO, f->path, prefix, "H5Lexists");
    if (!ex) return sr__seterr(SR_ERR_SHAPE, "%s: %s: dataset missing (expected %s)", f->path,
                               obj, want);
    if (*c == '\0') break;
  }
  if ((dset = H5Dopen2(f->file, obj, H5P_DEFAULT)) < 0) {
    H5Eclear2(H5E_DEFAULT);
    return sr__seterr(SR_ERR_SHAPE, "%s: %s: not a dataset (expected %s)", f->path, obj, want);
  }
  if ((space = H5Dget_space(dset)) < 0 || (type = H5Dget_type(dset)) < 0) {
    st = sr__h5_fail(SR_ERR_IO, f->path, obj, "H5Dget_space/H5Dget_type");
    goto done;
  }
  char ts[64], fs[96];
  sr__h5_dtype_str(type, ts, sizeof ts);
  size_t size = H5Tget_size(type);
  if (H5Tget_class(type) != H5T_FLOAT || (size != 4 && size != 2)) {
    st = sr__seterr(SR_ERR_SHAPE, "%s: %s: dtype %s found, expected float32 or float16", f->path,
                    obj, ts);
    goto done;
  }
  hsize_t found[H5S_MAX_RANK];
  int nd = H5Sget_simple_extent_dims(space, found, NULL);
  if (nd < 0) {
    st = sr__h5_fail(SR_ERR_IO, f->path, obj, "H5Sget_simple_extent_dims");
    goto done;
  }
  bool same = nd == 3;
  for (int i = 0; same && i < 3; i++) same = found[i] == expect[i];
  if (!same) {
    sr__h5_dims_str(fs, sizeof fs, nd, found);
    st = sr__seterr(SR_ERR_SHAPE, "%s: %s: shape %s found, expected %s ([%s][%s][head_dim])",
                    f->path, obj, fs, es, w == 0 ? "q_heads" : "kv_heads",
                    f->decode ? "seq_len + decode.steps" : "seq_len");
  }
done:
  if (type >= 0) H5Tclose(type);
  if (space >= 0) H5Sclose(space);
  if (st == SR_OK) f->dset[3 * l + w] = dset;
  else if (dset >= 0) H5Dclose(dset);
  return st;
}

/* Rank 0: one past the last byte of the dataset's raw data in the file (0 when none is
 * allocated or the layout keeps it in the object header). Contiguous: exact. Chunked: the
 * largest end among up to 64 chunks spread over the index (HDF5 1.10 lists chunks one call
 * each), which catches a file cut short; a change after the open is caught by in_check_same. */
static sr_status dataset_end(sr_h5_in *f, hid_t dset, const char *obj, uint64_t *end) {
  *end = 0;
  hid_t dcpl = H5Dget_create_plist(dset);
  if (dcpl < 0) return sr__h5_fail(SR_ERR_IO, f->path, obj, "H5Dget_create_plist");
  H5D_layout_t layout = H5Pget_layout(dcpl);
  H5Pclose(dcpl);
  if (layout == H5D_CONTIGUOUS) {
    haddr_t off = H5Dget_offset(dset);
    if (off != HADDR_UNDEF) *end = (uint64_t)off + (uint64_t)H5Dget_storage_size(dset);
  } else if (layout == H5D_CHUNKED) {
    hid_t space = H5Dget_space(dset);
    hsize_t nchunks = 0;
    if (space < 0 || H5Dget_num_chunks(dset, space, &nchunks) < 0) {
      if (space >= 0) H5Sclose(space);
      return sr__h5_fail(SR_ERR_IO, f->path, obj, "H5Dget_num_chunks");
    }
    const hsize_t probes = nchunks < 64 ? nchunks : 64;
    for (hsize_t i = 0; i < probes; i++) {
      hsize_t idx = probes > 1 ? i * (nchunks - 1) / (probes - 1) : 0;
      hsize_t coff[H5S_MAX_RANK];
      unsigned mask = 0;
      haddr_t addr = HADDR_UNDEF;
      hsize_t size = 0;
      if (H5Dget_chunk_info(dset, space, idx, coff, &mask, &addr, &size) < 0) {
        H5Sclose(space);
        return sr__h5_fail(SR_ERR_IO, f->path, obj, "H5Dget_chunk_info");
      }
      if (addr != HADDR_UNDEF && (uint64_t)addr + size > *end) *end = (uint64_t)addr + size;
    }
    H5Sclose(space);
  }
  return SR_OK;
}

/* Rank 0: every dataset's raw data lies within the file as it is on storage now (MPI-IO reads
 * past the end of a file return zeros and success). */
static sr_status in_check_whole(sr_h5_in *f) {
  struct stat sb;
  if (stat(f->path, &sb) != 0) return sr__seterr(SR_ERR_IO, "%s: %s", f->path, strerror(errno));
  for (int i = 0; i < 3 * f->layers; i++) {
    char obj[64];
    snprintf(obj, sizeof obj, "/layers/%d/%c", i / 3, sr__which[i % 3]);
    uint64_t end = 0;
    SR_TRY(dataset_end(f, f->dset[i], obj, &end));
    if ((uint64_t)sb.st_size < end)
      return sr__seterr(SR_ERR_IO, "%s: truncated: %s ends at byte %llu, the file has %lld",
                        f->path, obj, (unsigned long long)end, (long long)sb.st_size);
  }
  return SR_OK;
}

sr_status sr_h5_in_open(sr_h5_in **fp, MPI_Comm comm, const char *path, const sr_config *cfg) {
  *fp = NULL;
  sr__h5_setup_errors();
  sr_h5_in *f = calloc(1, sizeof *f);
  if (!f) return sr__seterr(SR_ERR_NOMEM, "out of memory (HDF5 input handle)");
  f->comm = MPI_COMM_NULL;
  f->file = H5I_INVALID_HID;
  f->dxpl_coll = H5I_INVALID_HID;
  sr_status st = sr__h5_comm_setup(comm, &f->comm, &f->rank, &f->nranks);
  if (st != SR_OK) {
    in_free(f);
    return st;
  }
  hid_t fapl = H5I_INVALID_HID;

  if (!path || !path[0] || !cfg) {
    st = sr__seterr(SR_ERR_IO, "input path is empty");
  } else {
    f->path = sr__strdup(path);
    f->layers = cfg->layers > 0 ? cfg->layers : 0;
    f->heads[0] = cfg->q_heads;
    f->heads[1] = f->heads[2] = cfg->kv_heads;
    /* A decode run reads its new tokens from the rows after the prompt. */
    f->decode = cfg->phase == SR_PHASE_DECODE;
    f->n = cfg->seq_len + (f->decode ? cfg->decode_steps : 0);
    f->d = cfg->head_dim;
    f->dset = malloc(sizeof *f->dset * (size_t)(3 * f->layers + 1));
    if (!f->path || !f->dset) st = sr__seterr(SR_ERR_NOMEM, "out of memory (HDF5 input handle)");
    else
      for (int i = 0; i < 3 * f->layers; i++) f->dset[i] = H5I_INVALID_HID;
  }
  if (st == SR_OK && f->rank == 0) st = in_precheck(path);
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto fail;

  /* Independent metadata reads (sr_h5_read_head_rows is not collective); every dataset is
   * opened here once, so the reads themselves touch only raw data. */
  if ((fapl = H5Pcreate(H5P_FILE_ACCESS)) < 0 ||
      H5Pset_fapl_mpio(fapl, f->comm, MPI_INFO_NULL) < 0)
    st = sr__h5_fail(SR_ERR_IO, path, NULL, "file access property list");
  else if ((f->dxpl_coll = H5Pcreate(H5P_DATASET_XFER)) < 0 ||
           H5Pset_dxpl_mpio(f->dxpl_coll, H5FD_MPIO_COLLECTIVE) < 0)
    st = sr__h5_fail(SR_ERR_IO, path, NULL, "transfer property list");
  else if ((f->file = H5Fopen(path, H5F_ACC_RDONLY, fapl)) < 0)
    st = sr__h5_fail(SR_ERR_IO, path, NULL, "H5Fopen");
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto fail;

  /* Every rank checks every dataset: same file, same verdict; agreed anyway. */
  for (int l = 0; st == SR_OK && l < f->layers; l++)
    for (int w = 0; st == SR_OK && w < 3; w++) st = in_check_dataset(f, l, w);
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto fail;

  /* Rank 0 remembers what the file is, and checks that it holds every byte the library will
   * address (a file cut short reads as zeros past its end). */
  if (f->rank == 0) {
    f->fp = calloc((size_t)(3 * f->layers + 1), sizeof *f->fp);
    if (!f->fp) st = sr__seterr(SR_ERR_NOMEM, "out of memory (HDF5 input handle)");
    else if (stat(path, &f->id) != 0) st = sr__seterr(SR_ERR_IO, "%s: %s", path, strerror(errno));
    else st = in_check_whole(f);
  }
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto fail;

  H5Pclose(fapl);
  *fp = f;
  return SR_OK;

fail:
  if (fapl >= 0) H5Pclose(fapl);
  H5Eclear2(H5E_DEFAULT);
  in_free(f);
  return st;
}

sr_status sr_h5_read_rows(sr_h5_in *f, int layer, char which, int heads, const int64_t *run_starts,
                          int nruns, int64_t run_len, float *local) {
  SR_ASSERT(f != NULL);
  sr_status st = SR_OK;
  hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID;
  int w = which_index(which);
  char obj[64];
  snprintf(obj, sizeof obj, "/layers/%d/%c", layer, which);
  if (w < 0 || layer < 0 || layer >= f->layers || heads != f->heads[w < 0 ? 0 : w])
    st = sr__seterr(SR_ERR_INTERNAL, "%s: %s: read of %d heads (file has %d layers, %d heads)",
                    f->path, obj, heads, f->layers, w < 0 ? -1 : f->heads[w]);
  if (st == SR_OK) st = sr__h5_check_runs(f->path, obj, f->n, run_starts, nruns, run_len);
  if (st == SR_OK && nruns > 0 && run_len > 0 && !local)
    st = sr__seterr(SR_ERR_INTERNAL, "%s: %s: rows to read but no buffer", f->path, obj);
  if (st == SR_OK) {
    hid_t dset = f->dset[3 * layer + w];
    hsize_t mdims[3] = {(hsize_t)heads, (hsize_t)nruns * (hsize_t)run_len, (hsize_t)f->d};
    if ((fspace = H5Dget_space(dset)) < 0 ||
        sr__h5_select_runs(fspace, heads, f->d, run_starts, nruns, run_len) < 0 ||
        (mspace = H5Screate_simple(3, mdims, NULL)) < 0 ||
        (mdims[1] == 0 && H5Sselect_none(mspace) < 0))
      st = sr__h5_fail(SR_ERR_IO, f->path, obj, "selection");
  }
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto done;

  /* float16 on disk is converted to native float by HDF5 (soft conversion); with a conversion
   * HDF5 may fall back from collective to independent I/O internally, which is still correct. */
  float dummy = 0.0f;
  if (H5Dread(f->dset[3 * layer + w], H5T_NATIVE_FLOAT, mspace, fspace, f->dxpl_coll,
              local ? local : &dummy) < 0)
    st = sr__h5_fail(SR_ERR_IO, f->path, obj, "H5Dread");
  st = sr__h5_agree(f->comm, f->rank, f->nranks, st);

done:
  if (mspace >= 0) H5Sclose(mspace);
  if (fspace >= 0) H5Sclose(fspace);
  return st;
}

sr_status sr_h5_read_head_rows(sr_h5_in *f, int layer, char which, int head, int64_t pos0,
                               int64_t count, float *out) {
  SR_ASSERT(f != NULL);
  int w = which_index(which);
  char obj[64];
  snprintf(obj, sizeof obj, "/layers/%d/%c", layer, which);
  if (w < 0 || layer < 0 || layer >= f->layers || head < 0 || head >= f->heads[w] || pos0 < 0 ||
      count < 0 || pos0 + count > f->n || (count > 0 && !out))
    return sr__seterr(SR_ERR_INTERNAL, "%s: %s: head %d rows [%" PRId64 ", %" PRId64
                      ") outside the dataset", f->path, obj, head, pos0, pos0 + count);
  if (count == 0) return SR_OK;
  sr_status st = SR_OK;
  hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID;
  hsize_t start[3] = {(hsize_t)head, (hsize_t)pos0, 0};
  hsize_t block[3] = {1, (hsize_t)count, (hsize_t)f->d}, one[3] = {1, 1, 1};
  hsize_t mdims[2] = {(hsize_t)count, (hsize_t)f->d};
  if ((fspace = H5Dget_space(f->dset[3 * layer + w])) < 0 ||
      H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, one, block) < 0 ||
      (mspace = H5Screate_simple(2, mdims, NULL)) < 0)
    st = sr__h5_fail(SR_ERR_IO, f->path, obj, "selection");
  else if (H5Dread(f->dset[3 * layer + w], H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, out) < 0)
    st = sr__h5_fail(SR_ERR_IO, f->path, obj, "H5Dread");
  if (mspace >= 0) H5Sclose(mspace);
  if (fspace >= 0) H5Sclose(fspace);
  return st;
}

/* Rank 0: hashes into *h one dataset's identity (its on-disk type, encoded, and its shape) and
 * the raw on-disk bytes of SR_FP_ROWS positions (every head, every element of a row): the first,
 * the last and the rest spread by a hash of (layer, which, i). */
#define SR_FP_ROWS 16
static sr_status fingerprint_dataset(sr_h5_in *f, int l, int w, uint64_t *h) {
  sr_status st = SR_OK;
  hid_t dset = f->dset[3 * l + w], type = H5I_INVALID_HID, fspace = H5I_INVALID_HID;
  hid_t mspace = H5I_INVALID_HID;
  unsigned char *buf = NULL;
  char obj[64];
  snprintf(obj, sizeof obj, "/layers/%d/%c", l, sr__which[w]);
  size_t enc_len = 0;
  if ((type = H5Dget_type(dset)) < 0 || H5Tencode(type, NULL, &enc_len) < 0) {
    st = sr__h5_fail(SR_ERR_IO, f->path, obj, "H5Tencode");
    goto done;
  }
  size_t esize = H5Tget_size(type);
  const int64_t n = f->n, heads = f->heads[w], d = f->d;
  size_t cap = enc_len + (size_t)heads * SR_FP_ROWS * (size_t)d * esize + 64;
  if (!(buf = malloc(cap))) {
    st = sr__seterr(SR_ERR_NOMEM, "out of memory (input fingerprint)");
    goto done;
  }
  if (H5Tencode(type, buf, &enc_len) < 0) {
    st = sr__h5_fail(SR_ERR_IO, f->path, obj, "H5Tencode");
    goto done;
  }
  int64_t shape[3] = {heads, n, d};
  *h = sr_xxh64(buf, enc_len, *h) ^ sr_xxh64(shape, sizeof shape, (uint64_t)(3 * l + w));
  if ((fspace = H5Dget_space(dset)) < 0 || H5Sselect_none(fspace) < 0) {
    st = sr__h5_fail(SR_ERR_IO, f->path, obj, "selection");
    goto done;
  }
  for (int i = 0; i < SR_FP_ROWS && n > 0; i++) {
    uint64_t key[2] = {(uint64_t)(3 * l + w), (uint64_t)i};
    int64_t pos = i == 0   ? 0
                  : i == 1 ? n - 1
                           : (int64_t)(sr_xxh64(key, sizeof key, 7) % (uint64_t)n);
    hsize_t start[3] = {0, (hsize_t)pos, 0}, one[3] = {1, 1, 1};
    hsize_t block[3] = {(hsize_t)heads, 1, (hsize_t)d};
    if (H5Sselect_hyperslab(fspace, H5S_SELECT_OR, start, NULL, one, block) < 0) {
      st = sr__h5_fail(SR_ERR_IO, f->path, obj, "selection");
      goto done;
    }
  }
  hssize_t npts = H5Sget_select_npoints(fspace);
  hsize_t mdims[1] = {(hsize_t)(npts > 0 ? npts : 1)};
  if (npts > 0) {
    /* The file type as the memory type: the bytes as stored, no conversion. Elements arrive in
     * the file's row-major order of the selection, whatever order it was built in. */
    if ((mspace = H5Screate_simple(1, mdims, NULL)) < 0 ||
        H5Dread(dset, type, mspace, fspace, H5P_DEFAULT, buf) < 0) {
      st = sr__h5_fail(SR_ERR_IO, f->path, obj, "H5Dread");
      goto done;
    }
    *h = sr_xxh64(buf, (size_t)npts * esize, *h);
  }
done:
  free(buf);
  if (mspace >= 0) H5Sclose(mspace);
  if (fspace >= 0) H5Sclose(fspace);
  if (type >= 0) H5Tclose(type);
  return st;
}

sr_status sr_h5_in_fingerprint(sr_h5_in *f, uint64_t *fp) {
  SR_ASSERT(f != NULL && fp != NULL);
  uint64_t h = 0x5352494e50555431ull; /* "SRINPUT1" */
  sr_status st = SR_OK;
  if (f->rank == 0)
    for (int l = 0; st == SR_OK && l < f->layers; l++)
      for (int w = 0; st == SR_OK && w < 3; w++) st = fingerprint_dataset(f, l, w, &h);
  H5Eclear2(H5E_DEFAULT);
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) return st;
  int rc = MPI_Bcast(&h, 1, MPI_UINT64_T, 0, f->comm);
  if (rc != MPI_SUCCESS) return sr__h5_agree(f->comm, f->rank, f->nranks, sr__h5_mpi_fail(rc, "MPI_Bcast"));
  *fp = h;
  return SR_OK;
}

/* Rank 0: the path still names the file opened (same device and inode), unchanged in size and
 * modification time, and still whole. */
static sr_status in_check_same(sr_h5_in *f, int layer) {
  struct stat sb;
  if (stat(f->path, &sb) != 0)
    return sr__seterr(SR_ERR_IO, "%s: %s while layer %d was read (the input must stay in place "
                      "until the run ends)", f->path, strerror(errno), layer);
  if (sb.st_dev != f->id.st_dev || sb.st_ino != f->id.st_ino)
    return sr__seterr(SR_ERR_IO, "%s: replaced by another file while the run read it (layer %d)",
                      f->path, layer);
  if (sb.st_size != f->id.st_size)
    return sr__seterr(SR_ERR_IO, "%s: changed size while the run read it (layer %d): %lld -> %lld "
                      "bytes", f->path, layer, (long long)f->id.st_size, (long long)sb.st_size);
  if (sb.st_mtim.tv_sec != f->id.st_mtim.tv_sec || sb.st_mtim.tv_nsec != f->id.st_mtim.tv_nsec)
    return sr__seterr(SR_ERR_IO, "%s: modified while the run read it (layer %d)", f->path, layer);
  return in_check_whole(f);
}

sr_status sr_h5_in_check(sr_h5_in *f, int layer, int after) {
  SR_ASSERT(f != NULL);
  sr_status st = SR_OK;
  if (layer < 0 || layer >= f->layers)
    st = sr__seterr(SR_ERR_INTERNAL, "%s: check of layer %d of %d", f->path, layer, f->layers);
  if (st == SR_OK && f->rank == 0) {
    st = in_check_same(f, layer);
    for (int w = 0; st == SR_OK && w < 3; w++) {
      uint64_t h = 0;
      st = fingerprint_dataset(f, layer, w, &h);
      if (st != SR_OK) break;
      if (!after) f->fp[3 * layer + w] = h;
      else if (h != f->fp[3 * layer + w])
        st = sr__seterr(SR_ERR_IO, "%s: /layers/%d/%c changed while the run read it", f->path,
                        layer, sr__which[w]);
    }
    H5Eclear2(H5E_DEFAULT);
  }
  return sr__h5_agree(f->comm, f->rank, f->nranks, st);
}

void sr_h5_in_close(sr_h5_in *f) {
  if (!f) return;
  in_free(f);
}
