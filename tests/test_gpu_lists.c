/*
 * test_gpu_lists.c — the CUDA backend's attn_lists (work lists built on the device) against a
 * host reference split written here, and attn_fwd on device-built lists against attn_fwd on
 * the same lists from the host. Skipped (exit 77) where sr_backend_cuda() finds no device.
 *
 * Lists: random selections (Block-Sparse-like subsets in random row lengths, empty rows, the
 * dense "every causal block" form with col NULL), random owners over 1, 2, 3, 7 and 64 sources,
 * random slots; every output byte is poisoned first and the lists must match the reference
 * entry for entry (row_ptr, slot, kpos, entries and offsets per source, pairs). A column out of
 * range must fail. Attention: one source, the same entries in the same order, so the output
 * must be bit-identical to the host-list run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "kernels.h"
#include "sr_attend.h"
#include "sr_internal.h"
#include "sr_test.h"

#include <math.h>
#include <string.h>

static uint64_t rng;
static const sr_backend *gpu;

static int64_t rnd_below(int64_t n) { return (int64_t)(sr_test_next(&rng) % (uint64_t)n); }
static void *xmalloc(size_t bytes) {
  void *p = malloc(bytes > 0 ? bytes : 1);
  assert_non_null(p);
  return p;
}
static void check(sr_status st, const char *what) {
  if (st != SR_OK) fail_msg("%s: %s: %s", what, sr_strerror(st), sr_last_error());
}

typedef struct sel_case {
  int qh, kvh, nqb, bq, bk, nsrc, dense;
  int64_t nkb;
} sel_case;

typedef struct sel_world {
  sel_case c;
  int64_t *row_ptr, *qpos;
  int32_t *col, *owner, *slot_of;
} sel_world;

static void sel_build(sel_world *w, const sel_case *c) {
  *w = (sel_world){.c = *c};
  const int64_t rows = (int64_t)c->qh * c->nqb;
  w->qpos = xmalloc((size_t)c->nqb * sizeof(int64_t));
  for (int m = 0; m < c->nqb; m++) w->qpos[m] = (int64_t)m * c->bq;
  w->row_ptr = xmalloc((size_t)(rows + 1) * sizeof(int64_t));
  w->row_ptr[0] = 0;
  int64_t cap = rows * c->nkb + 1;
  w->col = xmalloc((size_t)cap * sizeof(int32_t));
  for (int64_t r = 0; r < rows; r++) {
    const int m = (int)(r % c->nqb);
    const int64_t ncausal = (w->qpos[m] + c->bq - 1) / c->bk + 1;
    const int64_t nc = ncausal < c->nkb ? ncausal : c->nkb;
    int64_t e = w->row_ptr[r];
    if (c->dense) {
      for (int64_t j = 0; j < nc; j++) w->col[e++] = (int32_t)j;
    } else if (rnd_below(12) != 0) { /* 1 row in 12 empty */
      const int keep = (int)rnd_below(10);
      for (int64_t j = 0; j < nc; j++)
        if (j == 0 || j == nc - 1 || rnd_below(10) < keep) w->col[e++] = (int32_t)j;
      for (int64_t i = e - w->row_ptr[r] - 1; i > 0; i--) { /* random order */
        const int64_t k = w->row_ptr[r] + rnd_below(i + 1);
        const int32_t t = w->col[w->row_ptr[r] + i];
        w->col[w->row_ptr[r] + i] = w->col[k];
        w->col[k] = t;
      }
    }
    w->row_ptr[r + 1] = e;
  }
  w->owner = xmalloc((size_t)c->nkb * sizeof(int32_t));
  for (int64_t j = 0; j < c->nkb; j++) w->owner[j] = (int32_t)rnd_below(c->nsrc);
  w->slot_of = xmalloc((size_t)c->kvh * (size_t)c->nkb * sizeof(int32_t));
  for (int64_t i = 0; i < (int64_t)c->kvh * c->nkb; i++)
    w->slot_of[i] = (int32_t)rnd_below((int64_t)1 << 30);
}

static void sel_free(sel_world *w) {
  free(w->row_ptr), free(w->qpos), free(w->col), free(w->owner), free(w->slot_of);
}

static sr_lists_args sel_args(const sel_world *w) {
  const sel_case *c = &w->c;
  return (sr_lists_args){.q_heads = c->qh, .group = c->qh / c->kvh, .nqb = c->nqb, .bq = c->bq,
                         .bk = c->bk, .nsrc = c->nsrc, .kv_heads = c->kvh, .nkb = c->nkb,
                         .row_ptr = w->row_ptr, .col = c->dense ? NULL : w->col,
                         .owner = w->owner, .slot_of = w->slot_of, .qpos = w->qpos};
}

/* Builds on the device and compares with the host split, byte for byte. */
static void lists_case(const sel_case *c) {
  sel_world w;
  sel_build(&w, c);
  const int64_t rows = (int64_t)c->qh * c->nqb, nnz = w.row_ptr[rows];
  const int P = c->nsrc, group = c->qh / c->kvh;
  /* Reference: per source, the row's entries from that source in the selection's order. */
  int64_t *rp = xmalloc((size_t)P * (size_t)(rows + 1) * sizeof(int64_t));
  int32_t *slot = xmalloc((size_t)(nnz + 1) * sizeof(int32_t));
  int64_t *kpos = xmalloc((size_t)(nnz + 1) * sizeof(int64_t));
  int64_t nn[SR_LISTS_MAX_SRC] = {0}, off[SR_LISTS_MAX_SRC];
  uint64_t pairs = 0;
  for (int64_t e = 0; e < nnz; e++) nn[w.owner[w.col[e]]]++;
  for (int s = 0; s < P; s++) off[s] = s ? off[s - 1] + nn[s - 1] : 0;
  for (int s = 0; s < P; s++) {
    int64_t *r_s = rp + (size_t)s * (size_t)(rows + 1), f = off[s];
    r_s[0] = 0;
    for (int64_t r = 0; r < rows; r++) {
      const int kvh = (int)(r / c->nqb) / group;
      for (int64_t e = w.row_ptr[r]; e < w.row_ptr[r + 1]; e++) {
        const int64_t j = w.col[e];
        if (w.owner[j] != s) continue;
        slot[f] = w.slot_of[(int64_t)kvh * c->nkb + j];
        kpos[f] = j * c->bk;
        pairs += (uint64_t)sr_block_pairs(w.qpos[r % c->nqb], c->bq, j * c->bk, c->bk);
        f++;
      }
      r_s[r + 1] = f - off[s];
    }
  }
  int64_t got_nn[SR_LISTS_MAX_SRC], got_off[SR_LISTS_MAX_SRC];
  for (int s = 0; s < P; s++) got_nn[s] = got_off[s] = -7;
  sr_dev_lists dl = {.nnz = got_nn, .off = got_off};
  const sr_lists_args la = sel_args(&w);
  check(gpu->attn_lists(&la, &dl), "attn_lists");
  int64_t *g_rp = xmalloc((size_t)P * (size_t)(rows + 1) * sizeof(int64_t));
  int32_t *g_slot = xmalloc((size_t)(nnz + 1) * sizeof(int32_t));
  int64_t *g_kpos = xmalloc((size_t)(nnz + 1) * sizeof(int64_t));
  memset(g_rp, 0xa5, (size_t)P * (size_t)(rows + 1) * sizeof(int64_t));
  memset(g_slot, 0xa5, (size_t)(nnz + 1) * sizeof(int32_t));
  memset(g_kpos, 0xa5, (size_t)(nnz + 1) * sizeof(int64_t));
  check(gpu->download(g_rp, dl.row_ptr, (size_t)P * (size_t)(rows + 1) * sizeof(int64_t)), "rp");
  check(gpu->download(g_slot, dl.slot, (size_t)nnz * sizeof(int32_t)), "slot");
  check(gpu->download(g_kpos, dl.kpos, (size_t)nnz * sizeof(int64_t)), "kpos");
  fprintf(stderr, "# lists: %d q-heads, %d q-blocks, %lld key blocks, %d sources, %s: %lld "
          "entries, %llu pairs\n", c->qh, c->nqb, (long long)c->nkb, P,
          c->dense ? "dense (col NULL)" : "random", (long long)nnz, (unsigned long long)pairs);
  for (int s = 0; s < P; s++)
    if (got_nn[s] != nn[s] || got_off[s] != off[s])
      fail_msg("source %d: %lld entries at %lld, expected %lld at %lld", s, (long long)got_nn[s],
               (long long)got_off[s], (long long)nn[s], (long long)off[s]);
  for (int64_t i = 0; i < (int64_t)P * (rows + 1); i++)
    if (g_rp[i] != rp[i])
      fail_msg("row_ptr of source %lld, row %lld: %lld, expected %lld", (long long)(i / (rows + 1)),
               (long long)(i % (rows + 1)), (long long)g_rp[i], (long long)rp[i]);
  for (int64_t e = 0; e < nnz; e++)
    if (g_slot[e] != slot[e] || g_kpos[e] != kpos[e])
      fail_msg("entry %lld: slot %d kpos %lld, expected slot %d kpos %lld", (long long)e,
               g_slot[e], (long long)g_kpos[e], slot[e], (long long)kpos[e]);
  if (dl.pairs != pairs)
    fail_msg("pairs %llu, expected %llu", (unsigned long long)dl.pairs, (unsigned long long)pairs);
  /* The same ids from backend memory (col_dev: a Block-Sparse selection kept on the device). */
  if (!c->dense && nnz > 0) {
    void *dcol = NULL;
    check(gpu->alloc((size_t)nnz * sizeof(int32_t), &dcol), "alloc col");
    check(gpu->upload(dcol, w.col, (size_t)nnz * sizeof(int32_t)), "upload col");
    sr_lists_args lb = la;
    lb.col = NULL;
    lb.col_dev = dcol;
    check(gpu->attn_lists(&lb, &dl), "attn_lists (col_dev)");
    memset(g_slot, 0xa5, (size_t)(nnz + 1) * sizeof(int32_t));
    memset(g_kpos, 0xa5, (size_t)(nnz + 1) * sizeof(int64_t));
    check(gpu->download(g_slot, dl.slot, (size_t)nnz * sizeof(int32_t)), "slot");
    check(gpu->download(g_kpos, dl.kpos, (size_t)nnz * sizeof(int64_t)), "kpos");
    if (memcmp(g_slot, slot, (size_t)nnz * sizeof(int32_t)) ||
        memcmp(g_kpos, kpos, (size_t)nnz * sizeof(int64_t)) || dl.pairs != pairs)
      fail_msg("lists from col_dev differ from the host split (%d sources)", P);
    gpu->free(dcol);
  }
  free(rp), free(slot), free(kpos), free(g_rp), free(g_slot), free(g_kpos);
  sel_free(&w);
}

static void test_lists_match_host(void **state) {
  (void)state;
  const int srcs[] = {1, 2, 3, 7, 64};
  for (size_t i = 0; i < sizeof srcs / sizeof srcs[0]; i++) {
    sel_case c = {.qh = 8, .kvh = 2, .nqb = 37, .bq = 64, .bk = 64, .nsrc = srcs[i], .dense = 0};
    c.nkb = 37 + rnd_below(3);
    lists_case(&c);
    c.dense = 1;
    lists_case(&c);
    /* Unequal blocks, rows far longer than a warp. */
    c = (sel_case){.qh = 4, .kvh = 1, .nqb = 9, .bq = 128, .bk = 16, .nsrc = srcs[i], .dense = 0};
    c.nkb = 72;
    lists_case(&c);
  }
}

/* A column past the last key block is refused, not written somewhere. */
static void test_lists_bad_column(void **state) {
  (void)state;
  sel_case c = {.qh = 4, .kvh = 2, .nqb = 5, .bq = 64, .bk = 64, .nsrc = 2, .dense = 0, .nkb = 5};
  sel_world w;
  sel_build(&w, &c);
  const int64_t rows = (int64_t)c.qh * c.nqb;
  int64_t r = 0;
  while (r < rows && w.row_ptr[r + 1] == w.row_ptr[r]) r++;
  assert_true(r < rows);
  w.col[w.row_ptr[r]] = (int32_t)c.nkb;
  int64_t nn[2], off[2];
  sr_dev_lists dl = {.nnz = nn, .off = off};
  const sr_lists_args la = sel_args(&w);
  sr_status st = gpu->attn_lists(&la, &dl);
  assert_int_equal(st, SR_ERR_INTERNAL);
  fprintf(stderr, "# bad column: %s\n", sr_last_error());
  sel_free(&w);
}

/* attn_fwd on device-built lists = attn_fwd on the same lists from the host, bit for bit. */
static void test_attn_on_device_lists(void **state) {
  (void)state;
  for (int dense = 0; dense < 2; dense++) {
    sel_case c = {.qh = 8, .kvh = 2, .nqb = 12, .bq = 128, .bk = 128, .nsrc = 1, .dense = dense};
    c.nkb = 12;
    sel_world w;
    sel_build(&w, &c);
    const int d = 128;
    const int64_t n = (int64_t)c.nqb * c.bq, rows = (int64_t)c.qh * c.nqb;
    for (int64_t i = 0; i < (int64_t)c.kvh * c.nkb; i++) w.slot_of[i] = (int32_t)i;
    const size_t qn = (size_t)c.qh * (size_t)n * d, kn = (size_t)c.kvh * (size_t)n * d;
    float *h = xmalloc((qn > kn ? qn : kn) * sizeof(float));
    void *q = NULL, *k = NULL, *v = NULL;
    float *out[2] = {NULL, NULL}, *lse[2] = {NULL, NULL};
    check(gpu->alloc(qn * gpu->elem_bytes, &q), "alloc");
    check(gpu->alloc(kn * gpu->elem_bytes, &k), "alloc");
    check(gpu->alloc(kn * gpu->elem_bytes, &v), "alloc");
    for (size_t i = 0; i < qn; i++) h[i] = sr_test_uniform(&rng);
    check(gpu->store(q, h, qn), "store q");
    for (size_t i = 0; i < kn; i++) h[i] = sr_test_uniform(&rng);
    check(gpu->store(k, h, kn), "store k");
    for (size_t i = 0; i < kn; i++) h[i] = sr_test_uniform(&rng);
    check(gpu->store(v, h, kn), "store v");
    /* Host lists: one source, so the selection's own entries. */
    const int64_t nnz = w.row_ptr[rows];
    int32_t *slot = xmalloc((size_t)(nnz + 1) * sizeof(int32_t));
    int64_t *kpos = xmalloc((size_t)(nnz + 1) * sizeof(int64_t));
    for (int64_t r = 0; r < rows; r++)
      for (int64_t e = w.row_ptr[r]; e < w.row_ptr[r + 1]; e++) {
        slot[e] = w.slot_of[(r / c.nqb) / (c.qh / c.kvh) * c.nkb + w.col[e]];
        kpos[e] = (int64_t)w.col[e] * c.bk;
      }
    int64_t nn[1], off[1];
    sr_dev_lists dl = {.nnz = nn, .off = off};
    const sr_lists_args la = sel_args(&w);
    check(gpu->attn_lists(&la, &dl), "attn_lists");
    float *res[2][2];
    for (int run = 0; run < 2; run++) {
      check(gpu->alloc(qn * sizeof(float), (void **)&out[run]), "alloc out");
      check(gpu->alloc((size_t)c.qh * n * sizeof(float), (void **)&lse[run]), "alloc lse");
      for (size_t i = 0; i < qn; i++) h[i] = NAN; /* poisoned */
      check(gpu->copy_in(out[run], h, qn), "poison out");
      check(gpu->copy_in(lse[run], h, (size_t)c.qh * n), "poison lse");
      sr_attn_args a = {.q_heads = c.qh, .d = d, .bq = c.bq, .bk = c.bk, .nqb = c.nqb, .nq = n,
                        .q = q, .qpos = w.qpos, .k = k, .v = v, .kv_limit = n,
                        .scale = 1.0f / sqrtf((float)d), .out = out[run], .lse = lse[run]};
      if (run == 0) {
        a.row_ptr = w.row_ptr, a.slot = slot, a.kpos = kpos;
      } else {
        a.row_ptr = dl.row_ptr, a.slot = dl.slot, a.kpos = dl.kpos;
        a.lists_dev = 1, a.nnz = nn[0];
      }
      check(gpu->attn_fwd(&a), run ? "attn_fwd (device lists)" : "attn_fwd (host lists)");
      res[run][0] = xmalloc(qn * sizeof(float));
      res[run][1] = xmalloc((size_t)c.qh * n * sizeof(float));
      check(gpu->copy_out(res[run][0], out[run], qn), "copy_out");
      check(gpu->copy_out(res[run][1], lse[run], (size_t)c.qh * n), "copy_out");
    }
    size_t nan = 0;
    for (size_t i = 0; i < qn; i++) nan += isnan(res[0][0][i]);
    if (nan) fail_msg("%zu output values never written", nan);
    if (memcmp(res[0][0], res[1][0], qn * sizeof(float)) ||
        memcmp(res[0][1], res[1][1], (size_t)c.qh * n * sizeof(float)))
      fail_msg("attention on device-built lists differs from host lists (%s)",
               dense ? "dense" : "random");
    double lists_s = -1, kernel_s = -1;
    check(gpu->event_times(&lists_s, &kernel_s), "event_times");
    fprintf(stderr, "# attn on device lists (%s, %lld entries): bit-identical; events: lists "
            "%.3f ms, kernels %.3f ms\n", dense ? "dense" : "random", (long long)nnz,
            lists_s * 1e3, kernel_s * 1e3);
    if (!(lists_s > 0 && kernel_s > 0)) fail_msg("event_times measured nothing");
    for (int run = 0; run < 2; run++) {
      gpu->free(out[run]), gpu->free(lse[run]);
      free(res[run][0]), free(res[run][1]);
    }
    gpu->free(q), gpu->free(k), gpu->free(v);
    free(h), free(slot), free(kpos);
    sel_free(&w);
  }
}

int main(void) {
  gpu = sr_backend_cuda(0);
  if (!gpu) {
    fprintf(stderr, "# test_gpu_lists: skipped: %s\n", sr_last_error());
    return 77;
  }
  rng = sr_test_seed("test_gpu_lists");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lists_match_host),
      cmocka_unit_test(test_lists_bad_column),
      cmocka_unit_test(test_attn_on_device_lists),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
