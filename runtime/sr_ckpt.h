/*
 * sr_ckpt.h — durable multi-layer output: per-layer checkpoints, resume, checksums, signals.
 *
 * docs/CHECKPOINT.md is the user-facing description; this is the contract of the code:
 * sr_ckpt.c (the checkpoint, resume, signals) and sr_ckpt_format.c (XXH64, checksums, the
 * files' parsers and the snapshot builder).
 *
 * Layout. A run with output.path = P and output.checkpoint = true builds its output in the
 * directory P.partial.d/:
 *   data.h5            the output file itself (schema docs/HDF5.md), closed after every layer
 *   unit-<l>.json      layer l: per-dataset checksums, the byte extents of its raw data in
 *                      data.h5, and its metrics
 *   snap-<l>.bin       every byte of data.h5 below its size after layer l that is not raw data
 *                      of a completed layer (the file's metadata: superblock, object headers,
 *                      B-trees, heaps, attributes), with its own checksum
 *   manifest.json      identity of the run (result-affecting config hash, input fingerprint,
 *                      ranks, backend, versions), layers done, size of data.h5 after the last
 *                      one, the snapshot's name and checksum, the unit files' checksums
 * A layer counts as done when manifest.json names it: written last, by an atomic rename, after
 * its data and attributes (checksum included) were written, data.h5 closed and synced to
 * storage by every rank (fsync, what MPI_File_sync does), and its unit file and snapshot
 * written, synced and renamed into place. The sync runs on a thread of each rank while the next
 * layer computes (sr_ckpt_unit_end starts it, sr_ckpt_settle joins it and records the layer),
 * so its cost hides behind the compute; data.h5 is not reopened before the record is done.
 *
 * Why this survives kill -9 at any moment (HDF5 1.10, no SWMR): the raw data of a completed
 * layer is never written again (contiguous datasets do not move), and everything else that a
 * later session may have changed in place below the recorded size is in the snapshot. Resume
 * therefore truncates data.h5 to the recorded size, writes the snapshot bytes back, re-verifies
 * the checksums of every completed layer's raw data, and has the file exactly (byte for byte)
 * as it was when the last completed layer was closed. The data is written once; the snapshot
 * is the metadata only (kilobytes per layer).
 *
 * Collective discipline: every function taking the checkpoint is collective over its
 * communicator and returns the same status on every rank (rank 0 does the file-system work and
 * its verdict is agreed with sr_comm_agree). Errors are one line naming the file.
 */
#ifndef SR_CKPT_H
#define SR_CKPT_H

#include "sr_comm.h"
#include "sr_h5.h"
#include "sr_plan.h"
#include "sr_select.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Exit code of a run stopped by SIGTERM / SIGUSR1 with its checkpoint written (EX_TEMPFAIL):
 * a job script requeues on it. */
#define SR_EXIT_INTERRUPTED 75

/* ---- checksums -------------------------------------------------------------------------- */

/* XXH64 (Yann Collet's xxHash, 64-bit variant) of len bytes. */
uint64_t sr_xxh64(const void *data, size_t len, uint64_t seed);

/* The datasets of a layer, in checksum order. COLPTR / COLIDX: selection/col_indptr and
 * selection/col_indices, the key columns of vertical_slash and flexprefill (sel->vrow_ptr);
 * never present for the other methods. */
enum { SR_CK_OUT, SR_CK_LSE, SR_CK_INDPTR, SR_CK_INDICES, SR_CK_COLPTR, SR_CK_COLIDX, SR_CK_N };
extern const char *const sr_ckpt_dataset_names[SR_CK_N]; /* paths below /layers/<l>/ */

/* Checksums of one layer's datasets as they lie in the file. Dataset checksum = sum mod 2^64
 * over its granules g of XXH64(granule bytes, seed g), granules being (q-head h, global q-block
 * m) for out (bq rows of d float32), lse (bq float32), selection/indices and
 * selection/col_indices (the CSR row h*nqb+m), and the whole array for selection/indptr and
 * selection/col_indptr. The sum makes it independent of how rows are split over ranks; the
 * granules make it independent of the rank count. unit = XXH64 of the first four values (0
 * where not written) as little-endian uint64, seed = layer; of all six when either column
 * value is nonzero (a layer with key columns), so that layers without them keep the unit
 * checksum they had before the columns existed. */
typedef struct sr_ckpt_sums {
  uint64_t d[SR_CK_N];
  unsigned present; /* bit i: dataset i written */
  uint64_t unit;
} sr_ckpt_sums;

/* Collective. The checksums of this rank's rows combined over comm: out/lse are the rank's
 * [q_heads][n_local](*d) rows (plan run order), sel its local CSR. write_mask: SR_WRITE_*. */
sr_status sr_ckpt_checksums(const sr_plan *p, unsigned write_mask, const float *out,
                            const float *lse, const sr_selection *sel, MPI_Comm comm, int layer,
                            sr_ckpt_sums *s);

/* ---- signals and test hooks --------------------------------------------------------------- */

/* Installs SIGTERM and SIGUSR1 handlers that only record the signal (async-signal-safe); the run
 * stops at the next layer boundary (sr_run). Called by main, not by the library on its own. */
void sr_ckpt_signals_install(void);
/* The last recorded signal number, or 0. */
int sr_ckpt_signal_pending(void);
/* Records a signal as the handler does (tests). */
void sr_ckpt_signal_raise(int sig);

/* Test-only failpoints (docs/CHECKPOINT.md "Test hooks"): at a named point of layer `layer`,
 * SR_TEST_CRASH=point:layer[:rank] kills this process with SIGKILL (every rank, or the one
 * named), SR_TEST_DELAY_MS=n sleeps n ms (to let a test's kill -9 land anywhere) and
 * SR_TEST_HOLD=point:layer[:rank] creates "sr_hold.<rank>" (holding the rank's process id) in
 * the working directory and waits there until the rank receives SIGTERM / SIGUSR1 or the test removes that file (the marker is
 * gone when the rank goes on). No-ops when none is set. */
void sr_ckpt_point(const char *point, int layer, int rank);

/* ---- the checkpoint --------------------------------------------------------------------- */

typedef struct sr_ckpt sr_ckpt;

typedef struct sr_ckpt_opts {
  const char *path;        /* output.path: the final file                                    */
  bool overwrite;          /* output.overwrite: an existing output / checkpoint may go       */
  bool resume;             /* output.resume: continue an existing checkpoint                 */
  const char *config_yaml; /* effective config stored in a new file (root attribute)         */
  uint64_t config_hash;    /* its sr_config_hash                                             */
  const char *result_yaml; /* sr_config_result_yaml: compared on resume (messages name keys) */
  uint64_t result_hash;    /* its hash                                                       */
  uint64_t input_fp;       /* sr_h5_in_fingerprint of the input; 0 for synthetic input      */
  const char *input_path;  /* for messages; NULL for synthetic input                         */
  int layers;              /* model.layers                                                   */
  const char *backend;     /* backend actually used ("cpu", "cuda")                         */
  const char *hdf5_version;
  int64_t q_heads, seq_len, head_dim, block_q; /* granule geometry of the checksums          */
} sr_ckpt_opts;

/* Rank 0 (file system only): removes "<path>.partial.d" when <path> is a published output and
 * the directory holds no data.h5 any more (a run killed between its publish and the removal of
 * its checkpoint); nothing else. Called before an existing output is refused. */
void sr_ckpt_tidy(const char *path);

/* Collective. Opens the output of a checkpointed run. Rank 0 decides from the file system:
 *   - P exists: SR_ERR_EXISTS unless overwrite (P itself is only replaced at commit);
 *   - P.partial.d with at least one completed layer: resumed when o->resume (after validating
 *     identity, restoring data.h5 and re-verifying every completed layer's checksums), else
 *     SR_ERR_EXISTS unless overwrite (then discarded);
 *   - otherwise (nothing, or a checkpoint without a completed layer): a new checkpoint.
 * A refused resume is SR_ERR_CONFIG (config or input changed) or SR_ERR_USAGE (ranks, backend,
 * version differ); a damaged checkpoint is SR_ERR_IO. On return data.h5 is open for the next
 * layer. */
sr_status sr_ckpt_open(sr_ckpt **c, MPI_Comm comm, const sr_ckpt_opts *o);

/* Layers recorded complete: before this run (resumed) plus those settled since; 0 for a new
 * checkpoint. */
int sr_ckpt_units_done(const sr_ckpt *c);
/* The effective config YAML the output carries (for a resumed run: the one of the run that
 * started the checkpoint, from the manifest). Owned by c. */
const char *sr_ckpt_stored_config(const sr_ckpt *c);
/* Rank 0: the metrics JSON object (text) recorded for completed layer l; NULL elsewhere. */
const char *sr_ckpt_unit_metrics(const sr_ckpt *c, int layer);
/* The checkpoint directory ("<path>.partial.d"). */
const char *sr_ckpt_dir(const sr_ckpt *c);
/* Seconds spent on resume work (restore + verification), and the bytes verified. */
void sr_ckpt_resume_cost(const sr_ckpt *c, double *seconds, uint64_t *bytes);
/* Totals of the per-layer checkpoint work so far: seconds in sr_ckpt_unit_end and
 * sr_ckpt_settle (waiting for the sync included) and bytes written besides the data
 * (snapshots, unit files, manifests). */
void sr_ckpt_cost(const sr_ckpt *c, double *seconds, uint64_t *bytes);

/* Collective. The output handle for layer `layer` (== units done once the previous layer is
 * settled, which this does first): data.h5, reopened if it was closed. Owned by c. */
sr_status sr_ckpt_unit_begin(sr_ckpt *c, int layer, sr_h5_out **h5);
/* Collective. Layer `layer` has been written to the handle (datasets and attributes): records
 * its extents, closes data.h5 and starts its sync to storage on a thread of every rank; the
 * layer is recorded (unit file, snapshot, then the manifest: the completion marker) by
 * sr_ckpt_settle. metrics_json: the layer's metrics (rank 0's is kept). */
sr_status sr_ckpt_unit_end(sr_ckpt *c, int layer, const sr_ckpt_sums *s, const char *metrics_json);
/* Collective. Waits for the sync started by sr_ckpt_unit_end (a failure on any rank is an
 * error on all) and records that layer; then sr_ckpt_units_done counts it. No-op when no layer
 * is pending. sr_ckpt_unit_begin, sr_ckpt_commit and sr_ckpt_close settle by themselves. */
sr_status sr_ckpt_settle(sr_ckpt *c);
/* Collective. All layers done: marks data.h5 complete, renames it to P (sr_h5_out_commit) and
 * removes the checkpoint directory. Frees c whatever the outcome. */
sr_status sr_ckpt_commit(sr_ckpt *c);
/* Collective. A failed or interrupted run: closes data.h5; keeps the checkpoint if a layer is
 * complete (the error message is then extended with how to resume), else removes it. Frees c;
 * safe with NULL. Returns st, with the message extended when the checkpoint is kept. */
sr_status sr_ckpt_close(sr_ckpt *c, sr_status st);

/* ---- internals shared by sr_ckpt.c and sr_ckpt_format.c, exposed for tests and fuzzing ---- */

/* The layer checksum from the dataset checksums (see sr_ckpt_sums). */
uint64_t sr__ckpt_unit_checksum(const uint64_t d[SR_CK_N], int layer);
/* "0x%016x" into buf. */
void sr__ckpt_hex64(char buf[19], uint64_t v);
/* Rank 0 file helpers: pread of exactly len bytes (SR_ERR_IO naming `name` otherwise); the
 * one-line message of a damaged checkpoint file (SR_ERR_IO). */
sr_status sr__ckpt_read_all(int fd, void *buf, size_t len, off_t off, const char *name);
sr_status sr__ckpt_bad_file(const char *name, const char *what);

/* A parsed manifest (sr__ckpt_manifest_parse): the fields the checks use. */
typedef struct sr__manifest {
  char version[32], hdf5[32], backend[32];
  int ranks, layers, units_done;
  uint64_t result_hash, input_fp, config_hash, snapshot_hash, snapshot_bytes, file_bytes;
  int64_t q_heads, seq_len, head_dim, block_q;
  char *result_yaml, *config_yaml; /* owned */
  char snapshot[64];
  uint64_t *unit_hash; /* [units_done], owned */
} sr__manifest;
/* Parses and checks manifest text (name for messages): SR_ERR_IO with a one-line message when
 * it is not a well-formed manifest. m is zeroed first; free with sr__manifest_free. */
sr_status sr__ckpt_manifest_parse(const char *text, size_t len, const char *name, sr__manifest *m);
void sr__manifest_free(sr__manifest *m);

/* One dataset of a completed layer in data.h5. */
typedef struct sr__extent {
  int kind;        /* SR_CK_* */
  uint64_t offset; /* byte offset in data.h5 (meaningless when bytes == 0)            */
  uint64_t bytes;
  uint64_t checksum;
} sr__extent;
/* Parses a unit file of layer `layer`: its extents (up to SR_CK_N, *n set), unit checksum and
 * metrics object text (malloc'd, may be NULL). SR_ERR_IO with a message when malformed. */
sr_status sr__ckpt_unit_parse(const char *text, size_t len, const char *name, int layer,
                              sr__extent *ext, int *n, uint64_t *unit_sum, char **metrics);

/* The snapshot image of `data` (file_bytes long) given every completed raw extent: malloc'd in
 * *img. Rank 0, after the file was closed. */
sr_status sr__ckpt_snapshot_build(const char *data, uint64_t file_bytes, const sr__extent *raw,
                                  int nraw, uint8_t **img, size_t *img_len);

/* Parses and checks a snapshot image (name for messages) against the file size and the raw
 * extents it must complement: the ranges and the raw extents must tile [0, file_bytes).
 * On success *ranges (pairs offset, length; malloc'd) and *nranges are set and *payload points
 * into buf at the first range's bytes. */
sr_status sr__ckpt_snapshot_parse(const uint8_t *buf, size_t len, const char *name,
                                  uint64_t file_bytes, const sr__extent *raw, int nraw,
                                  uint64_t **ranges, uint64_t *nranges, const uint8_t **payload);

#endif
