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

#endif
