/* SAM's mask decoder on AVX2 CPUs (float32): attention weights over the image positions and their products, in
 * one call, the weights never normalised in memory.
 *
 * Three of the decoder's token -> image attentions end the same way (geosam/models/fast_twoway.py's first layer
 * against the shared projections, fast_factored.py's second layer, fast_final.py's final attention): scores s
 * (N, h, T, P) -> softmax over the P positions -> per-position scalings -> products of the weights with matrices
 * of P rows: each prompt's own (its first layer's weights transposed, (P, R)) and each head's, shared by all
 * prompts (an image side projected per head, (h, P, d)), and row sums / dot products with one vector. torch runs
 * a softmax, a multiply per scaling, a copy to stack the prompts' rows of a head, and one product per matrix
 * (the products of inner size P at 46-67 GFLOP/s on an AMD EPYC Zen 4). Here each row's exponentials are
 * written once, in place of its scores, with its sums; then the products run over blocks of KB positions with
 * cpu_vec.h's 6 x 16 register tiles (6 rows of weights broadcast, a 16-wide row of the matrix loaded), rows taken
 * across heads for a prompt's matrix and across prompts for a head's; the softmax's normalisation 1 / sum_p exp is
 * applied to the results (all of them linear in the weights). The exponential is ATen's (cpu_vec.h's exp_u10); the
 * sums are associated differently from torch's: the same function up to float rounding, which
 * geosam/models/cpu_weights.py checks against torch's ops before using it.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include "cpu_vec.h"
#include "cpu_amx.h" /* geosam_softmax_products_amx */

#define KB 256 /* positions per block of the products: the matrix's block of 16 columns, packed, stays in L1 */

/* Rows of weights (or of the output) numbered r < m, at base + (r / inner) so + (r % inner) si */
typedef struct {
  int64_t inner, so, si;
} rowmap;

static inline int64_t row_at(rowmap map, int64_t r) { return (r / map.inner) * map.so + (r % map.inner) * map.si; }

/* With `wide` (CPUs with AVX-512) the 16-column panels run in 16-lane registers, 12 rows of weights a tile (one
 * register a row; two panels a tile where there are more than 16 columns: tile512x2): each output the same FMA
 * chain over the block's positions as tile_rows', then added to the output as there, so the same bits
 * (geosam/models/cpu_weights.py checks that before using them); twice the work per FMA where the FMA units are 512
 * bits wide (Intel's server CPUs, AMD's Zen 5). */
#define T512 __attribute__((target("avx512f,fma")))
#define WROWS 12

static inline __attribute__((always_inline)) T512 void tile512(const float* const* a, const float* panel, int64_t kn,
                                                               float* const* out, int add, const int rows) {
  __m512 acc[WROWS];
#pragma GCC unroll 12
  for (int r = 0; r < WROWS; r++) acc[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kn; k++) {
    const __m512 b = _mm512_loadu_ps(panel + k * 16);
#pragma GCC unroll 12
    for (int r = 0; r < WROWS; r++)
      if (r < rows) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r][k]), b, acc[r]);
  }
#pragma GCC unroll 12
  for (int r = 0; r < WROWS; r++)
    if (r < rows) _mm512_storeu_ps(out[r], add ? _mm512_add_ps(_mm512_loadu_ps(out[r]), acc[r]) : acc[r]);
}

/* tile512 with its row count known at compile time */
static T512 void tile512_rows(const float* const* a, const float* panel, int64_t kn, float* const* out, int add,
                              int rows) {
  switch (rows) {
#define W_CASE(r) case r: tile512(a, panel, kn, out, add, r); break;
    W_CASE(12) W_CASE(11) W_CASE(10) W_CASE(9) W_CASE(8) W_CASE(7) W_CASE(6) W_CASE(5) W_CASE(4) W_CASE(3) W_CASE(2)
    default: W_CASE(1)
#undef W_CASE
  }
}

/* tile512 over two panels at once (32 columns: 14 loads per 24 FMAs, not 13 per 12), the second's lanes outside
 * `m1` (8 columns of a last half panel) masked: each output the same chain as tile512's, the same bits */
static inline __attribute__((always_inline)) T512 void tile512x2(const float* const* a, const float* p0,
                                                                 const float* p1, __mmask16 m1, int64_t kn,
                                                                 float* const* out, int add, const int rows) {
  __m512 acc0[WROWS], acc1[WROWS];
#pragma GCC unroll 12
  for (int r = 0; r < WROWS; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kn; k++) {
    const __m512 b0 = _mm512_loadu_ps(p0 + k * 16), b1 = _mm512_maskz_loadu_ps(m1, p1 + k * 16);
#pragma GCC unroll 12
    for (int r = 0; r < WROWS; r++)
      if (r < rows) {
        const __m512 x = _mm512_set1_ps(a[r][k]);
        acc0[r] = _mm512_fmadd_ps(x, b0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(x, b1, acc1[r]);
      }
  }
#pragma GCC unroll 12
  for (int r = 0; r < WROWS; r++)
    if (r < rows) {
      _mm512_storeu_ps(out[r], add ? _mm512_add_ps(_mm512_loadu_ps(out[r]), acc0[r]) : acc0[r]);
      _mm512_mask_storeu_ps(out[r] + 16, m1, add ? _mm512_add_ps(_mm512_maskz_loadu_ps(m1, out[r] + 16), acc1[r]) : acc1[r]);
    }
}

/* tile512x2 with its row count known at compile time */
static T512 void tile512x2_rows(const float* const* a, const float* p0, const float* p1, __mmask16 m1, int64_t kn,
                                float* const* out, int add, int rows) {
  switch (rows) {
#define W_CASE(r) case r: tile512x2(a, p0, p1, m1, kn, out, add, r); break;
    W_CASE(12) W_CASE(11) W_CASE(10) W_CASE(9) W_CASE(8) W_CASE(7) W_CASE(6) W_CASE(5) W_CASE(4) W_CASE(3) W_CASE(2)
    default: W_CASE(1)
#undef W_CASE
  }
}

/* one block of kb positions, from k0, of out rows (m of them, ncols each, a multiple of 8) (+)= weights rows x b
 * (rows sb apart); rows of e and out by their maps; `pack` holds the block's columns in panels of 16 when sb is not
 * 16; with `next`, the following block's rows of b are prefetched meanwhile; `wide`: full 16-column panels by
 * tile512 */
static void product_block(const float* e, rowmap em, int64_t m, int64_t k0, int64_t kb, const float* b, int64_t sb,
                          int64_t ncols, float* out, rowmap om, float* pack, int next, int wide) {
  const int packed = sb != 16;
  if (packed) /* the block's rows (sb apart: one sequential stream) into panels of 16 columns, [panel][k][16] */
    for (int64_t k = 0; k < kb; k++) {
      const float* src = b + (k0 + k) * sb;
      if (next)
        for (int64_t c = 0; c < ncols; c += 16) _mm_prefetch((const char*)(src + KB * sb + c), _MM_HINT_T0);
      for (int64_t c = 0; c < ncols; c += 8)
        _mm256_storeu_ps(pack + (c / 16) * KB * 16 + k * 16 + c % 16, _mm256_loadu_ps(src + c));
    }
  for (int64_t c = 0; c < ncols; c += 16) {
    const int full = ncols - c >= 16; /* else an 8-column panel */
    const float* panel = packed ? pack + (c / 16) * KB * 16 : b + k0 * sb + c;
    const int two = wide && packed && ncols - c > 16; /* two panels a tile (tile512x2), the second whole or half */
    if (wide && (full || two)) {
      const __mmask16 m1 = ncols - c >= 32 ? (__mmask16)0xFFFF : (__mmask16)0xFF;
      for (int64_t r = 0; r < m; r += WROWS) {
        const int rows = m - r < WROWS ? (int)(m - r) : WROWS;
        const float* er[WROWS];
        float* orow[WROWS];
        for (int i = 0; i < rows; i++) {
          er[i] = e + row_at(em, r + i) + k0;
          orow[i] = out + row_at(om, r + i) + c;
        }
        if (two)
          tile512x2_rows(er, panel, panel + KB * 16, m1, kb, orow, k0 > 0, rows);
        else
          tile512_rows(er, panel, kb, orow, k0 > 0, rows);
      }
      c += two ? 16 : 0;
      continue;
    }
    for (int64_t r = 0; r < m; r += 6) {
      const int rows = m - r < 6 ? (int)(m - r) : 6;
      const float* er[6];
      float* orow[6];
      for (int i = 0; i < rows; i++) {
        er[i] = e + row_at(em, r + i) + k0;
        orow[i] = out + row_at(om, r + i) + c;
      }
      tile_rows(er, panel, 16, kb, orow, k0 > 0, rows, full);
    }
  }
}

/* out rows (m, ncols each) times invz at each row's place in the weights (zm) */
static void scale_rows(float* out, rowmap om, int64_t m, int64_t ncols, const float* invz, rowmap zm) {
  for (int64_t r = 0; r < m; r++) {
    const __m256 z = _mm256_set1_ps(invz[row_at(zm, r)]);
    float* o = out + row_at(om, r);
    for (int64_t c = 0; c < ncols; c += 8) _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_loadu_ps(o + c), z));
  }
}

/* prompt_rows' exponentials of one row from k0 to k1, 16 positions a step (`wide`): each 8-lane half added to the
 * running sums in turn, so the same bits as 8 positions a step; returns where the 8-lane loop goes on (a tail of 8) */
static T512 int64_t exp_row512(float* row, int64_t k0, int64_t k1, float mx, const float* sc, const float* yv,
                               __m256* z, __m256* sum1, __m256* ya) {
  const __m512 m = _mm512_set1_ps(mx);
  int64_t k = k0;
  for (; k + 16 <= k1; k += 16) {
    __m512 e = exp_u10_512(_mm512_sub_ps(_mm512_loadu_ps(row + k), m));
    *z = _mm256_add_ps(_mm256_add_ps(*z, low8(e)), high8(e));
    if (sc) e = _mm512_mul_ps(e, _mm512_loadu_ps(sc + k));
    const __m256 lo = low8(e), hi = high8(e);
    *sum1 = _mm256_add_ps(_mm256_add_ps(*sum1, lo), hi);
    if (yv) *ya = _mm256_fmadd_ps(hi, _mm256_loadu_ps(yv + k + 8), _mm256_fmadd_ps(lo, _mm256_loadu_ps(yv + k), *ya));
    _mm512_storeu_ps(row + k, e);
  }
  return k;
}

/* One prompt's rt rows of scores (p each, from s): per block of KB positions their exponentials (running sums in
 * acc: 3 vectors a row; exp_row512 with `wide`), then that block's products with x1 and (after scale2) x2 while it
 * is in L1 / L2, x1's and x2's next blocks prefetched meanwhile. See geosam_softmax_products. */
static void prompt_rows(float* s, int64_t rt, int64_t p, const float* sc, const float* yv, const float* x1, int64_t r1,
                        float* out1, const float* sc2, const float* x2, int64_t r2, float* out2, float* invz,
                        float* out_sum, float* out_y, float* acc, float* mx, float* pack, int wide) {
  for (int64_t i = 0; i < rt; i++) {
    const float* row = s + i * p;
    __m256 m = _mm256_set1_ps(-__builtin_inff());
    for (int64_t k = 0; k < p; k += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(row + k));
    mx[i] = reduce_max(m);
    for (int j = 0; j < 24; j++) acc[24 * i + j] = 0.0f;
  }
  const rowmap em = {1, p, 0};
  for (int64_t k0 = 0; k0 < p; k0 += KB) {
    const int64_t kb = p - k0 < KB ? p - k0 : KB;
    const int next = k0 + KB < p;
    for (int64_t i = 0; i < rt; i++) {
      float* row = s + i * p;
      if (next) prefetch_l2(row + k0 + KB, (k0 + 2 * KB < p ? k0 + 2 * KB : p) - k0 - KB); /* the row's next block */
      const __m256 m = _mm256_set1_ps(mx[i]);
      __m256 z = _mm256_loadu_ps(acc + 24 * i), sum1 = _mm256_loadu_ps(acc + 24 * i + 8);
      __m256 ya = _mm256_loadu_ps(acc + 24 * i + 16);
      for (int64_t k = wide ? exp_row512(row, k0, k0 + kb, mx[i], sc, yv, &z, &sum1, &ya) : k0; k < k0 + kb; k += 8) {
        __m256 e = exp_u10(_mm256_sub_ps(_mm256_loadu_ps(row + k), m));
        z = _mm256_add_ps(z, e);
        if (sc) e = _mm256_mul_ps(e, _mm256_loadu_ps(sc + k));
        sum1 = _mm256_add_ps(sum1, e);
        if (yv) ya = _mm256_fmadd_ps(e, _mm256_loadu_ps(yv + k), ya);
        _mm256_storeu_ps(row + k, e);
      }
      _mm256_storeu_ps(acc + 24 * i, z);
      _mm256_storeu_ps(acc + 24 * i + 8, sum1);
      _mm256_storeu_ps(acc + 24 * i + 16, ya);
    }
    if (x1) product_block(s, em, rt, k0, kb, x1, r1, r1, out1, (rowmap){1, r1, 0}, pack, next, wide);
    if (sc2)
      for (int64_t i = 0; i < rt; i++) {
        float* row = s + i * p;
        for (int64_t k = k0; k < k0 + kb; k += 8)
          _mm256_storeu_ps(row + k, _mm256_mul_ps(_mm256_loadu_ps(row + k), _mm256_loadu_ps(sc2 + k)));
      }
    if (x2) product_block(s, em, rt, k0, kb, x2, r2, r2, out2, (rowmap){1, r2, 0}, pack, next, wide);
  }
  for (int64_t i = 0; i < rt; i++) {
    const float inv = 1.0f / reduce_add(_mm256_loadu_ps(acc + 24 * i));
    invz[i] = inv;
    if (out_sum) out_sum[i] = reduce_add(_mm256_loadu_ps(acc + 24 * i + 8)) * inv;
    if (out_y) out_y[i] = reduce_add(_mm256_loadu_ps(acc + 24 * i + 16)) * inv;
  }
  const rowmap flat = {1, 1, 0};
  if (x1) scale_rows(out1, (rowmap){1, r1, 0}, rt, r1, invz, flat);
  if (x2) scale_rows(out2, (rowmap){1, r2, 0}, rt, r2, invz, flat);
}

/* scores s (n, nh, nt, p) contiguous, p a multiple of 8, overwritten by exp(s - row max) scale1 (scale2). With the
 * softmax's weights w = exp / sum_p exp:
 *   out_sum (n, nh nt):  sum_p w scale1                     (if given)
 *   out_y (n, nh nt):    sum_p w scale1 y[n, p]             (if y given)
 *   out1 (n, nh nt, r1): w scale1 x1[n] (x1 (n, p, r1))     (if x1 given)
 *   out2 (n, nh nt, r2): w scale1 scale2 x2[n]              (if x2 given)
 *   outv (n, nh, nt, dv): w scale1 scale2 v[h] (v (nh, p, dv), each head's for every prompt)  (if v given)
 * scale1, scale2, y: (n, p) or NULL; r1, r2, dv multiples of 8; wide: the products' 16-column panels in AVX-512
 * registers (tile512). Returns 0, -1 for bad sizes, -2 out of memory. */
int geosam_softmax_products(float* s, int64_t n, int64_t nh, int64_t nt, int64_t p, const float* scale1,
                            const float* y, float* out_sum, float* out_y, const float* x1, int64_t r1, float* out1,
                            const float* scale2, const float* x2, int64_t r2, float* out2, const float* v, int64_t dv,
                            float* outv, int threads, int wide) {
  if (p % 8 || (x1 && r1 % 8) || (x2 && r2 % 8) || (v && dv % 8) || n < 1 || nh < 1 || nt < 1) return -1;
  if (!x1) r1 = 0;
  if (!x2) r2 = 0;
  if (!v) dv = 0;
  const int64_t rows = n * nh * nt, rt = nh * nt;
  float* invz = malloc(sizeof(float) * (size_t)rows);
  if (invz == NULL) return -2;
  int failed = 0;
  const int64_t wmax = (r1 > r2 ? (r1 > dv ? r1 : dv) : (r2 > dv ? r2 : dv)) + 15; /* packed panels' columns */
  const int64_t npack = KB * 16 * (wmax / 16);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    float* buf = thread_buffer((size_t)(npack + 25 * rt), &failed); /* packed panels, 3 running sums and a max a row */
#pragma omp for schedule(static)
    for (int64_t j = 0; j < n; j++) {
      if (buf == NULL) continue;
      prompt_rows(s + j * rt * p, rt, p, scale1 ? scale1 + j * p : NULL, y ? y + j * p : NULL,
                  x1 ? x1 + j * p * r1 : NULL, r1, out1 ? out1 + j * rt * r1 : NULL, scale2 ? scale2 + j * p : NULL,
                  x2 ? x2 + j * p * r2 : NULL, r2, out2 ? out2 + j * rt * r2 : NULL, invz + j * rt,
                  out_sum ? out_sum + j * rt : NULL, out_y ? out_y + j * rt : NULL, buf + npack, buf + npack + 24 * rt,
                  buf, wide);
    }
    if (v) {
#pragma omp for schedule(static)
      for (int64_t h = 0; h < nh; h++) {
        if (buf == NULL) continue;
        /* head h's rows of every prompt: (j, t) at ((j nh + h) nt + t) */
        const rowmap em = {nt, rt * p, p}, om = {nt, rt * dv, dv}, zm = {nt, rt, 1};
        for (int64_t k0 = 0; k0 < p; k0 += KB)
          product_block(s + h * nt * p, em, n * nt, k0, p - k0 < KB ? p - k0 : KB, v + h * p * dv, dv, dv,
                        outv + h * nt * dv, om, buf, k0 + KB < p, wide);
        scale_rows(outv + h * nt * dv, om, n * nt, dv, invz + h * nt, zm);
      }
    }
    free(buf);
  }
  free(invz);
  return failed ? -2 : 0;
}

/* The same softmax and products for the bf16 dtype on AMX tiles (Intel Xeon with AMX; SAM's final attention, whose
 * masks bf16 products leave as they are: benchmarks/check_final_scores_bf16.py): per prompt, each row's maximum,
 * then per chunk of WA_CHUNK positions the rows' exponentials (exp_u10_512) and their sums in float32, the weights
 * w1 = e scale1 and w2 = w1 scale2 rounded to bf16 as the left operands, the chunk's rows of x1 and x2 (rounded) as
 * right ones (amx_pack_right), and every head's v (rounded, packed once per call); the products accumulate in
 * float32 tiles (w1 x1, w2 x2, w2 v: each row tile g heads x nt tokens, as cpu_heads.c's final scores, so that the
 * group's heads' values make one right operand, of which each head's rows keep their own columns), normalised by
 * the exponentials' sums at the end. Outputs as geosam_softmax_products' (no y); s is only read. p a multiple of
 * 32, nt <= 16, dv a multiple of 16. Returns 0, 1 where the shapes do not fit, 2 if out of memory. */
#define WA_CHUNK 256
#if GEOSAM_AMX
/* acc (16 rows `sa` floats apart, nt tiles of 16 columns) += a (16 rows of kn bf16, `la` apart) times nt panels of
 * kn / 2 pairs (panel t at panel + t ps), four output tiles at a time: tiles 0-3 the accumulators, 4 the left
 * operand, 5 the right */
static TAMX void wa_product(const uint16_t* a, int64_t la, int64_t kn, const uint16_t* panel, int64_t ps, int64_t nt,
                            float* acc, int64_t sa) {
  const int64_t sb = 4 * sa;
  for (int64_t t0 = 0; t0 < nt; t0 += 4) {
    const int64_t m = nt - t0 < 4 ? nt - t0 : 4;
    float* o = acc + 16 * t0;
    const uint16_t* pt[4];
    for (int64_t j = 0; j < 4; j++) pt[j] = panel + (t0 + (j < m ? j : 0)) * ps;
    _tile_loadd(0, o, sb);
    if (m > 1) _tile_loadd(1, o + 16, sb);
    if (m > 2) _tile_loadd(2, o + 32, sb);
    if (m > 3) _tile_loadd(3, o + 48, sb);
    for (int64_t q = 0; q < kn / 32; q++) {
      _tile_loadd(4, a + 32 * q, 2 * la);
      _tile_loadd(5, pt[0] + 512 * q, 64);
      _tile_dpbf16ps(0, 4, 5);
      if (m > 1) {
        _tile_loadd(5, pt[1] + 512 * q, 64);
        _tile_dpbf16ps(1, 4, 5);
      }
      if (m > 2) {
        _tile_loadd(5, pt[2] + 512 * q, 64);
        _tile_dpbf16ps(2, 4, 5);
      }
      if (m > 3) {
        _tile_loadd(5, pt[3] + 512 * q, 64);
        _tile_dpbf16ps(3, 4, 5);
      }
    }
    _tile_stored(0, o, sb);
    if (m > 1) _tile_stored(1, o + 16, sb);
    if (m > 2) _tile_stored(2, o + 32, sb);
    if (m > 3) _tile_stored(3, o + 48, sb);
  }
}

TAMX int geosam_softmax_products_amx(const float* s, int64_t n, int64_t nh, int64_t nt, int64_t p, const float* scale1,
                                     float* out_sum, const float* x1, int64_t r1, float* out1, const float* scale2,
                                     const float* x2, int64_t r2, float* out2, const float* v, int64_t dv, float* outv,
                                     int threads) {
  if (p % 32 || nt < 1 || nt > 16 || n < 1 || nh < 1 || (v && (dv < 16 || dv % 16)) || (x1 && r1 < 1) || (x2 && r2 < 1))
    return 1;
  const int64_t g = amx_row_group(nt, nh); /* heads per row tile, as cpu_heads.c's final scores */
  const int64_t ng = nh / g, gr = g * nt, rt = nh * nt;
  const int64_t t1 = x1 ? (r1 + 15) / 16 : 0, t2 = x2 ? (r2 + 15) / 16 : 0, tv = v ? g * dv / 16 : 0;
  const int64_t ld = 16 * (t1 + t2 + tv), kc = WA_CHUNK; /* accumulator row length; positions a chunk */
  /* every head's values, rounded and packed once: head h's panel d at vb + (h dv / 16 + d) 16 p */
  uint16_t* vb = NULL;
  if (v) {
    vb = malloc(sizeof(uint16_t) * (size_t)(nh * dv * p));
    if (vb == NULL) return 2;
    for (int64_t h = 0; h < nh; h++) amx_pack_right(v + h * p * dv, p, dv, dv, p, dv / 16, vb + h * dv * p, NULL);
  }
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    /* w1 and w2 (ng row tiles of 16 x kc bf16 each), x1's and x2's chunk packed, the accumulators, each row's 16-lane
     * sums (exponentials, w1) and maximum */
    const size_t na = (size_t)(ng * 16 * kc), nb1 = (size_t)(t1 * 16 * kc), nb2 = (size_t)(t2 * 16 * kc);
    const size_t nbf = (2 * na + nb1 + nb2 + 1) / 2; /* floats the bf16 numbers take */
    float* buf = thread_buffer(nbf + (size_t)(ng * 16 * ld + 33 * rt), &failed);
    uint16_t* const w1b = (uint16_t*)buf;
    uint16_t* const w2b = buf == NULL ? NULL : w1b + na;
    uint16_t* const b1 = buf == NULL ? NULL : w2b + na;
    uint16_t* const b2 = buf == NULL ? NULL : b1 + nb1;
    float* const acc = buf == NULL ? NULL : buf + nbf;
    float* const sums = buf == NULL ? NULL : acc + ng * 16 * ld;
    float* const mx = buf == NULL ? NULL : sums + 32 * rt;
    if (buf != NULL) {
      memset(w1b, 0, sizeof(uint16_t) * 2 * na); /* the rows past gr of each tile stay zero */
      amx_configure();
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; i++) {
      if (buf == NULL) continue;
      const float* si = s + i * rt * p;
      const float* sc1 = scale1 ? scale1 + i * p : NULL;
      const float* sc2 = scale2 ? scale2 + i * p : NULL;
      for (int64_t r = 0; r < rt; r++) {
        __m512 m = _mm512_set1_ps(-__builtin_inff());
        for (int64_t k = 0; k < p; k += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(si + r * p + k));
        mx[r] = _mm512_reduce_max_ps(m);
      }
      memset(sums, 0, sizeof(float) * (size_t)(32 * rt));
      memset(acc, 0, sizeof(float) * (size_t)(ng * 16 * ld));
      for (int64_t c0 = 0; c0 < p; c0 += kc) {
        const int64_t kn = p - c0 < kc ? p - c0 : kc;
        for (int64_t grp = 0; grp < ng; grp++)
          for (int64_t mrow = 0; mrow < gr; mrow++) {
            const int64_t r = grp * gr + mrow;
            const float* row = si + r * p;
            const __m512 m = _mm512_set1_ps(mx[r]);
            __m512 z = _mm512_loadu_ps(sums + 32 * r), z1 = _mm512_loadu_ps(sums + 32 * r + 16);
            uint16_t *o1 = w1b + (grp * 16 + mrow) * kc, *o2 = w2b + (grp * 16 + mrow) * kc;
            for (int64_t k = 0; k < kn; k += 16) {
              const __m512 e = exp_u10_512(_mm512_sub_ps(_mm512_loadu_ps(row + c0 + k), m));
              z = _mm512_add_ps(z, e);
              const __m512 w1 = sc1 ? _mm512_mul_ps(e, _mm512_loadu_ps(sc1 + c0 + k)) : e;
              z1 = _mm512_add_ps(z1, w1);
              const __m512 w2 = sc2 ? _mm512_mul_ps(w1, _mm512_loadu_ps(sc2 + c0 + k)) : w1;
              _mm256_storeu_si256((__m256i*)(o1 + k), (__m256i)_mm512_cvtneps_pbh(w1));
              _mm256_storeu_si256((__m256i*)(o2 + k), (__m256i)_mm512_cvtneps_pbh(w2));
            }
            _mm512_storeu_ps(sums + 32 * r, z);
            _mm512_storeu_ps(sums + 32 * r + 16, z1);
          }
        if (x1) amx_pack_right(x1 + (i * p + c0) * r1, kn, r1, r1, kn, t1, b1, NULL);
        if (x2) amx_pack_right(x2 + (i * p + c0) * r2, kn, r2, r2, kn, t2, b2, NULL);
        for (int64_t grp = 0; grp < ng; grp++) {
          float* ag = acc + grp * 16 * ld;
          if (x1) wa_product(w1b + grp * 16 * kc, kc, kn, b1, (kn / 2) * 32, t1, ag, ld);
          if (x2) wa_product(w2b + grp * 16 * kc, kc, kn, b2, (kn / 2) * 32, t2, ag + 16 * t1, ld);
          /* the group's heads' panels (consecutive in vb), from this chunk's pairs */
          if (v) wa_product(w2b + grp * 16 * kc, kc, kn, vb + grp * g * dv * p + (c0 / 2) * 32, 16 * p, tv,
                            ag + 16 * (t1 + t2), ld);
        }
      }
      for (int64_t grp = 0; grp < ng; grp++)
        for (int64_t mrow = 0; mrow < gr; mrow++) {
          const int64_t r = grp * gr + mrow, orow = i * rt + r;
          const float inv = 1.0f / _mm512_reduce_add_ps(_mm512_loadu_ps(sums + 32 * r));
          const float* ar = acc + (grp * 16 + mrow) * ld;
          if (out_sum) out_sum[orow] = _mm512_reduce_add_ps(_mm512_loadu_ps(sums + 32 * r + 16)) * inv;
          for (int64_t c = 0; out1 && c < r1; c++) out1[orow * r1 + c] = ar[c] * inv;
          for (int64_t c = 0; out2 && c < r2; c++) out2[orow * r2 + c] = ar[16 * t1 + c] * inv;
          const int64_t hh = mrow / nt, t = mrow % nt, h = grp * g + hh;
          for (int64_t d = 0; outv && d < dv; d++)
            outv[((i * nh + h) * nt + t) * dv + d] = ar[16 * (t1 + t2) + hh * dv + d] * inv;
        }
    }
    if (buf != NULL) amx_release();
    free(buf);
  }
  free(vb);
  return failed ? 2 : 0;
}
#else
int geosam_softmax_products_amx(const float* s, int64_t n, int64_t nh, int64_t nt, int64_t p, const float* scale1,
                                float* out_sum, const float* x1, int64_t r1, float* out1, const float* scale2,
                                const float* x2, int64_t r2, float* out2, const float* v, int64_t dv, float* outv,
                                int threads) {
  return 1;
}
#endif
