/* SAM-HQ's HQ branch after its first convolution, on AVX-512 CPUs: GELU(LayerNorm(x)) over each pixel's channels in
 * one pass.
 *
 * transformers' SamHQMaskDecoder runs, per prompt, mask_conv1 (3 x 3 to C/4 = 64 channels on the 256 x 256 upscaled
 * map) -> mask_norm (a layer norm over the channels) -> GELU -> mask_conv2. geosam's hq_decoder takes the convolution
 * from oneDNN (bf16 under the bf16 dtype) and then ran three passes over the (256 x 256, 64) map: the widening to
 * float32, the norm, the GELU (each ~2.5 ms a prompt on an Intel Xeon with AMX, 2 threads). Here each pixel's row of
 * d channels (bf16 or float32, d a multiple of 16, at most 256) is loaded into registers once: its mean, its biased
 * variance from the centred values (two passes in registers), (x - mean) / sqrt(var + eps) * w + b, the exact GELU
 * (cpu_gelu.h: Eigen's rational erf), written as float32. The same function as torch's ops to float rounding (torch
 * takes the variance by Welford's steps and its GELU's erf is another polynomial); geosam/models/cpu_hq.py checks it
 * against them before using it. With `fast`, cpu_gelu.h's FAST_GELU instead (within 6e-5 of the exact GELU, no
 * division): for inputs that come from a bf16 convolution, rounded to 8 significant bits already.
 */
#include <immintrin.h>
#include <stdint.h>
#include "cpu_bf16.h"
#include "cpu_gelu.h"

#define T512 __attribute__((target("avx512f,fma")))

ERF_GELU(erf_rational512, gelu512, __m512, _mm512, T512)
ZERO_BELOW512
FAST_GELU(fast_gelu512, __m512, _mm512, T512, zero_below512)

#define MAX_D 256

/* rows of d numbers at x (bf16 if x16, else float32), rows `sx` numbers apart; out rows d apart; fast: FAST_GELU for
 * the exact GELU. 0, or -1 for a d it does not take */
T512 int geosam_norm_gelu(const void* x, int x16, int64_t sx, int64_t rows, int64_t d, const float* w,
                          const float* b, float eps, float* out, int threads, int fast) {
  if (d % 16 || d <= 0 || d > MAX_D) return -1;
  const int64_t nv = d / 16;
  const float inv_d = 1.0f / (float)d;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && rows * d >= (1 << 16))
  for (int64_t r = 0; r < rows; r++) {
    __m512 v[MAX_D / 16];
    __m512 acc = _mm512_setzero_ps();
    for (int64_t k = 0; k < nv; k++) {
      v[k] = x16 ? bf16_to_f32(_mm256_loadu_si256((const __m256i*)((const uint16_t*)x + r * sx + 16 * k)))
                 : _mm512_loadu_ps((const float*)x + r * sx + 16 * k);
      acc = _mm512_add_ps(acc, v[k]);
    }
    const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(acc) * inv_d);
    __m512 sq = _mm512_setzero_ps();
    for (int64_t k = 0; k < nv; k++) {
      v[k] = _mm512_sub_ps(v[k], mean);
      sq = _mm512_fmadd_ps(v[k], v[k], sq);
    }
    const __m512 rstd = _mm512_set1_ps(1.0f / __builtin_sqrtf(_mm512_reduce_add_ps(sq) * inv_d + eps));
    float* o = out + r * d;
    for (int64_t k = 0; k < nv; k++) {
      const __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(v[k], rstd), _mm512_loadu_ps(w + 16 * k), _mm512_loadu_ps(b + 16 * k));
      _mm512_storeu_ps(o + 16 * k, fast ? fast_gelu512(y) : gelu512(y));
    }
  }
  return 0;
}
