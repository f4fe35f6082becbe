/* SAM's mask upscaling for one prompt on AVX2 CPUs, one block of image positions at a time, nothing written but the
 * masks.
 *
 * transformers' SamMaskDecoder turns each prompt's (h, w, C) image side into (K, 4h, 4w) mask logits with
 * upscale_conv1 (2x2, stride 2) -> LayerNorm over its C4 channels -> GELU -> upscale_conv2 (2x2, stride 2) -> GELU ->
 * the K hypernetwork vectors' dot products over C8 channels. geosam/models/fast_upscale.py runs that as torch
 * products over bands of positions; here, for a block of RB positions, the first product (given in the factored
 * form of fast_upscale._Conv1FromSharedImage: y = A B + c S; A's rows and c read from memory, or made for the block
 * from the records geosam_factor_rows makes them from: geosam_upscale_prompt_factored), the norm, both GELUs, the
 * second product and the dot products run while the block's features are in L1 / L2, and each mask pixel is written
 * once to its place
 * (4i + 2a + a2, 4j + 2b + b2). Products: 6 x 16 register tiles (cpu_vec.h), one FMA chain per output over the inner
 * dimension. GELU: 0.5 x (1 + erf(x / sqrt 2)) with Eigen's rational erf (no exp: 3 M per prompt of SAM, 0.6 vs
 * 1.3 ns each for torch's oneDNN GELU on an AMD EPYC Zen 3; error at most 5e-7 for |x| < 3, torch's 3.7e-7).
 * The same function as torch's path up to float rounding (torch's products block their sums differently, its GELU
 * is oneDNN's); geosam/models/cpu_decoder.py checks it against torch before using it. For the bf16 dtype on CPUs with
 * AVX-512 BF16 the two products take their inputs rounded to bf16 (vdpbf16ps, sums in float32: half the product
 * time); the norm, GELUs and hypernetwork dot products stay float32, the GELUs cpu_gelu.h's FAST_GELU (a polynomial
 * erf within 6e-5 of the exact GELU, no division: a prompt's upscaling 3.18 -> 2.70 ms on AMX). On CPUs with AVX-512
 * the float32 products and the GELUs run in 16-lane registers (product512, gelu512: the same bits); on CPUs with AMX
 * the bf16 dtype's two products run on AMX tiles instead (cpu_amx.h: blocks of 16 positions, the same bf16 inputs).
 * Below it: 2. the layer norms' quadratic forms, 3. the image -> token softmax over the tokens (torch's bits).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "cpu_vec.h"
#include "cpu_bf16.h"
#include "cpu_amx.h"
#include "cpu_gelu.h"

#define RB 12 /* image positions per block */

#define NO_TARGET
ERF_GELU(erf_rational, gelu, __m256, _mm256, NO_TARGET)
FAST_GELU(gelu_fast, __m256, _mm256, NO_TARGET, zero_below256)

/* for the check of the GELU alone: y = gelu(x) (gelu_fast with `fast`), n a multiple of 8 */
void geosam_gelu(const float* x, float* y, int64_t n, int fast) {
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(y + i, fast ? gelu_fast(v) : gelu(v));
  }
}

/* kp[t][k][0:16] = b[k][16 t : 16 t + 16] for a (kn, n) row-major b, n a multiple of 16 */
static void pack_panels(const float* b, int64_t kn, int64_t n, float* kp) {
  for (int64_t t = 0; t < n; t += 16)
    for (int64_t k = 0; k < kn; k++)
      for (int j = 0; j < 16; j++) kp[t * kn + k * 16 + j] = b[k * n + t + j];
}

/* out (rows x n, row-major) = x (rows x kn, rows `sx` apart) times the packed panels of a (kn, n) matrix */
static void product(const float* x, int64_t sx, int64_t rows, const float* kp, int64_t kn, int64_t n, float* out) {
  for (int64_t t = 0; t < n; t += 16)
    for (int64_t r = 0; r < rows; r += QK_ROWS)
      qk_rows(x + r * sx, sx, kp + t * kn, kn, out + r * n + t, n, (int)(rows - r < QK_ROWS ? rows - r : QK_ROWS));
}

/* The products in bf16 (AVX-512 BF16 CPUs, for the bf16 dtype), the matrix packed by cpu_bf16.h's pack_pairs with
 * (kn + 1) / 2 pairs of rows: 6 rows of a product's inputs against 4 or 2 of its panels (64 or 32 columns) */
BF16_TILE(6, 4)
BF16_TILE(6, 2)

/* `product` with x's rows and the matrix rounded to bf16 (kp: pack_pairs), sums in float32; n a multiple of 32.
 * x's rows go to xb as bf16 first (6 ceil(rows / 6) rows of kn + 1, plus 16 spare), out has room for as many rows
 * (those past `rows` are zeros) */
static TBF void product_bf16(const float* x, int64_t sx, int64_t rows, const uint16_t* kp, int64_t kn, int64_t n,
                             float* out, uint16_t* xb) {
  const int64_t k2n = (kn + 1) / 2, sxb = 2 * k2n, rows6 = (rows + 5) / 6 * 6;
  rows_to_bf16(x, sx, rows, rows6, kn, sxb, xb);
  for (int64_t t = 0; t < n; t += 64)
    for (int64_t r = 0; r < rows6; r += 6) {
      if (n - t >= 64)
        bf16_tile_6x4(xb + r * sxb, sxb, kp + t * sxb, k2n, out + r * n + t, n);
      else
        bf16_tile_6x2(xb + r * sxb, sxb, kp + t * sxb, k2n, out + r * n + t, n);
    }
}

/* The float32 products and GELUs in 16-lane registers (CPUs with AVX-512: twice the AVX2 tiles' FLOPs per cycle
 * where the FMA units are 512 bits wide, as on Intel's server CPUs and AMD's Zen 5). Each output is the same FMA
 * chain over k from zero as in `product`, each GELU the same operations lane by lane: the same bits as the AVX2
 * path, which geosam/models/cpu_decoder.py checks before using them. */
#define T512 __attribute__((target("avx512f,fma")))

/* out[r][0:16 np] = sum_k x[r][k] panel_t[k][0:16] for `rows` (<= 6) rows of x (sx apart) and np panels of
 * pack_panels (kn 16 floats apart), outputs so apart: rows np accumulators */
static inline __attribute__((always_inline)) T512 void tile512(const float* x, int64_t sx, const float* kp,
                                                               int64_t kn, float* out, int64_t so, const int rows,
                                                               const int np) {
  __m512 acc[6][4];
  _Pragma("GCC unroll 6") for (int r = 0; r < 6; r++)
    _Pragma("GCC unroll 4") for (int t = 0; t < 4; t++) acc[r][t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kn; k++) {
    __m512 v[4];
    _Pragma("GCC unroll 4") for (int t = 0; t < 4; t++) if (t < np) v[t] = _mm512_loadu_ps(kp + (t * kn + k) * 16);
    _Pragma("GCC unroll 6") for (int r = 0; r < 6; r++) if (r < rows) {
      const __m512 xr = _mm512_set1_ps(x[r * sx + k]);
      _Pragma("GCC unroll 4") for (int t = 0; t < 4; t++) if (t < np) acc[r][t] = _mm512_fmadd_ps(xr, v[t], acc[r][t]);
    }
  }
  _Pragma("GCC unroll 6") for (int r = 0; r < 6; r++) if (r < rows)
    _Pragma("GCC unroll 4") for (int t = 0; t < 4; t++) if (t < np) _mm512_storeu_ps(out + r * so + 16 * t, acc[r][t]);
}

/* tile512 with its row count and panel count (4 or 2) known at compile time */
static T512 void tile512_rows(const float* x, int64_t sx, const float* kp, int64_t kn, float* out, int64_t so,
                              int rows, int np) {
#define T5_CASE(r)                                                 \
  case r:                                                          \
    if (np == 4) tile512(x, sx, kp, kn, out, so, r, 4);            \
    else tile512(x, sx, kp, kn, out, so, r, 2);                    \
    break;
  switch (rows) { T5_CASE(6) T5_CASE(5) T5_CASE(4) T5_CASE(3) T5_CASE(2) default: T5_CASE(1) }
#undef T5_CASE
}

/* `product` in 6 x 64 (or 6 x 32) tiles of 16-lane registers; n a multiple of 32 */
static T512 void product512(const float* x, int64_t sx, int64_t rows, const float* kp, int64_t kn, int64_t n,
                            float* out) {
  for (int64_t t = 0; t < n; t += 64)
    for (int64_t r = 0; r < rows; r += 6)
      tile512_rows(x + r * sx, sx, kp + t * kn, kn, out + r * n + t, n, (int)(rows - r < 6 ? rows - r : 6),
                   n - t >= 64 ? 4 : 2);
}

ERF_GELU(erf_rational512, gelu512, __m512, _mm512, T512)
ZERO_BELOW512
FAST_GELU(gelu512_fast, __m512, _mm512, T512, zero_below512)

/* x (n, a multiple of 8): its mean and 1 / sqrt(var + eps), torch's biased variance */
static inline void norm_stats(const float* x, int64_t n, float eps, float* mean, float* rstd) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t d = 0; d < n; d += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + d));
  const float m = reduce_add(acc) / (float)n;
  const __m256 mv = _mm256_set1_ps(m);
  acc = _mm256_setzero_ps();
  for (int64_t d = 0; d < n; d += 8) {
    __m256 c = _mm256_sub_ps(_mm256_loadu_ps(x + d), mv);
    acc = _mm256_fmadd_ps(c, c, acc);
  }
  const float var = reduce_add(acc) / (float)n + eps;
  *mean = m;
  *rstd = 1.0f / _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(var)));
}

/* x[d ..] -> GELU((x - mean) rstd w + b) in place, two W-lane vectors a step (their GELUs' long chains overlap) while
 * 2 W remain before n; d is left where it stopped. mv / rv: mean and rstd broadcast; V, P: the width's vector type and
 * intrinsics' prefix; G its GELU. One body for both widths (the same operations lane by lane, so the same bits) */
#define NORM_GELU_PAIRS(V, P, W, G, x, n, w, b, mv, rv, d)                                                            \
  for (; d + 2 * W <= n; d += 2 * W) {                                                                              \
    V c0 = P##_mul_ps(P##_sub_ps(P##_loadu_ps(x + d), mv), rv);                                                     \
    V c1 = P##_mul_ps(P##_sub_ps(P##_loadu_ps(x + d + W), mv), rv);                                                 \
    c0 = G(P##_fmadd_ps(c0, P##_loadu_ps(w + d), P##_loadu_ps(b + d)));                                             \
    c1 = G(P##_fmadd_ps(c1, P##_loadu_ps(w + d + W), P##_loadu_ps(b + d + W)));                                     \
    P##_storeu_ps(x + d, c0);                                                                                       \
    P##_storeu_ps(x + d + W, c1);                                                                                   \
  }

/* x (n, a multiple of 8) -> GELU((x - mean) rstd w + b) in place; NAME with the GELU G (gelu, or gelu_fast for the
 * bf16 dtype) */
#define NORM_GELU(NAME, G)                                                                                          \
  static inline void NAME(float* x, int64_t n, const float* w, const float* b, float mean, float rstd) {           \
    const __m256 mv = _mm256_set1_ps(mean), rv = _mm256_set1_ps(rstd);                                             \
    int64_t d = 0;                                                                                                  \
    NORM_GELU_PAIRS(__m256, _mm256, 8, G, x, n, w, b, mv, rv, d)                                                    \
    for (; d < n; d += 8) {                                                                                         \
      __m256 c = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + d), mv), rv);                                     \
      _mm256_storeu_ps(x + d, G(_mm256_fmadd_ps(c, _mm256_loadu_ps(w + d), _mm256_loadu_ps(b + d))));              \
    }                                                                                                               \
  }
NORM_GELU(norm_gelu, gelu)
NORM_GELU(norm_gelu_fast, gelu_fast)

/* m rows of z (n each, a multiple of W) -> GELU(z + bias), W lanes a step: NAME with the GELU G of that width (P the
 * intrinsics' prefix, ATTR the target), one body for both widths */
#define BIAS_GELU(NAME, G, ATTR, W, P)                                                                              \
  static ATTR void NAME(float* z, int64_t m, int64_t n, const float* bias) {                                        \
    for (int64_t r = 0; r < m; r++) {                                                                               \
      float* zr = z + r * n;                                                                                        \
      for (int64_t d = 0; d < n; d += W)                                                                            \
        P##_storeu_ps(zr + d, G(P##_add_ps(P##_loadu_ps(zr + d), P##_loadu_ps(bias + d))));                        \
    }                                                                                                               \
  }
BIAS_GELU(bias_gelu_rows, gelu, NO_TARGET, 8, _mm256)
BIAS_GELU(bias_gelu_rows_fast, gelu_fast, NO_TARGET, 8, _mm256)

/* norm_gelu for m rows of y (n each) with their (mean, rstd) in stats, 16 lanes a step (two at a time); NAME with the
 * 16-lane GELU G and the 8-lane row tail TAIL (the same GELU) */
#define NORM_GELU_ROWS512(NAME, G, TAIL)                                                                            \
  static T512 void NAME(float* y, int64_t m, int64_t n, const float* w, const float* b, const float* stats) {      \
    for (int64_t r = 0; r < m; r++) {                                                                               \
      float* x = y + r * n;                                                                                         \
      const __m512 mv = _mm512_set1_ps(stats[2 * r]), rv = _mm512_set1_ps(stats[2 * r + 1]);                       \
      int64_t d = 0;                                                                                                \
      NORM_GELU_PAIRS(__m512, _mm512, 16, G, x, n, w, b, mv, rv, d)                                                 \
      if (d < n) TAIL(x + d, n - d, w + d, b + d, stats[2 * r], stats[2 * r + 1]);                                  \
    }                                                                                                               \
  }
NORM_GELU_ROWS512(norm_gelu_rows512, gelu512, norm_gelu)
NORM_GELU_ROWS512(norm_gelu_rows512_fast, gelu512_fast, norm_gelu_fast)

BIAS_GELU(bias_gelu_rows512, gelu512, T512, 16, _mm512)
BIAS_GELU(bias_gelu_rows512_fast, gelu512_fast, T512, 16, _mm512)

/* the sums of a0 .. a7's lanes: (s0, s1, s2, s3 | s4, s5, s6, s7) */
static inline __m256 reduce8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* hk (c8) . zr[q] (c8 each) for the 4 sub-pixels q of rows zr (r) and zs (r + 1), into the layout of reduce8:
 * (r q0, r q1, r+1 q0, r+1 q1 | r q2, r q3, r+1 q2, r+1 q3): the low half is 4 adjacent mask pixels of the
 * output row with a2 = 0, the high half those of the row below */
static inline __m256 hyper_pair(const float* hk, const float* zr, const float* zs, int64_t c8) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (int64_t d = 0; d < c8; d += 8) {
    const __m256 h = _mm256_loadu_ps(hk + d);
    a0 = _mm256_fmadd_ps(h, _mm256_loadu_ps(zr + d), a0);
    a1 = _mm256_fmadd_ps(h, _mm256_loadu_ps(zr + c8 + d), a1);
    a2 = _mm256_fmadd_ps(h, _mm256_loadu_ps(zs + d), a2);
    a3 = _mm256_fmadd_ps(h, _mm256_loadu_ps(zs + c8 + d), a3);
    a4 = _mm256_fmadd_ps(h, _mm256_loadu_ps(zr + 2 * c8 + d), a4);
    a5 = _mm256_fmadd_ps(h, _mm256_loadu_ps(zr + 3 * c8 + d), a5);
    a6 = _mm256_fmadd_ps(h, _mm256_loadu_ps(zs + 2 * c8 + d), a6);
    a7 = _mm256_fmadd_ps(h, _mm256_loadu_ps(zs + 3 * c8 + d), a7);
  }
  return reduce8(a0, a1, a2, a3, a4, a5, a6, a7);
}

/* The records the first product's rows A are made from (geosam_factor_rows' inputs), for an upscaling that builds
 * each block's rows itself instead of reading them from a (P, K1) matrix written before it */
typedef struct {
  int64_t nl, r;
  const float* const* pts;
  const int64_t* spt;
  const float* const* means;
  const float* const* rstds;
} factors;

/* row q of A (section 1b, geosam_factor_rows) into row (K1 = nl (r + 2) numbers); returns its c */
static inline float factor_row(const factors* f, int64_t q, float* row) {
  float c = 1.f;
  int64_t col = 0;
  for (int64_t l = f->nl - 1; l >= 0; l--) {
    c = l == f->nl - 1 ? f->rstds[l][q] : c * f->rstds[l][q];
    const float* src = f->pts[l] + q * f->spt[l];
    const __m256 cv = _mm256_set1_ps(c);
    int64_t j = 0;
    for (; j + 8 <= f->r; j += 8) _mm256_storeu_ps(row + col + j, _mm256_mul_ps(_mm256_loadu_ps(src + j), cv));
    for (; j < f->r; j++) row[col + j] = src[j] * c;
    row[col + f->r] = -(c * f->means[l][q]);
    if (l > 0) {
      row[col + f->r + 1] = c;
      col += f->r + 2;
    } else {
      col += f->r + 1;
    }
  }
  row[col] = 1.f;
  return c;
}

static int upscale(const float* a, int64_t sa, const factors* fac, int64_t k1, const float* b, const float* c,
                   const float* s, int64_t ss, const float* lnw, const float* lnb, float eps, const float* w2,
                   const float* b2, const float* hyper, int64_t nk, int64_t c4, int64_t c8, int64_t hh, int64_t ww,
                   float* out, int64_t so, int flags, int threads, const float* f1, const float* f0);

/* The masks of one prompt. Image positions P = hh * ww, row-major.
 *   a (P, k1) rows `sa` apart, b (k1, 4 c4), c (P), s (P, 4 c4) rows `ss` apart: upscale_conv1's output
 *     y = a b + c s, columns (a, b, o) for output pixel (2i + a, 2j + b), channel o < c4;
 *   lnw, lnb (c4), eps: upscale_layer_norm;
 *   w2 (c4, 4 c8): upscale_conv2 as a product, columns (a2, b2, o2), bias b2 (4 c8);
 *   hyper (nk, c8): the hypernetwork vectors;
 *   out: nk masks of (4 hh) x (4 ww), `so` floats apart;
 *   flags: 1, both products on their inputs rounded to bf16 (product_bf16; only where the CPU has AVX-512 BF16);
 *     2, the float32 products and the GELUs in AVX-512 registers (same bits; only where the CPU has AVX-512).
 *   f1 (P, 4 c4), f0 (4 P, 4 c8), or NULL: SAM 2's high-resolution features in those layouts (sub-pixel order),
 *     f1 added to the first product before the norm, f0 to the second before its GELU.
 * c4 and c8 multiples of 8. Returns 0, or -1 if out of memory (the masks then incomplete). */
int geosam_upscale_prompt(const float* a, int64_t sa, int64_t k1, const float* b, const float* c, const float* s,
                          int64_t ss, const float* lnw, const float* lnb, float eps, const float* w2, const float* b2,
                          const float* hyper, int64_t nk, int64_t c4, int64_t c8, int64_t hh, int64_t ww, float* out,
                          int64_t so, int flags, int threads, const float* f1, const float* f0) {
  return upscale(a, sa, NULL, k1, b, c, s, ss, lnw, lnb, eps, w2, b2, hyper, nk, c4, c8, hh, ww, out, so, flags, threads,
                 f1, f0);
}

/* geosam_upscale_prompt with the first product's rows A and their c made block by block from the records
 * (geosam_factor_rows' inputs: nl layers' pts (P, r) rows spt apart, means, rstds (P)), in L1, never written whole:
 * the same numbers as geosam_factor_rows then geosam_upscale_prompt (K1 = nl (r + 2)) */
int geosam_upscale_prompt_factored(int64_t nl, const float* const* pts, const int64_t* spt, const float* const* means,
                                   const float* const* rstds, int64_t r, const float* b, const float* s, int64_t ss,
                                   const float* lnw, const float* lnb, float eps, const float* w2, const float* b2,
                                   const float* hyper, int64_t nk, int64_t c4, int64_t c8, int64_t hh, int64_t ww,
                                   float* out, int64_t so, int flags, int threads, const float* f1, const float* f0) {
  const factors fac = {nl, r, pts, spt, means, rstds};
  return upscale(NULL, 0, &fac, nl * (r + 2), b, NULL, s, ss, lnw, lnb, eps, w2, b2, hyper, nk, c4, c8, hh, ww, out, so,
                 flags, threads, f1, f0);
}

static int upscale(const float* a, int64_t sa, const factors* fac, int64_t k1, const float* b, const float* c,
                   const float* s, int64_t ss, const float* lnw, const float* lnb, float eps, const float* w2,
                   const float* b2, const float* hyper, int64_t nk, int64_t c4, int64_t c8, int64_t hh, int64_t ww,
                   float* out, int64_t so, int flags, int threads, const float* f1, const float* f0) {
  /* wide: float32 in AVX-512 registers; amx: the products in bf16 on AMX tiles (bf16 implied) */
  const int amx = GEOSAM_AMX && (flags & 4) != 0, bf16 = (flags & 1) || amx, wide = (flags & 2) != 0;
  const int64_t n1 = 4 * c4, n2 = 4 * c8, npos = hh * ww, ow = 4 * ww, rb = amx ? 16 : RB;
  const int64_t ka = amx_k(k1 > c4 ? k1 : c4), xbn = amx ? 4 * rb * ka : 4 * RB * (k1 + 1 > c4 + 1 ? k1 + 1 : c4 + 1) + 16;
  const int64_t nbp = amx ? (amx_k(k1) * n1 + amx_k(c4) * n2 + 1) / 2 : (k1 + 1) * n1 + (c4 + 1) * n2;
  float* bp = malloc(sizeof(float) * (size_t)nbp);
  if (bp == NULL) return -1;
  float* w2p = bp + (k1 + 1) * n1;
  uint16_t* bpb = (uint16_t*)bp; /* bf16: the pairs of both matrices, (k1 + 1) n1 + (c4 + 1) n2 at most */
  /* pairs of rows: AMX's inner sizes padded to whole tiles (32) */
  const int64_t k2b = amx ? amx_k(k1) / 2 : (k1 + 1) / 2, k2w = amx ? amx_k(c4) / 2 : (c4 + 1) / 2;
  uint16_t* w2pb = bpb + 2 * k2b * n1;
  if (bf16) {
    pack_pairs(b, k1, n1, k2b, bpb);
    pack_pairs(w2, c4, n2, k2w, w2pb);
  } else {
    pack_panels(b, k1, n1, bp);
    pack_panels(w2, c4, n2, w2p);
  }
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    /* y (RB, n1) -> normed in place, read as (4 RB, c4) rows; z (4 RB, n2) */
    float* buf = thread_buffer((size_t)(rb * n1 + 4 * rb * n2 + 8 * rb + xbn / 2 + (fac ? rb * (k1 + 1) : 0)), &failed);
    float* y = buf;
    float* z = buf == NULL ? NULL : buf + rb * n1;
    float* stats = buf == NULL ? NULL : z + 4 * rb * n2; /* (mean, rstd) of each of the block's 4 rb norms */
    uint16_t* xb = buf == NULL ? NULL : (uint16_t*)(stats + 8 * rb);
    float* ab = buf == NULL || !fac ? NULL : stats + 8 * rb + xbn / 2; /* the block's A rows (fac), then its c */
#if GEOSAM_AMX
    if (amx) amx_configure();
#endif
#pragma omp for schedule(static)
    for (int64_t p0 = 0; p0 < npos; p0 += rb) {
      if (buf == NULL) continue;
      const int64_t nb = npos - p0 < rb ? npos - p0 : rb;
      const float *ap, *cp; /* the block's rows of A, rows sap apart, and their c */
      int64_t sap = k1;
      if (fac) {
        float* cb = ab + rb * k1;
        for (int64_t r = 0; r < nb; r++) cb[r] = factor_row(fac, p0 + r, ab + r * k1);
        ap = ab, cp = cb;
      } else {
        ap = a + p0 * sa, cp = c + p0, sap = sa;
      }
#if GEOSAM_AMX
      if (amx)
        amx_product(ap, sap, nb, bpb, k1, n1, y, n1, xb);
      else
#endif
      if (bf16)
        product_bf16(ap, sap, nb, bpb, k1, n1, y, xb);
      else if (wide)
        product512(ap, sap, nb, bp, k1, n1, y);
      else
        product(ap, sap, nb, bp, k1, n1, y);
      for (int64_t r = 0; r < nb; r++) {
        const __m256 cr = _mm256_set1_ps(cp[r]);
        float* yr = y + r * n1;
        const float* sr = s + (p0 + r) * ss;
        for (int64_t d = 0; d < n1; d += 8)
          _mm256_storeu_ps(yr + d, _mm256_add_ps(_mm256_loadu_ps(yr + d), _mm256_mul_ps(_mm256_loadu_ps(sr + d), cr)));
        if (f1 != NULL) {
          const float* fr = f1 + (p0 + r) * n1;
          for (int64_t d = 0; d < n1; d += 8)
            _mm256_storeu_ps(yr + d, _mm256_add_ps(_mm256_loadu_ps(yr + d), _mm256_loadu_ps(fr + d)));
        }
        for (int g = 0; g < 4; g++) norm_stats(yr + g * c4, c4, eps, stats + 2 * (4 * r + g), stats + 2 * (4 * r + g) + 1);
      }
      /* the statistics of the whole block first, then its norms and GELUs: one long stream of independent work */
      if (wide)
        (bf16 ? norm_gelu_rows512_fast : norm_gelu_rows512)(y, 4 * nb, c4, lnw, lnb, stats);
      else
        for (int64_t r = 0; r < 4 * nb; r++)
          (bf16 ? norm_gelu_fast : norm_gelu)(y + r * c4, c4, lnw, lnb, stats[2 * r], stats[2 * r + 1]);
#if GEOSAM_AMX
      if (amx)
        amx_product(y, c4, 4 * nb, w2pb, c4, n2, z, n2, xb);
      else
#endif
      if (bf16)
        product_bf16(y, c4, 4 * nb, w2pb, c4, n2, z, xb);
      else if (wide)
        product512(y, c4, 4 * nb, w2p, c4, n2, z);
      else
        product(y, c4, 4 * nb, w2p, c4, n2, z);
      if (f0 != NULL) {
        const float* fb = f0 + 4 * p0 * n2;
        for (int64_t d = 0; d < 4 * nb * n2; d += 8)
          _mm256_storeu_ps(z + d, _mm256_add_ps(_mm256_loadu_ps(z + d), _mm256_loadu_ps(fb + d)));
      }
      if (wide)
        (bf16 ? bias_gelu_rows512_fast : bias_gelu_rows512)(z, 4 * nb, n2, b2);
      else
        (bf16 ? bias_gelu_rows_fast : bias_gelu_rows)(z, 4 * nb, n2, b2);
      /* rows r, r + 1 (r even: sub-pixel columns b = 0, 1 of one position and row a) give 4 adjacent pixels in
       * each of the output rows 4i + 2a and 4i + 2a + 1 */
      for (int64_t r = 0; r < 4 * nb; r += 2) {
        const int64_t p = p0 + r / 4, i = p / ww, j = p % ww;
        const int64_t row = 4 * i + 2 * ((r % 4) / 2), col = 4 * j;
        float* o = out + row * ow + col;
        for (int64_t k = 0; k < nk; k++) {
          const __m256 v = hyper_pair(hyper + k * c8, z + r * n2, z + (r + 1) * n2, c8);
          _mm_storeu_ps(o + k * so, _mm256_castps256_ps128(v));
          _mm_storeu_ps(o + k * so + ow, _mm256_extractf128_ps(v, 1));
        }
      }
    }
#if GEOSAM_AMX
    if (amx) amx_release();
#endif
    free(buf);
  }
  free(bp);
  return failed ? -1 : 0;
}

/* 1b. The rows A of geosam/models/fast_upscale.py's _Conv1FromSharedImage.prompt for one prompt (the upscaling's
 * first product in factored form), with torch's bits: layers l = nl - 1 .. 0, c the product of their reciprocal
 * deviations so far (rstds[nl - 1] first), columns pts[l][q, 0:r] c, -(c means[l][q]), and c for l > 0; a last
 * column of ones; cout[q] the final c. pts[l] (p, r) rows spt[l] apart; means[l], rstds[l] (p); a (p, nl (r + 2))
 * rows sa apart. One pass instead of ~10 torch calls per prompt. */
void geosam_factor_rows(int64_t nl, const float* const* pts, const int64_t* spt, const float* const* means,
                        const float* const* rstds, int64_t r, int64_t p, float* a, int64_t sa, float* cout,
                        int threads) {
  const factors f = {nl, r, pts, spt, means, rstds};
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t q = 0; q < p; q++) cout[q] = factor_row(&f, q, a + q * sa);
}

/* 2. The layer norms' quadratic forms of geosam/models/fast_final.py: out[m, p] = sum_i left[m, i, p] sum_j
 * gram[m, i, j] right[m, j, p] at every image position p, the attention weights left / right (R, P) of a prompt.
 * torch computes gram @ right (a product of inner size R ~ 56, written out), then times left and the sum over
 * R: three passes over (R, P) blocks. Here QB positions at a time with their (R, QB) blocks packed (rows lie 4 P
 * bytes apart, the same L1 sets for P = 4096), 4 rows of gram x 3 vectors of positions in registers, and only
 * the (P,) result written. With `upper` (left = right, a symmetric form given as its upper triangle with the
 * off-diagonal entries doubled, zeros below) only j >= i is visited: half the products. */
#define QB 24
#define PF 2 /* blocks ahead to prefetch */

static inline __attribute__((always_inline)) void quad_rows(const float* g, int64_t rj, int64_t j0,
                                                            const float* rp, const float* lp, __m256* o,
                                                            const int rows) {
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00, a20 = a00, a21 = a00,
         a22 = a00, a30 = a00, a31 = a00, a32 = a00;
  for (int64_t j = j0; j < rj; j++) {
    const float* rr = rp + j * QB;
    const __m256 x0 = _mm256_loadu_ps(rr), x1 = _mm256_loadu_ps(rr + 8), x2 = _mm256_loadu_ps(rr + 16);
    __m256 b;
    if (rows > 0) { b = _mm256_broadcast_ss(g + j); a00 = _mm256_fmadd_ps(b, x0, a00); a01 = _mm256_fmadd_ps(b, x1, a01); a02 = _mm256_fmadd_ps(b, x2, a02); }
    if (rows > 1) { b = _mm256_broadcast_ss(g + rj + j); a10 = _mm256_fmadd_ps(b, x0, a10); a11 = _mm256_fmadd_ps(b, x1, a11); a12 = _mm256_fmadd_ps(b, x2, a12); }
    if (rows > 2) { b = _mm256_broadcast_ss(g + 2 * rj + j); a20 = _mm256_fmadd_ps(b, x0, a20); a21 = _mm256_fmadd_ps(b, x1, a21); a22 = _mm256_fmadd_ps(b, x2, a22); }
    if (rows > 3) { b = _mm256_broadcast_ss(g + 3 * rj + j); a30 = _mm256_fmadd_ps(b, x0, a30); a31 = _mm256_fmadd_ps(b, x1, a31); a32 = _mm256_fmadd_ps(b, x2, a32); }
  }
#define QUAD_OUT(r, c0, c1, c2)                                                \
  if (rows > r) {                                                              \
    const float* lr = lp + r * QB;                                             \
    o[0] = _mm256_fmadd_ps(_mm256_loadu_ps(lr), c0, o[0]);                     \
    o[1] = _mm256_fmadd_ps(_mm256_loadu_ps(lr + 8), c1, o[1]);                 \
    o[2] = _mm256_fmadd_ps(_mm256_loadu_ps(lr + 16), c2, o[2]);                \
  }
  QUAD_OUT(0, a00, a01, a02) QUAD_OUT(1, a10, a11, a12) QUAD_OUT(2, a20, a21, a22) QUAD_OUT(3, a30, a31, a32)
#undef QUAD_OUT
}

/* rows (<= QB) x QB block of x (rows `p` floats apart, from position p0; zeros past p) into xp */
static void pack_block(const float* x, int64_t rows, int64_t p, int64_t p0, float* xp) {
  const int64_t np = p - p0 < QB ? p - p0 : QB;
  if (np == QB) {
    for (int64_t r = 0; r < rows; r++) {
      const float* src = x + r * p + p0;
      _mm_prefetch((const char*)(src + PF * QB), _MM_HINT_T0); /* a block ahead: many rows, too many streams */
      _mm_prefetch((const char*)(src + PF * QB + 16), _MM_HINT_T0);
      _mm_prefetch((const char*)(src + PF * QB + QB - 1), _MM_HINT_T0);
      _mm256_storeu_ps(xp + r * QB, _mm256_loadu_ps(src));
      _mm256_storeu_ps(xp + r * QB + 8, _mm256_loadu_ps(src + 8));
      _mm256_storeu_ps(xp + r * QB + 16, _mm256_loadu_ps(src + 16));
    }
    return;
  }
  for (int64_t r = 0; r < rows; r++)
    for (int64_t q = 0; q < QB; q++) xp[r * QB + q] = q < np ? x[r * p + p0 + q] : 0.f;
}

/* quad_rows and pack_block in 16-lane registers (CPUs with AVX-512): QW positions a block, 4 rows of gram x 3
 * vectors; each position the same FMAs in the same order as in 8 lanes, so the same bits (cpu_decoder.py checks it) */
#define QW 48

static inline __attribute__((always_inline)) T512 void quad_rows512(const float* g, int64_t rj, int64_t j0,
                                                                     const float* rp, const float* lp, __m512* o,
                                                                     const int rows) {
  __m512 a[4][3];
  _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) a[r][0] = a[r][1] = a[r][2] = _mm512_setzero_ps();
  for (int64_t j = j0; j < rj; j++) {
    const float* rr = rp + j * QW;
    const __m512 x0 = _mm512_loadu_ps(rr), x1 = _mm512_loadu_ps(rr + 16), x2 = _mm512_loadu_ps(rr + 32);
    _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) if (r < rows) {
      const __m512 b = _mm512_set1_ps(g[r * rj + j]);
      a[r][0] = _mm512_fmadd_ps(b, x0, a[r][0]);
      a[r][1] = _mm512_fmadd_ps(b, x1, a[r][1]);
      a[r][2] = _mm512_fmadd_ps(b, x2, a[r][2]);
    }
  }
  _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) if (r < rows) {
    const float* lr = lp + r * QW;
    o[0] = _mm512_fmadd_ps(_mm512_loadu_ps(lr), a[r][0], o[0]);
    o[1] = _mm512_fmadd_ps(_mm512_loadu_ps(lr + 16), a[r][1], o[1]);
    o[2] = _mm512_fmadd_ps(_mm512_loadu_ps(lr + 32), a[r][2], o[2]);
  }
}

/* the first n (clamped to 0 .. 16) lanes of a 16-lane register */
static inline __mmask16 lanes16(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1u); }

static T512 void pack_block512(const float* x, int64_t rows, int64_t p, int64_t p0, float* xp) {
  const int64_t np = p - p0 < QW ? p - p0 : QW;
  const __mmask16 k0 = lanes16(np), k1 = lanes16(np - 16), k2 = lanes16(np - 32);
  for (int64_t r = 0; r < rows; r++) {
    const float* src = x + r * p + p0;
    if (np == QW) {
      _mm_prefetch((const char*)(src + PF * QW), _MM_HINT_T0);
      _mm_prefetch((const char*)(src + PF * QW + 16), _MM_HINT_T0);
      _mm_prefetch((const char*)(src + PF * QW + 32), _MM_HINT_T0);
      _mm_prefetch((const char*)(src + PF * QW + QW - 1), _MM_HINT_T0);
    }
    _mm512_storeu_ps(xp + r * QW, _mm512_maskz_loadu_ps(k0, src));
    _mm512_storeu_ps(xp + r * QW + 16, _mm512_maskz_loadu_ps(k1, src + 16));
    _mm512_storeu_ps(xp + r * QW + 32, _mm512_maskz_loadu_ps(k2, src + 32));
  }
}

/* a block's outputs: QB positions from 8-lane registers (through a buffer: the last block may be partial), QW
 * from 16-lane ones (masked) */
static inline void quad_store(const __m256* o, int64_t np, float* out) {
  float res[QB];
  _mm256_storeu_ps(res, o[0]);
  _mm256_storeu_ps(res + 8, o[1]);
  _mm256_storeu_ps(res + 16, o[2]);
  for (int64_t q = 0; q < np; q++) out[q] = res[q];
}

static inline __attribute__((always_inline)) T512 void quad_store512(const __m512* o, int64_t np, float* out) {
  for (int c = 0; c < 3 && np > 16 * c; c++) _mm512_mask_storeu_ps(out + 16 * c, lanes16(np - 16 * c), o[c]);
}

/* one prompt's block of NB positions from p0 (gram g, its left / right rows): out[p0 ..]; the 8- and 16-lane bodies */
#define QUAD_BLOCK(NAME, V, ZERO, PACK, ROWS, STORE, NB, ATTR)                                                     \
  static ATTR void NAME(const float* g, const float* left, const float* right, int64_t ri, int64_t rj, int64_t p,   \
                        int64_t p0, int upper, float* buf, float* out) {                                            \
    float *lp = buf, *rp = upper ? buf : buf + ri * NB;                                                             \
    PACK(left, ri, p, p0, lp);                                                                                       \
    if (!upper) PACK(right, rj, p, p0, rp);                                                                          \
    V o[3] = {ZERO, ZERO, ZERO};                                                                                     \
    for (int64_t i = 0; i < ri; i += 4) {                                                                            \
      const int64_t j0 = upper ? i : 0;                                                                              \
      const float* gi = g + i * rj;                                                                                  \
      switch (ri - i < 4 ? ri - i : 4) {                                                                             \
        case 4: ROWS(gi, rj, j0, rp, lp + i * NB, o, 4); break;                                                      \
        case 3: ROWS(gi, rj, j0, rp, lp + i * NB, o, 3); break;                                                      \
        case 2: ROWS(gi, rj, j0, rp, lp + i * NB, o, 2); break;                                                      \
        default: ROWS(gi, rj, j0, rp, lp + i * NB, o, 1); break;                                                     \
      }                                                                                                              \
    }                                                                                                                \
    STORE(o, p - p0 < NB ? p - p0 : NB, out + p0);                                                                   \
  }
QUAD_BLOCK(quad_block, __m256, _mm256_setzero_ps(), pack_block, quad_rows, quad_store, QB, NO_TARGET)
QUAD_BLOCK(quad_block512, __m512, _mm512_setzero_ps(), pack_block512, quad_rows512, quad_store512, QW, T512)
#undef QUAD_BLOCK

/* gram (n, ri, rj), left (n, ri, p), right (n, rj, p), out (n, p); contiguous float32; upper: see above (ri = rj,
 * right = left). wide: in 16-lane registers (quad_block512). Returns 0, or -1 if out of memory (out then incomplete). */
int geosam_quad(const float* gram, const float* left, const float* right, int64_t n, int64_t ri, int64_t rj,
                int64_t p, int upper, float* out, int wide, int threads) {
  const int64_t qb = wide ? QW : QB, blocks = (p + qb - 1) / qb;
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    float* buf = thread_buffer((size_t)((ri + rj) * qb), &failed);
#pragma omp for schedule(static) collapse(2)
    for (int64_t m = 0; m < n; m++) {
      for (int64_t bk = 0; bk < blocks; bk++) {
        if (buf == NULL) continue;
        const int64_t p0 = bk * qb;
        const float* g = gram + m * ri * rj;
        (wide ? quad_block512 : quad_block)(g, left + m * ri * p, right + m * rj * p, ri, rj, p, p0, upper, buf,
                                            out + m * p);
      }
    }
    free(buf);
  }
  return failed ? -1 : 0;
}

/* 3. The image -> token attentions' softmax over the tokens (geosam/models/fast_twoway.py, fast_factored.py), the bits
 * of torch.softmax(s, dim=2) on an AVX2 CPU for s (N, H, T, P) float32: ATen's `_vec_softmax` takes 8 positions at
 * a time, the maximum over the T tokens (vector maximum, NaN-propagating), exp(x - max) with Sleef's expf8_u10, their
 * sum from zero in token order, then each divided by the sum. Here the same per 8 positions, for all heads of a
 * prompt at once, optionally also written transposed (`pt`: (N, P, H T), what the upscaling's first product and the
 * norm statistics read), so that the weights are not read again for the transpose. T <= 8, P a multiple of 8. */
static inline __m256 vmax_nan(__m256 a, __m256 b) { /* ATen's vec::maximum */
  return _mm256_or_ps(_mm256_max_ps(a, b), _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
}

/* rows r[0..nt) (8 floats each) -> columns: out[j * so + t] = r[t][j] for t < nt (<= 8), j < 8; writes 8 floats
 * per output row (zeros past nt) */
static inline void store_transposed(const __m256* r, int nt, float* out, int64_t so) {
  const __m256 z = _mm256_setzero_ps();
  __m256 a0 = r[0], a1 = nt > 1 ? r[1] : z, a2 = nt > 2 ? r[2] : z, a3 = nt > 3 ? r[3] : z, a4 = nt > 4 ? r[4] : z,
         a5 = nt > 5 ? r[5] : z, a6 = nt > 6 ? r[6] : z, a7 = nt > 7 ? r[7] : z;
  __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1), t2 = _mm256_unpacklo_ps(a2, a3),
         t3 = _mm256_unpackhi_ps(a2, a3), t4 = _mm256_unpacklo_ps(a4, a5), t5 = _mm256_unpackhi_ps(a4, a5),
         t6 = _mm256_unpacklo_ps(a6, a7), t7 = _mm256_unpackhi_ps(a6, a7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE), u2 = _mm256_shuffle_ps(t1, t3, 0x44),
         u3 = _mm256_shuffle_ps(t1, t3, 0xEE), u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
         u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  __m256 c[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                 _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                 _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                 _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
  for (int j = 0; j < 8; j++) _mm256_storeu_ps(out + j * so, c[j]); /* 8 - nt floats past the row's columns */
}

/* A block's numerators e[t] = exp(s_t - max over the tokens) at positions p0.. and their sum from zero in token order:
 * one body for both widths (V the vector type, P the intrinsics' prefix, MAX ATen's NaN-propagating maximum, EXP
 * exp_u10 or exp_u10_512: each lane the same operations, so the same bits) */
#define TS_NUMERATORS(V, P, MAX, EXP)                                                                              \
  V e[8];                                                                                                         \
  V mx = P##_loadu_ps(s + p0);                                                                                    \
  for (int t = 1; t < nt; t++) mx = MAX(mx, P##_loadu_ps(s + t * p + p0));                                        \
  V sum = P##_setzero_ps();                                                                                       \
  for (int t = 0; t < nt; t++) {                                                                                  \
    e[t] = EXP(P##_sub_ps(P##_loadu_ps(s + t * p + p0), mx));                                                     \
    sum = P##_add_ps(sum, e[t]);                                                                                  \
  }

static inline __attribute__((always_inline)) void token_softmax_block(const float* s, float* y, int64_t p, int64_t p0,
                                                                       float* pt, int64_t r, const int nt) {
  TS_NUMERATORS(__m256, _mm256, vmax_nan, exp_u10)
  for (int t = 0; t < nt; t++) {
    e[t] = _mm256_div_ps(e[t], sum);
    _mm256_storeu_ps(y + t * p + p0, e[t]);
  }
  if (pt) store_transposed(e, nt, pt + p0 * r, r); /* pt: the block's rows, `r` floats apart */
}

/* token_softmax_block for 16 positions in 16-lane registers (CPUs with AVX-512): every lane the same operations
 * (ATen's NaN-propagating maximum, exp_u10_512: exp_u10's bits, the sum in token order, the division), so the same
 * bits; the divisions and the transposed record as two 8-position halves. Intel Xeon with AMX, one thread, 32 prompts
 * of SAM's 8 x 7 tokens over 4096 positions: 14 -> 10 ms (16-lane divisions: slower than the 8-lane path) */
static inline __attribute__((always_inline)) T512 __m512 vmax_nan512(__m512 a, __m512 b) {
  return _mm512_mask_mov_ps(_mm512_max_ps(a, b), _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q),
                            _mm512_castsi512_ps(_mm512_set1_epi32(-1)));
}

static inline __attribute__((always_inline)) T512 void token_softmax_block512(const float* s, float* y, int64_t p,
                                                                            int64_t p0, float* pt, int64_t r,
                                                                            const int nt) {
  TS_NUMERATORS(__m512, _mm512, vmax_nan512, exp_u10_512)
  __m256 lo[8], hi[8];
  const __m256 slo = low8(sum), shi = high8(sum);
  for (int t = 0; t < nt; t++) { /* the divisions 8 lanes at a time: a 16-lane one takes the divider twice as long */
    lo[t] = _mm256_div_ps(low8(e[t]), slo);
    hi[t] = _mm256_div_ps(high8(e[t]), shi);
    _mm256_storeu_ps(y + t * p + p0, lo[t]);
    _mm256_storeu_ps(y + t * p + p0 + 8, hi[t]);
  }
  if (pt) {
    store_transposed(lo, nt, pt + p0 * r, r);
    store_transposed(hi, nt, pt + (p0 + 8) * r, r);
  }
}

/* BLOCK(si, yi, p, p0, ti, rs, nt) with the token count known at compile time */
#define TS_SWITCH(BLOCK)                                                                                          \
  switch (nt) {                                                                                                   \
    case 8: BLOCK(si, yi, p, p0, ti, rs, 8); break;                                                               \
    case 7: BLOCK(si, yi, p, p0, ti, rs, 7); break;                                                               \
    case 6: BLOCK(si, yi, p, p0, ti, rs, 6); break;                                                               \
    case 5: BLOCK(si, yi, p, p0, ti, rs, 5); break;                                                               \
    case 4: BLOCK(si, yi, p, p0, ti, rs, 4); break;                                                               \
    case 3: BLOCK(si, yi, p, p0, ti, rs, 3); break;                                                               \
    case 2: BLOCK(si, yi, p, p0, ti, rs, 2); break;                                                               \
    default: BLOCK(si, yi, p, p0, ti, rs, 1); break;                                                              \
  }

/* one head's positions from b0, 16 at a time, while 16 remain before b1; returns where it stopped (the 8-lane path
 * goes on from there: it stays outside this AVX-512 function, so that CPUs without AVX-512 never run its code) */
static T512 int64_t token_softmax_wide(const float* si, float* yi, int64_t p, int64_t b0, int64_t b1, float* ti,
                                       int64_t rs, int64_t nt) {
  int64_t p0 = b0;
  for (; p0 + 16 <= b1; p0 += 16) TS_SWITCH(token_softmax_block512)
  return p0;
}

/* wide: 16 positions a step in AVX-512 registers where the CPU has them (the same bits) */
int geosam_token_softmax(const float* s, float* y, float* pt, int64_t n, int64_t nh, int64_t nt, int64_t p,
                         int threads, int wide) {
  if (nt < 1 || nt > 8 || p % 8) return -1;
  const int64_t r = nh * nt;   /* a position's row of pt */
  const int64_t pb = 64;       /* positions per block */
  const int64_t rs = r + 8;    /* the block's transposed rows, with room for the 8-wide stores of the last head */
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    float* tmp = pt ? (float*)malloc(sizeof(float) * pb * rs) : NULL;
    if (pt && !tmp) failed = 1;
#pragma omp for schedule(static) collapse(2)
    for (int64_t i = 0; i < n; i++)
      for (int64_t b0 = 0; b0 < p; b0 += pb) {
        if (pt && !tmp) continue;
        const int64_t b1 = b0 + pb < p ? b0 + pb : p;
        for (int64_t h = 0; h < nh; h++) { /* heads in order: a head's spill is overwritten by the next one */
          const float* si = s + (i * nh + h) * nt * p;
          float* yi = y + (i * nh + h) * nt * p;
          float* ti = tmp ? tmp - b0 * rs + h * nt : NULL; /* row p of the block at ti + p * rs */
          if (b1 < p) /* the head's rows of the next block (prefetch_l2: a quarter of the kernel's samples waited on
                       * these loads) */
            for (int64_t t = 0; t < nt; t++) prefetch_l2(si + t * p + b1, (b1 + pb < p ? b1 + pb : p) - b1);
          int64_t p0 = wide ? token_softmax_wide(si, yi, p, b0, b1, ti, rs, nt) : b0;
          for (; p0 < b1; p0 += 8) TS_SWITCH(token_softmax_block)
        }
        if (tmp) /* the block's rows of pt, contiguous */
          for (int64_t q = b0; q < b1; q++) {
            const float* src = tmp + (q - b0) * rs;
            float* dst = pt + (i * p + q) * r;
            int64_t c = 0;
            for (; c + 8 <= r; c += 8) _mm256_storeu_ps(dst + c, _mm256_loadu_ps(src + c));
            for (; c < r; c++) dst[c] = src[c];
          }
      }
    free(tmp);
  }
  return failed ? -2 : 0;
}
#undef TS_SWITCH
#undef TS_NUMERATORS
