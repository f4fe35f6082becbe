/* Softmax over the last axis, float32, bit for bit what ATen's AVX2 kernel computes.
 *
 * ATen's `_vec_softmax_lastdim` (torch.softmax over the last dim of a contiguous
 * float32 tensor, AVX2 dispatch): per row the maximum (vector reduction, then
 * ATen's horizontal reduction order), exp(x - max) with Sleef's expf8_u10, the
 * sum of those in the same order, then each multiplied by 1 / sum. The same
 * operations in the same order give the same bits; what is gained is that each
 * row is read from memory once and finished while it is in cache (ATen makes a
 * separate pass over the whole block for every step), and that SAM's relative
 * position terms are added in the same pass as the maximum. Built with
 * -ffp-contract=off so that the compiler fuses no multiply-add ATen does not.
 * geosam/models/cpu_softmax.py compiles, loads and checks it against torch.
 */
#include <immintrin.h>
#include <stdint.h>

/* Sleef_expf8_u10 (AVX2 + FMA), as ATen's Vectorized<float>::exp() */
static inline __m256 exp_u10(__m256 d) {
  const __m256 r_ln2 = _mm256_set1_ps(1.442695040888963407359924681001892137426645954152985934135449406931f);
  __m256i q = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(d, r_ln2), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  __m256 qf = _mm256_cvtepi32_ps(q);
  __m256 s = _mm256_fmadd_ps(qf, _mm256_set1_ps(-0.693145751953125f), d);
  s = _mm256_fmadd_ps(qf, _mm256_set1_ps(-1.428606765330187045e-06f), s);
  __m256 u = _mm256_set1_ps(0.000198527617612853646278381f);
  u = _mm256_fmadd_ps(u, s, _mm256_set1_ps(0.00139304355252534151077271f));
  u = _mm256_fmadd_ps(u, s, _mm256_set1_ps(0.00833336077630519866943359f));
  u = _mm256_fmadd_ps(u, s, _mm256_set1_ps(0.0416664853692054748535156f));
  u = _mm256_fmadd_ps(u, s, _mm256_set1_ps(0.166666671633720397949219f));
  u = _mm256_fmadd_ps(u, s, _mm256_set1_ps(0.5f));
  u = _mm256_add_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(_mm256_mul_ps(s, s), u, s));
  __m256i q1 = _mm256_srai_epi32(q, 1); /* ldexp in two steps: u * 2^(q>>1) * 2^(q - (q>>1)) */
  __m256i q2 = _mm256_sub_epi32(q, q1);
  __m256 p1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(q1, _mm256_set1_epi32(127)), 23));
  __m256 p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(q2, _mm256_set1_epi32(127)), 23));
  u = _mm256_mul_ps(_mm256_mul_ps(u, p1), p2);
  u = _mm256_andnot_ps(_mm256_cmp_ps(d, _mm256_set1_ps(-104.f), _CMP_LT_OQ), u);
  return _mm256_blendv_ps(u, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(_mm256_set1_ps(100.f), d, _CMP_LT_OQ));
}

/* ATen's vec_reduce_all for 8 floats: halves, then pairs, then neighbours */
static inline float reduce_max(__m256 v) {
  v = _mm256_max_ps(v, _mm256_permute2f128_ps(v, v, 1));
  v = _mm256_max_ps(v, _mm256_shuffle_ps(v, v, 0x4E));
  return _mm256_cvtss_f32(_mm256_max_ps(v, _mm256_shuffle_ps(v, v, 0xB1)));
}
static inline float reduce_add(__m256 v) {
  v = _mm256_add_ps(v, _mm256_permute2f128_ps(v, v, 1));
  v = _mm256_add_ps(v, _mm256_shuffle_ps(v, v, 0x4E));
  return _mm256_cvtss_f32(_mm256_add_ps(v, _mm256_shuffle_ps(v, v, 0xB1)));
}

/* ATen's vec::maximum: the larger, NaN if either is NaN */
static inline __m256 vmax(__m256 a, __m256 b) {
  return _mm256_or_ps(_mm256_max_ps(a, b), _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
}

static inline __m256i tail_mask(int64_t n) { /* the first n (0..7) lanes */
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* max of a row (n >= 8) as ATen's reduce_all: the first vector, then the full ones, then the tail's lanes */
static inline float row_max(const float* x, int64_t n) {
  int64_t d, full = n - n % 8;
  __m256 acc = _mm256_loadu_ps(x);
  for (d = 8; d < full; d += 8) acc = vmax(acc, _mm256_loadu_ps(x + d));
  if (d < n) {
    __m256i m = tail_mask(n - d);
    acc = _mm256_blendv_ps(acc, vmax(acc, _mm256_maskload_ps(x + d, m)), _mm256_castsi256_ps(m));
  }
  return reduce_max(acc);
}

/* y = softmax of a row x (n >= 8) whose maximum is mx; y may be x */
static inline void row_softmax(const float* x, float* y, int64_t n, float mx) {
  int64_t d, full = n - n % 8;
  __m256 vm = _mm256_set1_ps(mx);
  __m256 acc = exp_u10(_mm256_sub_ps(_mm256_loadu_ps(x), vm));
  _mm256_storeu_ps(y, acc);
  for (d = 8; d < full; d += 8) {
    __m256 e = exp_u10(_mm256_sub_ps(_mm256_loadu_ps(x + d), vm));
    _mm256_storeu_ps(y + d, e);
    acc = _mm256_add_ps(acc, e);
  }
  __m256i m = tail_mask(n - full);
  if (d < n) { /* ATen: exp of the zero-filled tail, stored in part, then summed as loaded back */
    __m256 e = exp_u10(_mm256_sub_ps(_mm256_maskload_ps(x + d, m), vm));
    _mm256_maskstore_ps(y + d, m, e);
    __m256 back = _mm256_maskload_ps(y + d, m);
    acc = _mm256_blendv_ps(acc, _mm256_add_ps(acc, back), _mm256_castsi256_ps(m));
  }
  __m256 inv = _mm256_set1_ps(1.0f / reduce_add(acc));
  for (d = 0; d < full; d += 8) _mm256_storeu_ps(y + d, _mm256_mul_ps(_mm256_loadu_ps(y + d), inv));
  if (d < n) _mm256_maskstore_ps(y + d, m, _mm256_mul_ps(_mm256_maskload_ps(y + d, m), inv));
}

/* y = the softmax of each of `rows` rows of n floats (row stride n) of x; y may be x; n >= 8 */
void geosam_softmax(const float* x, float* y, int64_t rows, int64_t n, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t i = 0; i < rows; i++) row_softmax(x + i * n, y + i * n, n, row_max(x + i * n, n));
}

/* SAM's relative positions then softmax, in place: row i of x (hh x ww scores, key row-major) gets
 * (x + rel_h[i, key row]) + rel_w[i, key column], as torch's two broadcast add_ calls, then its softmax.
 * rel_h rows are hh floats, `sh` apart; rel_w rows ww floats, `sw` apart; hh * ww >= 8. */
void geosam_rel_softmax_(float* x, const float* rel_h, const float* rel_w, int64_t rows, int64_t hh, int64_t ww,
                         int64_t sh, int64_t sw, int threads) {
  const int64_t n = hh * ww, full = ww - ww % 8;
  const __m256i m = tail_mask(ww - full);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t i = 0; i < rows; i++) {
    float* r = x + i * n;
    const float* h = rel_h + i * sh;
    const float* w = rel_w + i * sw;
    for (int64_t a = 0; a < hh; a++) {
      __m256 vh = _mm256_set1_ps(h[a]);
      float* ra = r + a * ww;
      int64_t b;
      for (b = 0; b < full; b += 8)
        _mm256_storeu_ps(ra + b, _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(ra + b), vh), _mm256_loadu_ps(w + b)));
      if (b < ww)
        _mm256_maskstore_ps(ra + b, m, _mm256_add_ps(_mm256_add_ps(_mm256_maskload_ps(ra + b, m), vh), _mm256_maskload_ps(w + b, m)));
    }
    row_softmax(r, r, n, row_max(r, n));
  }
}
