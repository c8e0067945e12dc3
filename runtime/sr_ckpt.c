/*
 * sr_ckpt.c — per-layer checkpoints of the output, resume, signals (sr_ckpt.h is the contract,
 * docs/CHECKPOINT.md the user's view; checksums and the file formats are in sr_ckpt_format.c).
 *
 * Invariants:
 *   - data.h5 is closed (flushed with MPI_File_sync) before a layer is recorded, and is only
 *     ever reopened for the next layer; the raw data of a completed layer is never written
 *     again. So every byte of the file below its recorded size is either raw data of a
 *     completed layer (covered by a checksum in its unit file) or in the snapshot.
 *   - Files of the checkpoint directory are written whole to ".<name>.tmp", synced, and renamed;
 *     the manifest is renamed last and names everything else by name and checksum. A reader
 *     never trusts a file the manifest does not vouch for.
 *   - All file-system work is rank 0's; its status is agreed (sr_comm_agree) before any rank
 *     goes on, so a failure leaves every rank on the same path. The checksum verification of a
 *     resume is spread over all ranks (each reads its share of the granules) and combined by
 *     an MPI_Allreduce sum, like the checksums themselves.
 *   - Messages are one line naming the file and what to do.
 */
#include "sr_ckpt.h"
#include "sr_internal.h"

#include <cjson/cJSON.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SR_CKPT_FORMAT "sparsering-checkpoint-1" /* also in sr_ckpt_format.c */
#define SR_MAX_JSON_BYTES (64u << 20) /* a manifest or unit file larger than this is damage */
#define SR_VERIFY_CHUNK (16u << 20)   /* bytes read at a time when verifying                */

/* ---------------------------------------------------------------------------------------------
 * Signals and failpoints
 * ------------------------------------------------------------------------------------------- */

static volatile sig_atomic_t sr__signal;

static void on_signal(int sig) { sr__signal = sig; }

void sr_ckpt_signals_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART; /* MPI and HDF5 system calls continue; the run checks the flag */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
}

int sr_ckpt_signal_pending(void) { return (int)sr__signal; }
void sr_ckpt_signal_raise(int sig) { sr__signal = sig; }

/* "point[:layer[:rank]]" into its parts; an absent or negative field matches any value. */
static void parse_point(const char *spec, char *point, size_t n, long *layer, long *rank) {
  *layer = *rank = -1;
  snprintf(point, n, "%s", spec);
  char *colon = strchr(point, ':');
  if (!colon) return;
  *colon = '\0';
  char *rest = colon + 1, *c2 = strchr(rest, ':');
  if (c2) {
    *c2 = '\0';
    *rank = strtol(c2 + 1, NULL, 10);
  }
  if (*rest) *layer = strtol(rest, NULL, 10);
}

static bool point_is(const char *want, long want_layer, long want_rank, const char *point,
                     int layer, int rank) {
  return want[0] && strcmp(want, point) == 0 && (want_layer < 0 || want_layer == layer) &&
         (want_rank < 0 || want_rank == rank);
}

/* SR_TEST_HOLD: this rank stops at the point until it has received SIGTERM / SIGUSR1 or the
 * test removed its marker file "sr_hold.<rank>" (in the working directory), which it creates on
 * arrival, holding its process id (written whole, then renamed: a reader never sees it half
 * written). A test thus signals a run at a known place, after a known event, instead of after a
 * guessed sleep (which fails on a loaded machine). Gives up after 120 s. */
static void hold(int rank) {
  char name[32], tmp[40], pid[24];
  snprintf(name, sizeof name, "sr_hold.%d", rank);
  snprintf(tmp, sizeof tmp, "%s.tmp", name);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  bool ok = write(fd, pid, (size_t)len) == len;
  close(fd);
  if (!ok || rename(tmp, name) != 0) {
    unlink(tmp);
    return;
  }
  for (int i = 0; i < 12000 && !sr__signal && access(name, F_OK) == 0; i++) {
    struct timespec ts = {0, 10 * 1000000L}; /* a signal ends the sleep at once (EINTR) */
    nanosleep(&ts, NULL);
  }
  unlink(name);
}

void sr_ckpt_point(const char *point, int layer, int rank) {
  static int init;
  static long delay_ms;
  static char crash[64], held[64];
  static long crash_layer = -1, crash_rank = -1, hold_layer = -1, hold_rank = -1;
  if (!init) {
    init = 1;
    const char *d = getenv("SR_TEST_DELAY_MS"), *c = getenv("SR_TEST_CRASH"),
               *h = getenv("SR_TEST_HOLD");
    delay_ms = d ? strtol(d, NULL, 10) : 0;
    if (c && *c) parse_point(c, crash, sizeof crash, &crash_layer, &crash_rank);
    if (h && *h) parse_point(h, held, sizeof held, &hold_layer, &hold_rank);
  }
  if (delay_ms > 0) {
    struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
  }
  if (point_is(held, hold_layer, hold_rank, point, layer, rank)) hold(rank);
  if (point_is(crash, crash_layer, crash_rank, point, layer, rank)) {
    fprintf(stderr, "sparsering: test failpoint %s (layer %d, rank %d): SIGKILL\n", point, layer,
            rank);
    fflush(stderr);
    raise(SIGKILL);
  }
}

/* ---------------------------------------------------------------------------------------------
 * Small file helpers (rank 0)
 * ------------------------------------------------------------------------------------------- */

static char *join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *s = malloc(n);
  if (s) snprintf(s, n, "%s/%s", dir, name);
  return s;
}

static void fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY);
  if (fd >= 0) {
    fsync(fd); /* best effort: some file systems refuse it on directories */
    close(fd);
  }
}

static sr_status write_all(int fd, const void *buf, size_t len, off_t off, const char *name) {
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t w = off >= 0 ? pwrite(fd, p, len, off) : write(fd, p, len);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0)
      return sr__seterr(SR_ERR_IO, "%s: write failed: %s", name,
                        w < 0 ? strerror(errno) : "no progress");
    p += w;
    len -= (size_t)w;
    if (off >= 0) off += w;
  }
  return SR_OK;
}

/* Writes `name` in dir atomically: ".<name>.tmp", fsync, rename. The caller syncs the dir. */
static sr_status write_atomic(const char *dir, const char *name, const void *data, size_t len) {
  char tmpname[128];
  snprintf(tmpname, sizeof tmpname, ".%s.tmp", name);
  char *tmp = join(dir, tmpname), *dst = join(dir, name);
  sr_status st = SR_OK;
  if (!tmp || !dst) {
    st = sr__seterr(SR_ERR_NOMEM, "out of memory (checkpoint path)");
    goto done;
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    st = sr__seterr(SR_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    goto done;
  }
  st = write_all(fd, data, len, -1, tmp);
  if (st == SR_OK && fsync(fd) != 0)
    st = sr__seterr(SR_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
  if (close(fd) != 0 && st == SR_OK)
    st = sr__seterr(SR_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
  if (st == SR_OK && rename(tmp, dst) != 0)
    st = sr__seterr(SR_ERR_IO, "%s: cannot rename to %s: %s", tmp, dst, strerror(errno));
  if (st != SR_OK) unlink(tmp);
done:
  free(tmp);
  free(dst);
  return st;
}

/* Reads a whole small file (at most max bytes) into a NUL-terminated buffer. */
static sr_status read_small(const char *path, size_t max, char **out, size_t *len) {
  *out = NULL;
  *len = 0;
  int fd = open(path, O_RDONLY);
  if (fd < 0) return sr__seterr(SR_ERR_IO, "%s: %s", path, strerror(errno));
  struct stat sb;
  sr_status st = SR_OK;
  if (fstat(fd, &sb) != 0)
    st = sr__seterr(SR_ERR_IO, "%s: %s", path, strerror(errno));
  else if ((uint64_t)sb.st_size > max)
    st = sr__seterr(SR_ERR_IO, "%s: %lld bytes, larger than a checkpoint file can be", path,
                    (long long)sb.st_size);
  char *buf = st == SR_OK ? malloc((size_t)sb.st_size + 1) : NULL;
  if (st == SR_OK && !buf) st = sr__seterr(SR_ERR_NOMEM, "out of memory reading %s", path);
  if (st == SR_OK) st = sr__ckpt_read_all(fd, buf, (size_t)sb.st_size, 0, path);
  close(fd);
  if (st != SR_OK) {
    free(buf);
    return st;
  }
  buf[sb.st_size] = '\0';
  *out = buf;
  *len = (size_t)sb.st_size;
  return SR_OK;
}

/* Is `name` one the checkpoint writes (so that removing the directory never deletes a file a
 * user put there)? */
static int ours(const char *name) {
  size_t n = strlen(name);
  if (strcmp(name, "data.h5") == 0 || strcmp(name, "manifest.json") == 0 ||
      strcmp(name, "data.h5.reserve") == 0)
    return 1;
  if (strncmp(name, "unit-", 5) == 0 && n > 10 && strcmp(name + n - 5, ".json") == 0) return 1;
  if (strncmp(name, "snap-", 5) == 0 && n > 9 && strcmp(name + n - 4, ".bin") == 0) return 1;
  if (name[0] == '.' && n > 5 && strcmp(name + n - 4, ".tmp") == 0) return 1;
  return 0;
}

/* Removes the checkpoint directory: the manifest first (so that an interrupted removal never
 * leaves a manifest naming missing files), then the rest of our files, then the directory. */
static sr_status remove_dir(const char *dir) {
  char *m = join(dir, "manifest.json");
  if (!m) return sr__seterr(SR_ERR_NOMEM, "out of memory (checkpoint path)");
  if (unlink(m) != 0 && errno != ENOENT) {
    sr_status st = sr__seterr(SR_ERR_IO, "%s: cannot remove: %s", m, strerror(errno));
    free(m);
    return st;
  }
  free(m);
  fsync_dir(dir);
  DIR *d = opendir(dir);
  if (!d) return errno == ENOENT ? SR_OK : sr__seterr(SR_ERR_IO, "%s: %s", dir, strerror(errno));
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!ours(e->d_name)) continue;
    char *p = join(dir, e->d_name);
    if (p) unlink(p);
    free(p);
  }
  closedir(d);
  if (rmdir(dir) != 0 && errno != ENOENT)
    return sr__seterr(SR_ERR_IO, "%s: cannot remove the checkpoint directory: %s", dir,
                      strerror(errno));
  return SR_OK;
}

/* A run killed between publishing <path> and removing its checkpoint leaves the directory
 * without data.h5: nothing in it is needed any more. */
void sr_ckpt_tidy(const char *path) {
  struct stat sb, db;
  size_t n = strlen(path) + sizeof ".partial.d/data.h5";
  char *dir = malloc(n), *data = malloc(n);
  if (dir && data) {
    snprintf(dir, n, "%s.partial.d", path);
    snprintf(data, n, "%s.partial.d/data.h5", path);
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && lstat(dir, &db) == 0 &&
        S_ISDIR(db.st_mode) && stat(data, &db) != 0 && errno == ENOENT)
      remove_dir(dir);
  }
  free(dir);
  free(data);
}

/* ---------------------------------------------------------------------------------------------
 * The checkpoint
 * ------------------------------------------------------------------------------------------- */

struct sr_ckpt {
  MPI_Comm comm;
  int rank, nranks;
  char *path, *dir, *data;
  sr_ckpt_opts o; /* scalars; the strings below are owned copies          */
  char *backend, *hdf5, *result_yaml, *stored_config, *input_path;
  sr_h5_out *h5;
  int units_done;
  /* Rank 0: everything recorded about completed layers. */
  sr__extent *ext;     /* [layers][SR_CK_N]; bytes 0 = no storage                */
  unsigned *present;   /* [layers] SR_CK_* bits written                          */
  uint64_t *unit_hash; /* [layers] XXH64 of each unit file                       */
  char **metrics;      /* [layers] metrics JSON object text                      */
  uint64_t file_bytes;
  double cost_s, resume_s;
  uint64_t cost_bytes, resume_bytes;
  /* The layer closed by sr_ckpt_unit_end and not yet recorded: its data is made durable by a
   * thread on every rank (fsync of data.h5) while the next layer computes; sr_ckpt_settle
   * joins it and records the layer. */
  struct {
    int layer; /* -1: none */
    bool threaded; /* else the sync ran in sr_ckpt_unit_end (no thread could be made) */
    pthread_t thread;
    sr__extent ext[SR_CK_N];
    sr_ckpt_sums sums;
    char *metrics;
    /* set by the thread */
    int err;        /* errno of a failed open / fstat / fsync, 0 if none */
    const char *op; /* which of them failed */
    uint64_t size;  /* st_size of data.h5 after the sync */
  } pend;
};

static void ckpt_free(sr_ckpt *c) {
  if (!c) return;
  free(c->pend.metrics);
  if (c->metrics)
    for (int l = 0; l < c->o.layers; l++)
      free(c->metrics[l]);
  free(c->metrics);
  free(c->unit_hash);
  free(c->present);
  free(c->ext);
  free(c->backend);
  free(c->hdf5);
  free(c->result_yaml);
  free(c->stored_config);
  free(c->input_path);
  free(c->path);
  free(c->dir);
  free(c->data);
  if (c->comm != MPI_COMM_NULL) MPI_Comm_free(&c->comm);
  free(c);
}

int sr_ckpt_units_done(const sr_ckpt *c) { return c ? c->units_done : 0; }
const char *sr_ckpt_stored_config(const sr_ckpt *c) { return c ? c->stored_config : NULL; }
const char *sr_ckpt_dir(const sr_ckpt *c) { return c ? c->dir : ""; }
const char *sr_ckpt_unit_metrics(const sr_ckpt *c, int layer) {
  if (!c || c->rank != 0 || !c->metrics || layer < 0 || layer >= c->units_done) return NULL;
  return c->metrics[layer];
}
void sr_ckpt_resume_cost(const sr_ckpt *c, double *seconds, uint64_t *bytes) {
  *seconds = c ? c->resume_s : 0;
  *bytes = c ? c->resume_bytes : 0;
}
void sr_ckpt_cost(const sr_ckpt *c, double *seconds, uint64_t *bytes) {
  *seconds = c ? c->cost_s : 0;
  *bytes = c ? c->cost_bytes : 0;
}

/* The first key whose line differs between two result YAML texts, as "key: a in the checkpoint,
 * b now" (the texts list the same keys in the same order: both come from sr_config_to_yaml). */
static void first_difference(const char *a, const char *b, char *buf, size_t n) {
  char stack[8][64];
  snprintf(buf, n, "the configuration differs");
  while (*a && *b) {
    size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
    int ind = 0;
    while (a[ind] == ' ')
      ind++;
    const char *colon = memchr(a + ind, ':', la - (size_t)ind);
    int lvl = ind / 2;
    if (colon && lvl < 8)
      snprintf(stack[lvl], sizeof stack[lvl], "%.*s", (int)(colon - a - ind), a + ind);
    if (la != lb || memcmp(a, b, la) != 0) {
      char key[8 * 64 + 8] = "";
      for (int l = 0; l <= lvl && l < 8 && colon; l++)
        snprintf(key + strlen(key), sizeof key - strlen(key), "%s%s", l ? "." : "", stack[l]);
      const char *va = colon ? colon + 1 : a, *vb = memchr(b, ':', lb);
      vb = vb ? vb + 1 : b;
      while (*va == ' ')
        va++;
      while (*vb == ' ')
        vb++;
      snprintf(buf, n, "%s: %.*s in the checkpoint, %.*s now", key[0] ? key : "a key",
               (int)(a + la - va > 60 ? 60 : a + la - va), va,
               (int)(b + lb - vb > 60 ? 60 : b + lb - vb), vb);
      return;
    }
    a += la + (a[la] == '\n');
    b += lb + (b[lb] == '\n');
  }
}

/* Rank 0: is the run the checkpoint was made by the same as this one? */
static sr_status check_identity(const sr_ckpt *c, const sr__manifest *m, const char *mname) {
  const sr_ckpt_opts *o = &c->o;
  if (strcmp(m->version, sr_version()) != 0)
    return sr__seterr(SR_ERR_USAGE,
                      "%s: checkpoint written by sparsering %s, this is %s: resume "
                      "with the same version, or start over with -f",
                      c->dir, m->version, sr_version());
  if (strcmp(m->hdf5, c->hdf5) != 0)
    return sr__seterr(SR_ERR_USAGE,
                      "%s: checkpoint written with HDF5 %s, this run has %s: "
                      "resume with the same library, or start over with -f",
                      c->dir, m->hdf5, c->hdf5);
  if (m->ranks != c->nranks)
    return sr__seterr(SR_ERR_USAGE,
                      "%s: checkpoint written by %d ranks, this run has %d: resume "
                      "with %d ranks (results are bit-identical only on the same rank count)",
                      c->dir, m->ranks, c->nranks, m->ranks);
  if (strcmp(m->backend, c->backend) != 0)
    return sr__seterr(SR_ERR_USAGE,
                      "%s: checkpoint computed on the %s backend, this run uses %s: "
                      "resume with backend: %s",
                      c->dir, m->backend, c->backend, m->backend);
  if (m->result_hash != o->result_hash) {
    char diff[400];
    first_difference(m->result_yaml, c->result_yaml, diff, sizeof diff);
    return sr__seterr(SR_ERR_CONFIG,
                      "%s: checkpoint computed with another configuration (%s): "
                      "resume with the same result-affecting keys, or start over with -f",
                      c->dir, diff);
  }
  if (m->input_fp != o->input_fp)
    return sr__seterr(SR_ERR_CONFIG,
                      "%s: not the input the checkpoint in %s was computed from "
                      "(fingerprint 0x%016" PRIx64 " there, 0x%016" PRIx64 " now)",
                      c->input_path ? c->input_path : "synthetic input", c->dir, m->input_fp,
                      o->input_fp);
  if (m->layers != o->layers || m->q_heads != o->q_heads || m->seq_len != o->seq_len ||
      m->head_dim != o->head_dim || m->block_q != o->block_q)
    return sr__ckpt_bad_file(mname, "geometry disagrees with its own configuration");
  return SR_OK;
}

/* Rank 0: reads and checks the unit files of the completed layers into c. */
static sr_status load_units(sr_ckpt *c, const sr__manifest *m) {
  for (int l = 0; l < m->units_done; l++) {
    char name[64];
    snprintf(name, sizeof name, "unit-%06d.json", l);
    char *p = join(c->dir, name), *text = NULL;
    size_t len = 0;
    sr_status st = p ? read_small(p, SR_MAX_JSON_BYTES, &text, &len)
                     : sr__seterr(SR_ERR_NOMEM, "out of memory (checkpoint path)");
    if (st == SR_OK && sr_xxh64(text, len, 0) != m->unit_hash[l])
      st = sr__ckpt_bad_file(p, "checksum differs from the manifest's");
    sr__extent ext[SR_CK_N];
    int n = 0;
    uint64_t usum = 0;
    if (st == SR_OK) st = sr__ckpt_unit_parse(text, len, p, l, ext, &n, &usum, &c->metrics[l]);
    if (st == SR_OK) {
      uint64_t d[SR_CK_N] = {0};
      c->present[l] = 0;
      for (int i = 0; i < n; i++) {
        c->ext[(size_t)l * SR_CK_N + ext[i].kind] = ext[i];
        c->present[l] |= 1u << ext[i].kind;
        d[ext[i].kind] = ext[i].checksum;
        if (ext[i].offset + ext[i].bytes > m->file_bytes)
          st = sr__ckpt_bad_file(p, "an extent passes the end of data.h5");
      }
      if (st == SR_OK && sr__ckpt_unit_checksum(d, l) != usum)
        st = sr__ckpt_bad_file(p, "unit checksum");
      c->unit_hash[l] = m->unit_hash[l];
    }
    free(text);
    free(p);
    if (st != SR_OK) return st;
  }
  return SR_OK;
}

/* Rank 0: puts data.h5 back to its state when the last completed layer was closed. */
static sr_status restore(sr_ckpt *c, const sr__manifest *m) {
  char *sp = join(c->dir, m->snapshot), *img = NULL;
  size_t len = 0;
  uint64_t *ranges = NULL, nr = 0;
  const uint8_t *pay = NULL;
  int fd = -1;
  sr_status st = sp ? read_small(sp, (size_t)m->snapshot_bytes, &img, &len)
                    : sr__seterr(SR_ERR_NOMEM, "out of memory (checkpoint path)");
  if (st == SR_OK && (len != m->snapshot_bytes || sr_xxh64(img, len, 0) != m->snapshot_hash))
    st = sr__ckpt_bad_file(sp, "size or checksum differs from the manifest's");
  if (st == SR_OK)
    st = sr__ckpt_snapshot_parse((const uint8_t *)img, len, sp, m->file_bytes, c->ext,
                                 m->units_done * SR_CK_N, &ranges, &nr, &pay);
  struct stat sb;
  if (st == SR_OK) {
    if ((fd = open(c->data, O_RDWR)) < 0)
      st = sr__seterr(SR_ERR_IO, "%s: %s: the checkpoint cannot be resumed; start over with -f",
                      c->data, strerror(errno));
    else if (fstat(fd, &sb) != 0)
      st = sr__seterr(SR_ERR_IO, "%s: %s", c->data, strerror(errno));
    else if ((uint64_t)sb.st_size < m->file_bytes)
      st = sr__seterr(SR_ERR_IO,
                      "%s: %lld bytes, the checkpoint needs %" PRIu64 " (truncated); "
                      "start over with -f",
                      c->data, (long long)sb.st_size, m->file_bytes);
  }
  /* Truncate first (what a later session appended goes), then write the metadata back. */
  if (st == SR_OK && ftruncate(fd, (off_t)m->file_bytes) != 0)
    st = sr__seterr(SR_ERR_IO, "%s: cannot truncate: %s", c->data, strerror(errno));
  for (uint64_t i = 0; st == SR_OK && i < nr; i++) {
    st = write_all(fd, pay, (size_t)ranges[2 * i + 1], (off_t)ranges[2 * i], c->data);
    pay += ranges[2 * i + 1];
  }
  if (st == SR_OK && fsync(fd) != 0)
    st = sr__seterr(SR_ERR_IO, "%s: fsync failed: %s", c->data, strerror(errno));
  if (fd >= 0) close(fd);
  free(ranges);
  free(img);
  free(sp);
  return st;
}

/* Collective. Re-verifies the checksums of the raw data of every completed layer, reading the
 * bytes of data.h5 directly; each rank takes a contiguous share of each dataset's granules. */
static sr_status verify(sr_ckpt *c) {
  const int done = c->units_done;
  const int64_t G = c->o.q_heads * (c->o.seq_len / c->o.block_q);
  const uint64_t gb_out = (uint64_t)c->o.block_q * (uint64_t)c->o.head_dim * 4;
  const uint64_t gb_lse = (uint64_t)c->o.block_q * 4;
  uint64_t *sums = calloc((size_t)done * SR_CK_N + 1, sizeof *sums);
  uint64_t *total = calloc((size_t)done * SR_CK_N + 1, sizeof *total);
  uint8_t *buf = malloc(SR_VERIFY_CHUNK);
  int64_t *indptr = malloc(sizeof *indptr * (size_t)(G + 1));
  int fd = open(c->data, O_RDONLY);
  sr_status st = SR_OK;
  if (!sums || !total || !buf || !indptr)
    st = sr__seterr(SR_ERR_NOMEM, "out of memory (verify)");
  else if (fd < 0)
    st = sr__seterr(SR_ERR_IO, "%s: %s", c->data, strerror(errno));
  uint64_t bytes_read = 0;
  const int64_t g0 = G * c->rank / c->nranks, g1 = G * (c->rank + 1) / c->nranks;
  for (int l = 0; st == SR_OK && l < done; l++) {
    for (int k = 0; st == SR_OK && k < SR_CK_N; k++) {
      const sr__extent *e = &c->ext[(size_t)l * SR_CK_N + k];
      uint64_t *sum = &sums[(size_t)l * SR_CK_N + k];
      if (!(c->present[l] & (1u << k))) continue;
      char what[96];
      snprintf(what, sizeof what, "%s (/layers/%d/%s)", c->data, l, sr_ckpt_dataset_names[k]);
      /* A CSR dataset (indices, col_indices) and its row pointer (indptr, col_indptr). */
      const int csr = k == SR_CK_INDICES || k == SR_CK_COLIDX;
      if (k == SR_CK_INDPTR || k == SR_CK_COLPTR) {
        if (c->rank != 0) continue;
        if (e->bytes != 8 * (uint64_t)(G + 1)) {
          *sum = ~e->checksum; /* a size that cannot be: reported as a mismatch below */
          continue;
        }
        st = sr__ckpt_read_all(fd, indptr, e->bytes, (off_t)e->offset, what);
        if (st == SR_OK) *sum = sr_xxh64(indptr, e->bytes, 0);
        bytes_read += e->bytes;
        continue;
      }
      /* Granule byte ranges: fixed size for out / lse; the CSR rows for indices (from indptr)
       * and col_indices (from col_indptr). */
      uint64_t gsize = k == SR_CK_OUT ? gb_out : k == SR_CK_LSE ? gb_lse : 0;
      if (csr) {
        const sr__extent *ip =
            &c->ext[(size_t)l * SR_CK_N + (k == SR_CK_INDICES ? SR_CK_INDPTR : SR_CK_COLPTR)];
        int ok = ip->bytes == 8 * (uint64_t)(G + 1);
        if (ok) st = sr__ckpt_read_all(fd, indptr, ip->bytes, (off_t)ip->offset, what);
        for (int64_t g = 0; ok && st == SR_OK && g < G; g++)
          ok = indptr[g] >= 0 && indptr[g + 1] >= indptr[g];
        ok = ok && indptr[0] == 0 && (uint64_t)indptr[G] * 4 == e->bytes;
        if (st != SR_OK) break;
        if (!ok) {
          *sum = ~e->checksum;
          continue;
        }
      } else if (e->bytes != gsize * (uint64_t)G) {
        *sum = ~e->checksum;
        continue;
      }
      int64_t g = g0;
      while (st == SR_OK && g < g1) {
        /* As many whole granules as fit in the buffer (at least one). */
        int64_t ge = g;
        uint64_t from = csr ? (uint64_t)indptr[g] * 4 : (uint64_t)g * gsize, to;
        do {
          ge++;
          to = csr ? (uint64_t)indptr[ge] * 4 : (uint64_t)ge * gsize;
        } while (ge < g1 &&
                 (csr ? (uint64_t)indptr[ge + 1] * 4 : (ge + 1) * gsize) - from <= SR_VERIFY_CHUNK);
        uint8_t *p = buf, *big = NULL;
        if (to - from > SR_VERIFY_CHUNK) {
          /* One granule larger than the buffer (a huge CSR row): read it on its own. */
          if (!(big = malloc(to - from))) {
            st = sr__seterr(SR_ERR_NOMEM, "out of memory (verify)");
            break;
          }
          p = big;
        }
        st = sr__ckpt_read_all(fd, p, to - from, (off_t)(e->offset + from), what);
        for (int64_t q = g; st == SR_OK && q < ge; q++) {
          uint64_t a = csr ? (uint64_t)indptr[q] * 4 : (uint64_t)q * gsize;
          uint64_t b = csr ? (uint64_t)indptr[q + 1] * 4 : (uint64_t)(q + 1) * gsize;
          *sum += sr_xxh64(p + (a - from), b - a, (uint64_t)q);
        }
        bytes_read += to - from;
        free(big);
        g = ge;
      }
    }
  }
  if (fd >= 0) close(fd);
  st = sr_comm_agree(c->comm, st);
  if (st == SR_OK)
    st = sr_comm_agree(c->comm, sr__mpi_check(MPI_Allreduce(sums, total, done * SR_CK_N,
                                                            MPI_UINT64_T, MPI_SUM, c->comm),
                                              "MPI_Allreduce", __FILE__, __LINE__));
  uint64_t all_read = 0;
  if (st == SR_OK)
    st = sr_comm_agree(c->comm, sr__mpi_check(MPI_Allreduce(&bytes_read, &all_read, 1, MPI_UINT64_T,
                                                            MPI_SUM, c->comm),
                                              "MPI_Allreduce", __FILE__, __LINE__));
  /* Every rank has the same totals and the same extents: the same verdict without talking. */
  for (int l = 0; st == SR_OK && l < done; l++)
    for (int k = 0; st == SR_OK && k < SR_CK_N; k++) {
      const sr__extent *e = &c->ext[(size_t)l * SR_CK_N + k];
      uint64_t got = total[(size_t)l * SR_CK_N + k];
      if ((c->present[l] & (1u << k)) && got != e->checksum)
        st = sr__seterr(SR_ERR_IO,
                        "%s: /layers/%d/%s: checksum mismatch (0x%016" PRIx64
                        " recorded, 0x%016" PRIx64 " read): the checkpoint is damaged; start "
                        "over with -f (output.overwrite) without --resume",
                        c->data, l, sr_ckpt_dataset_names[k], e->checksum, got);
    }
  c->resume_bytes = all_read;
  free(indptr);
  free(buf);
  free(total);
  free(sums);
  return st;
}

/* Rank 0: what is there, and what this run does with it. */
enum { MODE_NEW = 0, MODE_RESUME = 1 };
static sr_status decide(sr_ckpt *c, int *mode, sr__manifest *m) {
  struct stat sb;
  *mode = MODE_NEW;
  char *parent = strdup(c->path), *slash = parent ? strrchr(parent, '/') : NULL;
  if (!parent) return sr__seterr(SR_ERR_NOMEM, "out of memory (output path)");
  const char *pdir = slash ? (slash == parent ? "/" : (*slash = '\0', parent)) : ".";
  sr_status st = SR_OK;
  if (stat(pdir, &sb) != 0 || !S_ISDIR(sb.st_mode))
    st = sr__seterr(SR_ERR_IO, "%s: output directory %s (for %s)", pdir,
                    errno == ENOENT ? "does not exist" : "is not a directory", c->path);
  else if (access(pdir, W_OK | X_OK) != 0)
    st = sr__seterr(SR_ERR_IO, "%s: output directory not writable: %s", pdir, strerror(errno));
  else if (stat(c->path, &sb) == 0) {
    sr_ckpt_tidy(c->path);
    if (S_ISDIR(sb.st_mode))
      st = sr__seterr(SR_ERR_IO, "%s: output path is a directory", c->path);
    else if (!c->o.overwrite)
      st = sr__seterr(SR_ERR_EXISTS,
                      "%s: output exists%s (set output.overwrite: true or --set "
                      "output.overwrite=true)",
                      c->path, c->o.resume ? " and is complete, nothing to resume" : "");
  }
  free(parent);
  if (st != SR_OK) return st;

  if (lstat(c->dir, &sb) != 0) {
    if (errno != ENOENT) return sr__seterr(SR_ERR_IO, "%s: %s", c->dir, strerror(errno));
    return SR_OK; /* nothing there: a new checkpoint */
  }
  if (!S_ISDIR(sb.st_mode))
    return sr__seterr(SR_ERR_IO, "%s: exists and is not a checkpoint directory", c->dir);

  char *mp = join(c->dir, "manifest.json"), *text = NULL;
  size_t len = 0;
  if (!mp) return sr__seterr(SR_ERR_NOMEM, "out of memory (checkpoint path)");
  int units = 0, damaged = 0;
  if (stat(mp, &sb) == 0) {
    st = read_small(mp, SR_MAX_JSON_BYTES, &text, &len);
    if (st == SR_OK) st = sr__ckpt_manifest_parse(text, len, mp, m);
    if (st == SR_OK)
      units = m->units_done;
    else
      damaged = 1;
  }
  free(text);
  if (damaged && c->o.resume) {
    free(mp);
    return st; /* the parse message: which file, what to do */
  }
  if (c->o.resume && units > 0) {
    st = check_identity(c, m, mp);
    free(mp);
    if (st != SR_OK) return st;
    *mode = MODE_RESUME;
    return SR_OK;
  }
  free(mp);
  if ((units > 0 || damaged) && !c->o.overwrite) {
    if (damaged)
      return sr__seterr(SR_ERR_EXISTS,
                        "%s: checkpoint of an interrupted run (its manifest is "
                        "damaged): discard it with -f (output.overwrite)",
                        c->dir);
    return sr__seterr(SR_ERR_EXISTS,
                      "%s: checkpoint of an interrupted run (%d of %d layers "
                      "done): continue it with --resume, or discard it with -f "
                      "(output.overwrite)",
                      c->dir, units, m->layers);
  }
  sr__manifest_free(m);
  return remove_dir(c->dir); /* no completed layer, or discarded: start over */
}

/* Broadcasts rank 0's record of the completed layers (extents, present bits, stored config). */
static sr_status share_state(sr_ckpt *c, int *mode) {
  int hdr[2] = {*mode, c->units_done};
  sr_status st =
      sr__mpi_check(MPI_Bcast(hdr, 2, MPI_INT, 0, c->comm), "MPI_Bcast", __FILE__, __LINE__);
  if ((st = sr_comm_agree(c->comm, st)) != SR_OK) return st;
  *mode = hdr[0];
  c->units_done = hdr[1];
  if (hdr[0] != MODE_RESUME) return SR_OK;
  size_t n = (size_t)c->units_done * SR_CK_N;
  uint64_t *pack = malloc(sizeof *pack * (4 * n + (size_t)c->units_done + 1));
  int len = c->rank == 0 && c->stored_config ? (int)strlen(c->stored_config) + 1 : 0;
  st = pack ? SR_OK : sr__seterr(SR_ERR_NOMEM, "out of memory (checkpoint state)");
  if ((st = sr_comm_agree(c->comm, st)) != SR_OK) {
    free(pack);
    return st;
  }
  if (c->rank == 0) {
    for (size_t i = 0; i < n; i++) {
      pack[4 * i] = (uint64_t)c->ext[i].kind;
      pack[4 * i + 1] = c->ext[i].offset;
      pack[4 * i + 2] = c->ext[i].bytes;
      pack[4 * i + 3] = c->ext[i].checksum;
    }
    for (int l = 0; l < c->units_done; l++)
      pack[4 * n + (size_t)l] = c->present[l];
  }
  st =
      sr__mpi_check(MPI_Bcast(pack, (int)(4 * n + (size_t)c->units_done), MPI_UINT64_T, 0, c->comm),
                    "MPI_Bcast", __FILE__, __LINE__);
  if (st == SR_OK)
    st = sr__mpi_check(MPI_Bcast(&len, 1, MPI_INT, 0, c->comm), "MPI_Bcast", __FILE__, __LINE__);
  if (st == SR_OK && c->rank != 0) {
    free(c->stored_config);
    c->stored_config = calloc((size_t)len + 1, 1);
    if (!c->stored_config) st = sr__seterr(SR_ERR_NOMEM, "out of memory (checkpoint state)");
  }
  if ((st = sr_comm_agree(c->comm, st)) == SR_OK && len > 0)
    st =
        sr_comm_agree(c->comm, sr__mpi_check(MPI_Bcast(c->stored_config, len, MPI_CHAR, 0, c->comm),
                                             "MPI_Bcast", __FILE__, __LINE__));
  if (st == SR_OK && c->rank != 0) {
    for (size_t i = 0; i < n; i++)
      c->ext[i] = (sr__extent){.kind = (int)pack[4 * i],
                               .offset = pack[4 * i + 1],
                               .bytes = pack[4 * i + 2],
                               .checksum = pack[4 * i + 3]};
    for (int l = 0; l < c->units_done; l++)
      c->present[l] = (unsigned)pack[4 * n + (size_t)l];
  }
  free(pack);
  return st;
}

sr_status sr_ckpt_open(sr_ckpt **cp, MPI_Comm comm, const sr_ckpt_opts *o) {
  *cp = NULL;
  sr_ckpt *c = calloc(1, sizeof *c);
  if (c) c->pend.layer = -1;
  if (!c) return sr__seterr(SR_ERR_NOMEM, "out of memory (checkpoint)");
  c->comm = MPI_COMM_NULL;
  sr_status st = sr__mpi_check(MPI_Comm_dup(comm, &c->comm), "MPI_Comm_dup", __FILE__, __LINE__);
  if (st != SR_OK) {
    ckpt_free(c);
    return st;
  }
  MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(c->comm, &c->rank);
  MPI_Comm_size(c->comm, &c->nranks);
  c->o = *o;
  size_t plen = o->path ? strlen(o->path) : 0;
  c->path = sr__strdup(o->path);
  c->dir = malloc(plen + sizeof ".partial.d");
  if (c->dir) snprintf(c->dir, plen + sizeof ".partial.d", "%s.partial.d", o->path ? o->path : "");
  c->data = c->dir ? join(c->dir, "data.h5") : NULL;
  c->backend = sr__strdup(o->backend ? o->backend : "?");
  c->hdf5 = sr__strdup(o->hdf5_version ? o->hdf5_version : "?");
  c->result_yaml = sr__strdup(o->result_yaml ? o->result_yaml : "");
  c->stored_config = sr__strdup(o->config_yaml ? o->config_yaml : "");
  c->input_path = sr__strdup(o->input_path);
  int L = o->layers > 0 ? o->layers : 1;
  c->ext = calloc((size_t)L * SR_CK_N, sizeof *c->ext);
  c->present = calloc((size_t)L, sizeof *c->present);
  c->unit_hash = calloc((size_t)L, sizeof *c->unit_hash);
  c->metrics = calloc((size_t)L, sizeof *c->metrics);
  if (!o->path || !o->path[0])
    st = sr__seterr(SR_ERR_IO, "output path is empty");
  else if (!c->path || !c->dir || !c->data || !c->backend || !c->hdf5 || !c->result_yaml ||
           !c->stored_config || (o->input_path && !c->input_path) || !c->ext || !c->present ||
           !c->unit_hash || !c->metrics)
    st = sr__seterr(SR_ERR_NOMEM, "out of memory (checkpoint)");
  if ((st = sr_comm_agree(c->comm, st)) != SR_OK) {
    ckpt_free(c);
    return st;
  }

  /* Rank 0 looks at the file system; a resume is validated and restored there. */
  int mode = MODE_NEW;
  sr__manifest m;
  memset(&m, 0, sizeof m);
  double t0 = sr__now();
  if (c->rank == 0) {
    st = decide(c, &mode, &m);
    if (st == SR_OK && mode == MODE_RESUME) {
      c->units_done = m.units_done;
      c->file_bytes = m.file_bytes;
      free(c->stored_config);
      c->stored_config = m.config_yaml;
      m.config_yaml = NULL;
      st = load_units(c, &m);
      if (st == SR_OK) st = restore(c, &m);
      if (st == SR_OK) sr_ckpt_point("after_restore", c->units_done, c->rank);
    }
    if (st == SR_OK && mode == MODE_NEW && mkdir(c->dir, 0755) != 0)
      st = sr__seterr(SR_ERR_IO, "%s: cannot create the checkpoint directory: %s", c->dir,
                      strerror(errno));
    if (st == SR_OK && mode == MODE_NEW) {
      char *pd = strdup(c->path), *sl = pd ? strrchr(pd, '/') : NULL;
      if (pd) fsync_dir(sl ? (sl == pd ? "/" : (*sl = '\0', pd)) : ".");
      free(pd);
    }
  }
  sr__manifest_free(&m);
  if ((st = sr_comm_agree(c->comm, st)) == SR_OK) st = share_state(c, &mode);
  if (st != SR_OK) {
    ckpt_free(c);
    return st;
  }
  if (mode == MODE_RESUME) {
    st = verify(c);
    if (st == SR_OK) st = sr_h5_out_open_at(&c->h5, c->comm, c->path, c->data, o->overwrite);
    c->resume_s = sr__now() - t0;
  } else {
    st = sr_h5_out_create_at(&c->h5, c->comm, c->path, c->data, o->overwrite, o->config_yaml,
                             o->config_hash);
    if (st != SR_OK && c->rank == 0) remove_dir(c->dir);
  }
  if (c->h5) sr_h5_out_set_keep(c->h5, true);
  if (st != SR_OK) {
    /* A resume that failed its checks leaves the checkpoint as it was found. */
    ckpt_free(c);
    return st;
  }
  *cp = c;
  return SR_OK;
}

sr_status sr_ckpt_unit_begin(sr_ckpt *c, int layer, sr_h5_out **h5) {
  SR_ASSERT(c != NULL && h5 != NULL);
  *h5 = NULL;
  SR_TRY(sr_ckpt_settle(c)); /* the previous layer is recorded before the file is reopened */
  SR_ASSERT(c->h5 != NULL && layer == c->units_done && layer < c->o.layers);
  SR_TRY(sr_h5_out_reopen(c->h5));
  *h5 = c->h5;
  return SR_OK;
}

static int add_hex(cJSON *o, const char *key, uint64_t v) {
  char b[19];
  sr__ckpt_hex64(b, v);
  return cJSON_AddStringToObject(o, key, b) != NULL;
}

/* Rank 0: the unit file of layer l. */
static char *unit_json(const sr_ckpt *c, int l, const sr_ckpt_sums *s, const char *metrics) {
  cJSON *o = cJSON_CreateObject(), *ds = o ? cJSON_AddArrayToObject(o, "datasets") : NULL;
  int ok = o && ds && cJSON_AddNumberToObject(o, "layer", l) && add_hex(o, "checksum", s->unit);
  for (int k = 0; ok && k < SR_CK_N; k++) {
    if (!(s->present & (1u << k))) continue;
    const sr__extent *e = &c->ext[(size_t)l * SR_CK_N + k];
    cJSON *d = cJSON_CreateObject();
    ok = d && cJSON_AddItemToArray(ds, d) &&
         cJSON_AddStringToObject(d, "name", sr_ckpt_dataset_names[k]) &&
         cJSON_AddNumberToObject(d, "offset", (double)e->offset) &&
         cJSON_AddNumberToObject(d, "bytes", (double)e->bytes) && add_hex(d, "checksum", s->d[k]);
  }
  if (ok && metrics) {
    /* The layer's object from the run's metrics report (sr_report_json_string). */
    cJSON *mj = cJSON_Parse(metrics),
          *ls = mj ? cJSON_GetObjectItemCaseSensitive(mj, "layers") : NULL;
    cJSON *lo = cJSON_IsArray(ls) ? cJSON_DetachItemFromArray(ls, 0) : NULL;
    if (lo) cJSON_AddItemToObject(o, "metrics", lo);
    cJSON_Delete(mj);
  }
  char *text = ok ? cJSON_Print(o) : NULL;
  cJSON_Delete(o);
  return text;
}

/* Rank 0: the manifest naming layers [0, c->units_done) and the snapshot of the last one. */
static char *manifest_json(const sr_ckpt *c, uint64_t snap_bytes, uint64_t snap_hash) {
  cJSON *o = cJSON_CreateObject();
  cJSON *geo = o ? cJSON_AddObjectToObject(o, "geometry") : NULL;
  cJSON *units = o ? cJSON_AddArrayToObject(o, "units") : NULL;
  char snap[64];
  snprintf(snap, sizeof snap, "snap-%06d.bin", c->units_done - 1);
  int ok = o && geo && units && cJSON_AddStringToObject(o, "format", SR_CKPT_FORMAT) &&
           cJSON_AddStringToObject(o, "sparsering", sr_version()) &&
           cJSON_AddStringToObject(o, "hdf5", c->hdf5) &&
           cJSON_AddStringToObject(o, "backend", c->backend) &&
           cJSON_AddNumberToObject(o, "ranks", c->nranks) &&
           cJSON_AddNumberToObject(o, "layers", c->o.layers) &&
           cJSON_AddNumberToObject(o, "units_done", c->units_done) &&
           cJSON_AddNumberToObject(o, "file_bytes", (double)c->file_bytes) &&
           cJSON_AddStringToObject(o, "snapshot", snap) &&
           cJSON_AddNumberToObject(o, "snapshot_bytes", (double)snap_bytes) &&
           add_hex(o, "snapshot_hash", snap_hash) && add_hex(o, "result_hash", c->o.result_hash) &&
           add_hex(o, "input_fingerprint", c->o.input_fp) &&
           add_hex(o, "config_hash", c->o.config_hash) &&
           cJSON_AddNumberToObject(geo, "q_heads", (double)c->o.q_heads) &&
           cJSON_AddNumberToObject(geo, "seq_len", (double)c->o.seq_len) &&
           cJSON_AddNumberToObject(geo, "head_dim", (double)c->o.head_dim) &&
           cJSON_AddNumberToObject(geo, "block_q", (double)c->o.block_q) &&
           cJSON_AddStringToObject(o, "result_config", c->result_yaml) &&
           cJSON_AddStringToObject(o, "config", c->stored_config);
  for (int l = 0; ok && l < c->units_done; l++) {
    char b[19];
    sr__ckpt_hex64(b, c->unit_hash[l]);
    cJSON *h = cJSON_CreateString(b);
    ok = h && cJSON_AddItemToArray(units, h);
  }
  char *text = ok ? cJSON_Print(o) : NULL;
  cJSON_Delete(o);
  return text;
}

/* Rank 0: after layer l was closed and data.h5 synced on every rank (file_bytes: its size),
 * records it: unit file, snapshot, then the manifest. */
static sr_status record_unit(sr_ckpt *c, int l, const sr_ckpt_sums *s, const char *metrics,
                             uint64_t file_bytes, uint64_t *written) {
  char name[64];
  uint8_t *img = NULL;
  size_t img_len = 0;
  char *ujson = NULL, *mjson = NULL;
  sr_status st = SR_OK;
  *written = 0;

  if (!(ujson = unit_json(c, l, s, metrics))) {
    st = sr__seterr(SR_ERR_NOMEM, "out of memory (unit file)");
    goto done;
  }
  snprintf(name, sizeof name, "unit-%06d.json", l);
  if ((st = write_atomic(c->dir, name, ujson, strlen(ujson))) != SR_OK) goto done;
  *written += strlen(ujson);
  sr_ckpt_point("after_unit_file", l, c->rank);
  st = sr__ckpt_snapshot_build(c->data, file_bytes, c->ext, (l + 1) * SR_CK_N, &img, &img_len);
  snprintf(name, sizeof name, "snap-%06d.bin", l);
  if (st == SR_OK) st = write_atomic(c->dir, name, img, img_len);
  if (st != SR_OK) goto done;
  *written += img_len;
  fsync_dir(c->dir);
  sr_ckpt_point("after_snapshot", l, c->rank);

  /* The completion marker: the manifest naming layer l, renamed into place. */
  uint64_t prev_bytes = c->file_bytes;
  c->unit_hash[l] = sr_xxh64(ujson, strlen(ujson), 0);
  c->units_done = l + 1;
  c->file_bytes = file_bytes;
  mjson = manifest_json(c, img_len, sr_xxh64(img, img_len, 0));
  st = mjson ? write_atomic(c->dir, "manifest.json", mjson, strlen(mjson))
             : sr__seterr(SR_ERR_NOMEM, "out of memory (manifest)");
  if (st != SR_OK) {
    c->units_done = l;
    c->file_bytes = prev_bytes;
    goto done;
  }
  *written += strlen(mjson);
  fsync_dir(c->dir);
  sr_ckpt_point("after_manifest", l, c->rank);
  if (l > 0) {
    /* The previous snapshot is no longer named by the manifest. */
    snprintf(name, sizeof name, "snap-%06d.bin", l - 1);
    char *old = join(c->dir, name);
    if (old) unlink(old);
    free(old);
  }
done:
  free(mjson);
  free(ujson);
  free(img);
  return st;
}

/* The sync thread of every rank: data.h5 to storage (each rank flushes what its node wrote, as
 * MPI_File_sync does), and its size (HDF5 truncates the file to its end of allocation at close).
 * No MPI, no HDF5, no error state: the result is read by sr_ckpt_settle after the join. */
static void *sync_data(void *arg) {
  sr_ckpt *c = arg;
  struct stat sb;
  int fd = open(c->data, O_RDONLY);
  if (fd < 0) {
    c->pend.err = errno, c->pend.op = "open";
    return NULL;
  }
  if (fsync(fd) != 0)
    c->pend.err = errno, c->pend.op = "fsync";
  else if (fstat(fd, &sb) != 0)
    c->pend.err = errno, c->pend.op = "fstat";
  else
    c->pend.size = (uint64_t)sb.st_size;
  close(fd);
  return NULL;
}

sr_status sr_ckpt_unit_end(sr_ckpt *c, int layer, const sr_ckpt_sums *s, const char *metrics_json) {
  SR_ASSERT(c != NULL && c->h5 != NULL && layer == c->units_done && s != NULL);
  SR_ASSERT(c->pend.layer < 0);
  double t0 = sr__now();
  sr__extent ext[SR_CK_N];
  memset(ext, 0, sizeof ext);
  sr_status st = SR_OK;
  for (int k = 0; st == SR_OK && k < SR_CK_N; k++) {
    ext[k].kind = k;
    ext[k].checksum = s->d[k];
    if (s->present & (1u << k))
      st = sr_h5_out_extent(c->h5, layer, sr_ckpt_dataset_names[k], &ext[k].offset, &ext[k].bytes);
  }
  if (st != SR_OK) return st;
  sr_ckpt_point("before_close", layer, c->rank);
  SR_TRY(sr_h5_out_suspend(c->h5, false));
  sr_ckpt_point("after_close", layer, c->rank);
  /* The sync goes to a thread, signals blocked in it (the main thread records them). */
  memcpy(c->pend.ext, ext, sizeof ext);
  c->pend.sums = *s;
  free(c->pend.metrics);
  c->pend.metrics = metrics_json ? sr__strdup(metrics_json) : NULL;
  c->pend.err = 0;
  c->pend.op = NULL;
  c->pend.size = 0;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  c->pend.threaded = pthread_create(&c->pend.thread, NULL, sync_data, c) == 0;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  c->pend.layer = layer;
  if (!c->pend.threaded) sync_data(c);
  c->cost_s += sr__now() - t0;
  return SR_OK;
}

sr_status sr_ckpt_settle(sr_ckpt *c) {
  if (!c || c->pend.layer < 0) return SR_OK;
  double t0 = sr__now();
  const int layer = c->pend.layer;
  if (c->pend.threaded) pthread_join(c->pend.thread, NULL);
  c->pend.layer = -1;
  sr_status st = SR_OK;
  if (c->pend.err)
    st = sr__seterr(SR_ERR_IO, "%s: %s failed: %s", c->data, c->pend.op, strerror(c->pend.err));
  st = sr_comm_agree(c->comm, st);
  if (st != SR_OK) return st;
  sr_ckpt_point("after_sync", layer, c->rank);
  uint64_t written = 0;
  if (c->rank == 0) {
    memcpy(&c->ext[(size_t)layer * SR_CK_N], c->pend.ext, sizeof c->pend.ext);
    c->present[layer] = c->pend.sums.present;
    st = record_unit(c, layer, &c->pend.sums, c->pend.metrics, c->pend.size, &written);
  }
  st = sr_comm_agree(c->comm, st);
  if (st == SR_OK) {
    memcpy(&c->ext[(size_t)layer * SR_CK_N], c->pend.ext, sizeof c->pend.ext);
    c->present[layer] = c->pend.sums.present;
    c->units_done = layer + 1;
  } else if (c->rank == 0) {
    c->units_done = layer; /* the manifest still names the layers before */
  }
  free(c->pend.metrics);
  c->pend.metrics = NULL;
  c->cost_s += sr__now() - t0;
  c->cost_bytes += written;
  return st;
}

sr_status sr_ckpt_commit(sr_ckpt *c) {
  SR_ASSERT(c != NULL && c->h5 != NULL);
  sr_status sst = sr_ckpt_settle(c);
  if (sst != SR_OK) return sr_ckpt_close(c, sst);
  sr_ckpt_point("before_commit", c->units_done, c->rank);
  /* complete = 1, flush, close, and data.h5 becomes <path> (a link refuses a <path> that
   * appeared meanwhile unless overwrite). */
  sr_status st = sr_h5_out_commit(c->h5);
  c->h5 = NULL;
  if (st == SR_OK) {
    sr_ckpt_point("after_publish", c->units_done, c->rank);
    if (c->rank == 0) st = remove_dir(c->dir);
    st = sr_comm_agree(c->comm, st);
  } else {
    /* commit failed before the file was published: the checkpoint stays resumable */
    st = sr_ckpt_close(c, st);
    return st;
  }
  ckpt_free(c);
  return st;
}

sr_status sr_ckpt_close(sr_ckpt *c, sr_status st) {
  if (!c) return st;
  /* A layer closed and synced before the failure is still recorded: its work is kept. */
  if (c->pend.layer >= 0) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", sr_last_error());
    sr_status sst = sr_ckpt_settle(c);
    if (st == SR_OK) st = sst;
    else sr__seterr(st, "%s", msg); /* the first error is the one reported */
  }
  int keep = c->units_done > 0;
  if (c->h5) sr_h5_out_release(c->h5, !keep);
  c->h5 = NULL;
  if (!keep && c->rank == 0) remove_dir(c->dir);
  if (keep && st != SR_OK) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", sr_last_error());
    sr__seterr(st, "%s (checkpoint of %d of %d layers kept in %s: resume with --resume)", msg,
               c->units_done, c->o.layers, c->dir);
  }
  MPI_Barrier(c->comm);
  ckpt_free(c);
  return st;
}
