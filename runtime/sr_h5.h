/*
 * sr_h5.h — parallel HDF5 (collective MPI-IO) output and input of sharded rows.
 *
 * Output file layout (docs/HDF5.md is the exact schema; docs/CHECKPOINT.md the checkpoint):
 *   /                         attrs: format = "sparsering-2", version, config (YAML text),
 *                                    config_hash (u64), complete (int, 1, written last)
 *   /layers/<l>/out           float32 [q_heads][N][d]
 *   /layers/<l>/lse           float32 [q_heads][N]      (natural log)
 *   /layers/<l>/selection/indptr  int64 [q_heads*nqb + 1]  CSR over rows r = h*nqb + m
 *   /layers/<l>/selection/indices int32 [nnz]              global key-block ids, ascending
 *   /layers/<l>/selection     attrs: q_heads, nqb, nkb, block_q, block_k (int64)
 *   /layers/<l>               attrs: metrics (numeric attributes), metrics_json (string),
 *                                    checksum (u64, sr_ckpt_checksums)
 * Strings are variable-length UTF-8; `version` is the library version (sr_version()).
 * The file is written as "<path>.partial" (a stale one is replaced) and renamed to <path> only
 * after every rank closed it successfully; on failure the partial file is removed. An existing
 * <path> is refused (SR_ERR_EXISTS) unless overwrite is set, and is only replaced at commit.
 *
 * Input file layout: /layers/<l>/{q,k,v}, [heads][N][d], float32, float16 (IEEE half) or
 * bfloat16 (HDF5 custom float): any 2- or 4-byte HDF5 float, converted by HDF5 on read.
 *
 * All functions marked "collective" must be called by every rank of the communicator with
 * the same arguments where noted; they return the same status on every rank when the failure
 * is a property of the file (shapes, existence), which keeps ranks from diverging.
 */
#ifndef SR_H5_H
#define SR_H5_H

#include "sr_plan.h"
#include "sr_select.h"

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct sr_h5_out sr_h5_out;
typedef struct sr_h5_in sr_h5_in;

/* Collective (rank 0 looks, every rank returns its verdict). Every file the run of cfg will
 * write, checked before anything is computed, so that a run never computes for hours and then
 * fails to write:
 *   - no two of them, and none of them and an input (config_path, input.path), are one file:
 *     compared by name after resolving the directory (realpath) and by device and inode when
 *     the file exists; the output owns "<path>.partial", "<path>.partial.reserve" and
 *     "<path>.partial.d" (and everything in it), the report "<json>.partial" (SR_ERR_CONFIG);
 *   - the directory of output.path and of report.json exists and is writable (SR_ERR_IO);
 *   - neither is a directory, a FIFO or device (SR_ERR_IO) or a dangling symbolic link
 *     (SR_ERR_EXISTS: a rename would replace the link, not create its target);
 *   - an existing output.path is refused unless cfg->overwrite (SR_ERR_EXISTS); an existing
 *     report is replaced; "<path>.partial" (without checkpoint) must not be a directory and
 *     "<path>.partial.d" (with) must be one if it exists.
 * The writers check again when they create their files (a file may appear meanwhile). */
sr_status sr_outputs_check(MPI_Comm comm, const sr_config *cfg, const char *config_path);

/* Collective. Refuses an existing path unless overwrite (checked on rank 0, broadcast), then
 * creates "<path>.partial" with MPI-IO and writes the root attributes except `complete`. */
sr_status sr_h5_out_create(sr_h5_out **f, MPI_Comm comm, const char *path, bool overwrite,
                           const char *config_yaml, uint64_t config_hash);
/* Collective. The same, building the file at `partial` instead of "<path>.partial" (NULL: that
 * default); the checkpoint uses "<path>.partial.d/data.h5". */
sr_status sr_h5_out_create_at(sr_h5_out **f, MPI_Comm comm, const char *path,
                              const char *partial, bool overwrite, const char *config_yaml,
                              uint64_t config_hash);
/* Collective. A handle for an existing partial file (a resumed checkpoint), opened read-write. */
sr_status sr_h5_out_open_at(sr_h5_out **f, MPI_Comm comm, const char *path, const char *partial,
                            bool overwrite);
/* Collective. Flushes HDF5's caches (H5Fflush) and closes the file, keeping the handle: the
 * file is then a consistent HDF5 file. With sync, the flush ends in MPI_File_sync and the bytes
 * are on storage on return; without, they may still be in the page cache and the caller makes
 * them durable (every rank fsyncs the file: sr_ckpt does so in the background). No-op when
 * already suspended. */
sr_status sr_h5_out_suspend(sr_h5_out *f, bool sync);
/* Collective. Reopens a suspended file read-write. No-op when open. */
sr_status sr_h5_out_reopen(sr_h5_out *f);
/* The name of the file being built. */
const char *sr_h5_out_partial(const sr_h5_out *f);
/* Keep the partial file when a commit fails (a checkpoint resumes it); default: removed. */
void sr_h5_out_set_keep(sr_h5_out *f, bool keep);
/* Collective. Byte offset and size of the raw data of /layers/<layer>/<name> in the file
 * (contiguous storage); both 0 for a dataset without storage (zero elements). */
sr_status sr_h5_out_extent(sr_h5_out *f, int layer, const char *name, uint64_t *offset,
                           uint64_t *bytes);

/* Collective. Writes this rank's rows of a [heads][N][d] dataset (d = 0: [heads][N]) at
 * /layers/<layer>/<name>. The rank's rows are nruns runs of run_len positions starting at
 * run_starts[i] (ascending); `local` is [heads][nruns*run_len][d] in that order. */
sr_status sr_h5_write_rows(sr_h5_out *f, int layer, const char *name, int heads, int64_t n,
                           int d, const int64_t *run_starts, int nruns, int64_t run_len,
                           const float *local);

/* Collective. Writes a whole array held by rank 0 (the others pass anything) as
 * /layers/<layer>/<name> (name may hold one subgroup, "selection/indptr"): kind 0 float32,
 * 1 int64, 2 int32; ndims <= 4 extents. Decode outputs use it (docs/HDF5.md). */
sr_status sr_h5_write_whole(sr_h5_out *f, int layer, const char *name, int kind, int ndims,
                            const int64_t *dims, const void *data);

/* Collective. Writes the selection CSR of every rank as one global CSR over rows
 * h * nqb_global + global q-block. */
sr_status sr_h5_write_selection(sr_h5_out *f, int layer, const sr_plan *p,
                                const sr_selection *sel);

/* Collective (same values on every rank). Attributes on /layers/<layer> (layer >= 0) or on
 * the root group (layer < 0). */
sr_status sr_h5_attr_double(sr_h5_out *f, int layer, const char *name, double value);
sr_status sr_h5_attr_string(sr_h5_out *f, int layer, const char *name, const char *value);
sr_status sr_h5_attr_u64(sr_h5_out *f, int layer, const char *name, uint64_t value);

/* Collective. Marks complete, closes, renames the partial file to <path> (rank 0) and barriers
 * (a suspended file is reopened first). Frees f whatever the outcome. */
sr_status sr_h5_out_commit(sr_h5_out *f);
/* Collective. Closes and removes the partial file; frees f. Safe with f == NULL. */
void sr_h5_out_abort(sr_h5_out *f);
/* Collective. Closes the file (errors ignored), removes it only when remove_partial; frees f.
 * Safe with f == NULL. */
void sr_h5_out_release(sr_h5_out *f, bool remove_partial);

/* Collective. Opens an input file and checks that every layer < cfg->layers has q
 * [q_heads][N][d], k and v [kv_heads][N][d] in float32 or float16. The message names the
 * dataset and the shape found vs expected. */
sr_status sr_h5_in_open(sr_h5_in **f, MPI_Comm comm, const char *path, const sr_config *cfg);
/* Collective. Reads rows (same run description as sr_h5_write_rows) of /layers/<l>/<which>
 * (which = 'q', 'k', 'v') into local [heads][nruns*run_len][d] float32. */
sr_status sr_h5_read_rows(sr_h5_in *f, int layer, char which, int heads, const int64_t *run_starts,
                          int nruns, int64_t run_len, float *local);
/* Independent (not collective). Reads positions [pos0, pos0+count) of one head into
 * out[count][d] — used by the verifier. */
sr_status sr_h5_read_head_rows(sr_h5_in *f, int layer, char which, int head, int64_t pos0,
                               int64_t count, float *out);
/* Collective. A 64-bit fingerprint of the input (same value on every rank): for every layer and
 * q, k, v the on-disk type and shape, and the raw bytes of 16 positions (all heads), the first
 * and last among them. Another input file gives another fingerprint with near certainty; an
 * edit of rows outside the sample is not seen (it guards resumes, not against tampering). */
sr_status sr_h5_in_fingerprint(sr_h5_in *f, uint64_t *fp);
/* Collective. The input is still the file opened, whole on storage (its size covers every byte
 * the file addresses), unchanged in identity, size and time, and layer `layer`'s datasets hash
 * as they did: after = 0 before the layer's reads (records the hashes), 1 after them (compares).
 * SR_ERR_IO naming the file and what changed otherwise. */
sr_status sr_h5_in_check(sr_h5_in *f, int layer, int after);
void sr_h5_in_close(sr_h5_in *f);

#endif
