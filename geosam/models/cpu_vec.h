/* AVX2 helpers shared by geosam's C kernels (cpu_kernels.c, cpu_decoder.c, cpu_heads.c, cpu_masks.c,
 * cpu_weights.c): Sleef's expf (also in 16 lanes), ATen's horizontal reductions, a 6 x 16 float32 product tile (rows
 * by pointer, written or added to), the per-thread scratch buffer of a parallel region, and a run of floats fetched
 * into L2. Included, not compiled on its own; geosam/models/cpu_build.py hashes it with every kernel source, so a
 * change here rebuilds them. */
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

/* The n floats from x fetched into L2, a cache line (16 floats) at a time: for the kernels that read many rows 4 p
 * bytes apart (one prompt's 56 rows of scores or weights at p = 4096), more streams than the hardware's prefetchers
 * follow, the next block of each row is fetched while the current one is worked on. */
static inline void prefetch_l2(const float* x, int64_t n) {
  for (int64_t c = 0; c < n; c += 16) _mm_prefetch((const char*)(x + c), _MM_HINT_T1);
}

/* Sleef_expf8_u10 (AVX2 + FMA), as ATen's Vectorized<float>::exp(): exp_u10; and in 16 lanes (CPUs with AVX-512)
 * exp_u10_512 (below: the same bits as two exp_u10 by fewer operations). V / VI the float and integer
 * vectors, P the intrinsics' prefix, W their width in bits; ROUND rounds to the nearest integer; ENDS(d, u) is 0 where
 * d < -104 (an andnot: +0) and infinity where d > 100 */
#define EXP_U10(NAME, V, VI, P, W, ATTR, ROUND, ENDS)                                                               \
  static inline ATTR V NAME(V d) {                                                                                  \
    const V r_ln2 = P##_set1_ps(1.442695040888963407359924681001892137426645954152985934135449406931f);           \
    VI q = P##_cvtps_epi32(ROUND(P##_mul_ps(d, r_ln2)));                                                            \
    V qf = P##_cvtepi32_ps(q);                                                                                      \
    V s = P##_fmadd_ps(qf, P##_set1_ps(-0.693145751953125f), d);                                                    \
    s = P##_fmadd_ps(qf, P##_set1_ps(-1.428606765330187045e-06f), s);                                               \
    V u = P##_set1_ps(0.000198527617612853646278381f);                                                              \
    u = P##_fmadd_ps(u, s, P##_set1_ps(0.00139304355252534151077271f));                                             \
    u = P##_fmadd_ps(u, s, P##_set1_ps(0.00833336077630519866943359f));                                             \
    u = P##_fmadd_ps(u, s, P##_set1_ps(0.0416664853692054748535156f));                                              \
    u = P##_fmadd_ps(u, s, P##_set1_ps(0.166666671633720397949219f));                                               \
    u = P##_fmadd_ps(u, s, P##_set1_ps(0.5f));                                                                      \
    u = P##_add_ps(P##_set1_ps(1.0f), P##_fmadd_ps(P##_mul_ps(s, s), u, s));                                        \
    VI q1 = P##_srai_epi32(q, 1); /* ldexp in two steps: u * 2^(q>>1) * 2^(q - (q>>1)) */                         \
    VI q2 = P##_sub_epi32(q, q1);                                                                                   \
    V p1 = P##_castsi##W##_ps(P##_slli_epi32(P##_add_epi32(q1, P##_set1_epi32(127)), 23));                          \
    V p2 = P##_castsi##W##_ps(P##_slli_epi32(P##_add_epi32(q2, P##_set1_epi32(127)), 23));                          \
    return ENDS(d, P##_mul_ps(P##_mul_ps(u, p1), p2));                                                              \
  }

#define ROUND256(x) _mm256_round_ps((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define ENDS256(d, u)                                                                                               \
  _mm256_blendv_ps(_mm256_andnot_ps(_mm256_cmp_ps((d), _mm256_set1_ps(-104.f), _CMP_LT_OQ), (u)),                  \
                   _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(_mm256_set1_ps(100.f), (d), _CMP_LT_OQ))
EXP_U10(exp_u10, __m256, __m256i, _mm256, 256, , ROUND256, ENDS256)

#define VEC512 __attribute__((target("avx512f,fma"), always_inline))

/* exp_u10 in 16 lanes with the same bits: the same reduction and polynomial, then u 2^q by one vscalefps where Sleef
 * multiplies by 2^(q >> 1) and 2^(q - (q >> 1)) (both exact while normal, each form rounding once into the
 * subnormals and overflowing to infinity alike) on q rounded in float (no conversions to integers and back), and
 * Sleef's ends: 0 below -104 (-inf included), infinity above 100 (+inf, where vscalefps would give NaN). 16 fewer
 * operations a vector: cpu_weights.c's softmax of 7 x 8 rows over 4096 positions 234 -> 196 us a prompt (Intel Xeon
 * with AMX, one thread); every output of its load-time and test cases the AVX2 path's bits. */
static inline VEC512 __m512 exp_u10_512(__m512 d) {
  const __m512 q = _mm512_roundscale_ps(
      _mm512_mul_ps(d, _mm512_set1_ps(1.442695040888963407359924681001892137426645954152985934135449406931f)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 s = _mm512_fmadd_ps(q, _mm512_set1_ps(-0.693145751953125f), d);
  s = _mm512_fmadd_ps(q, _mm512_set1_ps(-1.428606765330187045e-06f), s);
  __m512 u = _mm512_set1_ps(0.000198527617612853646278381f);
  u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(0.00139304355252534151077271f));
  u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(0.00833336077630519866943359f));
  u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(0.0416664853692054748535156f));
  u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(0.166666671633720397949219f));
  u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(0.5f));
  u = _mm512_add_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(_mm512_mul_ps(s, s), u, s));
  u = _mm512_maskz_mov_ps(~_mm512_cmp_ps_mask(d, _mm512_set1_ps(-104.f), _CMP_LT_OQ), _mm512_scalef_ps(u, q));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(_mm512_set1_ps(100.f), d, _CMP_LT_OQ), u, _mm512_set1_ps(__builtin_inff()));
}

/* the low and high 8 lanes of a 16-lane vector */
static inline VEC512 __m256 low8(__m512 x) { return _mm512_castps512_ps256(x); }
static inline VEC512 __m256 high8(__m512 x) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)); }

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

/* out[r][0:16] (or 0:8 without `wide`) (+= with `add`) sum_{k < kn} a[r][k] panel[k sp + 0:16] for `rows` (<= 6)
 * rows: one FMA chain per output over k from zero, 6 x 16 outputs in 12 registers */
static inline __attribute__((always_inline)) void tile_6x16(const float* const* a, const float* panel, int64_t sp,
                                                            int64_t kn, float* const* out, int add, const int rows,
                                                            const int wide) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
         c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t k = 0; k < kn; k++) {
    const __m256 b0 = _mm256_loadu_ps(panel + k * sp), b1 = wide ? _mm256_loadu_ps(panel + k * sp + 8) : b0;
    __m256 x;
#define T6_ROW(r, y0, y1)                        \
  if (rows > r) {                                \
    x = _mm256_broadcast_ss(a[r] + k);           \
    y0 = _mm256_fmadd_ps(x, b0, y0);             \
    if (wide) y1 = _mm256_fmadd_ps(x, b1, y1);   \
  }
    T6_ROW(0, c00, c01) T6_ROW(1, c10, c11) T6_ROW(2, c20, c21) T6_ROW(3, c30, c31) T6_ROW(4, c40, c41)
    T6_ROW(5, c50, c51)
#undef T6_ROW
  }
#define T6_OUT(r, y0, y1)                                                                      \
  if (rows > r) {                                                                             \
    float* o = out[r];                                                                        \
    _mm256_storeu_ps(o, add ? _mm256_add_ps(_mm256_loadu_ps(o), y0) : y0);                   \
    if (wide) _mm256_storeu_ps(o + 8, add ? _mm256_add_ps(_mm256_loadu_ps(o + 8), y1) : y1); \
  }
  T6_OUT(0, c00, c01) T6_OUT(1, c10, c11) T6_OUT(2, c20, c21) T6_OUT(3, c30, c31) T6_OUT(4, c40, c41)
  T6_OUT(5, c50, c51)
#undef T6_OUT
}

/* tile_6x16 with the row count and width known at compile time for each case */
static inline void tile_rows(const float* const* a, const float* panel, int64_t sp, int64_t kn, float* const* out,
                             int add, int rows, int wide) {
#define TR_CASE(r)                                                 \
  case r:                                                          \
    if (wide) tile_6x16(a, panel, sp, kn, out, add, r, 1);         \
    else tile_6x16(a, panel, sp, kn, out, add, r, 0);              \
    break;
  switch (rows) { TR_CASE(6) TR_CASE(5) TR_CASE(4) TR_CASE(3) TR_CASE(2) default: TR_CASE(1) }
#undef TR_CASE
}

/* s[r, 0:16] = sum_k q[r, k] * panel[k, 0:16] for `rows` (<= 6) rows `sq` apart, outputs `ss` apart */
static inline void qk_rows(const float* q, int64_t sq, const float* panel, int64_t d, float* s, int64_t ss, int rows) {
  const float* a[QK_ROWS];
  float* out[QK_ROWS];
  for (int r = 0; r < QK_ROWS; r++) {
    a[r] = q + (r < rows ? r : 0) * sq;
    out[r] = s + (r < rows ? r : 0) * ss;
  }
  tile_rows(a, panel, 16, d, out, 0, rows, 1);
}

#endif
