/* bf16 pieces shared by geosam's AVX-512 BF16 kernels (cpu_attention512.c, cpu_decoder.c): the functions' target,
 * float32 -> bf16 rounding, a pair of bf16 in every lane, and vdpbf16ps (two float32 FMAs' work per instruction,
 * sums in float32). Called only where the CPU has AVX-512 BF16 (the Python side checks its flags). Included, not
 * compiled on its own; geosam/models/cpu_build.py hashes it with every kernel source, so a change here rebuilds
 * them. */
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

#endif
