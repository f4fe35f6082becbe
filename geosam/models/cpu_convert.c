/* The bf16 encoder's passes between float32 and bf16 (geosam/models/fast_encoder.py's low-precision layers), one
 * pass each in AVX-512 registers.
 *
 * Under autocast the residual stream stays float32 while the products run in bf16: every layer rounds its two layer
 * norms' outputs and its attention's output to bf16 for the next product, and adds two bf16 results into the
 * stream. torch rounds with its AVX2 copy kernel (16 numbers a step) and adds a bf16 tensor to a float32 one by
 * widening it into a new float32 tensor first, then adding: three passes over 12 MiB for every residual add of a
 * ViT-B at 1024 px. Here `geosam_to_bf16` rounds as ATen's vectorised conversion does (round to nearest even by
 * integer arithmetic, NaN to 0xffff) and `geosam_add_bf16` widens and adds in one pass (a bf16 number widens to
 * float32 exactly, and x + h is what torch's add computes): the same bits, which geosam/models/cpu_convert.py
 * checks before using them. `geosam_layer_norm_bf16` is torch's float32 layer norm with its output rounded to bf16
 * in the same pass (section 2).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include "cpu_bf16.h" /* round16_aten, bf16_to_f32 */

#define T512 __attribute__((target("avx512f")))

/* y[i] = bf16(x[i]) for i < n, n a multiple of 16 */
T512 int geosam_to_bf16(const float* x, uint16_t* y, int64_t n, int threads) {
  if (n % 16) return -1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && n >= (1 << 16))
  for (int64_t i = 0; i < n; i += 16) _mm256_storeu_si256((__m256i*)(y + i), round16_aten(_mm512_loadu_ps(x + i)));
  return 0;
}

/* x[0:16] += float(h[0:16]) (h bf16: widened exactly, one float32 add, as torch's mixed add) */
INLINE_F512 void add16_bf16(float* x, const uint16_t* h) {
  _mm512_storeu_ps(x, _mm512_add_ps(_mm512_loadu_ps(x), bf16_to_f32(_mm256_loadu_si256((const __m256i*)h))));
}

/* x[i] += float(h[i]) for i < n (h bf16), n a multiple of 16 */
T512 int geosam_add_bf16(float* x, const uint16_t* h, int64_t n, int threads) {
  if (n % 16) return -1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && n >= (1 << 16))
  for (int64_t i = 0; i < n; i += 16) add16_bf16(x + i, h + i);
  return 0;
}

/* out[b, y, x, c] = bf16(float(prev[b, y / 2, x / 2, c]) + feat[b, y, x, c]) in channels-last layouts: an FPN level's
 * nearest 2x upsampling, skip sum and the rounding for the convolution after it in one pass (SAM 3's pixel decoder
 * under bf16 autocast: torch upsamples, adds the float32 feature in its mixed-dtype loop and rounds the float32 sum in
 * a third pass). The sum is torch's (prev widened exactly, one float32 add), rounded as ATen rounds. prev: bf16
 * (prev16) or float32, (B, H / 2, W / 2, C) contiguous; feat: float32, (H, W, C) contiguous for each batch entry, fb
 * numbers apart (0: one feature for every entry); out: (B, H, W, C) contiguous. C a multiple of 16, H and W even. */
T512 int geosam_upsample2_add_bf16(const void* prev, int prev16, const float* feat, int64_t fb, int64_t B, int64_t H,
                                   int64_t W, int64_t C, uint16_t* out, int threads) {
  if (C % 16 || H % 2 || W % 2 || C <= 0 || H <= 0 || W <= 0) return -1;
  const int64_t h2 = H / 2, w2 = W / 2, pixels = B * H * W;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && pixels * C >= (1 << 16))
  for (int64_t q = 0; q < pixels; q++) {
    const int64_t b = q / (H * W), y = (q / W) % H, x = q % W;
    const int64_t src = ((b * h2 + y / 2) * w2 + x / 2) * C;
    const float* f = feat + b * fb + (y * W + x) * C;
    uint16_t* o = out + q * C;
    for (int64_t c = 0; c < C; c += 16) {
      const __m512 p = prev16 ? bf16_to_f32(_mm256_loadu_si256((const __m256i*)((const uint16_t*)prev + src + c)))
                              : _mm512_loadu_ps((const float*)prev + src + c);
      _mm256_storeu_si256((__m256i*)(o + c), round16_aten(_mm512_add_ps(p, _mm512_loadu_ps(f + c))));
    }
  }
  return 0;
}

/* 2. A layer norm over rows of n floats, its output rounded to bf16: what torch's F.layer_norm then .to(bfloat16)
 * give, bit for bit, in one pass (the bf16 encoder's two norms a layer: the float32 output written, then read again
 * and rounded, 12 + 12 + 6 MiB a norm for a ViT-B at 1024 px). torch (2.x, this build) normalises with its AVX2
 * kernel even on AVX-512 CPUs: ATen's RowwiseMoments (Welford over 8-lane vectors in chunks of 16 vectors, the chunks'
 * moments combined in a cascade, then the lanes' in order; the scalar steps as GCC contracts them, fused multiply-adds
 * where ATen's expression allows one), rstd = 1 / sqrt(var + eps), then y = (x - mean) * rstd * w + b, the last two
 * fused. Ported operation for operation (-ffp-contract=off here: each fusion written out); geosam/models/cpu_convert.py
 * compares it with torch on every load and uses it only where they agree. n a multiple of 16. */
#define TLN __attribute__((target("avx2,fma,avx512f"))) /* AVX-512F only, as the library is loaded */

static inline TLN void add_moments8(int64_t m0_add, __m256 m1_add, __m256 m2_add, int64_t* m0, __m256* m1, __m256* m2) {
  const int64_t n = *m0 + m0_add;
  const __m256 c = _mm256_set1_ps(n == 0 ? 0.f : (float)m0_add / (float)n);
  const __m256 delta = _mm256_sub_ps(m1_add, *m1);
  const __m256 m2_tmp = _mm256_add_ps(*m2, m2_add);
  const __m256 c_delta = _mm256_mul_ps(c, delta);
  const __m256 m0_delta = _mm256_mul_ps(delta, _mm256_set1_ps((float)*m0));
  *m1 = _mm256_add_ps(*m1, c_delta);
  *m2 = _mm256_fmadd_ps(m0_delta, c_delta, m2_tmp);
  *m0 = n;
}

static inline void add_moments1(int64_t m0_add, float m1_add, float m2_add, int64_t* m0, float* m1, float* m2) {
  const int64_t n = *m0 + m0_add;
  const float c = n == 0 ? 0.f : (float)m0_add / (float)n;
  const float delta = m1_add - *m1;
  *m1 = fmaf(c, delta, *m1);
  *m2 = *m2 + fmaf(delta * delta * c, (float)*m0, m2_add);
  *m0 = n;
}

/* ATen's RowwiseMomentsImpl<float> on 8-lane vectors for R <= 4 rows of n floats each (rows sx apart; n a multiple
 * of 8): each row's mean and biased variance. Each row's operations are ATen's, in its order; the R rows' chains
 * run side by side (one row alone waits on its Welford chain: a subtraction, then a fused multiply-add on it) */
static inline __attribute__((always_inline)) TLN void row_moments_r(const float* x, int64_t sx, int64_t n, float* mean,
                                                                     float* var, const int R) {
  const int64_t nv = n / 8, m = (nv + 15) / 16;
  int depth = 0;
  if (m <= 2) depth = (int)(m - 1);
  else for (int64_t v = m - 1; v; v >>= 1) depth++;
  int64_t m0s[64] = {0}; /* the cascade's counts, the same for every row */
  __m256 m1s[64][4], m2s[64][4];
  for (int i = 0; i < depth + 1 && i < 64; i++)
    for (int k = 0; k < R; k++) m1s[i][k] = m2s[i][k] = _mm256_setzero_ps();
  for (int64_t i = 0; i < m; i++) {
    const int64_t m0 = nv - i * 16 < 16 ? nv - i * 16 : 16;
    __m256 m1v[4], m2v[4];
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) m1v[k] = m2v[k] = _mm256_setzero_ps();
    for (int64_t j = 0; j < m0; j++) {
      const __m256 c = _mm256_set1_ps(1.0f / (float)(j + 1));
#pragma GCC unroll 4
      for (int k = 0; k < R; k++) {
        const __m256 xv = _mm256_loadu_ps(x + k * sx + i * 128 + j * 8);
        const __m256 d = _mm256_sub_ps(xv, m1v[k]);
        m1v[k] = _mm256_fmadd_ps(c, d, m1v[k]);
        m2v[k] = _mm256_fmadd_ps(d, _mm256_sub_ps(xv, m1v[k]), m2v[k]);
      }
    }
    const int64_t s0 = m0s[0];
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) {
      int64_t t = s0;
      add_moments8(m0, m1v[k], m2v[k], &t, &m1s[0][k], &m2s[0][k]);
    }
    m0s[0] = s0 + m0;
    int64_t mask = i + 1;
    for (int j = 1; j < depth && (mask & 1) == 0; ++j) {
      const int64_t a0 = m0s[j - 1], b0 = m0s[j];
#pragma GCC unroll 4
      for (int k = 0; k < R; k++) {
        int64_t t = b0;
        add_moments8(a0, m1s[j - 1][k], m2s[j - 1][k], &t, &m1s[j][k], &m2s[j][k]);
        m1s[j - 1][k] = m2s[j - 1][k] = _mm256_setzero_ps();
      }
      m0s[j] = a0 + b0;
      m0s[j - 1] = 0;
      mask >>= 1;
    }
  }
  for (int i = 1; i < depth; i++) {
    const int64_t a0 = m0s[i], b0 = m0s[0];
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) {
      int64_t t = b0;
      add_moments8(a0, m1s[i][k], m2s[i][k], &t, &m1s[0][k], &m2s[0][k]);
    }
    m0s[0] = a0 + b0;
  }
  for (int k = 0; k < R; k++) {
    float m1a[8], m2a[8];
    _mm256_storeu_ps(m1a, m1s[0][k]);
    _mm256_storeu_ps(m2a, m2s[0][k]);
    int64_t c0 = 0;
    float m1 = 0.f, m2 = 0.f;
    for (int l = 0; l < 8; l++) add_moments1(nv, m1a[l], m2a[l], &c0, &m1, &m2);
    mean[k] = m1;
    var[k] = m2 / (float)n;
  }
}

/* row_moments_r with the row count known at compile time: one row, or four side by side */
static TLN void row_moments(const float* x, int64_t n, float* mean, float* var) {
  row_moments_r(x, n, n, mean, var, 1);
}
static TLN void row_moments4(const float* x, int64_t n, float* mean, float* var) {
  row_moments_r(x, n, n, mean, var, 4);
}

/* rows r .. r + R of x normalised, scaled, shifted and rounded into y (see geosam_layer_norm_bf16) */
static inline TLN void norm_rows(const float* x, const float* w, const float* b, float eps, int64_t r, int R,
                                 int64_t n, const float* mean, const float* var, uint16_t* y) {
  for (int k = 0; k < R; k++) {
    const float* xr = x + (r + k) * n;
    const __m256 rs = _mm256_set1_ps(1.0f / sqrtf(var[k] + eps)), nm = _mm256_set1_ps(-mean[k]);
    for (int64_t j = 0; j < n; j += 16) {
      const __m256 lo = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_add_ps(_mm256_loadu_ps(xr + j), nm), rs),
                                        _mm256_loadu_ps(w + j), _mm256_loadu_ps(b + j));
      const __m256 hi = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_add_ps(_mm256_loadu_ps(xr + j + 8), nm), rs),
                                        _mm256_loadu_ps(w + j + 8), _mm256_loadu_ps(b + j + 8));
      const __m512 both =
          _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
      _mm256_storeu_si256((__m256i*)(y + (r + k) * n + j), round16_aten(both));
    }
  }
}

/* y[r] (bf16) = layer_norm(x[r]) * w + b rounded, for `rows` rows of n floats (n a multiple of 16); with h,
 * x[r] += float(h[r]) first (geosam_add_bf16's adds), in the same pass: each group of four rows added, its statistics
 * taken and its outputs written while its 4 n floats are in cache (the bf16 encoder's residual add and the next layer
 * norm: the stream read once where it was read twice) */
static TLN int layer_norm_rows(float* x, const uint16_t* h, const float* w, const float* b, float eps, int64_t rows,
                               int64_t n, uint16_t* y, int threads) {
  if (n % 16 || n <= 0) return -1;
  const int64_t groups = (rows + 3) / 4;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && rows * n >= (1 << 16))
  for (int64_t g = 0; g < groups; g++) { /* four rows' statistics side by side, then their outputs */
    const int64_t r = 4 * g;
    const int R = rows - r < 4 ? (int)(rows - r) : 4;
    for (int64_t i = r * n; h != NULL && i < (r + R) * n; i += 16) add16_bf16(x + i, h + i);
    float mean[4], var[4];
    if (R == 4)
      row_moments4(x + r * n, n, mean, var);
    else
      for (int k = 0; k < R; k++) row_moments(x + (r + k) * n, n, mean + k, var + k);
    norm_rows(x, w, b, eps, r, R, n, mean, var, y);
  }
  return 0;
}

TLN int geosam_layer_norm_bf16(const float* x, const float* w, const float* b, float eps, int64_t rows, int64_t n,
                               uint16_t* y, int threads) {
  return layer_norm_rows((float*)x, NULL, w, b, eps, rows, n, y, threads); /* x only read without h */
}

TLN int geosam_add_layer_norm_bf16(float* x, const uint16_t* h, const float* w, const float* b, float eps, int64_t rows,
                                   int64_t n, uint16_t* y, int threads) {
  return layer_norm_rows(x, h, w, b, eps, rows, n, y, threads);
}

/* for the check against torch: each row's mean and 1 / sqrt(var + eps) (native_layer_norm's 2nd and 3rd outputs) */
TLN int geosam_layer_norm_moments(const float* x, float eps, int64_t rows, int64_t n, float* mean, float* rstd) {
  if (n % 16 || n <= 0) return -1;
  for (int64_t r = 0; r < rows; r++) {
    float var;
    row_moments(x + r * n, n, mean + r, &var);
    rstd[r] = 1.0f / sqrtf(var + eps);
  }
  return 0;
}

/* 3. Rotary position embedding as transformers' apply_rotary_pos_emb_2d (SAM 3's ViT) computes it:
 * out = x * cos + rot(x) * sin with rot(x)[2i] = -x[2i + 1], rot(x)[2i + 1] = x[2i], in float32 (bf16 x widened
 * exactly when x16), each product and the sum rounded once as torch's three ops round them (no FMA: the library is
 * built with -ffp-contract=off), the result rounded to bf16 as ATen's conversion rounds it when out16 (the module's
 * type_as). x: nb x nh x n rows of d numbers (d a multiple of 16, unit stride within a row), row (b, h, t) at
 * x + b sb + h sh + t sn numbers; cs, sn: the (n, d) tables, rows by t; out: the rows contiguous in that order.
 * One pass where torch's makes seven (the widening, the pair swap's stack, two products, the sum, the rounding). */
T512 int geosam_rope(const void* x, int64_t sb, int64_t sh, int64_t st, int64_t nb, int64_t nh, int64_t n, int64_t d,
                     const float* cs, const float* sn, void* out, int64_t ob, int64_t oh, int64_t ot, int x16, int out16,
                     int threads) {
  if (d % 16) return -1;
  const int64_t rows = nb * nh * n;
  const __m512i sign = _mm512_set_epi32(0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0,
                                        (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000,
                                        0, (int)0x80000000); /* lane 0 (last) and every even lane: negated */
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && rows * d >= (1 << 16))
  for (int64_t r = 0; r < rows; r++) {
    /* rows taken token by token, its heads innermost: a token's heads are side by side in a projection, so the
     * reads stream (head by head they jump a token's whole width: 11.0 vs 6.5 ms for SAM 3's q, one thread) */
    const int64_t b = r / (nh * n), t = (r / nh) % n, h = r % nh, off = b * sb + h * sh + t * st;
    const int64_t o = b * ob + h * oh + t * ot; /* the output row (b, h, t); x's own row in place (each 16 numbers
                                                  * are read before they are written, and depend on no others) */
    const float* c = cs + t * d;
    const float* s = sn + t * d;
    for (int64_t j = 0; j < d; j += 16) {
      const __m512 v = x16 ? bf16_to_f32(_mm256_loadu_si256((const __m256i*)((const uint16_t*)x + off + j)))
                           : _mm512_loadu_ps((const float*)x + off + j);
      const __m512 rot = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(_mm512_permute_ps(v, 0xB1)), sign));
      const __m512 y = _mm512_add_ps(_mm512_mul_ps(v, _mm512_loadu_ps(c + j)), _mm512_mul_ps(rot, _mm512_loadu_ps(s + j)));
      if (out16)
        _mm256_storeu_si256((__m256i*)((uint16_t*)out + o + j), round16_aten(y));
      else
        _mm512_storeu_ps((float*)out + o + j, y);
    }
  }
  return 0;
}
