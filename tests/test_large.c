/*
 * test_large.c — the CPU attention kernel past the 32-bit boundaries, cheaply.
 *
 * One call of sr_backend_cpu()->attn_fwd with q_heads = 64, d = 8, bq = bk = 16 and
 * nq = 16385*16 - 5 query rows per head (a partial last q-block): 1,048,640 CSR rows and
 * 16,777,920 query rows in all, so flat query rows (h*nq + i) cross 2^24. Every CSR row lists
 * the same three slots {0, 2^24+1, 2^25+63} at key positions {0, 16, 32}; with bk*d = 128
 * floats per slot their element offsets are 0, 2^31 + 128 and 2^32 + 8064, past 2^31 and
 * 2^32. The K and V pools are (2^25+64) slots (16 GiB each) of MAP_NORESERVE anonymous memory
 * of which only those three slots are ever written; q is anonymous memory too, zero except a
 * few probe rows. q-block m starts at position 48 + 16m, so all 48 keys are visible to every
 * row.
 *
 * Checked for every row (out and lse poisoned with NaN first): a zero q row attends
 * uniformly, so out = the mean of the 48 V rows and lse = ln 48; the probe rows (flat rows
 * 2^24-1, 2^24, 2^24+1, the last row and a few others) equal a float64 softmax reference.
 * Tolerances 1e-5 on out, 1e-4 on lse. A kernel that computed a slot's element offset in 32
 * bits reads the wrong slot (unsigned: every row's out is wrong) or faults (signed: the
 * offset goes negative); one that indexed query rows through a float (exact only to 2^24) or
 * mixed up heads and rows misplaces the probe rows.
 *
 * Cost: ~0.65 GB resident (out, lse, the CSR lists), a few seconds on one core. Skipped (77)
 * where the 16 GiB reservations are refused (strict overcommit, a ulimit -v).
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, MAP_NORESERVE */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "kernels.h"
#include "sr_internal.h"
#include "sr_test.h"

#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#define QH 64
#define D 8
#define B 16
#define NQB 16385
#define NQ ((int64_t)NQB * B - 5)
#define NSLOT (((int64_t)1 << 25) + 64)
#define NKEYS 48
#define OUT_TOL 1e-5
#define LSE_TOL 1e-4

static const int32_t slots[3] = {0, (1 << 24) + 1, (1 << 25) + 63};
static uint64_t rng;

/* Anonymous private memory, reserved only (pages appear when touched, zero when read). */
static void *reserve(size_t bytes) {
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct big {
  float *k, *v, *q; /* reserved: NSLOT*B*D floats each; q QH*NQ*D */
  size_t pool_bytes, q_bytes;
  float *out, *lse;
  int64_t *qpos, *row_ptr, *kpos;
  int32_t *slot;
} big;

static big W;

static int setup(void **state) {
  (void)state;
  W.pool_bytes = (size_t)NSLOT * B * D * sizeof(float);
  W.q_bytes = (size_t)QH * NQ * D * sizeof(float);
  W.k = reserve(W.pool_bytes);
  W.v = reserve(W.pool_bytes);
  W.q = reserve(W.q_bytes);
  if (!W.k || !W.v || !W.q) {
    fprintf(stderr, "# test_large: skipped: cannot reserve 2 x %zu + %zu bytes of address "
                    "space (mmap MAP_NORESERVE refused: strict overcommit or ulimit -v?)\n",
            W.pool_bytes, W.q_bytes);
    exit(77);
  }
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (W.k) munmap(W.k, W.pool_bytes);
  if (W.v) munmap(W.v, W.pool_bytes);
  if (W.q) munmap(W.q, W.q_bytes);
  free(W.out), free(W.lse), free(W.qpos), free(W.row_ptr), free(W.kpos), free(W.slot);
  return 0;
}

static void *xmalloc(size_t bytes) {
  void *p = malloc(bytes);
  assert_non_null(p);
  return p;
}

/* Key j (0..47) of the row lists: row j % 16 of slot j / 16. */
static const float *key_row(const float *pool, int j) {
  return pool + ((size_t)slots[j / B] * B + (size_t)(j % B)) * D;
}

static void test_attn_past_2e31(void **state) {
  (void)state;
  const int64_t rows = (int64_t)QH * NQB, qrows = (int64_t)QH * NQ;
  assert_true(qrows > ((int64_t)1 << 24));
  assert_true((int64_t)slots[1] * B * D > ((int64_t)1 << 31));
  assert_true((int64_t)slots[2] * B * D > ((int64_t)1 << 32));
  assert_true(slots[2] < NSLOT);

  /* The three slots of K and V: fresh values. */
  for (int s = 0; s < 3; s++) {
    sr_test_fill(W.k + (size_t)slots[s] * B * D, (size_t)B * D, 1.5f, &rng);
    sr_test_fill(W.v + (size_t)slots[s] * B * D, (size_t)B * D, 1.0f, &rng);
  }
  /* Probe rows: flat q rows around 2^24, the first and last, the last row of head 0, and a
   * row in the partial last q-block of a middle head. */
  const int64_t probe[] = {0,
                           NQ - 1,
                           31 * NQ + (NQB - 1) * B + 3,
                           ((int64_t)1 << 24) - 1,
                           (int64_t)1 << 24,
                           ((int64_t)1 << 24) + 1,
                           qrows - 2,
                           qrows - 1};
  const int nprobe = (int)(sizeof probe / sizeof probe[0]);
  for (int i = 0; i < nprobe; i++) sr_test_fill(W.q + (size_t)probe[i] * D, D, 2.0f, &rng);

  /* CSR: every row lists the same three slots at key positions 0, 16, 32. */
  W.qpos = xmalloc((size_t)NQB * sizeof(int64_t));
  W.row_ptr = xmalloc((size_t)(rows + 1) * sizeof(int64_t));
  W.slot = xmalloc((size_t)rows * 3 * sizeof(int32_t));
  W.kpos = xmalloc((size_t)rows * 3 * sizeof(int64_t));
  for (int64_t m = 0; m < NQB; m++) W.qpos[m] = NKEYS + B * m;
  for (int64_t r = 0; r <= rows; r++) W.row_ptr[r] = 3 * r;
  for (int64_t e = 0; e < 3 * rows; e++) {
    W.slot[e] = slots[e % 3];
    W.kpos[e] = B * (e % 3);
  }
  W.out = xmalloc((size_t)qrows * D * sizeof(float));
  W.lse = xmalloc((size_t)qrows * sizeof(float));
  sr__poison_f32(W.out, (size_t)qrows * D);
  sr__poison_f32(W.lse, (size_t)qrows);

  const float scale = 1.0f / sqrtf((float)D);
  sr_attn_args a = {.q_heads = QH, .d = D, .bq = B, .bk = B, .nqb = NQB, .nq = NQ, .q = W.q,
                    .qpos = W.qpos, .k = W.k, .v = W.v, .row_ptr = W.row_ptr, .slot = W.slot,
                    .kpos = W.kpos, .kv_limit = NKEYS + (int64_t)B * NQB, .scale = scale,
                    .out = W.out, .lse = W.lse};
  const double t0 = now_s();
  sr_status st = sr_backend_cpu()->attn_fwd(&a);
  const double t_attn = now_s() - t0;
  if (st != SR_OK) fail_msg("attn_fwd: %s: %s", sr_strerror(st), sr_last_error());

  /* Zero q: uniform weights over the 48 keys. */
  double mean[D] = {0};
  for (int j = 0; j < NKEYS; j++)
    for (int c = 0; c < D; c++) mean[c] += key_row(W.v, j)[c] / NKEYS;
  const double lse0 = log((double)NKEYS);

  int64_t next_probe = 0, bad = 0, checked_probes = 0;
  double max_out = 0, max_lse = 0;
  for (int64_t f = 0; f < qrows; f++) {
    double want[D], want_lse;
    const int is_probe = next_probe < nprobe && probe[next_probe] == f;
    if (is_probe) {
      /* float64 softmax of the 48 scores. */
      const float *qr = W.q + (size_t)f * D;
      double s[NKEYS], mx = -INFINITY, sum = 0;
      for (int j = 0; j < NKEYS; j++) {
        const float *kr = key_row(W.k, j);
        double dot = 0;
        for (int c = 0; c < D; c++) dot += (double)qr[c] * kr[c];
        s[j] = dot * scale;
        mx = s[j] > mx ? s[j] : mx;
      }
      for (int c = 0; c < D; c++) want[c] = 0;
      for (int j = 0; j < NKEYS; j++) {
        const double p = exp(s[j] - mx);
        sum += p;
        for (int c = 0; c < D; c++) want[c] += p * key_row(W.v, j)[c];
      }
      for (int c = 0; c < D; c++) want[c] /= sum;
      want_lse = mx + log(sum);
      next_probe++;
      checked_probes++;
    } else {
      memcpy(want, mean, sizeof want);
      want_lse = lse0;
    }
    const float *o = W.out + (size_t)f * D;
    double eo = 0;
    for (int c = 0; c < D; c++) {
      const double e = fabs((double)o[c] - want[c]);
      if (!(e <= eo)) eo = e; /* NaN sticks */
    }
    const double el = fabs((double)W.lse[f] - want_lse);
    if (!(eo <= max_out)) max_out = eo;
    if (!(el <= max_lse)) max_lse = el;
    if (!(eo <= OUT_TOL) || !(el <= LSE_TOL) || is_probe) {
      if (!(eo <= OUT_TOL) || !(el <= LSE_TOL)) bad++;
      if (bad <= 8 || is_probe)
        fprintf(stderr,
                "# row %lld (head %lld, q row %lld)%s: out[0] %.7g want %.7g, max |err| %.2e; "
                "lse %.7g want %.7g%s\n",
                (long long)f, (long long)(f / NQ), (long long)(f % NQ), is_probe ? " probe" : "",
                (double)o[0], want[0], eo, (double)W.lse[f], want_lse,
                (!(eo <= OUT_TOL) || !(el <= LSE_TOL)) ? "  BAD" : "");
    }
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  fprintf(stderr,
          "# test_large: %lld CSR rows, %lld query rows, slot element offsets up to %lld: "
          "attn_fwd %.2f s, max |out err| %.2e, max |lse err| %.2e, %lld bad rows, "
          "peak RSS %.0f MB\n",
          (long long)rows, (long long)qrows, (long long)slots[2] * B * D, t_attn, max_out,
          max_lse, (long long)bad, (double)ru.ru_maxrss / 1024.0);
  assert_int_equal(checked_probes, nprobe);
  if (bad) fail_msg("%lld of %lld rows differ", (long long)bad, (long long)qrows);
}

int main(void) {
  rng = sr_test_seed("test_large");
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_attn_past_2e31)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
