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
 * checks before using them.
 */
#include <immintrin.h>
#include <stdint.h>

#define T512 __attribute__((target("avx512f")))

/* 16 floats rounded to bf16 as ATen's cvtfp32_bf16: + 0x7fff + the kept part's lowest bit, then the high half;
 * NaN -> 0xffff */
static inline T512 __m256i round16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  __m512i t = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  t = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(t, _mm512_set1_epi32(0x7fff)), u), 16);
  t = _mm512_mask_mov_epi32(_mm512_set1_epi32(0xffff), _mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), t);
  return _mm512_cvtepi32_epi16(t);
}

/* y[i] = bf16(x[i]) for i < n, n a multiple of 16 */
T512 int geosam_to_bf16(const float* x, uint16_t* y, int64_t n, int threads) {
  if (n % 16) return -1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && n >= (1 << 16))
  for (int64_t i = 0; i < n; i += 16) _mm256_storeu_si256((__m256i*)(y + i), round16(_mm512_loadu_ps(x + i)));
  return 0;
}

/* x[i] += float(h[i]) for i < n (h bf16), n a multiple of 16 */
T512 int geosam_add_bf16(float* x, const uint16_t* h, int64_t n, int threads) {
  if (n % 16) return -1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && n >= (1 << 16))
  for (int64_t i = 0; i < n; i += 16) {
    const __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(h + i))), 16);
    _mm512_storeu_ps(x + i, _mm512_add_ps(_mm512_loadu_ps(x + i), _mm512_castsi512_ps(w)));
  }
  return 0;
}
