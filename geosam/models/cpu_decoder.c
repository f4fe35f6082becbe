/* SAM's mask upscaling for one prompt on AVX2 CPUs, one block of image positions at a time, nothing written but the
 * masks.
 *
 * transformers' SamMaskDecoder turns each prompt's (h, w, C) image side into (K, 4h, 4w) mask logits with
 * upscale_conv1 (2x2, stride 2) -> LayerNorm over its C4 channels -> GELU -> upscale_conv2 (2x2, stride 2) -> GELU ->
 * the K hypernetwork vectors' dot products over C8 channels. geosam/models/fast_upscale.py runs that as torch
 * products over bands of positions; here, for a block of RB positions, the first product (given in the factored
 * form of fast_upscale._Conv1FromSharedImage: y = A B + c S), the norm, both GELUs, the second product and the dot
 * products run while the block's features are in L1 / L2, and each mask pixel is written once to its place
 * (4i + 2a + a2, 4j + 2b + b2). Products: 6 x 16 register tiles (cpu_vec.h), one FMA chain per output over the inner
 * dimension. GELU: 0.5 x (1 + erf(x / sqrt 2)) with Eigen's rational erf (no exp: 3 M per prompt of SAM, 0.6 vs
 * 1.3 ns each for torch's oneDNN GELU on an AMD EPYC Zen 3; error at most 5e-7 for |x| < 3, torch's 3.7e-7).
 * The same function as torch's path up to float rounding (torch's products block their sums differently, its GELU
 * is oneDNN's); geosam/models/cpu_decoder.py checks it against torch before using it. Below it: 2. the layer norms'
 * quadratic forms, 3. the image -> token softmax over the tokens (torch's bits).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "cpu_vec.h"

#define RB 12 /* image positions per block */

/* erf(x) as Eigen's generic_fast_erf_float: x clamped to [-4, 4] (erf is +-1 in float beyond), an odd degree-13
 * polynomial over an even degree-8 one; no exp, one division (Eigen's error bound: a few ulp) */
static inline __m256 erf_rational(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(4.f)), _mm256_set1_ps(-4.f));
  const __m256 x2 = _mm256_mul_ps(x, x);
  __m256 p = _mm256_fmadd_ps(x2, _mm256_set1_ps(-2.72614225801306e-10f), _mm256_set1_ps(2.77068142495902e-08f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-2.10102402082508e-06f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-5.69250639462346e-05f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-7.34990630326855e-04f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-2.95459980854025e-03f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-1.60960333262415e-02f));
  __m256 q = _mm256_fmadd_ps(x2, _mm256_set1_ps(-1.45660718464996e-05f), _mm256_set1_ps(-2.13374055278905e-04f));
  q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(-1.68282697438203e-03f));
  q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(-7.37332916720468e-03f));
  q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(-1.42647390514189e-02f));
  return _mm256_div_ps(_mm256_mul_ps(x, p), q);
}

/* GELU (approximate="none"): x * 0.5 * (1 + erf(x / sqrt 2)) */
static inline __m256 gelu(__m256 x) {
  const __m256 u = erf_rational(_mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752440f)));
  return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)), _mm256_add_ps(_mm256_set1_ps(1.0f), u));
}

/* for the check of the GELU alone: y = gelu(x), n a multiple of 8 */
void geosam_gelu(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(y + i, gelu(_mm256_loadu_ps(x + i)));
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

/* x (n) -> GELU((x - mean) rstd w + b) in place, two vectors a step (their GELUs' long chains overlap) */
static inline void norm_gelu(float* x, int64_t n, const float* w, const float* b, float mean, float rstd) {
  const __m256 mv = _mm256_set1_ps(mean), rv = _mm256_set1_ps(rstd);
  int64_t d = 0;
  for (; d + 16 <= n; d += 16) {
    __m256 c0 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + d), mv), rv);
    __m256 c1 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + d + 8), mv), rv);
    c0 = gelu(_mm256_fmadd_ps(c0, _mm256_loadu_ps(w + d), _mm256_loadu_ps(b + d)));
    c1 = gelu(_mm256_fmadd_ps(c1, _mm256_loadu_ps(w + d + 8), _mm256_loadu_ps(b + d + 8)));
    _mm256_storeu_ps(x + d, c0);
    _mm256_storeu_ps(x + d + 8, c1);
  }
  for (; d < n; d += 8) {
    __m256 c = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + d), mv), rv);
    _mm256_storeu_ps(x + d, gelu(_mm256_fmadd_ps(c, _mm256_loadu_ps(w + d), _mm256_loadu_ps(b + d))));
  }
}

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

/* The masks of one prompt. Image positions P = hh * ww, row-major.
 *   a (P, k1) rows `sa` apart, b (k1, 4 c4), c (P), s (P, 4 c4) rows `ss` apart: upscale_conv1's output
 *     y = a b + c s, columns (a, b, o) for output pixel (2i + a, 2j + b), channel o < c4;
 *   lnw, lnb (c4), eps: upscale_layer_norm;
 *   w2 (c4, 4 c8): upscale_conv2 as a product, columns (a2, b2, o2), bias b2 (4 c8);
 *   hyper (nk, c8): the hypernetwork vectors;
 *   out: nk masks of (4 hh) x (4 ww), `so` floats apart.
 * c4 and c8 multiples of 8. Returns 0, or -1 if out of memory (the masks then incomplete). */
int geosam_upscale_prompt(const float* a, int64_t sa, int64_t k1, const float* b, const float* c, const float* s,
                          int64_t ss, const float* lnw, const float* lnb, float eps, const float* w2, const float* b2,
                          const float* hyper, int64_t nk, int64_t c4, int64_t c8, int64_t hh, int64_t ww, float* out,
                          int64_t so, int threads) {
  const int64_t n1 = 4 * c4, n2 = 4 * c8, npos = hh * ww, ow = 4 * ww;
  float* bp = malloc(sizeof(float) * (size_t)(k1 * n1 + c4 * n2));
  if (bp == NULL) return -1;
  float* w2p = bp + k1 * n1;
  pack_panels(b, k1, n1, bp);
  pack_panels(w2, c4, n2, w2p);
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    /* y (RB, n1) -> normed in place, read as (4 RB, c4) rows; z (4 RB, n2) */
    float* buf = malloc(sizeof(float) * (size_t)(RB * n1 + 4 * RB * n2 + 8 * RB));
    if (buf == NULL) {
#pragma omp atomic write
      failed = 1;
    }
    float* y = buf;
    float* z = buf == NULL ? NULL : buf + RB * n1;
    float* stats = buf == NULL ? NULL : z + 4 * RB * n2; /* (mean, rstd) of each of the block's 4 RB norms */
#pragma omp for schedule(static)
    for (int64_t p0 = 0; p0 < npos; p0 += RB) {
      if (buf == NULL) continue;
      const int64_t nb = npos - p0 < RB ? npos - p0 : RB;
      product(a + p0 * sa, sa, nb, bp, k1, n1, y);
      for (int64_t r = 0; r < nb; r++) {
        const __m256 cr = _mm256_set1_ps(c[p0 + r]);
        float* yr = y + r * n1;
        const float* sr = s + (p0 + r) * ss;
        for (int64_t d = 0; d < n1; d += 8)
          _mm256_storeu_ps(yr + d, _mm256_add_ps(_mm256_loadu_ps(yr + d), _mm256_mul_ps(_mm256_loadu_ps(sr + d), cr)));
        for (int g = 0; g < 4; g++) norm_stats(yr + g * c4, c4, eps, stats + 2 * (4 * r + g), stats + 2 * (4 * r + g) + 1);
      }
      /* the statistics of the whole block first, then its norms and GELUs: one long stream of independent work */
      for (int64_t r = 0; r < 4 * nb; r++) norm_gelu(y + r * c4, c4, lnw, lnb, stats[2 * r], stats[2 * r + 1]);
      product(y, c4, 4 * nb, w2p, c4, n2, z);
      for (int64_t r = 0; r < 4 * nb; r++) {
        float* zr = z + r * n2;
        for (int64_t d = 0; d < n2; d += 8)
          _mm256_storeu_ps(zr + d, gelu(_mm256_add_ps(_mm256_loadu_ps(zr + d), _mm256_loadu_ps(b2 + d))));
      }
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
    free(buf);
  }
  free(bp);
  return failed ? -1 : 0;
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

/* gram (n, ri, rj), left (n, ri, p), right (n, rj, p), out (n, p); contiguous float32; upper: see above (ri = rj,
 * right = left). Returns 0, or -1 if out of memory (out then incomplete). */
int geosam_quad(const float* gram, const float* left, const float* right, int64_t n, int64_t ri, int64_t rj,
                int64_t p, int upper, float* out, int threads) {
  const int64_t blocks = (p + QB - 1) / QB;
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    float* buf = malloc(sizeof(float) * (size_t)((ri + rj) * QB));
    if (buf == NULL) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static) collapse(2)
    for (int64_t m = 0; m < n; m++) {
      for (int64_t bk = 0; bk < blocks; bk++) {
        if (buf == NULL) continue;
        const int64_t p0 = bk * QB;
        const float* g = gram + m * ri * rj;
        float *lp = buf, *rp = upper ? buf : buf + ri * QB;
        pack_block(left + m * ri * p, ri, p, p0, lp);
        if (!upper) pack_block(right + m * rj * p, rj, p, p0, rp);
        __m256 o[3] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int64_t i = 0; i < ri; i += 4) {
          const int64_t j0 = upper ? i : 0;
          const float* gi = g + i * rj;
          switch (ri - i < 4 ? ri - i : 4) {
            case 4: quad_rows(gi, rj, j0, rp, lp + i * QB, o, 4); break;
            case 3: quad_rows(gi, rj, j0, rp, lp + i * QB, o, 3); break;
            case 2: quad_rows(gi, rj, j0, rp, lp + i * QB, o, 2); break;
            default: quad_rows(gi, rj, j0, rp, lp + i * QB, o, 1); break;
          }
        }
        float res[QB];
        _mm256_storeu_ps(res, o[0]);
        _mm256_storeu_ps(res + 8, o[1]);
        _mm256_storeu_ps(res + 16, o[2]);
        const int64_t np = p - p0 < QB ? p - p0 : QB;
        for (int64_t q = 0; q < np; q++) out[m * p + p0 + q] = res[q];
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

static inline __attribute__((always_inline)) void token_softmax_block(const float* s, float* y, int64_t p, int64_t p0,
                                                                       float* pt, int64_t r, const int nt) {
  __m256 e[8];
  __m256 mx = _mm256_loadu_ps(s + p0);
  for (int t = 1; t < nt; t++) mx = vmax_nan(mx, _mm256_loadu_ps(s + t * p + p0));
  __m256 sum = _mm256_setzero_ps();
  for (int t = 0; t < nt; t++) {
    e[t] = exp_u10(_mm256_sub_ps(_mm256_loadu_ps(s + t * p + p0), mx));
    sum = _mm256_add_ps(sum, e[t]);
  }
  for (int t = 0; t < nt; t++) {
    e[t] = _mm256_div_ps(e[t], sum);
    _mm256_storeu_ps(y + t * p + p0, e[t]);
  }
  if (pt) store_transposed(e, nt, pt + p0 * r, r); /* pt: the block's rows, `r` floats apart */
}

int geosam_token_softmax(const float* s, float* y, float* pt, int64_t n, int64_t nh, int64_t nt, int64_t p,
                         int threads) {
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
          for (int64_t p0 = b0; p0 < b1; p0 += 8) switch (nt) {
              case 8: token_softmax_block(si, yi, p, p0, ti, rs, 8); break;
              case 7: token_softmax_block(si, yi, p, p0, ti, rs, 7); break;
              case 6: token_softmax_block(si, yi, p, p0, ti, rs, 6); break;
              case 5: token_softmax_block(si, yi, p, p0, ti, rs, 5); break;
              case 4: token_softmax_block(si, yi, p, p0, ti, rs, 4); break;
              case 3: token_softmax_block(si, yi, p, p0, ti, rs, 3); break;
              case 2: token_softmax_block(si, yi, p, p0, ti, rs, 2); break;
              default: token_softmax_block(si, yi, p, p0, ti, rs, 1); break;
            }
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

/* 4. Per-head products of many prompts' token rows against one image side projected per head, the decoder's
 * most frequent product: out[n, h, t, p] (+)= sum_k a[n, h, t, k] x[h, k, p] for every prompt n, head h, token
 * t (inner size dk: SAM's head size, 16) at every image position p. torch runs it as one product per prompt
 * ((h, T, dk) x (h, dk, P)), reading the (h, dk, P) side once per prompt; here for each block of 16 positions and
 * head the side's dk x 16 block is read once for all prompts' rows, 4 rows x 16 positions in registers.
 * a: rows (n, h, t) at n * sn + h * sh + t * st, dk contiguous floats; x (nh, dk, p) contiguous; out rows
 * (n, h, t) at n * on + h * oh + t * ot, p contiguous; p a multiple of 8; accumulate: add to out. */
static inline __attribute__((always_inline)) void headdot_tile(const float* const* ar, float* const* orow,
                                                               const float* xb, int64_t p, int64_t dk,
                                                               int64_t cols, int accumulate, const int rows) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  const int two = cols > 8;
  for (int64_t k = 0; k < dk; k++) {
    const __m256 x0 = _mm256_loadu_ps(xb + k * p), x1 = two ? _mm256_loadu_ps(xb + k * p + 8) : x0;
    __m256 b;
    if (rows > 0) { b = _mm256_broadcast_ss(ar[0] + k); c00 = _mm256_fmadd_ps(b, x0, c00); c01 = _mm256_fmadd_ps(b, x1, c01); }
    if (rows > 1) { b = _mm256_broadcast_ss(ar[1] + k); c10 = _mm256_fmadd_ps(b, x0, c10); c11 = _mm256_fmadd_ps(b, x1, c11); }
    if (rows > 2) { b = _mm256_broadcast_ss(ar[2] + k); c20 = _mm256_fmadd_ps(b, x0, c20); c21 = _mm256_fmadd_ps(b, x1, c21); }
    if (rows > 3) { b = _mm256_broadcast_ss(ar[3] + k); c30 = _mm256_fmadd_ps(b, x0, c30); c31 = _mm256_fmadd_ps(b, x1, c31); }
  }
#define HD_OUT(r, v0, v1)                                                                                   \
  if (rows > r) {                                                                                          \
    float* o = orow[r];                                                                                    \
    _mm256_storeu_ps(o, accumulate ? _mm256_add_ps(_mm256_loadu_ps(o), v0) : v0);                         \
    if (two) _mm256_storeu_ps(o + 8, accumulate ? _mm256_add_ps(_mm256_loadu_ps(o + 8), v1) : v1);         \
  }
  HD_OUT(0, c00, c01) HD_OUT(1, c10, c11) HD_OUT(2, c20, c21) HD_OUT(3, c30, c31)
#undef HD_OUT
}

#define HD_BLOCK 256

int geosam_headdot(const float* a, int64_t sn, int64_t sh, int64_t st, const float* x, float* out, int64_t on,
                   int64_t oh, int64_t ot, int64_t n, int64_t nh, int64_t nt, int64_t dk, int64_t p, int accumulate,
                   int threads) {
  if (p % 8 != 0) return 1;
  const int64_t rows = n * nt, nblk = (p + HD_BLOCK - 1) / HD_BLOCK;
  int64_t* off = malloc(sizeof(int64_t) * (size_t)(2 * rows)); /* each row's offsets in a and out, head 0 */
  if (off == NULL) return 2;
  for (int64_t r = 0; r < rows; r++) {
    off[2 * r] = (r / nt) * sn + (r % nt) * st;
    off[2 * r + 1] = (r / nt) * on + (r % nt) * ot;
  }
  /* a block of HD_BLOCK positions of x (dk x 256 floats: 16 KiB for SAM) stays in L1 while every row runs along
   * it in 16-position tiles: each output row is written in runs of HD_BLOCK floats */
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
  float* xpk = malloc(sizeof(float) * (size_t)(dk * HD_BLOCK));
  if (xpk == NULL) {
#pragma omp atomic write
    failed = 1;
  }
#pragma omp for schedule(static) collapse(2)
  for (int64_t h = 0; h < nh; h++) {
    for (int64_t blk = 0; blk < nblk; blk++) {
      if (xpk == NULL) continue;
      const int64_t b0 = blk * HD_BLOCK, b1 = p - b0 < HD_BLOCK ? p : b0 + HD_BLOCK;
      const float* ah = a + h * sh;
      float* oh0 = out + h * oh;
      const int64_t w = b1 - b0;
      /* the block of x, packed (dk rows of w): its rows lie 4 p bytes apart in x, the same L1 sets for p = 4096 */
      for (int64_t k = 0; k < dk; k++) memcpy(xpk + k * w, x + (h * dk + k) * p + b0, sizeof(float) * (size_t)w);
      for (int64_t r = 0; r < rows; r += 4) {
        const float* ar[4];
        float* orow[4];
        const int m = rows - r < 4 ? (int)(rows - r) : 4;
        for (int i = 0; i < 4; i++) {
          const int64_t ri = r + (i < m ? i : 0);
          ar[i] = ah + off[2 * ri];
          orow[i] = oh0 + off[2 * ri + 1];
        }
        for (int64_t p0 = b0; p0 < b1; p0 += 16) {
          const int64_t cols = b1 - p0 < 16 ? b1 - p0 : 16;
          const float* xb = xpk + (p0 - b0);
          float* o[4] = {orow[0] + p0, orow[1] + p0, orow[2] + p0, orow[3] + p0};
          switch (m) {
            case 4: headdot_tile(ar, o, xb, w, dk, cols, accumulate, 4); break;
            case 3: headdot_tile(ar, o, xb, w, dk, cols, accumulate, 3); break;
            case 2: headdot_tile(ar, o, xb, w, dk, cols, accumulate, 2); break;
            default: headdot_tile(ar, o, xb, w, dk, cols, accumulate, 1); break;
          }
        }
      }
    }
  }
  free(xpk);
  }
  free(off);
  return failed ? 2 : 0;
}

/* 5. The factored second layer's scores (geosam/models/fast_factored.py, _scores), one pass per block of positions:
 *   s[n, h, t, p] = ((f[n, h T + t] . probs0[n, :, p] + rows[n, h, t] . xp[h, :, p]) - fsum[n, h, t] mean0[n, p])
 *                   rstd0[n, p] + rows[n, h, t] . bp[h, :, p]
 * f (n, nh nt, r) and probs0 (n, r, p) contiguous, p a multiple of 16; rows: (n, h, t) at n sn + h sh + t st, dk contiguous floats;
 * xp, bp (nh, dk, p) contiguous; fsum (n, nh, nt), mean0, rstd0 (n, p) contiguous; s (n, nh, nt, p) contiguous.
 * torch writes the (n, nh nt, p) product, then reads and writes it again for each of the four other terms. */
static inline __attribute__((always_inline)) void scores_tile(const float* f, int64_t r, const float* pr,
                                                              const float* const* ar, const float* xb,
                                                              const float* bb, int64_t p, int64_t dk,
                                                              const float* fs, __m256 m0, __m256 m1, __m256 s0,
                                                              __m256 s1, float* const* orow, const int rows) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  __m256 b;
#define SC_ROW(i, a, c0, c1, x0, x1) \
  if (rows > i) { b = _mm256_broadcast_ss(a); c0 = _mm256_fmadd_ps(b, x0, c0); c1 = _mm256_fmadd_ps(b, x1, c1); }
  for (int64_t j = 0; j < r; j++) {
    const __m256 x0 = _mm256_loadu_ps(pr + j * 16), x1 = _mm256_loadu_ps(pr + j * 16 + 8);
    SC_ROW(0, f + j, c00, c01, x0, x1) SC_ROW(1, f + r + j, c10, c11, x0, x1)
    SC_ROW(2, f + 2 * r + j, c20, c21, x0, x1) SC_ROW(3, f + 3 * r + j, c30, c31, x0, x1)
  }
  for (int64_t k = 0; k < dk; k++) {
    const __m256 x0 = _mm256_loadu_ps(xb + k * p), x1 = _mm256_loadu_ps(xb + k * p + 8);
    SC_ROW(0, ar[0] + k, c00, c01, x0, x1) SC_ROW(1, ar[1] + k, c10, c11, x0, x1)
    SC_ROW(2, ar[2] + k, c20, c21, x0, x1) SC_ROW(3, ar[3] + k, c30, c31, x0, x1)
  }
#define SC_NORM(i, c0, c1)                                                      \
  if (rows > i) {                                                               \
    const __m256 fv = _mm256_set1_ps(fs[i]);                                    \
    c0 = _mm256_mul_ps(_mm256_fnmadd_ps(fv, m0, c0), s0);                       \
    c1 = _mm256_mul_ps(_mm256_fnmadd_ps(fv, m1, c1), s1);                       \
  }
  SC_NORM(0, c00, c01) SC_NORM(1, c10, c11) SC_NORM(2, c20, c21) SC_NORM(3, c30, c31)
  for (int64_t k = 0; k < dk; k++) {
    const __m256 x0 = _mm256_loadu_ps(bb + k * p), x1 = _mm256_loadu_ps(bb + k * p + 8);
    SC_ROW(0, ar[0] + k, c00, c01, x0, x1) SC_ROW(1, ar[1] + k, c10, c11, x0, x1)
    SC_ROW(2, ar[2] + k, c20, c21, x0, x1) SC_ROW(3, ar[3] + k, c30, c31, x0, x1)
  }
#define SC_OUT(i, c0, c1) if (rows > i) { _mm256_storeu_ps(orow[i], c0); _mm256_storeu_ps(orow[i] + 8, c1); }
  SC_OUT(0, c00, c01) SC_OUT(1, c10, c11) SC_OUT(2, c20, c21) SC_OUT(3, c30, c31)
#undef SC_ROW
#undef SC_NORM
#undef SC_OUT
}

int geosam_factored_scores(const float* f, const float* probs0, int64_t r, const float* rows, int64_t sn, int64_t sh,
                           int64_t st, const float* xp, const float* bp, const float* fsum, const float* mean0,
                           const float* rstd0, float* s, int64_t n, int64_t nh, int64_t nt, int64_t dk, int64_t p,
                           int threads) {
  if (p % 16 != 0) return 1;
  const int64_t nblk = p / 16;
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
  /* the block of probs0 (r x 16), packed: its rows lie 4 p bytes apart in probs0, the same L1 sets for p = 4096 */
  float* pr = malloc(sizeof(float) * (size_t)(r * 16));
  if (pr == NULL) {
#pragma omp atomic write
    failed = 1;
  }
#pragma omp for schedule(static) collapse(2)
  for (int64_t i = 0; i < n; i++) {
    for (int64_t blk = 0; blk < nblk; blk++) {
      if (pr == NULL) continue;
      const int64_t p0 = blk * 16;
      for (int64_t j = 0; j < r; j++) {
        const float* src = probs0 + (i * r + j) * p + p0;
        _mm256_storeu_ps(pr + j * 16, _mm256_loadu_ps(src));
        _mm256_storeu_ps(pr + j * 16 + 8, _mm256_loadu_ps(src + 8));
      }
      const __m256 m0 = _mm256_loadu_ps(mean0 + i * p + p0), m1 = _mm256_loadu_ps(mean0 + i * p + p0 + 8);
      const __m256 s0 = _mm256_loadu_ps(rstd0 + i * p + p0), s1 = _mm256_loadu_ps(rstd0 + i * p + p0 + 8);
      for (int64_t h = 0; h < nh; h++) {
        const float* xb = xp + h * dk * p + p0;
        const float* bb = bp + h * dk * p + p0;
        for (int64_t t = 0; t < nt; t += 4) {
          const int m = nt - t < 4 ? (int)(nt - t) : 4;
          const float* ar[4];
          float* orow[4];
          for (int j = 0; j < 4; j++) {
            const int64_t tj = t + (j < m ? j : 0);
            ar[j] = rows + i * sn + h * sh + tj * st;
            orow[j] = s + ((i * nh + h) * nt + tj) * p + p0;
          }
          const float* fr = f + (i * nh * nt + h * nt + t) * r;
          const float* fs = fsum + (i * nh + h) * nt + t;
          switch (m) {
            case 4: scores_tile(fr, r, pr, ar, xb, bb, p, dk, fs, m0, m1, s0, s1, orow, 4); break;
            case 3: scores_tile(fr, r, pr, ar, xb, bb, p, dk, fs, m0, m1, s0, s1, orow, 3); break;
            case 2: scores_tile(fr, r, pr, ar, xb, bb, p, dk, fs, m0, m1, s0, s1, orow, 2); break;
            default: scores_tile(fr, r, pr, ar, xb, bb, p, dk, fs, m0, m1, s0, s1, orow, 1); break;
          }
        }
      }
    }
  }
  free(pr);
  }
  return failed ? 2 : 0;
}

/* 6. The final attention's scores against the never-written second image side (geosam/models/fast_final.py,
 * factored_final_attention), one pass per block of positions:
 *   s[n, h, t, p] = (((f0[n, h T + t] . p0[n, :, p] + q[n, h, t] . kx[h, :, p]) s1[n, p] + c[n, h T + t])
 *                    + f1[n, h T + t] . p1[n, :, p]) s2[n, p] + q[n, h, t] . kp[h, :, p]
 * f0, f1 (n, nh nt, r), p0, p1 (n, r, p), c (n, nh nt), s1, s2 (n, p) contiguous; q rows (n, h, t) at n sn + h sh
 * + t st, dk contiguous floats; kx, kp (nh, dk, p) contiguous; s (n, nh, nt, p) contiguous; p a multiple of 16. */
#define FS_ROW(i, a, c0, c1, x0, x1) \
  if (rows > i) { b = _mm256_broadcast_ss(a); c0 = _mm256_fmadd_ps(b, x0, c0); c1 = _mm256_fmadd_ps(b, x1, c1); }
#define FS_PRODUCT(f, pr, kn)                                                                          \
  for (int64_t j = 0; j < kn; j++) {                                                                   \
    const __m256 x0 = _mm256_loadu_ps(pr + j * 16), x1 = _mm256_loadu_ps(pr + j * 16 + 8);             \
    FS_ROW(0, f + j, c00, c01, x0, x1) FS_ROW(1, f + r + j, c10, c11, x0, x1)                           \
    FS_ROW(2, f + 2 * r + j, c20, c21, x0, x1) FS_ROW(3, f + 3 * r + j, c30, c31, x0, x1)               \
  }
#define FS_HEADS(xb)                                                                                   \
  for (int64_t k = 0; k < dk; k++) {                                                                   \
    const __m256 x0 = _mm256_loadu_ps(xb + k * p), x1 = _mm256_loadu_ps(xb + k * p + 8);               \
    FS_ROW(0, ar[0] + k, c00, c01, x0, x1) FS_ROW(1, ar[1] + k, c10, c11, x0, x1)                       \
    FS_ROW(2, ar[2] + k, c20, c21, x0, x1) FS_ROW(3, ar[3] + k, c30, c31, x0, x1)                       \
  }
static inline __attribute__((always_inline)) void final_tile(const float* f0, const float* f1, int64_t r,
                                                             const float* pr0, const float* pr1,
                                                             const float* const* ar, const float* kx,
                                                             const float* kp, int64_t p, int64_t dk,
                                                             const float* cv, const __m256* sc,
                                                             float* const* orow, const int rows) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  __m256 b;
  FS_PRODUCT(f0, pr0, r)
  FS_HEADS(kx)
#define FS_MID(i, c0, c1)                                                                           \
  if (rows > i) {                                                                                   \
    const __m256 cc = _mm256_set1_ps(cv[i]);                                                         \
    c0 = _mm256_fmadd_ps(c0, sc[0], cc);                                                            \
    c1 = _mm256_fmadd_ps(c1, sc[1], cc);                                                            \
  }
  FS_MID(0, c00, c01) FS_MID(1, c10, c11) FS_MID(2, c20, c21) FS_MID(3, c30, c31)
  FS_PRODUCT(f1, pr1, r)
#define FS_SCALE(i, c0, c1) if (rows > i) { c0 = _mm256_mul_ps(c0, sc[2]); c1 = _mm256_mul_ps(c1, sc[3]); }
  FS_SCALE(0, c00, c01) FS_SCALE(1, c10, c11) FS_SCALE(2, c20, c21) FS_SCALE(3, c30, c31)
  FS_HEADS(kp)
#define FS_OUT(i, c0, c1) if (rows > i) { _mm256_storeu_ps(orow[i], c0); _mm256_storeu_ps(orow[i] + 8, c1); }
  FS_OUT(0, c00, c01) FS_OUT(1, c10, c11) FS_OUT(2, c20, c21) FS_OUT(3, c30, c31)
#undef FS_MID
#undef FS_SCALE
#undef FS_OUT
}
#undef FS_ROW
#undef FS_PRODUCT
#undef FS_HEADS

int geosam_final_scores(const float* f0, const float* f1, const float* p0s, const float* p1s, int64_t r,
                        const float* q, int64_t sn, int64_t sh, int64_t st, const float* kx, const float* kp,
                        const float* c, const float* s1, const float* s2, float* s, int64_t n, int64_t nh, int64_t nt,
                        int64_t dk, int64_t p, int threads) {
  if (p % 16 != 0) return 1;
  const int64_t nblk = p / 16;
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
  float* pr = malloc(sizeof(float) * (size_t)(2 * r * 16)); /* the blocks of p0 and p1, packed */
  if (pr == NULL) {
#pragma omp atomic write
    failed = 1;
  }
#pragma omp for schedule(static) collapse(2)
  for (int64_t i = 0; i < n; i++) {
    for (int64_t blk = 0; blk < nblk; blk++) {
      if (pr == NULL) continue;
      const int64_t b0 = blk * 16;
      for (int64_t j = 0; j < r; j++) {
        const float* a0 = p0s + (i * r + j) * p + b0;
        const float* a1 = p1s + (i * r + j) * p + b0;
        _mm256_storeu_ps(pr + j * 16, _mm256_loadu_ps(a0));
        _mm256_storeu_ps(pr + j * 16 + 8, _mm256_loadu_ps(a0 + 8));
        _mm256_storeu_ps(pr + (r + j) * 16, _mm256_loadu_ps(a1));
        _mm256_storeu_ps(pr + (r + j) * 16 + 8, _mm256_loadu_ps(a1 + 8));
      }
      const __m256 sc[4] = {_mm256_loadu_ps(s1 + i * p + b0), _mm256_loadu_ps(s1 + i * p + b0 + 8),
                            _mm256_loadu_ps(s2 + i * p + b0), _mm256_loadu_ps(s2 + i * p + b0 + 8)};
      for (int64_t h = 0; h < nh; h++) {
        const float* kxb = kx + h * dk * p + b0;
        const float* kpb = kp + h * dk * p + b0;
        for (int64_t t = 0; t < nt; t += 4) {
          const int m = nt - t < 4 ? (int)(nt - t) : 4;
          const float* ar[4];
          float* orow[4];
          for (int j = 0; j < 4; j++) {
            const int64_t tj = t + (j < m ? j : 0);
            ar[j] = q + i * sn + h * sh + tj * st;
            orow[j] = s + ((i * nh + h) * nt + tj) * p + b0;
          }
          const int64_t row = (i * nh + h) * nt + t;
          const float *g0 = f0 + row * r, *g1 = f1 + row * r, *cv = c + row;
          switch (m) {
            case 4: final_tile(g0, g1, r, pr, pr + r * 16, ar, kxb, kpb, p, dk, cv, sc, orow, 4); break;
            case 3: final_tile(g0, g1, r, pr, pr + r * 16, ar, kxb, kpb, p, dk, cv, sc, orow, 3); break;
            case 2: final_tile(g0, g1, r, pr, pr + r * 16, ar, kxb, kpb, p, dk, cv, sc, orow, 2); break;
            default: final_tile(g0, g1, r, pr, pr + r * 16, ar, kxb, kpb, p, dk, cv, sc, orow, 1); break;
          }
        }
      }
    }
  }
  free(pr);
  }
  return failed ? 2 : 0;
}

/* 7. The layer norms' cross terms of geosam/models/fast_final.py (_out_proj_dots): out[n, p] = sum_{h, t}
 * probs[n, h, t, p] (v[n, h, t] . xw[h, :, p]), without writing the (n, h, t, p) products torch multiplies out.
 * v rows (n, h, t) at n sn + h sh + t st, dk contiguous floats; xw (nh, dk, p), probs (n, nh, nt, p), out (n, p)
 * contiguous; p a multiple of 16, dk at most 64. */
#define PD_MAXK 64

int geosam_proj_dots(const float* v, int64_t sn, int64_t sh, int64_t st, const float* xw, const float* probs,
                     float* out, int64_t n, int64_t nh, int64_t nt, int64_t dk, int64_t p, int threads) {
  if (p % 16 != 0 || dk > PD_MAXK) return 1;
  const int64_t nblk = p / 16;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1) collapse(2)
  for (int64_t i = 0; i < n; i++) {
    for (int64_t blk = 0; blk < nblk; blk++) {
      const int64_t b0 = blk * 16;
      __m256 o0 = _mm256_setzero_ps(), o1 = o0;
      for (int64_t h = 0; h < nh; h++) {
        /* the head's dk x 16 block, packed: its rows lie 4 p bytes apart in xw, the same L1 sets for p = 4096 */
        float xb[16 * PD_MAXK];
        for (int64_t k = 0; k < dk; k++) {
          _mm256_storeu_ps(xb + k * 16, _mm256_loadu_ps(xw + (h * dk + k) * p + b0));
          _mm256_storeu_ps(xb + k * 16 + 8, _mm256_loadu_ps(xw + (h * dk + k) * p + b0 + 8));
        }
        for (int64_t t = 0; t < nt; t++) {
          const float* a = v + i * sn + h * sh + t * st;
          __m256 d0 = _mm256_setzero_ps(), d1 = d0, e0 = d0, e1 = d0;
          int64_t k = 0;
          for (; k + 2 <= dk; k += 2) { /* two chains: the FMA latency hidden */
            const __m256 b = _mm256_broadcast_ss(a + k), c = _mm256_broadcast_ss(a + k + 1);
            d0 = _mm256_fmadd_ps(b, _mm256_loadu_ps(xb + k * 16), d0);
            d1 = _mm256_fmadd_ps(b, _mm256_loadu_ps(xb + k * 16 + 8), d1);
            e0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(xb + (k + 1) * 16), e0);
            e1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(xb + (k + 1) * 16 + 8), e1);
          }
          if (k < dk) {
            const __m256 b = _mm256_broadcast_ss(a + k);
            d0 = _mm256_fmadd_ps(b, _mm256_loadu_ps(xb + k * 16), d0);
            d1 = _mm256_fmadd_ps(b, _mm256_loadu_ps(xb + k * 16 + 8), d1);
          }
          const float* pr = probs + ((i * nh + h) * nt + t) * p + b0;
          o0 = _mm256_fmadd_ps(_mm256_loadu_ps(pr), _mm256_add_ps(d0, e0), o0);
          o1 = _mm256_fmadd_ps(_mm256_loadu_ps(pr + 8), _mm256_add_ps(d1, e1), o1);
        }
      }
      _mm256_storeu_ps(out + i * p + b0, o0);
      _mm256_storeu_ps(out + i * p + b0 + 8, o1);
    }
  }
  return 0;
}
