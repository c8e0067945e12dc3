/*
 * sr_h5.c — parallel HDF5 (MPI-IO) output of sharded rows, and the error, agreement and
 * selection helpers that sr_h5_in.c (the input) shares through sr_h5_internal.h. docs/HDF5.md is
 * the schema.
 *
 * Invariants:
 *   - Every entry point except sr_h5_read_head_rows is collective over the handle's communicator
 *     (a private MPI_Comm_dup whose error handler returns codes). Failures that can happen on
 *     some ranks only are combined with sr__h5_agree() (an MPI_Allreduce MINLOC over the status) before
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
#define _XOPEN_SOURCE 700 /* realpath */
#include "sr_h5.h"
#include "sr_ckpt.h"
#include "sr_h5_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SR_H5_FORMAT "sparsering-2" /* 2: selection/col_indptr, col_indices */
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

/* ---------------------------------------------------------------------------------------------
 * Errors and agreement
 * ------------------------------------------------------------------------------------------- */

/* Turns off HDF5's automatic stack printing (once) and makes MPI-IO report errors as codes. */
void sr__h5_setup_errors(void) {
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
sr_status sr__h5_fail(sr_status s, const char *file, const char *obj, const char *what) {
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

sr_status sr__h5_mpi_fail(int rc, const char *what) {
  char text[MPI_MAX_ERROR_STRING] = "";
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return sr__seterr(SR_ERR_MPI, "%s failed: %s", what, text);
}

/* Collective. Every rank passes its own status; all return the lowest (most severe) status and
 * the message of the lowest rank that reported it. A message from a rank other than 0 is
 * prefixed with that rank so a rank-local failure can be traced. */
sr_status sr__h5_agree(MPI_Comm comm, int rank, int nranks, sr_status st) {
  struct { int status, rank; } in = {(int)st, rank}, out;
  int rc = MPI_Allreduce(&in, &out, 1, MPI_2INT, MPI_MINLOC, comm);
  if (rc != MPI_SUCCESS) return sr__h5_mpi_fail(rc, "MPI_Allreduce (status agreement)");
  if (out.status == SR_OK) return SR_OK;
  char msg[SR_H5_MSG_LEN];
  if (rank == out.rank) snprintf(msg, sizeof msg, "%s", sr_last_error());
  rc = MPI_Bcast(msg, (int)sizeof msg, MPI_CHAR, out.rank, comm);
  if (rc != MPI_SUCCESS) return sr__h5_mpi_fail(rc, "MPI_Bcast (error message)");
  msg[sizeof msg - 1] = '\0';
  if (out.rank != 0 && nranks > 1)
    return sr__seterr((sr_status)out.status, "rank %d: %s", out.rank, msg);
  return sr__seterr((sr_status)out.status, "%s", msg);
}

/* Duplicates comm (so that our error handler and HDF5's traffic stay private). */
sr_status sr__h5_comm_setup(MPI_Comm comm, MPI_Comm *out, int *rank, int *nranks) {
  *out = MPI_COMM_NULL;
  int rc = MPI_Comm_dup(comm, out);
  if (rc != MPI_SUCCESS) return sr__h5_mpi_fail(rc, "MPI_Comm_dup");
  MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN);
  MPI_Comm_rank(*out, rank);
  MPI_Comm_size(*out, nranks);
  return SR_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------- */

void sr__h5_dims_str(char *buf, size_t len, int rank, const hsize_t *dims) {
  size_t used = 0;
  buf[0] = '\0';
  if (rank == 0) snprintf(buf, len, "scalar");
  for (int i = 0; i < rank && used < len; i++)
    used += (size_t)snprintf(buf + used, len - used, "[%llu]", (unsigned long long)dims[i]);
}

void sr__h5_dtype_str(hid_t t, char *buf, size_t len) {
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
    if (ex < 0) return sr__h5_fail(SR_ERR_IO, fname, buf, "H5Lexists");
    if (!ex) {
      hid_t g = H5Gcreate2(file, buf, H5P_DEFAULT, gcpl, H5P_DEFAULT);
      if (g < 0) return sr__h5_fail(SR_ERR_IO, fname, buf, "H5Gcreate2");
      H5Gclose(g);
    }
    *p = saved;
    if (saved == '\0') break;
  }
  *out = H5Gopen2(file, buf, H5P_DEFAULT);
  if (*out < 0) return sr__h5_fail(SR_ERR_IO, fname, buf, "H5Gopen2");
  return SR_OK;
}

/* Opens the layer group (layer >= 0) or the root group (layer < 0) of an output file. */
static sr_status open_target(sr_h5_out *f, int layer, hid_t *out) {
  char name[64];
  if (layer < 0) {
    *out = H5Gopen2(f->file, "/", H5P_DEFAULT);
    if (*out < 0) return sr__h5_fail(SR_ERR_IO, f->partial, "/", "H5Gopen2");
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
  if (ex < 0) { st = sr__h5_fail(SR_ERR_IO, fname, where, "H5Aexists"); goto done; }
  if (ex > 0 && H5Adelete(loc, name) < 0) {
    st = sr__h5_fail(SR_ERR_IO, fname, where, "H5Adelete");
    goto done;
  }
  if ((space = H5Screate(H5S_SCALAR)) < 0) {
    st = sr__h5_fail(SR_ERR_IO, fname, where, "H5Screate");
    goto done;
  }
  if ((attr = H5Acreate2(loc, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT)) < 0) {
    st = sr__h5_fail(SR_ERR_IO, fname, where, "H5Acreate2");
    goto done;
  }
  if (H5Awrite(attr, mtype, buf) < 0) st = sr__h5_fail(SR_ERR_IO, fname, where, "H5Awrite");
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
  if (t < 0) return sr__h5_fail(SR_ERR_IO, fname, obj, "string type creation");
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
herr_t sr__h5_select_runs(hid_t space, int heads, int d, const int64_t *starts, int nruns,
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
sr_status sr__h5_check_runs(const char *fname, const char *obj, int64_t n,
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
  if (ex < 0) return sr__h5_fail(SR_ERR_IO, fname, obj, "H5Lexists");
  if (!ex) {
    if ((space = H5Screate_simple(ndims, dims, NULL)) < 0) {
      st = sr__h5_fail(SR_ERR_IO, fname, obj, "H5Screate_simple");
      goto done;
    }
    *out = H5Dcreate2(g, name, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (*out < 0) st = sr__h5_fail(SR_ERR_IO, fname, obj, "H5Dcreate2");
    goto done;
  }
  if ((*out = H5Dopen2(g, name, H5P_DEFAULT)) < 0) {
    st = sr__h5_fail(SR_ERR_IO, fname, obj, "H5Dopen2");
    goto done;
  }
  if ((space = H5Dget_space(*out)) < 0 || (type = H5Dget_type(*out)) < 0) {
    st = sr__h5_fail(SR_ERR_IO, fname, obj, "H5Dget_space/H5Dget_type");
    goto done;
  }
  hsize_t found[H5S_MAX_RANK];
  int nd = H5Sget_simple_extent_dims(space, found, NULL);
  bool same = nd == ndims && H5Tequal(type, ftype) > 0;
  for (int i = 0; same && i < nd; i++) same = found[i] == dims[i];
  if (!same) {
    char fs[96], es[96], ft[64], et[64];
    sr__h5_dims_str(fs, sizeof fs, nd < 0 ? 0 : nd, found);
    sr__h5_dims_str(es, sizeof es, ndims, dims);
    sr__h5_dtype_str(type, ft, sizeof ft);
    sr__h5_dtype_str(ftype, et, sizeof et);
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
  return sr__h5_agree(f->comm, f->rank, f->nranks, st);
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

/* ---------------------------------------------------------------------------------------------
 * The run's output locations, checked before anything is computed (sr_outputs_check)
 * ------------------------------------------------------------------------------------------- */

/* One name the run writes or reads, as rank 0 sees it. */
typedef struct loc {
  const char *what;   /* the key or option in messages                                      */
  const char *path;   /* as configured                                                      */
  int group;          /* writes: 1 = the HDF5 output, 2 = the JSON report; 0 = read (inputs) */
  bool tree;          /* a directory whose contents are the run's too (the checkpoint)      */
  char *canon;        /* realpath(directory) + "/" + last component; NULL: not resolvable   */
  bool have_id;       /* dev/ino of what the name leads to (links followed), if it exists   */
  dev_t dev;
  ino_t ino;
} loc;

static char *cat2(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 1;
  char *s = malloc(n);
  if (s) snprintf(s, n, "%s%s", a, b);
  return s;
}

/* The last component of path ("" for a path ending in '/'). */
static const char *base_of(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

/* Resolves l->path: its directory through realpath (".", "..", symbolic links, "//"), and
 * whether it exists; -o ./out.h5 and --json out.h5 are then the same name. */
static sr_status loc_resolve(loc *l) {
  struct stat sb;
  char *dir = dir_of(l->path);
  if (!dir) return sr__seterr(SR_ERR_NOMEM, "out of memory (output paths)");
  char *real = realpath(dir, NULL);
  free(dir);
  if (real) {
    l->canon = malloc(strlen(real) + strlen(base_of(l->path)) + 2);
    if (l->canon)
      snprintf(l->canon, strlen(real) + strlen(base_of(l->path)) + 2, "%s%s%s", real,
               strcmp(real, "/") == 0 ? "" : "/", base_of(l->path));
    free(real);
    if (!l->canon) return sr__seterr(SR_ERR_NOMEM, "out of memory (output paths)");
  }
  if (stat(l->path, &sb) == 0) {
    l->have_id = true;
    l->dev = sb.st_dev;
    l->ino = sb.st_ino;
  }
  return SR_OK;
}

/* Whether b is a or, when a is the checkpoint directory, inside it. */
static bool loc_covers(const loc *a, const loc *b) {
  if (a->have_id && b->have_id && a->dev == b->dev && a->ino == b->ino) return true;
  if (!a->canon || !b->canon) return false;
  size_t n = strlen(a->canon);
  return strcmp(a->canon, b->canon) == 0 ||
         (a->tree && strncmp(a->canon, b->canon, n) == 0 && b->canon[n] == '/');
}

/* Rank 0: may the run write `path` (a file it creates whole and renames into place)? Its
 * directory exists and is writable; the name is not a directory, a device, a FIFO or a dangling
 * symbolic link (rename would replace the link, not create its target: refused, also with
 * overwrite); an existing file is refused (SR_ERR_EXISTS) unless may_replace. */
static sr_status loc_check_file(const char *what, const char *path, bool may_replace,
                                const char *exists_msg) {
  char sp[200], sd[200], st_buf[200];
  struct stat sb;
  sr__short(sp, sizeof sp, path);
  const char *base = base_of(path);
  if (!base[0] || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
    return sr__seterr(SR_ERR_IO, "%s: names a directory, not a file (%s)", sp, what);
  char *dir = dir_of(path);
  if (!dir) return sr__seterr(SR_ERR_NOMEM, "out of memory (output paths)");
  sr__short(sd, sizeof sd, dir);
  sr_status st = SR_OK;
  if (stat(dir, &sb) != 0)
    st = sr__seterr(SR_ERR_IO, "%s: %s directory %s (for %s)", sd,
                    strcmp(what, "output.path") == 0 ? "output" : what,
                    errno == ENOENT ? "does not exist" : strerror(errno), sp);
  else if (!S_ISDIR(sb.st_mode))
    st = sr__seterr(SR_ERR_IO, "%s: not a directory (for %s %s)", sd, what, sp);
  else if (access(dir, W_OK | X_OK) != 0)
    st = sr__seterr(SR_ERR_IO, "%s: directory not writable: %s (for %s %s)", sd, strerror(errno),
                    what, sp);
  free(dir);
  if (st != SR_OK) return st;
  if (lstat(path, &sb) != 0) {
    if (errno == ENOENT) return SR_OK;
    return sr__seterr(SR_ERR_IO, "%s: %s (%s)", sp, strerror(errno), what);
  }
  if (S_ISLNK(sb.st_mode) && stat(path, &sb) != 0) {
    char target[4096];
    ssize_t n = readlink(path, target, sizeof target - 1);
    target[n > 0 ? n : 0] = '\0';
    return sr__seterr(SR_ERR_EXISTS, "%s: a dangling symbolic link (to '%s') is in the way; "
                      "remove it, or name its target (%s)", sp,
                      sr__short(st_buf, sizeof st_buf, target), what);
  }
  if (S_ISDIR(sb.st_mode))
    return sr__seterr(SR_ERR_IO, "%s: %s path is a directory", sp,
                      strcmp(what, "output.path") == 0 ? "output" : what);
  if (!S_ISREG(sb.st_mode))
    return sr__seterr(SR_ERR_IO, "%s: is %s, not a regular file (%s)", sp,
                      sr__file_kind(sb.st_mode), what);
  if (!may_replace) return sr__seterr(SR_ERR_EXISTS, "%s: %s", sp, exists_msg);
  return SR_OK;
}

/* Rank 0: the whole check of sr_outputs_check. */
static sr_status outputs_check_rank0(const sr_config *cfg, const char *config_path) {
  const char *P = cfg->out_path, *J = cfg->report_json;
  char *names[6] = {0};
  loc l[8];
  int n = 0;
  sr_status st = SR_OK;
  memset(l, 0, sizeof l);
  if (P) {
    names[0] = cat2(P, ".partial");
    names[1] = cat2(P, ".partial.reserve");
    names[2] = cat2(P, ".partial.d");
  }
  if (J) names[3] = cat2(J, ".partial");
  if ((P && (!names[0] || !names[1] || !names[2])) || (J && !names[3])) {
    st = sr__seterr(SR_ERR_NOMEM, "out of memory (output paths)");
    goto done;
  }
  if (P) {
    l[n++] = (loc){.what = "output.path", .path = P, .group = 1};
    l[n++] = (loc){.what = "output.path's partial file", .path = names[0], .group = 1};
    l[n++] = (loc){.what = "output.path's reserve file", .path = names[1], .group = 1};
    l[n++] = (loc){.what = "output.path's checkpoint directory", .path = names[2], .group = 1, .tree = true};
  }
  if (J) {
    l[n++] = (loc){.what = "report.json", .path = J, .group = 2};
    l[n++] = (loc){.what = "report.json's partial file", .path = names[3], .group = 2};
  }
  if (config_path) l[n++] = (loc){.what = "the config file (-c)", .path = config_path};
  if (cfg->input_source == SR_INPUT_HDF5 && cfg->input_path)
    l[n++] = (loc){.what = "input.path", .path = cfg->input_path};
  for (int i = 0; i < n && st == SR_OK; i++) {
    if (!l[i].path[0] && l[i].group)
      st = sr__seterr(SR_ERR_CONFIG, "%s: empty file name", l[i].what);
    else
      st = loc_resolve(&l[i]);
  }

  /* 1. No two outputs, and no output and input, are the same file: the JSON report would
   *    overwrite the HDF5 result, an output would replace the config or the input. */
  for (int i = 0; i < n && st == SR_OK; i++)
    for (int j = i + 1; j < n && st == SR_OK; j++) {
      if (l[i].group == l[j].group || (!l[i].group && !l[j].group)) continue;
      if (!loc_covers(&l[i], &l[j]) && !loc_covers(&l[j], &l[i])) continue;
      char a[200], b[200];
      sr__short(a, sizeof a, l[i].path);
      sr__short(b, sizeof b, l[j].path);
      if (strcmp(l[i].path, l[j].path) == 0)
        st = sr__seterr(SR_ERR_CONFIG, "%s and %s name the same file (%s)", l[i].what,
                        l[j].what, a);
      else
        st = sr__seterr(SR_ERR_CONFIG, "%s (%s) and %s (%s) name the same file", l[i].what, a,
                        l[j].what, b);
    }

  /* 2. Every place written: its directory, and what is there now. */
  if (st == SR_OK && P && cfg->checkpoint) sr_ckpt_tidy(P); /* as the checkpoint would */
  if (st == SR_OK && P)
    st = loc_check_file("output.path", P, cfg->overwrite,
                        cfg->resume && cfg->checkpoint
                            ? "output exists and is complete, nothing to resume (set "
                              "output.overwrite: true or --set output.overwrite=true)"
                            : "output exists (set output.overwrite: true or --set "
                              "output.overwrite=true)");
  if (st == SR_OK && P) {
    /* The partial file is a leftover (replaced), the checkpoint directory is the checkpoint's
     * to judge (resume, -f); neither may be something else in the way. */
    struct stat sb;
    char sp[200];
    const char *name = cfg->checkpoint ? names[2] : names[0];
    if (lstat(name, &sb) == 0 && (cfg->checkpoint ? !S_ISDIR(sb.st_mode) : S_ISDIR(sb.st_mode)))
      st = sr__seterr(SR_ERR_IO, "%s: exists and is %s, not %s (%s): remove it",
                      sr__short(sp, sizeof sp, name), sr__file_kind(sb.st_mode),
                      cfg->checkpoint ? "a checkpoint directory" : "a partial output file",
                      cfg->checkpoint ? "output.checkpoint" : "output.path");
  }
  /* The report is a summary of the run, written again by every run: an existing file is
   * replaced (the result, output.path, is what output.overwrite protects). */
  if (st == SR_OK && J) st = loc_check_file("report.json", J, true, "");
  if (st == SR_OK && J) {
    struct stat sb;
    char sp[200];
    if (lstat(names[3], &sb) == 0 && S_ISDIR(sb.st_mode))
      st = sr__seterr(SR_ERR_IO, "%s: exists and is a directory, not a partial report "
                      "(report.json): remove it", sr__short(sp, sizeof sp, names[3]));
  }
done:
  for (int i = 0; i < n; i++) free(l[i].canon);
  for (int i = 0; i < 6; i++) free(names[i]);
  return st;
}

sr_status sr_outputs_check(MPI_Comm comm, const sr_config *cfg, const char *config_path) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  sr_status st = rank == 0 ? outputs_check_rank0(cfg, config_path) : SR_OK;
  return sr_comm_agree(comm, st);
}

/* A handle with its communicator, names and property lists; no file yet. Collective (the
 * communicator is duplicated). On a local failure *fp still holds the handle when its
 * communicator exists, so that the caller can agree on the status before freeing it. */
static sr_status out_new(sr_h5_out **fp, MPI_Comm comm, const char *path, const char *partial,
                         bool overwrite) {
  *fp = NULL;
  sr__h5_setup_errors();
  sr_h5_out *f = calloc(1, sizeof *f);
  if (!f) return sr__seterr(SR_ERR_NOMEM, "out of memory (HDF5 output handle)");
  f->comm = MPI_COMM_NULL;
  f->file = f->dxpl = f->gcpl = f->dcpl = H5I_INVALID_HID;
  f->overwrite = overwrite;
  sr_status st = sr__h5_comm_setup(comm, &f->comm, &f->rank, &f->nranks);
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
    return sr__h5_fail(SR_ERR_IO, path, NULL, "property lists");
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
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) {
    out_free(f);
    return st;
  }

  hid_t fapl = H5I_INVALID_HID, root = H5I_INVALID_HID;
  /* Rank 0's file-system verdict, agreed by everyone. */
  if (f->rank == 0) st = out_precheck(f);
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto fail;
  if ((st = reserve_make(f)) != SR_OK) goto fail;

  if ((fapl = out_fapl(f)) < 0)
    st = sr__h5_fail(SR_ERR_IO, f->partial, NULL, "file access property list");
  else if ((f->file = H5Fcreate(f->partial, H5F_ACC_TRUNC, H5P_DEFAULT, fapl)) < 0)
    st = sr__h5_fail(SR_ERR_IO, f->partial, NULL, "H5Fcreate");
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto fail;

  /* Root attributes (all but `complete`, which commit writes last). */
  if ((root = H5Gopen2(f->file, "/", H5P_DEFAULT)) < 0)
    st = sr__h5_fail(SR_ERR_IO, f->partial, "/", "H5Gopen2");
  if (st == SR_OK) st = attr_string_at(root, f->partial, "/", "format", SR_H5_FORMAT);
  if (st == SR_OK) st = attr_string_at(root, f->partial, "/", "version", sr_version());
  if (st == SR_OK) st = attr_string_at(root, f->partial, "/", "config", config_yaml);
  if (st == SR_OK)
    st = attr_write(root, f->partial, "/", "config_hash", H5T_STD_U64LE, H5T_NATIVE_UINT64,
                    &config_hash);
  if (root >= 0) H5Gclose(root);
  root = H5I_INVALID_HID;
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto fail;

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
  st = sr__h5_agree(f->comm, f->rank, f->nranks, st);
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
    st = sr__h5_fail(SR_ERR_IO, f->partial, NULL, "H5Fflush");
  if (H5Fclose(f->file) < 0 && st == SR_OK) st = sr__h5_fail(SR_ERR_IO, f->partial, NULL, "H5Fclose");
  f->file = H5I_INVALID_HID;
  H5Eclear2(H5E_DEFAULT);
  return sr__h5_agree(f->comm, f->rank, f->nranks, st);
}

sr_status sr_h5_out_reopen(sr_h5_out *f) {
  SR_ASSERT(f != NULL);
  if (f->file >= 0) return SR_OK;
  sr_status st = reserve_make(f);
  if (st != SR_OK) return st;
  hid_t fapl = out_fapl(f);
  if (fapl < 0) st = sr__h5_fail(SR_ERR_IO, f->partial, NULL, "file access property list");
  else if ((f->file = H5Fopen(f->partial, H5F_ACC_RDWR, fapl)) < 0)
    st = sr__h5_fail(SR_ERR_IO, f->partial, NULL, "H5Fopen");
  if (fapl >= 0) H5Pclose(fapl);
  st = sr__h5_agree(f->comm, f->rank, f->nranks, st);
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
    st = sr__h5_fail(SR_ERR_IO, f->partial, obj, "H5Dopen2");
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
  return sr__h5_agree(f->comm, f->rank, f->nranks, st);
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
  if (st == SR_OK) st = sr__h5_check_runs(f->partial, obj, n, run_starts, nruns, run_len);
  if (st == SR_OK && nruns > 0 && run_len > 0 && !local)
    st = sr__seterr(SR_ERR_INTERNAL, "%s: %s: rows to write but no buffer", f->partial, obj);
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) return st;

  int ndims = d > 0 ? 3 : 2;
  hsize_t dims[3] = {(hsize_t)heads, (hsize_t)n, (hsize_t)d};
  hsize_t mdims[3] = {(hsize_t)heads, (hsize_t)nruns * (hsize_t)run_len, (hsize_t)d};
  st = open_target(f, layer, &g);
  if (st == SR_OK)
    st = open_or_create(g, f->dcpl, f->partial, obj, name, H5T_IEEE_F32LE, ndims, dims, &dset);
  if (st == SR_OK && ((fspace = H5Dget_space(dset)) < 0 ||
                      sr__h5_select_runs(fspace, heads, d, run_starts, nruns, run_len) < 0))
    st = sr__h5_fail(SR_ERR_IO, f->partial, obj, "file selection");
  if (st == SR_OK && ((mspace = H5Screate_simple(ndims, mdims, NULL)) < 0 ||
                      (mdims[1] == 0 && H5Sselect_none(mspace) < 0)))
    st = sr__h5_fail(SR_ERR_IO, f->partial, obj, "memory selection");
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto done;

  /* Collective write; a rank without rows takes part with an empty selection. */
  static const float dummy = 0.0f;
  if (H5Dwrite(dset, H5T_NATIVE_FLOAT, mspace, fspace, f->dxpl, local ? (const void *)local
                                                                      : (const void *)&dummy) < 0)
    st = sr__h5_fail(SR_ERR_IO, f->partial, obj, "H5Dwrite");
  st = sr__h5_agree(f->comm, f->rank, f->nranks, st);

done:
  if (mspace >= 0) H5Sclose(mspace);
  if (fspace >= 0) H5Sclose(fspace);
  if (dset >= 0) H5Dclose(dset);
  if (g >= 0) H5Gclose(g);
  return st;
}

sr_status sr_h5_write_whole(sr_h5_out *f, int layer, const char *name, int kind, int ndims,
                            const int64_t *dims_in, const void *data) {
  SR_ASSERT(f != NULL);
  sr_status st = SR_OK;
  hid_t g = H5I_INVALID_HID, dset = H5I_INVALID_HID;
  hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID;
  char obj[160], grp[160];
  snprintf(obj, sizeof obj, "/layers/%d/%s", layer, name ? name : "(null)");
  hsize_t dims[4] = {0};
  hsize_t total = 1;
  if (layer < 0 || !name || !name[0] || ndims < 1 || ndims > 4 || kind < 0 || kind > 2)
    st = sr__seterr(SR_ERR_INTERNAL, "%s: %s: bad arguments", f->partial, obj);
  for (int i = 0; st == SR_OK && i < ndims; i++) {
    if (dims_in[i] < 0) st = sr__seterr(SR_ERR_INTERNAL, "%s: %s: negative extent", f->partial, obj);
    dims[i] = (hsize_t)dims_in[i];
    total *= dims[i];
  }
  if (st == SR_OK && f->rank == 0 && total > 0 && !data)
    st = sr__seterr(SR_ERR_INTERNAL, "%s: %s: no data on rank 0", f->partial, obj);
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) return st;
  /* The group holding the dataset: /layers/<l> or a subgroup named in `name`. */
  snprintf(grp, sizeof grp, "%s", obj);
  *strrchr(grp, '/') = '\0';
  const hid_t ftype = kind == 0 ? H5T_IEEE_F32LE : kind == 1 ? H5T_STD_I64LE : H5T_STD_I32LE;
  const hid_t mtype = kind == 0 ? H5T_NATIVE_FLOAT : kind == 1 ? H5T_NATIVE_INT64 : H5T_NATIVE_INT32;
  st = ensure_group(f->file, f->gcpl, f->partial, grp, &g);
  if (st == SR_OK)
    st = open_or_create(g, f->dcpl, f->partial, obj, strrchr(obj, '/') + 1, ftype, ndims, dims,
                        &dset);
  if (st == SR_OK && ((fspace = H5Dget_space(dset)) < 0 ||
                      (mspace = H5Screate_simple(ndims, dims, NULL)) < 0 ||
                      ((f->rank != 0 || total == 0) &&
                       (H5Sselect_none(fspace) < 0 || H5Sselect_none(mspace) < 0))))
    st = sr__h5_fail(SR_ERR_IO, f->partial, obj, "selection");
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto done;
  static const int64_t dummy = 0;
  if (H5Dwrite(dset, mtype, mspace, fspace, f->dxpl,
               f->rank == 0 && total > 0 ? data : (const void *)&dummy) < 0)
    st = sr__h5_fail(SR_ERR_IO, f->partial, obj, "H5Dwrite");
  st = sr__h5_agree(f->comm, f->rank, f->nranks, st);
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

/* Collective. One CSR over the selection's rows (row_ptr/idx/nnz: this rank's local rows) as
 * the datasets <grp>/<ptr_name> (int64, global rows) and <grp>/<idx_name> (int32). */
static sr_status write_csr(sr_h5_out *f, int layer, const sr_plan *p, const sr_selection *sel,
                           const int64_t *row_ptr, const int32_t *idx, int64_t nnz,
                           const char *ptr_name, const char *idx_name) {
  SR_ASSERT(f != NULL);
  sr_status st = SR_OK;
  hid_t g = H5I_INVALID_HID, dptr = H5I_INVALID_HID, didx = H5I_INVALID_HID;
  hid_t fs_ptr = H5I_INVALID_HID, ms_ptr = H5I_INVALID_HID;
  hid_t fs_idx = H5I_INVALID_HID, ms_idx = H5I_INVALID_HID;
  int64_t *counts = NULL, *all_counts = NULL, *indptr = NULL;
  char obj[128], grp[96];
  snprintf(grp, sizeof grp, "/layers/%d/selection", layer);
  snprintf(obj, sizeof obj, "%s/%s", grp, idx_name);

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
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto done;

  /* Every rank learns every row's length, then computes the same global row pointer. Local
   * row h*nqb_local + m of rank r is global row h*nqb_global + qblock_global(r, m). */
  for (int64_t r = 0; r < rows_local; r++) counts[r] = row_ptr[r + 1] - row_ptr[r];
  int rc = MPI_Allgather(counts, (int)rows_local, MPI_INT64_T, all_counts, (int)rows_local,
                         MPI_INT64_T, f->comm);
  if (rc != MPI_SUCCESS) st = sr__h5_mpi_fail(rc, "MPI_Allgather (selection row lengths)");
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto done;
  for (int r = 0; r < f->nranks; r++)
    for (int h = 0; h < p->q_heads; h++)
      for (int64_t m = 0; m < p->nqb_local; m++) {
        int64_t grow = (int64_t)h * p->nqb_global + sr_plan_qblock_global(p, r, m);
        indptr[grow + 1] = all_counts[(int64_t)r * rows_local + (int64_t)h * p->nqb_local + m];
      }
  for (int64_t r = 0; r < rows_global; r++) indptr[r + 1] += indptr[r];
  int64_t nnz_total = indptr[rows_global];

  hsize_t ptr_dims[1] = {(hsize_t)rows_global + 1}, idx_dims[1] = {(hsize_t)nnz_total};
  hsize_t nnz_local[1] = {(hsize_t)nnz};
  st = ensure_group(f->file, f->gcpl, f->partial, grp, &g);
  if (st == SR_OK) {
    char ptr_obj[112];
    snprintf(ptr_obj, sizeof ptr_obj, "%s/%s", grp, ptr_name);
    st = open_or_create(g, f->dcpl, f->partial, ptr_obj, ptr_name, H5T_STD_I64LE, 1, ptr_dims,
                        &dptr);
  }
  if (st == SR_OK)
    st = open_or_create(g, f->dcpl, f->partial, obj, idx_name, H5T_STD_I32LE, 1, idx_dims,
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
      st = sr__h5_fail(SR_ERR_IO, f->partial, grp, "indptr selection");
  }
  if (st == SR_OK) {
    if ((fs_idx = H5Dget_space(didx)) < 0 || H5Sselect_none(fs_idx) < 0 ||
        (ms_idx = H5Screate_simple(1, nnz_local, NULL)) < 0 ||
        (nnz == 0 && H5Sselect_none(ms_idx) < 0))
      st = sr__h5_fail(SR_ERR_IO, f->partial, obj, "selection");
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
          st = sr__h5_fail(SR_ERR_IO, f->partial, obj, "H5Sselect_hyperslab");
        run_start = off;
        run_end = off + cnt;
      }
    if (st == SR_OK && select_range(fs_idx, run_start, run_end) < 0)
      st = sr__h5_fail(SR_ERR_IO, f->partial, obj, "H5Sselect_hyperslab");
  }
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto done;

  static const int32_t dummy = 0;
  if (H5Dwrite(dptr, H5T_NATIVE_INT64, ms_ptr, fs_ptr, f->dxpl, indptr) < 0)
    st = sr__h5_fail(SR_ERR_IO, f->partial, grp, "H5Dwrite indptr");
  if ((st = sr__h5_agree(f->comm, f->rank, f->nranks, st)) != SR_OK) goto done;
  /* An empty selection has a zero-length indices dataset with no storage to write to; every
   * rank knows nnz_total, so all skip the write together. */
  if (nnz_total > 0 &&
      H5Dwrite(didx, H5T_NATIVE_INT32, ms_idx, fs_idx, f->dxpl,
               nnz > 0 ? (const void *)idx : (const void *)&dummy) < 0)
    st = sr__h5_fail(SR_ERR_IO, f->partial, obj, "H5Dwrite");
  st = sr__h5_agree(f->comm, f->rank, f->nranks, st);

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

sr_status sr_h5_write_selection(sr_h5_out *f, int layer, const sr_plan *p,
                                const sr_selection *sel) {
  SR_ASSERT(f != NULL);
  SR_TRY(write_csr(f, layer, p, sel, sel ? sel->row_ptr : NULL, sel ? sel->col : NULL,
                   sel ? sel->nnz : 0, "indptr", "indices"));
  /* Key columns (vertical_slash, flexprefill): the same rows, global key positions. Every rank
   * has the same method, so all write them or none. */
  if (sel->vrow_ptr)
    SR_TRY(write_csr(f, layer, p, sel, sel->vrow_ptr, sel->vcol, sel->nv, "col_indptr",
                     "col_indices"));
  return SR_OK;
}

/* Collective. One attribute on the root (layer < 0) or on /layers/<layer>: a number of file type
 * ftype from memory type mtype at value, or (ftype < 0) the string text. */
static sr_status attr_on(sr_h5_out *f, int layer, const char *name, hid_t ftype, hid_t mtype,
                         const void *value, const char *text) {
  SR_ASSERT(f != NULL && name != NULL);
  hid_t g = H5I_INVALID_HID;
  char obj[64];
  snprintf(obj, sizeof obj, layer < 0 ? "/" : "/layers/%d", layer);
  sr_status st = open_target(f, layer, &g);
  if (st == SR_OK)
    st = ftype < 0 ? attr_string_at(g, f->partial, obj, name, text)
                   : attr_write(g, f->partial, obj, name, ftype, mtype, value);
  if (g >= 0) H5Gclose(g);
  return sr__h5_agree(f->comm, f->rank, f->nranks, st);
}

sr_status sr_h5_attr_double(sr_h5_out *f, int layer, const char *name, double value) {
  return attr_on(f, layer, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value, NULL);
}

sr_status sr_h5_attr_string(sr_h5_out *f, int layer, const char *name, const char *value) {
  return attr_on(f, layer, name, H5I_INVALID_HID, H5I_INVALID_HID, NULL, value);
}

sr_status sr_h5_attr_u64(sr_h5_out *f, int layer, const char *name, uint64_t value) {
  return attr_on(f, layer, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value, NULL);
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
    st = sr__h5_fail(SR_ERR_IO, f->partial, "/", "H5Gopen2");
  if (st == SR_OK)
    st = attr_write(root, f->partial, "/", "complete", H5T_STD_I32LE, H5T_NATIVE_INT32, &one);
  if (root >= 0) H5Gclose(root);
  /* Flush with MPI_File_sync, so the bytes are on storage before the rename below makes the
   * file visible under its final name (a crash then never leaves a complete-looking file with
   * missing data). */
  if (st == SR_OK && H5Fflush(f->file, H5F_SCOPE_GLOBAL) < 0)
    st = sr__h5_fail(SR_ERR_IO, f->partial, NULL, "H5Fflush");
  st = sr__h5_agree(f->comm, f->rank, f->nranks, st);

  /* Close (collective; flushes everything), whatever happened, then agree on the outcome. */
  sr_status close_st = SR_OK;
  if (H5Fclose(f->file) < 0) close_st = sr__h5_fail(SR_ERR_IO, f->partial, NULL, "H5Fclose");
  f->file = H5I_INVALID_HID;
  if (st == SR_OK) st = sr__h5_agree(f->comm, f->rank, f->nranks, close_st);

  /* Test failpoint: the file is complete and closed, not yet under its final name. */
  if (st == SR_OK) sr_ckpt_point("commit_closed", -1, f->rank);
  if (f->rank == 0) {
    if (st == SR_OK) st = out_publish(f);
    else if (!f->keep) unlink(f->partial);
  }
  /* Rank 0 has the last word (its rename); the others pass on the status agreed so far. */
  st = sr__h5_agree(f->comm, f->rank, f->nranks, st);
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

