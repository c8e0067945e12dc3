/*
 * cpu_gemm.c — the lane-major kernels of the CPU backend (see cpu_internal.h): the one
 * matrix product  C[r][l] = colscale[l]*C[r][l] + sum_k A(r,k) * B[k][l]  and the
 * transpose that moves tiles between row-major and lane-major form.
 *
 * Why this shape: attention multiplies by K (S^T = K . Q^T) and by V (O^T += V^T . P^T).
 * With queries along the lanes, both read the K/V block in place as broadcast scalars, the
 * transposed Q / P tile as contiguous vectors, and keep a register tile of C. The online
 * softmax rescale of the output is the colscale vector, folded into the store.
 *
 * AVX-512 path: a register tile of RB rows x IV vectors (16 lanes each) stays in zmm
 * registers for the whole k loop. Per k step it loads IV vectors of B once and broadcasts RB
 * scalars of A, then issues RB*IV FMAs, so loads per FMA are (IV + RB) / (RB*IV) <= 0.6 for
 * the large tiles and at least 16 independent accumulators hide the FMA latency. Tile shapes
 * are compile-time constants (always_inline + literal arguments) so GCC keeps `acc` in
 * registers and unrolls the tile; rows left over are done with smaller RB.
 *
 * AVX2 path (x86 machines without AVX-512): the same register tiles on 8-lane ymm vectors, a
 * 16-lane panel = 2 vectors, tiles of up to 6 rows (12 accumulators + 2 loads + 1 broadcast of
 * the 16 ymm registers).
 *
 * Portable path: plain loops whose innermost loop runs over contiguous lanes, which GCC
 * vectorizes for whatever vector ISA -march gives it. It is the correctness fallback.
 *
 * The path is chosen at run time from the CPU's features (one binary serves every x86 machine;
 * each path is compiled with its own target attribute, whatever -march says), or forced with
 * SR_CPU_PATH=avx512|avx2|portable (tests run each path the machine has).
 */
#include "cpu_internal.h"

#include <pthread.h>
#include <stdlib.h>

/* ---- portable path ------------------------------------------------------------------------ */

static void transpose_portable(const float *src, int64_t rows, int64_t cols, int64_t lds,
                               float *dst, int64_t ldd, int64_t rows_pad, float scale,
                               const float *colscale) {
  for (int64_t c = 0; c < cols; c++) {
    const float f = colscale ? scale * colscale[c] : scale;
    float *restrict dc = dst + c * ldd;
    for (int64_t r = 0; r < rows; r++) dc[r] = src[r * lds + c] * f;
    for (int64_t r = rows; r < rows_pad; r++) dc[r] = 0.0f;
  }
}

static void gemm_portable(int64_t rows, int64_t lanes, int64_t kn, const float *a, int64_t ars,
                          int64_t aks, const float *b, int64_t ldb, float *c, int64_t ldc,
                          const float *colscale, const float *rowscale) {
  for (int64_t r = 0; r < rows; r++) {
    float *restrict cr = c + r * ldc;
    if (colscale) {
      for (int64_t l = 0; l < lanes; l++) cr[l] *= colscale[l];
    } else if (rowscale) {
      for (int64_t l = 0; l < lanes; l++) cr[l] *= rowscale[r];
    } else {
      for (int64_t l = 0; l < lanes; l++) cr[l] = 0.0f;
    }
    for (int64_t k = 0; k < kn; k++) {
      const float av = a[r * ars + k * aks];
      const float *restrict bk = b + k * ldb;
      for (int64_t l = 0; l < lanes; l++) cr[l] += av * bk[l];
    }
  }
}

#if defined(__x86_64__) || defined(__i386__)
#define SR_CPU_X86 1
#include <immintrin.h>
#define SR_T512 __attribute__((target("avx512f")))
#define SR_T256 __attribute__((target("avx2,fma")))

/* One register tile: rows [0, RB) of C, lanes [0, 16*IV). */
static inline __attribute__((always_inline)) SR_T512 void tile512(const int RB, const int IV, int64_t kn,
                                                          const float *restrict a, int64_t ars,
                                                          int64_t aks, const float *restrict b,
                                                          int64_t ldb, float *restrict c,
                                                          int64_t ldc,
                                                          const float *restrict colscale,
                                                          const float *restrict rowscale) {
  __m512 acc[16][4];
#pragma GCC unroll 16
  for (int r = 0; r < RB; r++)
#pragma GCC unroll 4
    for (int v = 0; v < IV; v++) acc[r][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kn; k++) {
    const float *bk = b + k * ldb;
    const float *ak = a + k * aks;
    __m512 bv[4];
#pragma GCC unroll 4
    for (int v = 0; v < IV; v++) bv[v] = _mm512_loadu_ps(bk + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < RB; r++) {
      const __m512 av = _mm512_set1_ps(ak[r * ars]);
#pragma GCC unroll 4
      for (int v = 0; v < IV; v++) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  /* The rescale of the previous contents is applied once per tile, not once per k. */
  if (colscale) {
    __m512 sv[4];
#pragma GCC unroll 4
    for (int v = 0; v < IV; v++) sv[v] = _mm512_load_ps(colscale + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 4
      for (int v = 0; v < IV; v++) {
        float *cp = c + r * ldc + 16 * v;
        _mm512_storeu_ps(cp, _mm512_fmadd_ps(sv[v], _mm512_loadu_ps(cp), acc[r][v]));
      }
  } else if (rowscale) {
#pragma GCC unroll 16
    for (int r = 0; r < RB; r++) {
      const __m512 sr = _mm512_set1_ps(rowscale[r]);
#pragma GCC unroll 4
      for (int v = 0; v < IV; v++) {
        float *cp = c + r * ldc + 16 * v;
        _mm512_storeu_ps(cp, _mm512_fmadd_ps(sr, _mm512_loadu_ps(cp), acc[r][v]));
      }
    }
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 4
      for (int v = 0; v < IV; v++) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
  }
}

/* Instantiations: the name says RB x IV. Register budget: RB*IV accumulators + IV loads + 1.
 * The A strides of the attention products are specialised to constants (row stride 64, 80
 * or 128 = the head dim for S = K.Q^T; row stride 1 for P.V): RB rows then address as one base
 * plus immediate offsets, instead of RB live address registers that spill at RB = 16. */
#define SR_TILE_FN(RB, IV)                                                                     \
  static SR_T512 void tile_##RB##x##IV(int64_t kn, const float *a, int64_t ars, int64_t aks,          \
                               const float *b, int64_t ldb, float *c, int64_t ldc,           \
                               const float *cs, const float *rs) {                           \
    if (aks == 1 && ars == 64)                                                                 \
      tile512(RB, IV, kn, a, 64, 1, b, ldb, c, ldc, cs, rs);                                   \
    else if (aks == 1 && ars == 80)                                                            \
      tile512(RB, IV, kn, a, 80, 1, b, ldb, c, ldc, cs, rs);                                   \
    else if (aks == 1 && ars == 128)                                                           \
      tile512(RB, IV, kn, a, 128, 1, b, ldb, c, ldc, cs, rs);                                  \
    else if (ars == 1)                                                                         \
      tile512(RB, IV, kn, a, 1, aks, b, ldb, c, ldc, cs, rs);                                  \
    else                                                                                       \
      tile512(RB, IV, kn, a, ars, aks, b, ldb, c, ldc, cs, rs);                                \
  }
SR_TILE_FN(6, 4)
SR_TILE_FN(4, 4)
SR_TILE_FN(2, 4)
SR_TILE_FN(1, 4)
SR_TILE_FN(8, 3)
SR_TILE_FN(4, 3)
SR_TILE_FN(2, 3)
SR_TILE_FN(1, 3)
SR_TILE_FN(12, 2)
SR_TILE_FN(8, 2)
SR_TILE_FN(4, 2)
SR_TILE_FN(2, 2)
SR_TILE_FN(1, 2)
SR_TILE_FN(16, 1)
SR_TILE_FN(8, 1)
SR_TILE_FN(4, 1)
SR_TILE_FN(2, 1)
SR_TILE_FN(1, 1)
#undef SR_TILE_FN

typedef void (*tile_fn)(int64_t, const float *, int64_t, int64_t, const float *, int64_t,
                        float *, int64_t, const float *, const float *);

/* Row tiles per lane-vector count IV (index IV-1), largest first, terminated by rb 0.
 * The largest tile is chosen so that common row counts (16, 32, 64, 80, 128) need few
 * leftover tiles: e.g. 64 rows with IV=4 are 10 tiles of 6 and one of 4. */
static const struct {
  int rb;
  tile_fn fn;
} tiles[4][6] = {
    {{16, tile_16x1}, {8, tile_8x1}, {4, tile_4x1}, {2, tile_2x1}, {1, tile_1x1}, {0, NULL}},
    {{12, tile_12x2}, {8, tile_8x2}, {4, tile_4x2}, {2, tile_2x2}, {1, tile_1x2}, {0, NULL}},
    {{8, tile_8x3}, {4, tile_4x3}, {2, tile_2x3}, {1, tile_1x3}, {0, NULL}, {0, NULL}},
    {{6, tile_6x4}, {4, tile_4x4}, {2, tile_2x4}, {1, tile_1x4}, {0, NULL}, {0, NULL}},
};

static SR_T512 void gemm_avx512(int64_t rows, int64_t lanes, int64_t kn, const float *a,
                                int64_t ars, int64_t aks, const float *b, int64_t ldb, float *c,
                                int64_t ldc, const float *colscale, const float *rowscale) {
  /* Lanes in panels of at most 64 (4 vectors); rows within a panel so that the B panel
   * (kn x 64 floats) is reused from L1 by every row tile. */
  for (int64_t l0 = 0; l0 < lanes; l0 += 64) {
    const int iv = (int)((lanes - l0 >= 64 ? 64 : lanes - l0) / 16);
    const float *bp = b + l0;
    float *cp = c + l0;
    const float *sp = colscale ? colscale + l0 : NULL;
    int64_t r = 0;
    for (int t = 0; tiles[iv - 1][t].rb > 0; t++) {
      const int rb = tiles[iv - 1][t].rb;
      for (; rows - r >= rb; r += rb)
        tiles[iv - 1][t].fn(kn, a + r * ars, ars, aks, bp, ldb, cp + r * ldc, ldc, sp,
                            rowscale ? rowscale + r : NULL);
    }
  }
}

/*
 * 16x16 transpose in registers: three rounds of shuffles (within 128-bit lanes, then of
 * 128-bit lanes twice), 64 shuffles per 256 floats, versus a strided scalar copy that costs
 * about one cycle per element and showed up as ~10% of a sparse row at k = 3 blocks.
 */
static inline SR_T512 void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; i++) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; i++) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

static SR_T512 void transpose_avx512(const float *src, int64_t rows, int64_t cols, int64_t lds,
                                     float *dst, int64_t ldd, int64_t rows_pad, float scale,
                                     const float *colscale) {
  for (int64_t r0 = 0; r0 < rows_pad; r0 += 16) {
    const int64_t nr = rows - r0 < 16 ? (rows - r0 > 0 ? rows - r0 : 0) : 16;
    const int64_t nw = rows_pad - r0 < 16 ? rows_pad - r0 : 16;
    const __mmask16 wmask = (__mmask16)((1u << nw) - 1u);
    for (int64_t c0 = 0; c0 < cols; c0 += 16) {
      const int64_t nc = cols - c0 < 16 ? cols - c0 : 16;
      const __mmask16 cmask = (__mmask16)((1u << nc) - 1u);
      __m512 r[16];
      for (int64_t i = 0; i < 16; i++)
        r[i] = i < nr ? _mm512_maskz_loadu_ps(cmask, src + (r0 + i) * lds + c0)
                      : _mm512_setzero_ps();
      transpose16(r);
      for (int64_t j = 0; j < nc; j++) {
        const float f = colscale ? scale * colscale[c0 + j] : scale;
        _mm512_mask_storeu_ps(dst + (c0 + j) * ldd + r0, wmask,
                              _mm512_mul_ps(r[j], _mm512_set1_ps(f)));
      }
    }
  }
}

/* ---- AVX2 + FMA path ------------------------------------------------------------------------ */

/* One register tile: rows [0, RB) of C, lanes [0, 8*IV), IV <= 2. */
static inline __attribute__((always_inline)) SR_T256 void tile256(
    const int RB, const int IV, int64_t kn, const float *restrict a, int64_t ars, int64_t aks,
    const float *restrict b, int64_t ldb, float *restrict c, int64_t ldc,
    const float *restrict colscale, const float *restrict rowscale) {
  __m256 acc[6][2];
#pragma GCC unroll 6
  for (int r = 0; r < RB; r++)
#pragma GCC unroll 2
    for (int v = 0; v < IV; v++) acc[r][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kn; k++) {
    const float *bk = b + k * ldb;
    const float *ak = a + k * aks;
    __m256 bv[2];
#pragma GCC unroll 2
    for (int v = 0; v < IV; v++) bv[v] = _mm256_loadu_ps(bk + 8 * v);
#pragma GCC unroll 6
    for (int r = 0; r < RB; r++) {
      const __m256 av = _mm256_broadcast_ss(ak + r * ars);
#pragma GCC unroll 2
      for (int v = 0; v < IV; v++) acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < RB; r++)
#pragma GCC unroll 2
    for (int v = 0; v < IV; v++) {
      float *cp = c + r * ldc + 8 * v;
      if (colscale)
        _mm256_storeu_ps(cp, _mm256_fmadd_ps(_mm256_load_ps(colscale + 8 * v), _mm256_loadu_ps(cp),
                                             acc[r][v]));
      else if (rowscale)
        _mm256_storeu_ps(cp, _mm256_fmadd_ps(_mm256_set1_ps(rowscale[r]), _mm256_loadu_ps(cp),
                                             acc[r][v]));
      else
        _mm256_storeu_ps(cp, acc[r][v]);
    }
}

/* Tile instantiations, A strides specialised as for AVX-512 (head dims 64, 80, 128; P.V). */
#define SR_TILE256_FN(RB)                                                                      \
  static SR_T256 void t256_##RB(int64_t kn, const float *a, int64_t ars, int64_t aks,          \
                                const float *b, int64_t ldb, float *c, int64_t ldc,           \
                                const float *cs, const float *rs) {                           \
    if (aks == 1 && ars == 64)                                                                 \
      tile256(RB, 2, kn, a, 64, 1, b, ldb, c, ldc, cs, rs);                                    \
    else if (aks == 1 && ars == 80)                                                            \
      tile256(RB, 2, kn, a, 80, 1, b, ldb, c, ldc, cs, rs);                                    \
    else if (aks == 1 && ars == 128)                                                           \
      tile256(RB, 2, kn, a, 128, 1, b, ldb, c, ldc, cs, rs);                                   \
    else if (ars == 1)                                                                         \
      tile256(RB, 2, kn, a, 1, aks, b, ldb, c, ldc, cs, rs);                                   \
    else                                                                                       \
      tile256(RB, 2, kn, a, ars, aks, b, ldb, c, ldc, cs, rs);                                 \
  }
SR_TILE256_FN(6)
SR_TILE256_FN(4)
SR_TILE256_FN(2)
SR_TILE256_FN(1)
#undef SR_TILE256_FN

static SR_T256 void gemm_avx2(int64_t rows, int64_t lanes, int64_t kn, const float *a,
                              int64_t ars, int64_t aks, const float *b, int64_t ldb, float *c,
                              int64_t ldc, const float *colscale, const float *rowscale) {
  static const struct {
    int rb;
    tile_fn fn;
  } t256[] = {{6, t256_6}, {4, t256_4}, {2, t256_2}, {1, t256_1}};
  /* Panels of 16 lanes (2 vectors): the B panel (kn x 16 floats) stays in L1 for every row tile. */
  for (int64_t l0 = 0; l0 < lanes; l0 += 16) {
    const float *bp = b + l0;
    float *cp = c + l0;
    const float *sp = colscale ? colscale + l0 : NULL;
    int64_t r = 0;
    for (int t = 0; t < 4; t++)
      for (; rows - r >= t256[t].rb; r += t256[t].rb)
        t256[t].fn(kn, a + r * ars, ars, aks, bp, ldb, cp + r * ldc, ldc, sp,
                   rowscale ? rowscale + r : NULL);
  }
}

/* The portable transpose, compiled for AVX2 (GCC vectorizes its lane loops). */
static SR_T256 void transpose_avx2(const float *src, int64_t rows, int64_t cols, int64_t lds,
                                   float *dst, int64_t ldd, int64_t rows_pad, float scale,
                                   const float *colscale) {
  for (int64_t c = 0; c < cols; c++) {
    const float f = colscale ? scale * colscale[c] : scale;
    float *restrict dc = dst + c * ldd;
    for (int64_t r = 0; r < rows; r++) dc[r] = src[r * lds + c] * f;
    for (int64_t r = rows; r < rows_pad; r++) dc[r] = 0.0f;
  }
}
#endif /* x86 */

/* ---- the path, chosen once ------------------------------------------------------------------ */

typedef void (*gemm_fn)(int64_t, int64_t, int64_t, const float *, int64_t, int64_t, const float *,
                        int64_t, float *, int64_t, const float *, const float *);
typedef void (*transpose_fn)(const float *, int64_t, int64_t, int64_t, float *, int64_t, int64_t,
                             float, const float *);
static struct {
  const char *name;
  gemm_fn gemm;
  transpose_fn transpose;
} g_path = {"portable", gemm_portable, transpose_portable};
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

int sr_cpu_path_supported(const char *name) {
  if (!name) return 0;
  if (strcmp(name, "portable") == 0) return 1;
#ifdef SR_CPU_X86
  __builtin_cpu_init();
  if (strcmp(name, "avx512") == 0) return __builtin_cpu_supports("avx512f");
  if (strcmp(name, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return 0;
}

static void choose_path(void) {
  const char *want = getenv("SR_CPU_PATH");
  const char *order[3] = {"avx512", "avx2", "portable"};
  const char *pick = "portable";
  if (want && *want && sr_cpu_path_supported(want)) pick = want;
  else
    for (int i = 0; i < 3; i++)
      if (sr_cpu_path_supported(order[i])) {
        pick = order[i];
        break;
      }
#ifdef SR_CPU_X86
  if (strcmp(pick, "avx512") == 0) {
    g_path.name = "avx512", g_path.gemm = gemm_avx512, g_path.transpose = transpose_avx512;
    return;
  }
  if (strcmp(pick, "avx2") == 0) {
    g_path.name = "avx2", g_path.gemm = gemm_avx2, g_path.transpose = transpose_avx2;
    return;
  }
#endif
  g_path.name = "portable", g_path.gemm = gemm_portable, g_path.transpose = transpose_portable;
}

const char *sr_cpu_kernel_path(void) {
  pthread_once(&g_once, choose_path);
  return g_path.name;
}

void sr__cpu_gemm_lanes(int64_t rows, int64_t lanes, int64_t kn, const float *a, int64_t ars,
                        int64_t aks, const float *b, int64_t ldb, float *c, int64_t ldc,
                        const float *colscale, const float *rowscale) {
  pthread_once(&g_once, choose_path);
  g_path.gemm(rows, lanes, kn, a, ars, aks, b, ldb, c, ldc, colscale, rowscale);
}

void sr__cpu_transpose(const float *src, int64_t rows, int64_t cols, int64_t lds, float *dst,
                       int64_t ldd, int64_t rows_pad, float scale, const float *colscale) {
  pthread_once(&g_once, choose_path);
  g_path.transpose(src, rows, cols, lds, dst, ldd, rows_pad, scale, colscale);
}
