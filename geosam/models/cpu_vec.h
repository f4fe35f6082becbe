/* AVX2 helpers shared by geosam's C kernels (cpu_kernels.c, cpu_decoder.c, cpu_heads.c): Sleef's expf, ATen's
 * horizontal reductions, a 6 x 16 float32 product tile, and the per-thread scratch buffer of a parallel region. Included, not compiled on its own; geosam/models/cpu_build.py
 * hashes it with every kernel source, so a change here rebuilds them. */
#ifndef GEOSAM_CPU_VEC_H
#define GEOSAM_CPU_VEC_H
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

/* A thread's scratch buffer of n floats, allocated inside an OpenMP parallel region: NULL, with *failed set, when
 * out of memory (the region's loop then skips its work and the kernel reports the failure). */
static inline float* thread_buffer(size_t n, int* failed) {
  float* buf = malloc(sizeof(float) * n);
  if (buf == NULL) {
#pragma omp atomic write
    *failed = 1;
  }
  return buf;
}

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

#define QK_ROWS 6

/* s[r, 0:16] = sum_k q[r, k] * panel[k, 0:16] for `rows` (<= 6) rows; FMA chains over k from zero */
static inline __attribute__((always_inline)) void qk_tile(const float* q, int64_t sq, const float* panel, int64_t d,
                                                          float* s, int64_t ss, const int rows) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
         c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t k = 0; k < d; k++) {
    __m256 b0 = _mm256_loadu_ps(panel + k * 16), b1 = _mm256_loadu_ps(panel + k * 16 + 8), a;
    if (rows > 0) { a = _mm256_broadcast_ss(q + k); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01); }
    if (rows > 1) { a = _mm256_broadcast_ss(q + sq + k); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11); }
    if (rows > 2) { a = _mm256_broadcast_ss(q + 2 * sq + k); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21); }
    if (rows > 3) { a = _mm256_broadcast_ss(q + 3 * sq + k); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31); }
    if (rows > 4) { a = _mm256_broadcast_ss(q + 4 * sq + k); c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41); }
    if (rows > 5) { a = _mm256_broadcast_ss(q + 5 * sq + k); c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51); }
  }
  if (rows > 0) { _mm256_storeu_ps(s, c00); _mm256_storeu_ps(s + 8, c01); }
  if (rows > 1) { _mm256_storeu_ps(s + ss, c10); _mm256_storeu_ps(s + ss + 8, c11); }
  if (rows > 2) { _mm256_storeu_ps(s + 2 * ss, c20); _mm256_storeu_ps(s + 2 * ss + 8, c21); }
  if (rows > 3) { _mm256_storeu_ps(s + 3 * ss, c30); _mm256_storeu_ps(s + 3 * ss + 8, c31); }
  if (rows > 4) { _mm256_storeu_ps(s + 4 * ss, c40); _mm256_storeu_ps(s + 4 * ss + 8, c41); }
  if (rows > 5) { _mm256_storeu_ps(s + 5 * ss, c50); _mm256_storeu_ps(s + 5 * ss + 8, c51); }
}

static inline void qk_rows(const float* q, int64_t sq, const float* panel, int64_t d, float* s, int64_t ss, int rows) {
  switch (rows) {
    case 6: qk_tile(q, sq, panel, d, s, ss, 6); break;
    case 5: qk_tile(q, sq, panel, d, s, ss, 5); break;
    case 4: qk_tile(q, sq, panel, d, s, ss, 4); break;
    case 3: qk_tile(q, sq, panel, d, s, ss, 3); break;
    case 2: qk_tile(q, sq, panel, d, s, ss, 2); break;
    default: qk_tile(q, sq, panel, d, s, ss, 1); break;
  }
}

#endif
