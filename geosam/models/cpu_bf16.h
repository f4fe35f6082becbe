/* bf16 pieces shared by geosam's AVX-512 kernels (cpu_attention512.c, cpu_decoder.c, cpu_convert.c): the
 * functions' target, float32 -> bf16 rounding, a pair of bf16 in every lane, and vdpbf16ps (two float32 FMAs' work
 * per instruction, sums in float32), called only where the CPU has AVX-512 BF16 (the Python side checks its flags);
 * the widening and ATen's rounding (INLINE_F512) need AVX-512F only. Included, not compiled on its own;
 * geosam/models/cpu_build.py hashes it with every kernel source, so a change here rebuilds them. */
#ifndef GEOSAM_CPU_BF16_H
#define GEOSAM_CPU_BF16_H
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define TBF __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,fma")))
#define INLINE_BF static inline __attribute__((always_inline)) TBF

static inline uint16_t to_bf16(float f) { /* round to nearest even, as vcvtneps2bf16 (finite values) */
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

INLINE_BF __m512i pair_at(const uint16_t* p) { /* p[0], p[1] in every 32-bit lane */
  int32_t w;
  memcpy(&w, p, sizeof w);
  return _mm512_set1_epi32(w);
}

INLINE_BF __m512 dot2(__m512 acc, __m512i x, __m512i y) { return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)y); }

/* the widening needs AVX-512F only: callable from the float32 AVX-512 kernels too */
#define INLINE_F512 static inline __attribute__((always_inline, target("avx512f")))

INLINE_F512 __m512 bf16_to_f32(__m256i x) { /* 16 bf16 numbers widened to float32 (exactly: the high halves) */
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16));
}

INLINE_F512 void bf16_row_to_f32(const uint16_t* x, int64_t d, float* y) { /* d (a multiple of 16) numbers */
  for (int64_t c = 0; c < d; c += 16) _mm512_storeu_ps(y + c, bf16_to_f32(_mm256_loadu_si256((const __m256i*)(x + c))));
}

/* 16 floats rounded to bf16 as ATen's vectorised conversion (Tensor.to) rounds them: + 0x7fff + the kept part's
 * lowest bit, then the high half; NaN -> 0xffff (vcvtneps2bf16 keeps a NaN's sign and payload instead). AVX-512F
 * only: cpu_convert.c's passes and the attention's bf16 outputs */
INLINE_F512 __m256i round16_aten(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  __m512i t = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  t = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(t, _mm512_set1_epi32(0x7fff)), u), 16);
  t = _mm512_mask_mov_epi32(_mm512_set1_epi32(0xffff), _mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), t);
  return _mm512_cvtepi32_epi16(t);
}

/* kp[t][k2][j][e] = bf16(b[2 k2 + e][16 t + j]) (zero past kn) for a (kn, n) row-major b, k2 < k2n (at least
 * (kn + 1) / 2; more pads with zeros): panels of 16 columns, pairs of rows interleaved as vdpbf16ps and AMX's
 * tdpbf16ps take them */
static inline void pack_pairs(const float* b, int64_t kn, int64_t n, int64_t k2n, uint16_t* kp) {
  for (int64_t t = 0; t < n; t += 16)
    for (int64_t k2 = 0; k2 < k2n; k2++)
      for (int j = 0; j < 16; j++)
        for (int e = 0; e < 2; e++) {
          const int64_t k = 2 * k2 + e;
          kp[(t * k2n + k2 * 16 + j) * 2 + e] = k < kn ? to_bf16(b[k * n + t + j]) : 0;
        }
}

/* xb (rows_to rows of `width` bf16, width a multiple of 16) = x's first kn columns rounded to bf16 (rows x kn, rows
 * sx apart), zeros past kn and in the rows past `rows` */
INLINE_BF void rows_to_bf16(const float* x, int64_t sx, int64_t rows, int64_t rows_to, int64_t kn, int64_t width,
                            uint16_t* xb) {
  for (int64_t r = 0; r < rows_to; r++)
    for (int64_t d = 0; d < width; d += 16) {
      const int64_t left = r < rows ? kn - d : 0;
      const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1u);
      _mm256_storeu_si256((__m256i*)(xb + r * width + d), (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + r * sx + d)));
    }
}

/* BF16_TILE(ROWS, NP) defines bf16_tile_ROWSxNP: out[r][0:16 NP] = x[r] . NP panels of 16 columns for ROWS rows of x
 * (k2n pairs of bf16 each, rows sx bf16 apart), panel t at p + t 32 k2n with column l's pair k2 at 32 k2 + 2 l (the
 * vdpbf16ps layout): one chain per 16 outputs over the pairs, ROWS NP accumulators. Defined where used (the encoder's
 * attention scores, the decoder's upscaling products), so no kernel carries tiles it does not call. */
#define BF16_TILE(ROWS, NP)                                                                                          \
  INLINE_BF void bf16_tile_##ROWS##x##NP(const uint16_t* x, int64_t sx, const uint16_t* p, int64_t k2n, float* out,  \
                                         int64_t so) {                                                               \
    __m512 acc[ROWS][NP];                                                                                            \
    _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; r++)                                                           \
      _Pragma("GCC unroll 4") for (int t = 0; t < NP; t++) acc[r][t] = _mm512_setzero_ps();                          \
    for (int64_t k2 = 0; k2 < k2n; k2++) {                                                                           \
      __m512i v[NP];                                                                                                 \
      _Pragma("GCC unroll 4") for (int t = 0; t < NP; t++) v[t] = _mm512_loadu_si512(p + 32 * (t * k2n + k2));      \
      _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; r++) {                                                       \
        const __m512i xr = pair_at(x + r * sx + 2 * k2);                                                             \
        _Pragma("GCC unroll 4") for (int t = 0; t < NP; t++) acc[r][t] = dot2(acc[r][t], xr, v[t]);                  \
      }                                                                                                              \
    }                                                                                                                \
    _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; r++)                                                           \
      _Pragma("GCC unroll 4") for (int t = 0; t < NP; t++) _mm512_storeu_ps(out + r * so + 16 * t, acc[r][t]);       \
  }

#endif
