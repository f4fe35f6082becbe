/* The exact GELU (approximate="none") in vector registers, for geosam's C kernels (cpu_decoder.c, cpu_hq.c).
 * Included, not compiled on its own; geosam/models/cpu_build.py hashes it with every kernel source. */
#ifndef GEOSAM_CPU_GELU_H
#define GEOSAM_CPU_GELU_H
#include <immintrin.h>

/* erf(x) as Eigen's generic_fast_erf_float: x clamped to [-4, 4] (erf is +-1 in float beyond), an odd degree-13
 * polynomial over an even degree-8 one; no exp, one division (Eigen's error bound: a few ulp). GELU (approximate=
 * "none"): x * 0.5 * (1 + erf(x / sqrt 2)). One body for both widths: V the vector type, P the intrinsics' prefix
 * (_mm256 for erf_rational / gelu, _mm512 for erf_rational512 / gelu512 below: the same operations lane by lane,
 * so the same bits), ATTR their target. */
#define ERF_GELU(ERF, GELU, V, P, ATTR)                                                                             \
  static inline __attribute__((always_inline)) ATTR V ERF(V x) {                                                    \
    x = P##_max_ps(P##_min_ps(x, P##_set1_ps(4.f)), P##_set1_ps(-4.f));                                              \
    const V x2 = P##_mul_ps(x, x);                                                                                  \
    V p = P##_fmadd_ps(x2, P##_set1_ps(-2.72614225801306e-10f), P##_set1_ps(2.77068142495902e-08f));                 \
    p = P##_fmadd_ps(x2, p, P##_set1_ps(-2.10102402082508e-06f));                                                   \
    p = P##_fmadd_ps(x2, p, P##_set1_ps(-5.69250639462346e-05f));                                                   \
    p = P##_fmadd_ps(x2, p, P##_set1_ps(-7.34990630326855e-04f));                                                   \
    p = P##_fmadd_ps(x2, p, P##_set1_ps(-2.95459980854025e-03f));                                                   \
    p = P##_fmadd_ps(x2, p, P##_set1_ps(-1.60960333262415e-02f));                                                   \
    V q = P##_fmadd_ps(x2, P##_set1_ps(-1.45660718464996e-05f), P##_set1_ps(-2.13374055278905e-04f));                \
    q = P##_fmadd_ps(x2, q, P##_set1_ps(-1.68282697438203e-03f));                                                   \
    q = P##_fmadd_ps(x2, q, P##_set1_ps(-7.37332916720468e-03f));                                                   \
    q = P##_fmadd_ps(x2, q, P##_set1_ps(-1.42647390514189e-02f));                                                   \
    return P##_div_ps(P##_mul_ps(x, p), q);                                                                          \
  }                                                                                                                 \
  static inline __attribute__((always_inline)) ATTR V GELU(V x) {                                                   \
    const V u = ERF(P##_mul_ps(x, P##_set1_ps(0.70710678118654752440f)));                                           \
    return P##_mul_ps(P##_mul_ps(x, P##_set1_ps(0.5f)), P##_add_ps(P##_set1_ps(1.0f), u));                           \
  }

/* A cheaper GELU for the bf16 dtype's upscaling, whose products round their inputs to bf16 (8 significant bits) anyway:
 * erf(x / sqrt 2) as x P(x^2), P of degree 8 fitted (weighted least squares, near minimax) to erf on |x / sqrt 2| <= 3,
 * x clamped there; GELU = h + h x P(x^2), h = x / 2, and 0 below the clamp (there 1 + erf would be the polynomial's
 * error, times |x|); no division. Within 6e-5 of the exact GELU (of |GELU| above 1), 6e-4 of |GELU| where that is
 * above 0.1 (checked in float32 against erf in float64); 1.9x faster than ERF_GELU's (16 lanes, Intel Xeon with AMX).
 * NaN for NaN, +inf for +inf, 0 for -inf. One body for both widths as ERF_GELU, ZERO_BELOW(x, lim, r) giving r, or 0
 * where x < lim (zero_below256 / zero_below512: the same numbers). */
#define FAST_GELU_CLAMP 4.2426405f
#define FAST_GELU(GELU, V, P, ATTR, ZERO_BELOW)                                                                     \
  static inline __attribute__((always_inline)) ATTR V GELU(V x) {                                                   \
    const V lim = P##_set1_ps(FAST_GELU_CLAMP);                                                                     \
    const V xc = P##_max_ps(P##_min_ps(x, lim), P##_sub_ps(P##_setzero_ps(), lim));                                 \
    const V t = P##_mul_ps(xc, xc);                                                                                 \
    V p = P##_fmadd_ps(t, P##_set1_ps(1.126061674e-10f), P##_set1_ps(-1.074882583e-08f));                           \
    p = P##_fmadd_ps(t, p, P##_set1_ps(4.538088376e-07f));                                                          \
    p = P##_fmadd_ps(t, p, P##_set1_ps(-1.129474640e-05f));                                                         \
    p = P##_fmadd_ps(t, p, P##_set1_ps(1.872014836e-04f));                                                          \
    p = P##_fmadd_ps(t, p, P##_set1_ps(-2.218899783e-03f));                                                         \
    p = P##_fmadd_ps(t, p, P##_set1_ps(1.963649131e-02f));                                                          \
    p = P##_fmadd_ps(t, p, P##_set1_ps(-1.326941401e-01f));                                                         \
    p = P##_fmadd_ps(t, p, P##_set1_ps(7.978063226e-01f));                                                          \
    const V h = P##_mul_ps(x, P##_set1_ps(0.5f));                                                                   \
    return ZERO_BELOW(x, P##_set1_ps(-FAST_GELU_CLAMP), P##_fmadd_ps(h, P##_mul_ps(xc, p), h));                     \
  }
static inline __attribute__((always_inline)) __m256 zero_below256(__m256 x, __m256 lim, __m256 r) {
  return _mm256_and_ps(_mm256_cmp_ps(x, lim, _CMP_NLT_UQ), r); /* NaN kept */
}
#define ZERO_BELOW512                                                                                               \
  static inline __attribute__((always_inline, target("avx512f"))) __m512 zero_below512(__m512 x, __m512 lim,       \
                                                                                      __m512 r) {                  \
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lim, _CMP_NLT_UQ), r);                                        \
  }

#endif
