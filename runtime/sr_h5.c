/*
 * sr_h5.c — parallel HDF5 (MPI-IO) output and input of sharded rows. docs/HDF5.md is the schema.
 *
 * Invariants:
 *   - Every entry point except sr_h5_read_head_rows is collective over the handle's communicator
 *     (a private MPI_Comm_dup whose error handler returns codes). Failures that can happen on
 *     some ranks only are combined with agree() (an MPI_Allreduce MINLOC over the status) before
 *     the next collective HDF5 call and before returning, so all ranks return the same status
 *     and the message of the lowest failing rank; no rank is left waiting in a collective.
 *   - Decisions about the file system (output exists, directory missing, input missing or not
 *     HDF5) are taken on rank 0 alone and spread by the same agreement.
 *   - The output is written to "<path>.partial"; the root attribute `complete` = 1 is written
 *     last, the file is closed, and only then does rank 0 move it to <path>. A file at <path>
 *     is therefore always complete; a failed or aborted run removes its partial file and leaves
 *     any previous <path> untouched.
 *   - HDF5's own error-stack printing is switched off; each failure becomes one line naming the
 *     file, the dataset and what was found vs expected, plus the innermost HDF5 message.
 *   - hid_t values start as H5I_INVALID_HID and are closed on every path (goto fail style).
 *   - Files are reproducible: object modification times are not recorded (track_times off on
 *     every group and dataset), so the same writes in the same order give the same bytes. The
 *     checkpoint (sr_ckpt.c) relies on it for resumed files identical to uninterrupted ones.
 *   - An output may be suspended (flushed and closed) and reopened between writes; the
 *     checkpoint closes it after every layer so that the file on disk is consistent.
 *   - Space for closing: parallel HDF5 1.10 flushes metadata at close through collective sync
 *     points, and a write that fails on one rank only (disk full, quota) makes that rank leave
 *     the sync point early: the others wait forever. So while a file is open for writing,
 *     rank 0 holds "<partial>.reserve" (1 MiB of allocated blocks) and frees it right before
 *     every flush and close: the metadata (kilobytes) then always has room, every rank flushes
 *     alike, and a full disk becomes an error that all ranks leave together.
 */
#include "sr_h5.h"
#include "sr_ckpt.h"
#include "sr_internal.h"

#include <hdf5.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SR_H5_FORMAT "sparsering-1"
#define SR_H5_MSG_LEN 1024
#define SR_H5_RESERVE_BYTES (1 << 20)

struct sr_h5_out {
  MPI_Comm comm;
  int rank, nranks;
  hid_t file;      /* the open partial file; invalid while suspended          */
  hid_t dxpl;      /* collective transfer property list                       */
  hid_t gcpl;      /* group creation: no modification times                    */
  hid_t dcpl;      /* dataset creation: no modification times                  */
  char *path;      /* final name                                               */
  char *partial;   /* where it is built: "<path>.partial" or a checkpoint's file */
  char *reserve;   /* "<partial>.reserve": space held for closing (rank 0)      */
  bool reserved;   /* rank 0 holds the reserve file now                        */
  bool overwrite;  /* may <path> be replaced at commit                         */
  bool keep;       /* a failed commit leaves the partial file (a checkpoint's)  */
};

struct sr_h5_in {
  MPI_Comm comm;
  int rank, nranks;
  hid_t file;
  hid_t dxpl_coll;
  char *path;
  int layers;
  hid_t *dset;     /* [layers][3]: q, k, v, opened and checked once */
  int heads[3];    /* q_heads, kv_heads, kv_heads                   */
  int64_t n;
  int d;
};

/* ---------------------------------------------------------------------------------------------
 * Errors and agreement
 * ------------------------------------------------------------------------------------------- */

/* Turns off HDF5's automatic stack printing (once) and makes MPI-IO report errors as codes. */
static void setup_error_reporting(void) {
  static bool done = false;
  if (done) return;
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  MPI_File_set_errhandler(MPI_FILE_NULL, MPI_ERRORS_RETURN);
  done = true;
}

/* The innermost description on HDF5's error stack (the most specific one), then clears it. */
typedef struct { char text[256]; } h5_detail_t;
static herr_t h5_walk_cb(unsigned n, const H5E_error2_t *e, void *data) {
  h5_detail_t *d = data;
  (void)n;
  if (e->desc && e->desc[0]) {
    snprintf(d->text, sizeof d->text, "%s", e->desc);
  } else {
    char minor[128] = "";
    if (H5Eget_msg(e->min_num, NULL, minor, sizeof minor) > 0)
      snprintf(d->text, sizeof d->text, "%s", minor);
  }
  return 0;
}
static const char *h5_detail(h5_detail_t *d) {
  d->text[0] = '\0';
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, h5_walk_cb, d);
  H5Eclear2(H5E_DEFAULT);
  for (char *c = d->text; *c; c++)
    if (*c == '\n' || *c == '\r') *c = ' ';
  return d->text;
}

/* "<file>: <object>: <what> failed (HDF5: <detail>)" with status s; obj NULL for the file. */
static sr_status h5_fail(sr_status s, const char *file, const char *obj, const char *what) {
  h5_detail_t d;
  const char *detail = h5_detail(&d);
  if (!obj) {
    if (detail[0]) return sr__seterr(s, "%s: %s failed (HDF5: %s)", file, what, detail);
    return sr__seterr(s, "%s: %s failed", file, what);
  }
  if (detail[0])
    return sr__seterr(s, "%s: %s: %s failed (HDF5: %s)", file, obj, what, detail);
  return sr__seterr(s, "%s: %s: %s failed", file, obj, what);
}

static sr_status mpi_fail(int rc, const char *what) {
  char text[MPI_MAX_ERROR_STRING] = "";
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return sr__seterr(SR_ERR_MPI, "%s failed: %s", what, text);
}

/* Collective. Every rank passes its own status; all return the lowest (most severe) status and
 * the message of the lowest rank that reported it. A message from a rank other than 0 is
 * prefixed with that rank so a rank-local failure can be traced. */
static sr_status agree(MPI_Comm comm, int rank, int nranks, sr_status st) {
  struct { int status, rank; } in = {(int)st, rank}, out;
  int rc = MPI_Allreduce(&in, &out, 1, MPI_2INT, MPI_MINLOC, comm);
  if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Allreduce (status agreement)");
  if (out.status == SR_OK) return SR_OK;
  char msg[SR_H5_MSG_LEN];
  if (rank == out.rank) snprintf(msg, sizeof msg, "%s", sr_last_error());
  rc = MPI_Bcast(msg, (int)sizeof msg, MPI_CHAR, out.rank, comm);
  if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Bcast (error message)");
  msg[sizeof msg - 1] = '\0';
  if (out.rank != 0 && nranks > 1)
    return sr__seterr((sr_status)out.status, "rank %d: %s", out.rank, msg);
  return sr__seterr((sr_status)out.status, "%s", msg);
}

/* Duplicates comm (so that our error handler and HDF5's traffic stay private). */
static sr_status comm_setup(MPI_Comm comm, MPI_Comm *out, int *rank, int *nranks) {
  *out = MPI_COMM_NULL;
  int rc = MPI_Comm_dup(comm, out);
  if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Comm_dup");
  MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN);
  MPI_Comm_rank(*out, rank);
  MPI_Comm_size(*out, nranks);
  return SR_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------- */

static void dims_str(char *buf, size_t len, int rank, const hsize_t *dims) {
  size_t used = 0;
  buf[0] = '\0';
  if (rank == 0) snprintf(buf, len, "scalar");
  for (int i = 0; i < rank && used < len; i++)
    used += (size_t)snprintf(buf + used, len - used, "[%llu]", (unsigned long long)dims[i]);
}

static void dtype_str(hid_t t, char *buf, size_t len) {
  H5T_class_t c = H5Tget_class(t);
  size_t bits = 8 * H5Tget_size(t);
  switch (c) {
  case H5T_INTEGER:
    snprintf(buf, len, "%s%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "uint" : "int", bits);
    break;
  case H5T_FLOAT: snprintf(buf, len, "float%zu", bits); break;
  case H5T_STRING: snprintf(buf, len, "string"); break;
  case H5T_COMPOUND: snprintf(buf, len, "compound"); break;
  default: snprintf(buf, len, "HDF5 type class %d (%zu bits)", (int)c, bits); break;
  }
}

/* Rank 0's view of the directory that will hold `path`: "." when path has no slash. */
static char *dir_of(const char *path) {
  const char *slash = strrchr(path, '/');
  if (!slash) return sr__strdup(".");
  if (slash == path) return sr__strdup("/");
  size_t len = (size_t)(slash - path);
  char *dir = malloc(len + 1);
  if (dir) {
    memcpy(dir, path, len);
    dir[len] = '\0';
  }
  return dir;
}

/* Opens group `name` of `file`, creating it and any missing parents with creation property
 * list gcpl. Collective on an output file (every rank creates the same groups). */
static sr_status ensure_group(hid_t file, hid_t gcpl, const char *fname, const char *name,
                              hid_t *out) {
  *out = H5I_INVALID_HID;
  char buf[256];
  if (snprintf(buf, sizeof buf, "%s", name) >= (int)sizeof buf)
    return sr__seterr(SR_ERR_INTERNAL, "%s: group name too long: %s", fname, name);
  /* Walk "/a/b/c" one component at a time: H5Lexists needs existing parents. */
  for (char *p = buf + 1;; p++) {
    if (*p != '/' && *p != '\0') continue;
    char saved = *p;
    *p = '\0';
    htri_t ex = H5Lexists(file, buf, H5P_DEFAULT);
    if (ex < 0) return h5_fail(SR_ERR_IO, fname, buf, "H5Lexists");
    if (!ex) {
      hid_t g = H5Gcreate2(file, buf, H5P_DEFAULT, gcpl, H5P_DEFAULT);
      if (g < 0) return h5_fail(SR_ERR_IO, fname, buf, "H5Gcreate2");
      H5Gclose(g);
    }
    *p = saved;
    if (saved == '\0') break;
  }
  *out = H5Gopen2(file, buf, H5P_DEFAULT);
  if (*out < 0) return h5_fail(SR_ERR_IO, fname, buf, "H5Gopen2");
  return SR_OK;
}

/* Opens the layer group (layer >= 0) or the root group (layer < 0) of an output file. */
static sr_status open_target(sr_h5_out *f, int layer, hid_t *out) {
  char name[64];
  if (layer < 0) {
    *out = H5Gopen2(f->file, "/", H5P_DEFAULT);
    if (*out < 0) return h5_fail(SR_ERR_IO, f->partial, "/", "H5Gopen2");
    return SR_OK;
  }
  snprintf(name, sizeof name, "/layers/%d", layer);
  return ensure_group(f->file, f->gcpl, f->partial, name, out);
}

/* Writes a scalar attribute, replacing one of the same name. */
static sr_status attr_write(hid_t loc, const char *fname, const char *obj, const char *name,
                            hid_t ftype, hid_t mtype, const void *buf) {
  sr_status st = SR_OK;
  hid_t space = H5I_INVALID_HID, attr = H5I_INVALID_HID;
  char where[320];
  snprintf(where, sizeof where, "%s attribute %s", obj, name);
  htri_t ex = H5Aexists(loc, name);
  if (ex < 0) { st = h5_fail(SR_ERR_IO, fname, where, "H5Aexists"); goto done; }
  if (ex > 0 && H5Adelete(loc, name) < 0) {
    st = h5_fail(SR_ERR_IO, fname, where, "H5Adelete");
    goto done;
  }
  if ((space = H5Screate(H5S_SCALAR)) < 0) {
    st = h5_fail(SR_ERR_IO, fname, where, "H5Screate");
    goto done;
  }
  if ((attr = H5Acreate2(loc, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT)) < 0) {
    st = h5_fail(SR_ERR_IO, fname, where, "H5Acreate2");
    goto done;
  }
  if (H5Awrite(attr, mtype, buf) < 0) st = h5_fail(SR_ERR_IO, fname, where, "H5Awrite");
done:
  if (attr >= 0) H5Aclose(attr);
  if (space >= 0) H5Sclose(space);
  return st;
}

/* Variable-length UTF-8 string type (h5py reads it as str). Caller closes. */
static hid_t vlstr_type(void) {
  hid_t t = H5Tcopy(H5T_C_S1);
  if (t < 0) return t;
  if (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0) {
    H5Tclose(t);
    return H5I_INVALID_HID;
  }
  return t;
}

static sr_status attr_string_at(hid_t loc, const char *fname, const char *obj, const char *name,
                                const char *value) {
  hid_t t = vlstr_type();
  if (t < 0) return h5_fail(SR_ERR_IO, fname, obj, "string type creation");
  const char *v = value ? value : "";
  sr_status st = attr_write(loc, fname, obj, name, t, t, &v);
  H5Tclose(t);
  return st;
}

static sr_status attr_i64_at(hid_t loc, const char *fname, const char *obj, const char *name,
                             int64_t value) {
  return attr_write(loc, fname, obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

/* Selects the union of runs [start, start+run_len) over all heads (and all d when d > 0) of a
 * [heads][n] or [heads][n][d] dataspace; nothing when there are no runs. */
static herr_t select_runs(hid_t space, int heads, int d, const int64_t *starts, int nruns,
                          int64_t run_len) {
  if (nruns == 0 || run_len == 0) return H5Sselect_none(space);
  for (int i = 0; i < nruns; i++) {
    hsize_t start[3] = {0, (hsize_t)starts[i], 0};
    hsize_t count[3] = {1, 1, 1};
    hsize_t block[3] = {(hsize_t)heads, (hsize_t)run_len, (hsize_t)d}; /* 2-D: d unused */
    if (H5Sselect_hyperslab(space, i == 0 ? H5S_SELECT_SET : H5S_SELECT_OR, start, NULL, count,
                            block) < 0)
      return -1;
  }
  return 0;
}

/* Checks that the runs are ascending, disjoint and inside [0, n). */
static sr_status check_runs(const char *fname, const char *obj, int64_t n,
                            const int64_t *starts, int nruns, int64_t run_len) {
  if (nruns < 0 || run_len < 0 || (nruns > 0 && !starts))
    return sr__seterr(SR_ERR_INTERNAL, "%s: %s: bad run description (nruns %d, run_len %" PRId64
                      ")", fname, obj, nruns, run_len);
  for (int i = 0; i < nruns; i++) {
    if (starts[i] < 0 || starts[i] + run_len > n || (i > 0 && starts[i] < starts[i - 1] + run_len))
      return sr__seterr(SR_ERR_INTERNAL,
                        "%s: %s: run %d [%" PRId64 ", %" PRId64 ") is outside [0, %" PRId64
                        ") or overlaps the previous run", fname, obj, i, starts[i],
                        starts[i] + run_len, n);
  }
  return SR_OK;
}

/* Opens dataset `name` below group `g` if it exists (checking class, size and shape), else
 * creates it with `ftype`, `dims` and creation property list dcpl. Collective on an output
 * file. */
static sr_status open_or_create(hid_t g, hid_t dcpl, const char *fname, const char *obj,
                                const char *name, hid_t ftype, int ndims, const hsize_t *dims,
                                hid_t *out) {
  sr_status st = SR_OK;
  hid_t space = H5I_INVALID_HID, type = H5I_INVALID_HID;
  *out = H5I_INVALID_HID;
  htri_t ex = H5Lexists(g, name, H5P_DEFAULT);
  if (ex < 0) return h5_fail(SR_ERR_IO, fname, obj, "H5Lexists");
  if (!ex) {
    if ((space = H5Screate_simple(ndims, dims, NULL)) < 0) {
      st = h5_fail(SR_ERR_IO, fname, obj, "H5Screate_simple");
      goto done;
    }
    *out = H5Dcreate2(g, name, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (*out < 0) st = h5_fail(SR_ERR_IO, fname, obj, "H5Dcreate2");
    goto done;
  }
  if ((*out = H5Dopen2(g, name, H5P_DEFAULT)) < 0) {
    st = h5_fail(SR_ERR_IO, fname, obj, "H5Dopen2");
    goto done;
  }
  if ((space = H5Dget_space(*out)) < 0 || (type = H5Dget_type(*out)) < 0) {
    st = h5_fail(SR_ERR_IO, fname, obj, "H5Dget_space/H5Dget_type");
    goto done;
  }
  hsize_t found[H5S_MAX_RANK];
  int nd = H5Sget_simple_extent_dims(space, found, NULL);
  bool same = nd == ndims && H5Tequal(type, ftype) > 0;
  for (int i = 0; same && i < nd; i++) same = found[i] == dims[i];
  if (!same) {
    char fs[96], es[96], ft[64], et[64];
    dims_str(fs, sizeof fs, nd < 0 ? 0 : nd, found);
    dims_str(es, sizeof es, ndims, dims);
    dtype_str(type, ft, sizeof ft);
    dtype_str(ftype, et, sizeof et);
    st = sr__seterr(SR_ERR_SHAPE, "%s: %s: exists as %s %s, expected %s %s", fname, obj, ft, fs,
                    et, es);
  }
done:
  if (st != SR_OK && *out >= 0) {
    H5Dclose(*out);
    *out = H5I_INVALID_HID;
  }
  if (type >= 0) H5Tclose(type);
  if (space >= 0) H5Sclose(space);
  return st;
}

/* ---------------------------------------------------------------------------------------------
 * Output
 * ------------------------------------------------------------------------------------------- */

static void out_free(sr_h5_out *f) {
  if (!f) return;
  if (f->dxpl >= 0) H5Pclose(f->dxpl);
  if (f->gcpl >= 0) H5Pclose(f->gcpl);
  if (f->dcpl >= 0) H5Pclose(f->dcpl);
  if (f->comm != MPI_COMM_NULL) MPI_Comm_free(&f->comm);
  free(f->path);
  free(f->partial);
  free(f->reserve);
  free(f);
}

/* Collective. Rank 0 allocates the reserve file (see the invariants); its failure is agreed:
 * a disk without 1 MiB to spare fails here, before any data is written. */
static sr_status reserve_make(sr_h5_out *f) {
  sr_status st = SR_OK;
  if (f->rank == 0 && !f->reserved) {
    int fd = open(f->reserve, O_WRONLY | O_CREAT | O_TRUNC, 0644), rc = 0;
    /* Allocated blocks, not data: no fsync (after a crash the reserve is made anew). */
    if (fd < 0 || (rc = posix_fallocate(fd, 0, SR_H5_RESERVE_BYTES)) != 0)
      st = sr__seterr(SR_ERR_IO, "%s: cannot hold %d MiB of space for closing the output: %s",
                      f->reserve, SR_H5_RESERVE_BYTES >> 20, strerror(fd < 0 || !rc ? errno : rc));
    if (fd >= 0) close(fd);
    if (st != SR_OK) unlink(f->reserve);
    else f->reserved = true;
  }
  return agree(f->comm, f->rank, f->nranks, st);
}

/* Collective. Rank 0 gives the reserve back (before a flush or close), then everyone waits for
 * it, so that no rank writes metadata before the space is free. */
static void reserve_free(sr_h5_out *f) {
  if (f->rank == 0 && f->reserved && f->reserve) unlink(f->reserve);
  f->reserved = false;
  MPI_Barrier(f->comm);
}

/* Rank 0: may the output be created? Removes a stale partial file. */
static sr_status out_precheck(const sr_h5_out *f) {
  struct stat sb;
  char *dir = dir_of(f->path);
  if (!dir) return sr__seterr(SR_ERR_NOMEM, "out of memory (output path)");
  sr_status st = SR_OK;
  if (stat(dir, &sb) != 0) {
    st = sr__seterr(SR_ERR_IO, "%s: output directory %s (for %s)",
                    dir, errno == ENOENT ? "does not exist" : strerror(errno), f->path);
  } else if (!S_ISDIR(sb.st_mode)) {
    st = sr__seterr(SR_ERR_IO, "%s: not a directory (for output %s)", dir, f->path);
  } else if (access(dir, W_OK | X_OK) != 0) {
    st = sr__seterr(SR_ERR_IO, "%s: output directory not writable: %s", dir, strerror(errno));
  } else if (stat(f->path, &sb) == 0) {
    if (S_ISDIR(sb.st_mode))
      st = sr__seterr(SR_ERR_IO, "%s: output path is a directory", f->path);
    else if (!f->overwrite)
      st = sr__seterr(SR_ERR_EXISTS, "%s: output exists (set output.overwrite: true or --set "
                      "output.overwrite=true)", f->path);
  } else if (errno != ENOENT) {
    st = sr__seterr(SR_ERR_IO, "%s: %s", f->path, strerror(errno));
  }
  /* A partial file is a leftover of a run that did not finish: never valid, always replaced. */
  if (st == SR_OK && unlink(f->partial) != 0 && errno != ENOENT)
    st = sr__seterr(SR_ERR_IO, "%s: cannot remove stale partial output: %s", f->partial,
                    strerror(errno));
  if (st == SR_OK) unlink(f->reserve);
  free(dir);
  return st;
}

/* A handle with its communicator, names and property lists; no file yet. Collective (the
 * communicator is duplicated). On a local failure *fp still holds the handle when its
 * communicator exists, so that the caller can agree on the status before freeing it. */
static sr_status out_new(sr_h5_out **fp, MPI_Comm comm, const char *path, const char *partial,
                         bool overwrite) {
  *fp = NULL;
  setup_error_reporting();
  sr_h5_out *f = calloc(1, sizeof *f);
  if (!f) return sr__seterr(SR_ERR_NOMEM, "out of memory (HDF5 output handle)");
  f->comm = MPI_COMM_NULL;
  f->file = f->dxpl = f->gcpl = f->dcpl = H5I_INVALID_HID;
  f->overwrite = overwrite;
  sr_status st = comm_setup(comm, &f->comm, &f->rank, &f->nranks);
  if (st != SR_OK) {
    out_free(f);
    return st;
  }
  *fp = f;
  if (!path || !path[0]) return sr__seterr(SR_ERR_IO, "output path is empty");
  size_t len = strlen(path);
  f->path = sr__strdup(path);
  f->partial = partial ? sr__strdup(partial) : malloc(len + sizeof ".partial");
  if (!f->path || !f->partial) return sr__seterr(SR_ERR_NOMEM, "out of memory (output path)");
  if (!partial) snprintf(f->partial, len + sizeof ".partial", "%s.partial", path);
  size_t plen = strlen(f->partial) + sizeof ".reserve";
  if (!(f->reserve = malloc(plen))) return sr__seterr(SR_ERR_NOMEM, "out of memory (output path)");
  snprintf(f->reserve, plen, "%s.reserve", f->partial);
  /* Collective transfers; groups and datasets without modification times (reproducible). */
  if ((f->dxpl = H5Pcreate(H5P_DATASET_XFER)) < 0 ||
      H5Pset_dxpl_mpio(f->dxpl, H5FD_MPIO_COLLECTIVE) < 0 ||
      (f->gcpl = H5Pcreate(H5P_GROUP_CREATE)) < 0 || H5Pset_obj_track_times(f->gcpl, false) < 0 ||
      (f->dcpl = H5Pcreate(H5P_DATASET_CREATE)) < 0 || H5Pset_obj_track_times(f->dcpl, false) < 0)
    return h5_fail(SR_ERR_IO, path, NULL, "property lists");
  return SR_OK;
}

/* File access with MPI-IO; metadata is read and written collectively (every output call is
 * collective, so no rank ever does metadata I/O on its own). Caller closes. */
static hid_t out_fapl(const sr_h5_out *f) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl < 0) return fapl;
  if (H5Pset_fapl_mpio(fapl, f->comm, MPI_INFO_NULL) < 0 ||
      H5Pset_all_coll_metadata_ops(fapl, true) < 0 || H5Pset_coll_metadata_write(fapl, true) < 0) {
    H5Pclose(fapl);
    return H5I_INVALID_HID;
  }
  return fapl;
}

sr_status sr_h5_out_create(sr_h5_out **fp, MPI_Comm comm, const char *path, bool overwrite,
                           const char *config_yaml, uint64_t config_hash) {
  return sr_h5_out_create_at(fp, comm, path, NULL, overwrite, config_yaml, config_hash);
}

sr_status sr_h5_out_create_at(sr_h5_out **fp, MPI_Comm comm, const char *path,
                              const char *partial, bool overwrite, const char *config_yaml,
                              uint64_t config_hash) {
  *fp = NULL;
  sr_h5_out *f = NULL;
  sr_status st = out_new(&f, comm, path, partial, overwrite);
  if (!f) return st;
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) {
    out_free(f);
    return st;
  }

  hid_t fapl = H5I_INVALID_HID, root = H5I_INVALID_HID;
  /* Rank 0's file-system verdict, agreed by everyone. */
  if (f->rank == 0) st = out_precheck(f);
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto fail;
  if ((st = reserve_make(f)) != SR_OK) goto fail;

  if ((fapl = out_fapl(f)) < 0)
    st = h5_fail(SR_ERR_IO, f->partial, NULL, "file access property list");
  else if ((f->file = H5Fcreate(f->partial, H5F_ACC_TRUNC, H5P_DEFAULT, fapl)) < 0)
    st = h5_fail(SR_ERR_IO, f->partial, NULL, "H5Fcreate");
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto fail;

  /* Root attributes (all but `complete`, which commit writes last). */
  if ((root = H5Gopen2(f->file, "/", H5P_DEFAULT)) < 0)
    st = h5_fail(SR_ERR_IO, f->partial, "/", "H5Gopen2");
  if (st == SR_OK) st = attr_string_at(root, f->partial, "/", "format", SR_H5_FORMAT);
  if (st == SR_OK) st = attr_string_at(root, f->partial, "/", "version", sr_version());
  if (st == SR_OK) st = attr_string_at(root, f->partial, "/", "config", config_yaml);
  if (st == SR_OK)
    st = attr_write(root, f->partial, "/", "config_hash", H5T_STD_U64LE, H5T_NATIVE_UINT64,
                    &config_hash);
  if (root >= 0) H5Gclose(root);
  root = H5I_INVALID_HID;
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto fail;

  H5Pclose(fapl);
  *fp = f;
  return SR_OK;

fail:
  if (fapl >= 0) H5Pclose(fapl);
  reserve_free(f);
  if (f->file >= 0) {
    H5Fclose(f->file);
    f->file = H5I_INVALID_HID;
    if (f->rank == 0) unlink(f->partial);
  }
  H5Eclear2(H5E_DEFAULT);
  MPI_Barrier(f->comm);
  out_free(f);
  return st;
}

sr_status sr_h5_out_open_at(sr_h5_out **fp, MPI_Comm comm, const char *path, const char *partial,
                            bool overwrite) {
  *fp = NULL;
  sr_h5_out *f = NULL;
  sr_status st = out_new(&f, comm, path, partial, overwrite);
  if (!f) return st;
  st = agree(f->comm, f->rank, f->nranks, st);
  if (st == SR_OK) st = sr_h5_out_reopen(f);
  if (st != SR_OK) {
    out_free(f);
    return st;
  }
  *fp = f;
  return SR_OK;
}

sr_status sr_h5_out_suspend(sr_h5_out *f, bool sync) {
  SR_ASSERT(f != NULL);
  if (f->file < 0) return SR_OK;
  /* H5Fflush ends in MPI_File_sync: the bytes are on storage when the close returns. Without
   * sync, H5Fclose alone writes HDF5's caches out (to the page cache). */
  sr_status st = SR_OK;
  reserve_free(f);
  if (sync && H5Fflush(f->file, H5F_SCOPE_GLOBAL) < 0)
    st = h5_fail(SR_ERR_IO, f->partial, NULL, "H5Fflush");
  if (H5Fclose(f->file) < 0 && st == SR_OK) st = h5_fail(SR_ERR_IO, f->partial, NULL, "H5Fclose");
  f->file = H5I_INVALID_HID;
  H5Eclear2(H5E_DEFAULT);
  return agree(f->comm, f->rank, f->nranks, st);
}

sr_status sr_h5_out_reopen(sr_h5_out *f) {
  SR_ASSERT(f != NULL);
  if (f->file >= 0) return SR_OK;
  sr_status st = reserve_make(f);
  if (st != SR_OK) return st;
  hid_t fapl = out_fapl(f);
  if (fapl < 0) st = h5_fail(SR_ERR_IO, f->partial, NULL, "file access property list");
  else if ((f->file = H5Fopen(f->partial, H5F_ACC_RDWR, fapl)) < 0)
    st = h5_fail(SR_ERR_IO, f->partial, NULL, "H5Fopen");
  if (fapl >= 0) H5Pclose(fapl);
  st = agree(f->comm, f->rank, f->nranks, st);
  if (st != SR_OK) {
    reserve_free(f);
    if (f->file >= 0) H5Fclose(f->file);
    f->file = H5I_INVALID_HID;
  }
  H5Eclear2(H5E_DEFAULT);
  return st;
}

const char *sr_h5_out_partial(const sr_h5_out *f) { return f ? f->partial : ""; }

void sr_h5_out_set_keep(sr_h5_out *f, bool keep) {
  if (f) f->keep = keep;
}

sr_status sr_h5_out_extent(sr_h5_out *f, int layer, const char *name, uint64_t *offset,
                           uint64_t *bytes) {
  SR_ASSERT(f != NULL && f->file >= 0 && name != NULL);
  *offset = 0;
  *bytes = 0;
  char obj[160];
  snprintf(obj, sizeof obj, "/layers/%d/%s", layer, name);
  sr_status st = SR_OK;
  hid_t d = H5Dopen2(f->file, obj, H5P_DEFAULT);
  if (d < 0) {
    st = h5_fail(SR_ERR_IO, f->partial, obj, "H5Dopen2");
  } else {
    haddr_t a = H5Dget_offset(d);
    hsize_t n = H5Dget_storage_size(d);
    if (n > 0 && a == HADDR_UNDEF)
      st = sr__seterr(SR_ERR_INTERNAL, "%s: %s: raw data is not contiguous", f->partial, obj);
    else if (n > 0) {
      *offset = (uint64_t)a;
      *bytes = (uint64_t)n;
    }
    H5Dclose(d);
  }
  H5Eclear2(H5E_DEFAULT);
  return agree(f->comm, f->rank, f->nranks, st);
}

sr_status sr_h5_write_rows(sr_h5_out *f, int layer, const char *name, int heads, int64_t n,
                           int d, const int64_t *run_starts, int nruns, int64_t run_len,
                           const float *local) {
  SR_ASSERT(f != NULL);
  sr_status st = SR_OK;
  hid_t g = H5I_INVALID_HID, dset = H5I_INVALID_HID;
  hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID;
  char obj[160];
  snprintf(obj, sizeof obj, "/layers/%d/%s", layer, name ? name : "(null)");

  /* Arguments: the runs may differ per rank, so their check is agreed before any I/O. */
  if (layer < 0 || !name || !name[0] || heads <= 0 || n <= 0 || d < 0)
    st = sr__seterr(SR_ERR_INTERNAL, "%s: %s: bad arguments (heads %d, n %" PRId64 ", d %d)",
                    f->partial, obj, heads, n, d);
  if (st == SR_OK) st = check_runs(f->partial, obj, n, run_starts, nruns, run_len);
  if (st == SR_OK && nruns > 0 && run_len > 0 && !local)
    st = sr__seterr(SR_ERR_INTERNAL, "%s: %s: rows to write but no buffer", f->partial, obj);
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) return st;

  int ndims = d > 0 ? 3 : 2;
  hsize_t dims[3] = {(hsize_t)heads, (hsize_t)n, (hsize_t)d};
  hsize_t mdims[3] = {(hsize_t)heads, (hsize_t)nruns * (hsize_t)run_len, (hsize_t)d};
  st = open_target(f, layer, &g);
  if (st == SR_OK)
    st = open_or_create(g, f->dcpl, f->partial, obj, name, H5T_IEEE_F32LE, ndims, dims, &dset);
  if (st == SR_OK && ((fspace = H5Dget_space(dset)) < 0 ||
                      select_runs(fspace, heads, d, run_starts, nruns, run_len) < 0))
    st = h5_fail(SR_ERR_IO, f->partial, obj, "file selection");
  if (st == SR_OK && ((mspace = H5Screate_simple(ndims, mdims, NULL)) < 0 ||
                      (mdims[1] == 0 && H5Sselect_none(mspace) < 0)))
    st = h5_fail(SR_ERR_IO, f->partial, obj, "memory selection");
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto done;

  /* Collective write; a rank without rows takes part with an empty selection. */
  static const float dummy = 0.0f;
  if (H5Dwrite(dset, H5T_NATIVE_FLOAT, mspace, fspace, f->dxpl, local ? (const void *)local
                                                                      : (const void *)&dummy) < 0)
    st = h5_fail(SR_ERR_IO, f->partial, obj, "H5Dwrite");
  st = agree(f->comm, f->rank, f->nranks, st);

done:
  if (mspace >= 0) H5Sclose(mspace);
  if (fspace >= 0) H5Sclose(fspace);
  if (dset >= 0) H5Dclose(dset);
  if (g >= 0) H5Gclose(g);
  return st;
}

/* Adds [start, end) of a 1-D dataspace to its selection (nothing when empty). */
static herr_t select_range(hid_t space, int64_t start, int64_t end) {
  if (end <= start) return 0;
  hsize_t s[1] = {(hsize_t)start}, b[1] = {(hsize_t)(end - start)}, one[1] = {1};
  return H5Sselect_hyperslab(space, H5S_SELECT_OR, s, NULL, one, b);
}

/* Checks one rank's local selection against the plan. */
static sr_status check_selection(const sr_h5_out *f, const char *obj, const sr_plan *p,
                                 const sr_selection *sel) {
  if (!p || !sel)
    return sr__seterr(SR_ERR_INTERNAL, "%s: %s: no plan or selection", f->partial, obj);
  if (p->nranks != f->nranks || p->rank != f->rank)
    return sr__seterr(SR_ERR_INTERNAL, "%s: %s: plan for rank %d of %d used on rank %d of %d",
                      f->partial, obj, p->rank, p->nranks, f->rank, f->nranks);
  if (sel->q_heads != p->q_heads || sel->nqb != p->nqb_local ||
      p->nqb_local * p->nranks != p->nqb_global)
    return sr__seterr(SR_ERR_INTERNAL,
                      "%s: %s: selection is [%d][%" PRId64 "] rows, plan expects [%d][%" PRId64
                      "] (of %" PRId64 " global q-blocks)", f->partial, obj, sel->q_heads,
                      sel->nqb, p->q_heads, p->nqb_local, p->nqb_global);
  int64_t rows = (int64_t)sel->q_heads * sel->nqb;
  if (!sel->row_ptr || sel->row_ptr[0] != 0 || sel->row_ptr[rows] != sel->nnz ||
      (sel->nnz > 0 && !sel->col))
    return sr__seterr(SR_ERR_INTERNAL, "%s: %s: selection row pointers are not a CSR of %" PRId64
                      " entries", f->partial, obj, sel->nnz);
  for (int64_t r = 0; r < rows; r++)
    if (sel->row_ptr[r + 1] < sel->row_ptr[r])
      return sr__seterr(SR_ERR_INTERNAL, "%s: %s: selection row %" PRId64 " has negative length",
                        f->partial, obj, r);
  for (int64_t e = 0; e < sel->nnz; e++)
    if (sel->col[e] < 0 || sel->col[e] >= p->nkb_global)
      return sr__seterr(SR_ERR_INTERNAL, "%s: %s: selection entry %" PRId64 " names key block %d"
                        " of %" PRId64, f->partial, obj, e, (int)sel->col[e], p->nkb_global);
  return SR_OK;
}

sr_status sr_h5_write_selection(sr_h5_out *f, int layer, const sr_plan *p,
                                const sr_selection *sel) {
  SR_ASSERT(f != NULL);
  sr_status st = SR_OK;
  hid_t g = H5I_INVALID_HID, dptr = H5I_INVALID_HID, didx = H5I_INVALID_HID;
  hid_t fs_ptr = H5I_INVALID_HID, ms_ptr = H5I_INVALID_HID;
  hid_t fs_idx = H5I_INVALID_HID, ms_idx = H5I_INVALID_HID;
  int64_t *counts = NULL, *all_counts = NULL, *indptr = NULL;
  char obj[128], grp[96];
  snprintf(grp, sizeof grp, "/layers/%d/selection", layer);
  snprintf(obj, sizeof obj, "%s/indices", grp);

  if (layer < 0) st = sr__seterr(SR_ERR_INTERNAL, "%s: selection for layer %d", f->partial, layer);
  if (st == SR_OK) st = check_selection(f, grp, p, sel);
  int64_t rows_local = 0, rows_global = 0;
  if (st == SR_OK) {
    rows_local = (int64_t)p->q_heads * p->nqb_local;
    rows_global = (int64_t)p->q_heads * p->nqb_global;
    counts = malloc(sizeof *counts * (size_t)(rows_local > 0 ? rows_local : 1));
    all_counts = malloc(sizeof *all_counts * (size_t)(rows_local > 0 ? rows_local : 1) *
                        (size_t)f->nranks);
    indptr = calloc((size_t)rows_global + 1, sizeof *indptr);
    if (!counts || !all_counts || !indptr)
      st = sr__seterr(SR_ERR_NOMEM, "out of memory (selection of %" PRId64 " rows)", rows_global);
  }
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto done;

  /* Every rank learns every row's length, then computes the same global row pointer. Local
   * row h*nqb_local + m of rank r is global row h*nqb_global + qblock_global(r, m). */
  for (int64_t r = 0; r < rows_local; r++) counts[r] = sel->row_ptr[r + 1] - sel->row_ptr[r];
  int rc = MPI_Allgather(counts, (int)rows_local, MPI_INT64_T, all_counts, (int)rows_local,
                         MPI_INT64_T, f->comm);
  if (rc != MPI_SUCCESS) st = mpi_fail(rc, "MPI_Allgather (selection row lengths)");
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto done;
  for (int r = 0; r < f->nranks; r++)
    for (int h = 0; h < p->q_heads; h++)
      for (int64_t m = 0; m < p->nqb_local; m++) {
        int64_t grow = (int64_t)h * p->nqb_global + sr_plan_qblock_global(p, r, m);
        indptr[grow + 1] = all_counts[(int64_t)r * rows_local + (int64_t)h * p->nqb_local + m];
      }
  for (int64_t r = 0; r < rows_global; r++) indptr[r + 1] += indptr[r];
  int64_t nnz_total = indptr[rows_global];

  hsize_t ptr_dims[1] = {(hsize_t)rows_global + 1}, idx_dims[1] = {(hsize_t)nnz_total};
  hsize_t nnz_local[1] = {(hsize_t)sel->nnz};
  st = ensure_group(f->file, f->gcpl, f->partial, grp, &g);
  if (st == SR_OK) {
    char ptr_obj[112];
    snprintf(ptr_obj, sizeof ptr_obj, "%s/indptr", grp);
    st = open_or_create(g, f->dcpl, f->partial, ptr_obj, "indptr", H5T_STD_I64LE, 1, ptr_dims,
                        &dptr);
  }
  if (st == SR_OK)
    st = open_or_create(g, f->dcpl, f->partial, obj, "indices", H5T_STD_I32LE, 1, idx_dims,
                        &didx);
  if (st == SR_OK) st = attr_i64_at(g, f->partial, grp, "q_heads", p->q_heads);
  if (st == SR_OK) st = attr_i64_at(g, f->partial, grp, "nqb", p->nqb_global);
  if (st == SR_OK) st = attr_i64_at(g, f->partial, grp, "nkb", p->nkb_global);
  if (st == SR_OK) st = attr_i64_at(g, f->partial, grp, "block_q", p->bq);
  if (st == SR_OK) st = attr_i64_at(g, f->partial, grp, "block_k", p->bk);

  /* indptr: rank 0 writes all of it. indices: each rank writes its rows at their global offsets;
   * consecutive local rows of one chunk are adjacent in the file, so they are merged into one
   * hyperslab (at most q_heads * chunks_per_rank per rank). */
  if (st == SR_OK) {
    if ((fs_ptr = H5Dget_space(dptr)) < 0 || (ms_ptr = H5Screate_simple(1, ptr_dims, NULL)) < 0 ||
        (f->rank != 0 && (H5Sselect_none(fs_ptr) < 0 || H5Sselect_none(ms_ptr) < 0)))
      st = h5_fail(SR_ERR_IO, f->partial, grp, "indptr selection");
  }
  if (st == SR_OK) {
    if ((fs_idx = H5Dget_space(didx)) < 0 || H5Sselect_none(fs_idx) < 0 ||
        (ms_idx = H5Screate_simple(1, nnz_local, NULL)) < 0 ||
        (sel->nnz == 0 && H5Sselect_none(ms_idx) < 0))
      st = h5_fail(SR_ERR_IO, f->partial, obj, "selection");
    int64_t run_start = 0, run_end = 0;
    for (int h = 0; st == SR_OK && h < p->q_heads; h++)
      for (int64_t m = 0; st == SR_OK && m < p->nqb_local; m++) {
        int64_t grow = (int64_t)h * p->nqb_global + sr_plan_qblock_global(p, f->rank, m);
        int64_t off = indptr[grow], cnt = indptr[grow + 1] - indptr[grow];
        if (cnt == 0) continue;
        if (off == run_end && run_end > run_start) {
          run_end += cnt;
          continue;
        }
        if (select_range(fs_idx, run_start, run_end) < 0)
          st = h5_fail(SR_ERR_IO, f->partial, obj, "H5Sselect_hyperslab");
        run_start = off;
        run_end = off + cnt;
      }
    if (st == SR_OK && select_range(fs_idx, run_start, run_end) < 0)
      st = h5_fail(SR_ERR_IO, f->partial, obj, "H5Sselect_hyperslab");
  }
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto done;

  static const int32_t dummy = 0;
  if (H5Dwrite(dptr, H5T_NATIVE_INT64, ms_ptr, fs_ptr, f->dxpl, indptr) < 0)
    st = h5_fail(SR_ERR_IO, f->partial, grp, "H5Dwrite indptr");
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto done;
  /* An empty selection has a zero-length indices dataset with no storage to write to; every
   * rank knows nnz_total, so all skip the write together. */
  if (nnz_total > 0 &&
      H5Dwrite(didx, H5T_NATIVE_INT32, ms_idx, fs_idx, f->dxpl,
               sel->nnz > 0 ? (const void *)sel->col : (const void *)&dummy) < 0)
    st = h5_fail(SR_ERR_IO, f->partial, obj, "H5Dwrite");
  st = agree(f->comm, f->rank, f->nranks, st);

done:
  if (ms_idx >= 0) H5Sclose(ms_idx);
  if (fs_idx >= 0) H5Sclose(fs_idx);
  if (ms_ptr >= 0) H5Sclose(ms_ptr);
  if (fs_ptr >= 0) H5Sclose(fs_ptr);
  if (didx >= 0) H5Dclose(didx);
  if (dptr >= 0) H5Dclose(dptr);
  if (g >= 0) H5Gclose(g);
  free(indptr);
  free(all_counts);
  free(counts);
  return st;
}

sr_status sr_h5_attr_double(sr_h5_out *f, int layer, const char *name, double value) {
  SR_ASSERT(f != NULL && name != NULL);
  hid_t g = H5I_INVALID_HID;
  char obj[64];
  snprintf(obj, sizeof obj, layer < 0 ? "/" : "/layers/%d", layer);
  sr_status st = open_target(f, layer, &g);
  if (st == SR_OK)
    st = attr_write(g, f->partial, obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
  if (g >= 0) H5Gclose(g);
  return agree(f->comm, f->rank, f->nranks, st);
}

sr_status sr_h5_attr_string(sr_h5_out *f, int layer, const char *name, const char *value) {
  SR_ASSERT(f != NULL && name != NULL);
  hid_t g = H5I_INVALID_HID;
  char obj[64];
  snprintf(obj, sizeof obj, layer < 0 ? "/" : "/layers/%d", layer);
  sr_status st = open_target(f, layer, &g);
  if (st == SR_OK) st = attr_string_at(g, f->partial, obj, name, value);
  if (g >= 0) H5Gclose(g);
  return agree(f->comm, f->rank, f->nranks, st);
}

sr_status sr_h5_attr_u64(sr_h5_out *f, int layer, const char *name, uint64_t value) {
  SR_ASSERT(f != NULL && name != NULL);
  hid_t g = H5I_INVALID_HID;
  char obj[64];
  snprintf(obj, sizeof obj, layer < 0 ? "/" : "/layers/%d", layer);
  sr_status st = open_target(f, layer, &g);
  if (st == SR_OK)
    st = attr_write(g, f->partial, obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value);
  if (g >= 0) H5Gclose(g);
  return agree(f->comm, f->rank, f->nranks, st);
}

/* Rank 0: moves the finished partial file to its final name. Without overwrite, link() refuses
 * a <path> that appeared since create (EEXIST); file systems without hard links fall back to a
 * check then rename(). */
static sr_status out_publish(const sr_h5_out *f) {
  if (f->overwrite) {
    if (rename(f->partial, f->path) != 0)
      return sr__seterr(SR_ERR_IO, "%s: cannot rename %s to it: %s", f->path, f->partial,
                        strerror(errno));
  } else if (link(f->partial, f->path) == 0) {
    unlink(f->partial);
  } else if (errno == EEXIST) {
    return sr__seterr(SR_ERR_EXISTS, "%s: output appeared during the run (the result is kept in "
                      "%s)", f->path, f->partial);
  } else {
    struct stat sb;
    if (stat(f->path, &sb) == 0)
      return sr__seterr(SR_ERR_EXISTS, "%s: output appeared during the run (the result is kept "
                        "in %s)", f->path, f->partial);
    if (rename(f->partial, f->path) != 0)
      return sr__seterr(SR_ERR_IO, "%s: cannot rename %s to it: %s", f->path, f->partial,
                        strerror(errno));
  }
  /* Make the new directory entry durable (best effort: not every file system allows it). */
  char *dir = dir_of(f->path);
  int fd = dir ? open(dir, O_RDONLY) : -1;
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
  free(dir);
  return SR_OK;
}

sr_status sr_h5_out_commit(sr_h5_out *f) {
  SR_ASSERT(f != NULL);
  sr_status st = sr_h5_out_reopen(f);
  hid_t root = H5I_INVALID_HID;
  int32_t one = 1;
  if (st != SR_OK) {
    sr_h5_out_release(f, !f->keep);
    return st;
  }

  /* `complete` is the last thing written: a reader that sees it sees every dataset. The
   * reserve goes first: what follows are the last metadata writes and the close. */
  reserve_free(f);
  if ((root = H5Gopen2(f->file, "/", H5P_DEFAULT)) < 0)
    st = h5_fail(SR_ERR_IO, f->partial, "/", "H5Gopen2");
  if (st == SR_OK)
    st = attr_write(root, f->partial, "/", "complete", H5T_STD_I32LE, H5T_NATIVE_INT32, &one);
  if (root >= 0) H5Gclose(root);
  /* Flush with MPI_File_sync, so the bytes are on storage before the rename below makes the
   * file visible under its final name (a crash then never leaves a complete-looking file with
   * missing data). */
  if (st == SR_OK && H5Fflush(f->file, H5F_SCOPE_GLOBAL) < 0)
    st = h5_fail(SR_ERR_IO, f->partial, NULL, "H5Fflush");
  st = agree(f->comm, f->rank, f->nranks, st);

  /* Close (collective; flushes everything), whatever happened, then agree on the outcome. */
  sr_status close_st = SR_OK;
  if (H5Fclose(f->file) < 0) close_st = h5_fail(SR_ERR_IO, f->partial, NULL, "H5Fclose");
  f->file = H5I_INVALID_HID;
  if (st == SR_OK) st = agree(f->comm, f->rank, f->nranks, close_st);

  /* Test failpoint: the file is complete and closed, not yet under its final name. */
  if (st == SR_OK) sr_ckpt_point("commit_closed", -1, f->rank);
  if (f->rank == 0) {
    if (st == SR_OK) st = out_publish(f);
    else if (!f->keep) unlink(f->partial);
  }
  /* Rank 0 has the last word (its rename); the others pass on the status agreed so far. */
  st = agree(f->comm, f->rank, f->nranks, st);
  MPI_Barrier(f->comm);
  out_free(f);
  return st;
}

void sr_h5_out_abort(sr_h5_out *f) { sr_h5_out_release(f, true); }

void sr_h5_out_release(sr_h5_out *f, bool remove_partial) {
  if (!f) return;
  reserve_free(f);
  if (f->file >= 0) H5Fclose(f->file);
  f->file = H5I_INVALID_HID;
  H5Eclear2(H5E_DEFAULT);
  if (f->rank == 0 && remove_partial) unlink(f->partial);
  MPI_Barrier(f->comm);
  out_free(f);
}

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
  if (f->dxpl_coll >= 0) H5Pclose(f->dxpl_coll);
  if (f->file >= 0) H5Fclose(f->file);
  if (f->comm != MPI_COMM_NULL) MPI_Comm_free(&f->comm);
  free(f->path);
  free(f);
}

/* Rank 0: does the input exist and is it HDF5? */
static sr_status in_precheck(const char *path) {
  struct stat sb;
  if (stat(path, &sb) != 0) return sr__seterr(SR_ERR_IO, "%s: %s", path, strerror(errno));
  if (S_ISDIR(sb.st_mode)) return sr__seterr(SR_ERR_IO, "%s: is a directory", path);
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
  char obj[64], want[160], es[96];
  hsize_t expect[3] = {(hsize_t)f->heads[w], (hsize_t)f->n, (hsize_t)f->d};
  snprintf(obj, sizeof obj, "/layers/%d/%c", l, sr__which[w]);
  dims_str(es, sizeof es, 3, expect);
  snprintf(want, sizeof want, "float32 or float16 %s ([%s][seq_len][head_dim])", es,
           w == 0 ? "q_heads" : "kv_heads");

  /* Walk the path so that a missing group reads as the missing dataset it implies. */
  char prefix[64];
  for (const char *c = obj + 1;; c++) {
    if (*c != '/' && *c != '\0') continue;
    size_t len = (size_t)(c - obj);
    memcpy(prefix, obj, len);
    prefix[len] = '\0';
    htri_t ex = H5Lexists(f->file, prefix, H5P_DEFAULT);
    if (ex < 0) return h5_fail(SR_ERR_IO, f->path, prefix, "H5Lexists");
    if (!ex) return sr__seterr(SR_ERR_SHAPE, "%s: %s: dataset missing (expected %s)", f->path,
                               obj, want);
    if (*c == '\0') break;
  }
  if ((dset = H5Dopen2(f->file, obj, H5P_DEFAULT)) < 0) {
    H5Eclear2(H5E_DEFAULT);
    return sr__seterr(SR_ERR_SHAPE, "%s: %s: not a dataset (expected %s)", f->path, obj, want);
  }
  if ((space = H5Dget_space(dset)) < 0 || (type = H5Dget_type(dset)) < 0) {
    st = h5_fail(SR_ERR_IO, f->path, obj, "H5Dget_space/H5Dget_type");
    goto done;
  }
  char ts[64], fs[96];
  dtype_str(type, ts, sizeof ts);
  size_t size = H5Tget_size(type);
  if (H5Tget_class(type) != H5T_FLOAT || (size != 4 && size != 2)) {
    st = sr__seterr(SR_ERR_SHAPE, "%s: %s: dtype %s found, expected float32 or float16", f->path,
                    obj, ts);
    goto done;
  }
  hsize_t found[H5S_MAX_RANK];
  int nd = H5Sget_simple_extent_dims(space, found, NULL);
  if (nd < 0) {
    st = h5_fail(SR_ERR_IO, f->path, obj, "H5Sget_simple_extent_dims");
    goto done;
  }
  bool same = nd == 3;
  for (int i = 0; same && i < 3; i++) same = found[i] == expect[i];
  if (!same) {
    dims_str(fs, sizeof fs, nd, found);
    st = sr__seterr(SR_ERR_SHAPE, "%s: %s: shape %s found, expected %s ([%s][seq_len][head_dim])",
                    f->path, obj, fs, es, w == 0 ? "q_heads" : "kv_heads");
  }
done:
  if (type >= 0) H5Tclose(type);
  if (space >= 0) H5Sclose(space);
  if (st == SR_OK) f->dset[3 * l + w] = dset;
  else if (dset >= 0) H5Dclose(dset);
  return st;
}

sr_status sr_h5_in_open(sr_h5_in **fp, MPI_Comm comm, const char *path, const sr_config *cfg) {
  *fp = NULL;
  setup_error_reporting();
  sr_h5_in *f = calloc(1, sizeof *f);
  if (!f) return sr__seterr(SR_ERR_NOMEM, "out of memory (HDF5 input handle)");
  f->comm = MPI_COMM_NULL;
  f->file = H5I_INVALID_HID;
  f->dxpl_coll = H5I_INVALID_HID;
  sr_status st = comm_setup(comm, &f->comm, &f->rank, &f->nranks);
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
    f->n = cfg->seq_len;
    f->d = cfg->head_dim;
    f->dset = malloc(sizeof *f->dset * (size_t)(3 * f->layers + 1));
    if (!f->path || !f->dset) st = sr__seterr(SR_ERR_NOMEM, "out of memory (HDF5 input handle)");
    else
      for (int i = 0; i < 3 * f->layers; i++) f->dset[i] = H5I_INVALID_HID;
  }
  if (st == SR_OK && f->rank == 0) st = in_precheck(path);
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto fail;

  /* Independent metadata reads (sr_h5_read_head_rows is not collective); every dataset is
   * opened here once, so the reads themselves touch only raw data. */
  if ((fapl = H5Pcreate(H5P_FILE_ACCESS)) < 0 ||
      H5Pset_fapl_mpio(fapl, f->comm, MPI_INFO_NULL) < 0)
    st = h5_fail(SR_ERR_IO, path, NULL, "file access property list");
  else if ((f->dxpl_coll = H5Pcreate(H5P_DATASET_XFER)) < 0 ||
           H5Pset_dxpl_mpio(f->dxpl_coll, H5FD_MPIO_COLLECTIVE) < 0)
    st = h5_fail(SR_ERR_IO, path, NULL, "transfer property list");
  else if ((f->file = H5Fopen(path, H5F_ACC_RDONLY, fapl)) < 0)
    st = h5_fail(SR_ERR_IO, path, NULL, "H5Fopen");
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto fail;

  /* Every rank checks every dataset: same file, same verdict; agreed anyway. */
  for (int l = 0; st == SR_OK && l < f->layers; l++)
    for (int w = 0; st == SR_OK && w < 3; w++) st = in_check_dataset(f, l, w);
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto fail;

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
  if (st == SR_OK) st = check_runs(f->path, obj, f->n, run_starts, nruns, run_len);
  if (st == SR_OK && nruns > 0 && run_len > 0 && !local)
    st = sr__seterr(SR_ERR_INTERNAL, "%s: %s: rows to read but no buffer", f->path, obj);
  if (st == SR_OK) {
    hid_t dset = f->dset[3 * layer + w];
    hsize_t mdims[3] = {(hsize_t)heads, (hsize_t)nruns * (hsize_t)run_len, (hsize_t)f->d};
    if ((fspace = H5Dget_space(dset)) < 0 ||
        select_runs(fspace, heads, f->d, run_starts, nruns, run_len) < 0 ||
        (mspace = H5Screate_simple(3, mdims, NULL)) < 0 ||
        (mdims[1] == 0 && H5Sselect_none(mspace) < 0))
      st = h5_fail(SR_ERR_IO, f->path, obj, "selection");
  }
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto done;

  /* float16 on disk is converted to native float by HDF5 (soft conversion); with a conversion
   * HDF5 may fall back from collective to independent I/O internally, which is still correct. */
  float dummy = 0.0f;
  if (H5Dread(f->dset[3 * layer + w], H5T_NATIVE_FLOAT, mspace, fspace, f->dxpl_coll,
              local ? local : &dummy) < 0)
    st = h5_fail(SR_ERR_IO, f->path, obj, "H5Dread");
  st = agree(f->comm, f->rank, f->nranks, st);

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
    st = h5_fail(SR_ERR_IO, f->path, obj, "selection");
  else if (H5Dread(f->dset[3 * layer + w], H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, out) < 0)
    st = h5_fail(SR_ERR_IO, f->path, obj, "H5Dread");
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
    st = h5_fail(SR_ERR_IO, f->path, obj, "H5Tencode");
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
    st = h5_fail(SR_ERR_IO, f->path, obj, "H5Tencode");
    goto done;
  }
  int64_t shape[3] = {heads, n, d};
  *h = sr_xxh64(buf, enc_len, *h) ^ sr_xxh64(shape, sizeof shape, (uint64_t)(3 * l + w));
  if ((fspace = H5Dget_space(dset)) < 0 || H5Sselect_none(fspace) < 0) {
    st = h5_fail(SR_ERR_IO, f->path, obj, "selection");
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
      st = h5_fail(SR_ERR_IO, f->path, obj, "selection");
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
      st = h5_fail(SR_ERR_IO, f->path, obj, "H5Dread");
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
  if ((st = agree(f->comm, f->rank, f->nranks, st)) != SR_OK) return st;
  int rc = MPI_Bcast(&h, 1, MPI_UINT64_T, 0, f->comm);
  if (rc != MPI_SUCCESS) return agree(f->comm, f->rank, f->nranks, mpi_fail(rc, "MPI_Bcast"));
  *fp = h;
  return SR_OK;
}

void sr_h5_in_close(sr_h5_in *f) {
  if (!f) return;
  in_free(f);
}
