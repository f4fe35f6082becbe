/* SAM's mask decoder on AVX2 CPUs (float32): the products of every prompt's token rows against an image side
 * projected per head, and the scores and norm cross terms built from them, one pass per block of image positions.
 *
 * geosam/models/fast_twoway.py, fast_factored.py and fast_final.py multiply each prompt's few token rows (per head,
 * inner size 16) by an image side projected per head (h, 16, P), and add further terms (products of inner size R
 * with the first layer's attention weights, per-position scalings) to the (N, h, T, P) result. torch runs one
 * product per prompt, reading the (h, 16, P) side each time, and one pass over the result per term. Here a block of
 * positions of the side is read (packed: its rows lie 4 P bytes apart, the same L1 sets for P = 4096) once for
 * all prompts' rows, 4 rows x 16 positions in registers, and every term is added while the block is in
 * registers. The same functions as torch's ops up to float rounding (sums associated differently);
 * geosam/models/cpu_heads.py checks them against torch's ops before using them.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "cpu_vec.h"
#include "cpu_amx.h" /* section 5: the final scores on AMX tiles (bf16) */

/* 1. Per-head products of many prompts' token rows against one image side projected per head, the decoder's
 * most frequent product: out[n, h, t, p] (+)= sum_k a[n, h, t, k] x[h, k, p] for every prompt n, head h, token
 * t (inner size dk: SAM's head size, 16) at every image position p. torch runs it as one product per prompt
 * ((h, T, dk) x (h, dk, P)), reading the (h, dk, P) side once per prompt; here for each block of 16 positions and
 * head the side's dk x 16 block is read once for all prompts' rows, 4 rows x 16 positions in registers (with
 * `wide`: headdot_tile512, 8 rows x 32 positions in 16-lane registers, the same bits).
 * a: rows (n, h, t) at n * sn + h * sh + t * st, dk contiguous floats; x (nh, dk, p) contiguous; out rows
 * (n, h, t) at n * on + h * oh + t * ot, p contiguous; p a multiple of 8; accumulate: add to out. */
static inline __attribute__((always_inline)) void headdot_tile(const float* const* ar, float* const* orow,
                                                               const float* xb, int64_t p, int64_t dk,
                                                               int64_t cols, int accumulate, const int rows) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  const int two = cols > 8;
  for (int64_t k = 0; k < dk; k++) {
    const __m256 x0 = _mm256_loadu_ps(xb + k * p), x1 = two ? _mm256_loadu_ps(xb + k * p + 8) : x0;
    __m256 b;
    if (rows > 0) { b = _mm256_broadcast_ss(ar[0] + k); c00 = _mm256_fmadd_ps(b, x0, c00); c01 = _mm256_fmadd_ps(b, x1, c01); }
    if (rows > 1) { b = _mm256_broadcast_ss(ar[1] + k); c10 = _mm256_fmadd_ps(b, x0, c10); c11 = _mm256_fmadd_ps(b, x1, c11); }
    if (rows > 2) { b = _mm256_broadcast_ss(ar[2] + k); c20 = _mm256_fmadd_ps(b, x0, c20); c21 = _mm256_fmadd_ps(b, x1, c21); }
    if (rows > 3) { b = _mm256_broadcast_ss(ar[3] + k); c30 = _mm256_fmadd_ps(b, x0, c30); c31 = _mm256_fmadd_ps(b, x1, c31); }
  }
#define HD_OUT(r, v0, v1)                                                                                   \
  if (rows > r) {                                                                                          \
    float* o = orow[r];                                                                                    \
    _mm256_storeu_ps(o, accumulate ? _mm256_add_ps(_mm256_loadu_ps(o), v0) : v0);                         \
    if (two) _mm256_storeu_ps(o + 8, accumulate ? _mm256_add_ps(_mm256_loadu_ps(o + 8), v1) : v1);         \
  }
  HD_OUT(0, c00, c01) HD_OUT(1, c10, c11) HD_OUT(2, c20, c21) HD_OUT(3, c30, c31)
#undef HD_OUT
}

/* rows r .. r + t of headdot's (prompt, token) rows (fewer at the end: those past `rows` repeat the first) for head
 * base ah / oh0: their rows of a and of out; returns how many are real */
static inline int headdot_rows(const float* ah, float* oh0, const int64_t* off, int64_t rows, int64_t r, int t,
                               const float** ar, float** orow) {
  const int m = rows - r < t ? (int)(rows - r) : t;
  for (int i = 0; i < t; i++) {
    const int64_t ri = r + (i < m ? i : 0);
    ar[i] = ah + off[2 * ri];
    orow[i] = oh0 + off[2 * ri + 1];
  }
  return m;
}

/* headdot_tile in 16-lane registers (CPUs with AVX-512): 8 rows x 32 positions, `cols` (8 .. 32) of them real;
 * each output the same FMA chain over k as there (the same bits) */
#define HD512 __attribute__((target("avx512f,fma")))
static inline __attribute__((always_inline)) HD512 void headdot_tile512(const float* const* ar, float* const* orow,
                                                                        const float* xb, int64_t p, int64_t dk,
                                                                        int64_t cols, int accumulate, const int rows) {
  const __mmask16 m0 = cols >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << cols) - 1u);
  const __mmask16 m1 = cols >= 32 ? (__mmask16)0xFFFF : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1u);
  __m512 c0[8], c1[8];
  _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) c0[i] = c1[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < dk; k++) {
    const __m512 x0 = _mm512_maskz_loadu_ps(m0, xb + k * p), x1 = _mm512_maskz_loadu_ps(m1, xb + k * p + 16);
    _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) if (rows > i) {
      const __m512 b = _mm512_set1_ps(ar[i][k]);
      c0[i] = _mm512_fmadd_ps(b, x0, c0[i]);
      c1[i] = _mm512_fmadd_ps(b, x1, c1[i]);
    }
  }
  _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) if (rows > i) {
    float* o = orow[i];
    if (accumulate) {
      c0[i] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, o), c0[i]);
      c1[i] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, o + 16), c1[i]);
    }
    _mm512_mask_storeu_ps(o, m0, c0[i]);
    _mm512_mask_storeu_ps(o + 16, m1, c1[i]);
  }
}

/* headdot_tile512 over one head's block b0 .. b1 of positions (packed at xpk) for every row */
static HD512 void headdot_block512(const float* ah, float* oh0, const int64_t* off, int64_t rows, const float* xpk,
                                   int64_t b0, int64_t b1, int64_t dk, int accumulate) {
  const int64_t w = b1 - b0;
  for (int64_t r = 0; r < rows; r += 8) {
    const float* ar[8];
    float* orow[8];
    const int m = headdot_rows(ah, oh0, off, rows, r, 8, ar, orow);
    for (int64_t p0 = b0; p0 < b1; p0 += 32) {
      const int64_t cols = b1 - p0 < 32 ? b1 - p0 : 32;
      const float* xb = xpk + (p0 - b0);
      float* o[8];
      for (int i = 0; i < 8; i++) o[i] = orow[i] + p0;
      switch (m) {
#define HD_CASE(k) case k: headdot_tile512(ar, o, xb, w, dk, cols, accumulate, k); break;
        HD_CASE(8) HD_CASE(7) HD_CASE(6) HD_CASE(5) HD_CASE(4) HD_CASE(3) HD_CASE(2)
#undef HD_CASE
        default: headdot_tile512(ar, o, xb, w, dk, cols, accumulate, 1); break;
      }
    }
  }
}

#define HD_BLOCK 256

int geosam_headdot(const float* a, int64_t sn, int64_t sh, int64_t st, const float* x, float* out, int64_t on,
                   int64_t oh, int64_t ot, int64_t n, int64_t nh, int64_t nt, int64_t dk, int64_t p, int accumulate,
                   int threads, int wide) {
  if (p % 8 != 0) return 1;
  const int64_t rows = n * nt, nblk = (p + HD_BLOCK - 1) / HD_BLOCK;
  int64_t* off = malloc(sizeof(int64_t) * (size_t)(2 * rows)); /* each row's offsets in a and out, head 0 */
  if (off == NULL) return 2;
  for (int64_t r = 0; r < rows; r++) {
    off[2 * r] = (r / nt) * sn + (r % nt) * st;
    off[2 * r + 1] = (r / nt) * on + (r % nt) * ot;
  }
  /* a block of HD_BLOCK positions of x (dk x 256 floats: 16 KiB for SAM) stays in L1 while every row runs along
   * it in 16-position tiles: each output row is written in runs of HD_BLOCK floats */
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
  float* xpk = thread_buffer((size_t)(dk * HD_BLOCK), &failed);
#pragma omp for schedule(static) collapse(2)
  for (int64_t h = 0; h < nh; h++) {
    for (int64_t blk = 0; blk < nblk; blk++) {
      if (xpk == NULL) continue;
      const int64_t b0 = blk * HD_BLOCK, b1 = p - b0 < HD_BLOCK ? p : b0 + HD_BLOCK;
      const float* ah = a + h * sh;
      float* oh0 = out + h * oh;
      const int64_t w = b1 - b0;
      /* the block of x, packed (dk rows of w): its rows lie 4 p bytes apart in x, the same L1 sets for p = 4096 */
      for (int64_t k = 0; k < dk; k++) memcpy(xpk + k * w, x + (h * dk + k) * p + b0, sizeof(float) * (size_t)w);
      if (wide) {
        headdot_block512(ah, oh0, off, rows, xpk, b0, b1, dk, accumulate);
        continue;
      }
      for (int64_t r = 0; r < rows; r += 4) {
        const float* ar[4];
        float* orow[4];
        const int m = headdot_rows(ah, oh0, off, rows, r, 4, ar, orow);
        for (int64_t p0 = b0; p0 < b1; p0 += 16) {
          const int64_t cols = b1 - p0 < 16 ? b1 - p0 : 16;
          const float* xb = xpk + (p0 - b0);
          float* o[4] = {orow[0] + p0, orow[1] + p0, orow[2] + p0, orow[3] + p0};
          switch (m) {
            case 4: headdot_tile(ar, o, xb, w, dk, cols, accumulate, 4); break;
            case 3: headdot_tile(ar, o, xb, w, dk, cols, accumulate, 3); break;
            case 2: headdot_tile(ar, o, xb, w, dk, cols, accumulate, 2); break;
            default: headdot_tile(ar, o, xb, w, dk, cols, accumulate, 1); break;
          }
        }
      }
    }
  }
  free(xpk);
  }
  free(off);
  return failed ? 2 : 0;
}

/* 2. The factored second layer's scores (geosam/models/fast_factored.py, _scores), one pass per block of positions:
 *   s[n, h, t, p] = ((f[n, h T + t] . probs0[n, :, p] + rows[n, h, t] . xp[h, :, p]) - fsum[n, h, t] mean0[n, p])
 *                   rstd0[n, p] + rows[n, h, t] . bp[h, :, p]
 * f (n, nh nt, r) and probs0 (n, r, p) contiguous, p a multiple of 16; rows: (n, h, t) at n sn + h sh + t st, dk contiguous floats;
 * xp, bp (nh, dk, p) contiguous; fsum (n, nh, nt), mean0, rstd0 (n, p) contiguous; s (n, nh, nt, p) contiguous.
 * torch writes the (n, nh nt, p) product, then reads and writes it again for each of the four other terms. */
/* 3. The final attention's scores against the never-written second image side (geosam/models/fast_final.py,
 * factored_final_attention), one pass per block of positions:
 *   s[n, h, t, p] = (((f0[n, h T + t] . p0[n, :, p] + q[n, h, t] . kx[h, :, p]) s1[n, p] + c[n, h T + t])
 *                    + f1[n, h T + t] . p1[n, :, p]) s2[n, p] + q[n, h, t] . kp[h, :, p]
 * f0, f1 (n, nh nt, r), p0, p1 (n, r, p), c (n, nh nt), s1, s2 (n, p) contiguous; q rows (n, h, t) at n sn + h sh
 * + t st, dk contiguous floats; kx, kp (nh, dk, p) contiguous; s (n, nh, nt, p) contiguous; p a multiple of 16. */
/* Both in the tiles of cpu_heads_scores.h, written once for two widths: 8-lane (AVX2) registers, 4 rows x 16
 * positions, and 16-lane (AVX-512) ones, 8 rows x 32 positions (`wide`: where p is a multiple of 32), whose
 * 512-bit FMAs do twice the work per instruction on CPUs whose FMA units are 512 bits wide (Intel's server CPUs,
 * AMD's Zen 5). Each output is the same chain of operations in either (the same bits: geosam/models/cpu_heads.py
 * checks that before using the wide ones). */
#define HS_W 8
#define HS_ROWS 4
#define HS_V __m256
#define HS_ATTR
#define HS_NAME(x) x##_8
#define HS_ZERO _mm256_setzero_ps
#define HS_LOAD _mm256_loadu_ps
#define HS_SET1 _mm256_set1_ps
#define HS_FMA _mm256_fmadd_ps
#define HS_FNMA _mm256_fnmadd_ps
#define HS_MUL _mm256_mul_ps
#define HS_STORE _mm256_storeu_ps
#include "cpu_heads_scores.h"
#define HS_W 16
#define HS_ROWS 8
#define HS_V __m512
#define HS_ATTR __attribute__((target("avx512f,fma")))
#define HS_NAME(x) x##_16
#define HS_ZERO _mm512_setzero_ps
#define HS_LOAD _mm512_loadu_ps
#define HS_SET1 _mm512_set1_ps
#define HS_FMA _mm512_fmadd_ps
#define HS_FNMA _mm512_fnmadd_ps
#define HS_MUL _mm512_mul_ps
#define HS_STORE _mm512_storeu_ps
#include "cpu_heads_scores.h"

int geosam_factored_scores(const float* f, const float* probs0, int64_t r, const float* rows, int64_t sn, int64_t sh,
                           int64_t st, const float* xp, const float* bp, const float* fsum, const float* mean0,
                           const float* rstd0, float* s, int64_t n, int64_t nh, int64_t nt, int64_t dk, int64_t p,
                           int threads, int wide) {
  if (p % 16 != 0) return 1;
  if (wide && p % 32 == 0)
    return factored_scores_16(f, probs0, r, rows, sn, sh, st, xp, bp, fsum, mean0, rstd0, s, n, nh, nt, dk, p, threads);
  return factored_scores_8(f, probs0, r, rows, sn, sh, st, xp, bp, fsum, mean0, rstd0, s, n, nh, nt, dk, p, threads);
}

int geosam_final_scores(const float* f0, const float* f1, const float* p0s, const float* p1s, int64_t r,
                        const float* q, int64_t sn, int64_t sh, int64_t st, const float* kx, const float* kp,
                        const float* c, const float* s1, const float* s2, float* s, int64_t n, int64_t nh, int64_t nt,
                        int64_t dk, int64_t p, int threads, int wide) {
  if (p % 16 != 0) return 1;
  if (wide && p % 32 == 0)
    return final_scores_16(f0, f1, p0s, p1s, r, q, sn, sh, st, kx, kp, c, s1, s2, s, n, nh, nt, dk, p, threads);
  return final_scores_8(f0, f1, p0s, p1s, r, q, sn, sh, st, kx, kp, c, s1, s2, s, n, nh, nt, dk, p, threads);
}

/* 4. The layer norms' cross terms of geosam/models/fast_final.py (_out_proj_dots): out[n, p] = sum_{h, t}
 * probs[n, h, t, p] (v[n, h, t] . xw[h, :, p]), without writing the (n, h, t, p) products torch multiplies out.
 * v rows (n, h, t) at n sn + h sh + t st, dk contiguous floats; xw (nh, dk, p), probs (n, nh, nt, p), out (n, p)
 * contiguous; p a multiple of 16, dk at most 64. A prompt's run of PD_CHUNK positions head by head, 32 positions at a
 * time (their dk x 32 block of xw packed: its rows lie 4 p bytes apart, the same L1 sets for p = 4096), each
 * token's 7 weights rows read as one stream per head (1.0 vs 1.4 ms for SAM's 8 prompts with 16-position blocks and
 * all heads' 56 rows at once; Zen 4, one thread); the output accumulates in registers over a head's tokens. */
#define PD_MAXK 64
#define PD_CHUNK 256

/* 8 w positions (w = 4 or 2 vectors of 8) of one prompt and head: o += sum_t probs_t (v_t . xb), xb their dk x 32
 * packed block of xw (the first 8 w columns used) */
static inline __attribute__((always_inline)) void proj_dots_block(const float* v, int64_t st, const float* xb,
                                                                  const float* pr, float* o, int64_t nt, int64_t dk,
                                                                  int64_t p, const int w) {
  __m256 o0 = _mm256_loadu_ps(o), o1 = _mm256_loadu_ps(o + 8), o2 = o0, o3 = o0;
  if (w > 2) { o2 = _mm256_loadu_ps(o + 16); o3 = _mm256_loadu_ps(o + 24); }
  for (int64_t t = 0; t < nt; t++) {
    const float* a = v + t * st;
    __m256 d0 = _mm256_setzero_ps(), d1 = d0, d2 = d0, d3 = d0, e0 = d0, e1 = d0, e2 = d0, e3 = d0;
    int64_t k = 0;
    for (; k + 2 <= dk; k += 2) { /* two chains per vector: the FMA latency hidden */
      const __m256 b = _mm256_broadcast_ss(a + k), c = _mm256_broadcast_ss(a + k + 1);
      const float* x = xb + k * 32;
      if (w > 2) {
        d0 = _mm256_fmadd_ps(b, _mm256_loadu_ps(x), d0);
        d1 = _mm256_fmadd_ps(b, _mm256_loadu_ps(x + 8), d1);
        d2 = _mm256_fmadd_ps(b, _mm256_loadu_ps(x + 16), d2);
        d3 = _mm256_fmadd_ps(b, _mm256_loadu_ps(x + 24), d3);
        e0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x + 32), e0);
        e1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x + 40), e1);
        e2 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x + 48), e2);
        e3 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x + 56), e3);
      } else {
        d0 = _mm256_fmadd_ps(b, _mm256_loadu_ps(x), d0);
        d1 = _mm256_fmadd_ps(b, _mm256_loadu_ps(x + 8), d1);
        e0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x + 32), e0);
        e1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x + 40), e1);
      }
    }
    if (k < dk) {
      const __m256 b = _mm256_broadcast_ss(a + k);
      const float* x = xb + k * 32;
      d0 = _mm256_fmadd_ps(b, _mm256_loadu_ps(x), d0);
      d1 = _mm256_fmadd_ps(b, _mm256_loadu_ps(x + 8), d1);
      if (w > 2) {
        d2 = _mm256_fmadd_ps(b, _mm256_loadu_ps(x + 16), d2);
        d3 = _mm256_fmadd_ps(b, _mm256_loadu_ps(x + 24), d3);
      }
    }
    const float* pt = pr + t * p;
    o0 = _mm256_fmadd_ps(_mm256_loadu_ps(pt), _mm256_add_ps(d0, e0), o0);
    o1 = _mm256_fmadd_ps(_mm256_loadu_ps(pt + 8), _mm256_add_ps(d1, e1), o1);
    if (w > 2) {
      o2 = _mm256_fmadd_ps(_mm256_loadu_ps(pt + 16), _mm256_add_ps(d2, e2), o2);
      o3 = _mm256_fmadd_ps(_mm256_loadu_ps(pt + 24), _mm256_add_ps(d3, e3), o3);
    }
  }
  _mm256_storeu_ps(o, o0);
  _mm256_storeu_ps(o + 8, o1);
  if (w > 2) {
    _mm256_storeu_ps(o + 16, o2);
    _mm256_storeu_ps(o + 24, o3);
  }
}

/* proj_dots_block in 16-lane registers (CPUs with AVX-512), nv = 2 or 1 of them (32 or 16 positions): each
 * output the same chains (even and odd k apart, added, then into o) as there, the same bits */
static inline __attribute__((always_inline)) HD512 void proj_dots_block512(const float* v, int64_t st,
                                                                           const float* xb, const float* pr, float* o,
                                                                           int64_t nt, int64_t dk, int64_t p,
                                                                           const int nv) {
  __m512 o0 = _mm512_loadu_ps(o), o1 = nv > 1 ? _mm512_loadu_ps(o + 16) : o0;
  for (int64_t t = 0; t < nt; t++) {
    const float* a = v + t * st;
    __m512 d0 = _mm512_setzero_ps(), d1 = d0, e0 = d0, e1 = d0;
    int64_t k = 0;
    for (; k + 2 <= dk; k += 2) {
      const __m512 b = _mm512_set1_ps(a[k]), c = _mm512_set1_ps(a[k + 1]);
      const float* x = xb + k * 32;
      d0 = _mm512_fmadd_ps(b, _mm512_loadu_ps(x), d0);
      e0 = _mm512_fmadd_ps(c, _mm512_loadu_ps(x + 32), e0);
      if (nv > 1) {
        d1 = _mm512_fmadd_ps(b, _mm512_loadu_ps(x + 16), d1);
        e1 = _mm512_fmadd_ps(c, _mm512_loadu_ps(x + 48), e1);
      }
    }
    if (k < dk) {
      const __m512 b = _mm512_set1_ps(a[k]);
      const float* x = xb + k * 32;
      d0 = _mm512_fmadd_ps(b, _mm512_loadu_ps(x), d0);
      if (nv > 1) d1 = _mm512_fmadd_ps(b, _mm512_loadu_ps(x + 16), d1);
    }
    const float* pt = pr + t * p;
    o0 = _mm512_fmadd_ps(_mm512_loadu_ps(pt), _mm512_add_ps(d0, e0), o0);
    if (nv > 1) o1 = _mm512_fmadd_ps(_mm512_loadu_ps(pt + 16), _mm512_add_ps(d1, e1), o1);
  }
  _mm512_storeu_ps(o, o0);
  if (nv > 1) _mm512_storeu_ps(o + 16, o1);
}

/* a prompt's run of positions of one head: proj_dots_block512's 32 positions at a time, then 16 */
static HD512 void proj_dots_run512(const float* vh, int64_t st, const float* xb, const float* pr, float* o, int64_t m,
                                   int64_t nt, int64_t dk, int64_t p) {
  int64_t b = 0;
  for (; b + 32 <= m; b += 32) proj_dots_block512(vh, st, xb + b * dk, pr + b, o + b, nt, dk, p, 2);
  if (b < m) proj_dots_block512(vh, st, xb + b * dk, pr + b, o + b, nt, dk, p, 1); /* 16 left */
}

int geosam_proj_dots(const float* v, int64_t sn, int64_t sh, int64_t st, const float* xw, const float* probs,
                     float* out, int64_t n, int64_t nh, int64_t nt, int64_t dk, int64_t p, int threads, int wide) {
  if (p % 16 != 0 || dk > PD_MAXK) return 1;
  const int64_t nchunk = (p + PD_CHUNK - 1) / PD_CHUNK;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t ch = 0; ch < nchunk; ch++) {
    float xb[PD_CHUNK * PD_MAXK];
    const int64_t c0 = ch * PD_CHUNK, c1 = c0 + PD_CHUNK < p ? c0 + PD_CHUNK : p, m = c1 - c0;
    for (int64_t i = 0; i < n; i++) memset(out + i * p + c0, 0, sizeof(float) * (size_t)m);
    for (int64_t h = 0; h < nh; h++) {
      /* the head's dk x m block of xw packed once for every prompt, 32 positions (dk x 32) after another */
      const float* xh = xw + h * dk * p + c0;
      for (int64_t b = 0; b < m; b += 16)
        for (int64_t k = 0; k < dk; k++) {
          float* dst = xb + (b / 32) * 32 * dk + k * 32 + b % 32;
          _mm256_storeu_ps(dst, _mm256_loadu_ps(xh + k * p + b));
          _mm256_storeu_ps(dst + 8, _mm256_loadu_ps(xh + k * p + b + 8));
        }
      for (int64_t i = 0; i < n; i++) {
        const float* pr = probs + (i * nh + h) * nt * p + c0;
        const float* vh = v + i * sn + h * sh;
        float* o = out + i * p + c0;
        if (wide) {
          proj_dots_run512(vh, st, xb, pr, o, m, nt, dk, p);
          continue;
        }
        int64_t b = 0;
        for (; b + 32 <= m; b += 32) proj_dots_block(vh, st, xb + b * dk, pr + b, o + b, nt, dk, p, 4);
        if (b < m) proj_dots_block(vh, st, xb + b * dk, pr + b, o + b, nt, dk, p, 2); /* 16 left */
      }
    }
  }
  return 0;
}

/* 5. Section 3's scores for the bf16 dtype on AMX tiles (Intel Xeon with AMX): the same function of the factors
 * rounded to bf16 (f0, f1, p0, p1, q, kx, kp; c, s1, s2 float32), the sums float32. Rows are tiled by groups of g
 * heads (g nt <= 16 rows, g the most heads that fit and divide nh: SAM's 4 used tokens, 4 heads a tile): the left
 * operands are the group's rows of f0 and f1 (inner size r) and a block-diagonal tile of its queries (head h's rows
 * in its dk columns, inner size g dk), so that the group's heads' key rows, contiguous in kx and kp, make one right
 * operand. For each chunk of FA_CHUNK positions (the keys' chunk packed once for all prompts) and prompt (its p0 and
 * p1 chunk packed, each row read as one run), per block of 32 positions and group six accumulators (X = f0 p0 +
 * q kx, Y = f1 p1, Z = q kp over two 16-position tiles) are combined as section 3 does: ((X s1 + c) + Y) s2 + Z.
 * The left operands are made once per call. p a multiple of 32. Returns 0, 1 where the shapes do not fit (nt > 16),
 * 2 if out of memory. */
#define FA_CHUNK 256
#if GEOSAM_AMX
/* acc0 / acc1 += a (16 rows of kn bf16, 2 kn bytes apart) times two panels of 16 columns from b (cpu_amx.h's
 * amx_pack_right, kn / 2 pairs each), tiles 6 (left) and 7 (right) */
#define FA_PRODUCT(acc0, acc1, a, b, kn)                                   \
  for (int64_t q = 0; q < (kn) / 32; q++) {                                \
    _tile_loadd(6, (a) + 32 * q, 2 * (kn));                                \
    _tile_loadd(7, (b) + 512 * q, 64);                                     \
    _tile_dpbf16ps(acc0, 6, 7);                                            \
    _tile_loadd(7, (b) + ((kn) / 2 + 16 * q) * 32, 64);                    \
    _tile_dpbf16ps(acc1, 6, 7);                                            \
  }

TAMX int geosam_final_scores_amx(const float* f0, const float* f1, const float* p0s, const float* p1s, int64_t r,
                                 const float* q, int64_t sn, int64_t sh, int64_t st, const float* kx, const float* kp,
                                 const float* c, const float* s1, const float* s2, float* s, int64_t n, int64_t nh,
                                 int64_t nt, int64_t dk, int64_t p, int threads) {
  if (p % 32 != 0 || nt < 1 || nt > 16 || n < 1 || nh < 1 || r < 1) return 1;
  const int64_t g = amx_row_group(nt, nh);
  const int64_t ng = nh / g, gr = g * nt, kr = amx_k(r), kq = amx_k(g * dk), ka = 2 * kr + kq;
  const int64_t nch = (p + FA_CHUNK - 1) / FA_CHUNK;
  /* every prompt's and group's left operands: its 16 rows of f0 and f1 (kr), then its block-diagonal queries (kq) */
  uint16_t* left = calloc((size_t)(n * ng * 16 * ka), sizeof(uint16_t));
  if (left == NULL) return 2;
  for (int64_t i = 0; i < n; i++)
    for (int64_t grp = 0; grp < ng; grp++) {
      uint16_t* a = left + (i * ng + grp) * 16 * ka;
      const int64_t row0 = i * nh * nt + grp * gr;
      for (int64_t m = 0; m < gr; m++) {
        for (int64_t j = 0; j < r; j++) {
          a[m * kr + j] = to_bf16(f0[(row0 + m) * r + j]);
          a[16 * kr + m * kr + j] = to_bf16(f1[(row0 + m) * r + j]);
        }
        const int64_t hh = m / nt, t = m % nt;
        const float* qr = q + i * sn + (grp * g + hh) * sh + t * st;
        for (int64_t k = 0; k < dk; k++) a[32 * kr + m * kq + hh * dk + k] = to_bf16(qr[k]);
      }
    }
  /* bf16 numbers in a block of 32 positions' packed panels: a group's keys (each side), a prompt's p0 (or p1) */
  const int64_t kpanels = kq * 32, ppanels = kr * 32, nbc = FA_CHUNK / 32;
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    /* the chunk's keys (both sides, group by group), then p0's and p1's, packed; the accumulators */
    const size_t nbuf = (size_t)(nbc * (2 * ng * kpanels + 2 * ppanels) / 2 + 6 * 256);
    uint16_t* buf = (uint16_t*)thread_buffer(nbuf, &failed);
    uint16_t* const kxb = buf;
    uint16_t* const kpb = buf == NULL ? NULL : kxb + nbc * ng * kpanels;
    uint16_t* const pb0 = buf == NULL ? NULL : kpb + nbc * ng * kpanels;
    uint16_t* const pb1 = buf == NULL ? NULL : pb0 + nbc * ppanels;
    float* const acc = buf == NULL ? NULL : (float*)(pb1 + nbc * ppanels);
    int64_t packed = -1;
    if (buf != NULL) amx_configure();
#pragma omp for schedule(static) collapse(2)
    for (int64_t ch = 0; ch < nch; ch++) {
      for (int64_t i = 0; i < n; i++) {
        if (buf == NULL) continue;
        const int64_t c0 = ch * FA_CHUNK, nb = (p - c0 < FA_CHUNK ? p - c0 : FA_CHUNK) / 32;
        if (packed != ch) {
          for (int64_t grp = 0; grp < ng; grp++) { /* the group's heads' key rows: its inner index */
            amx_pack_right(kx + grp * g * dk * p + c0, g * dk, p, 32 * nb, kq, 2 * nb, kxb + grp * nbc * kpanels, NULL);
            amx_pack_right(kp + grp * g * dk * p + c0, g * dk, p, 32 * nb, kq, 2 * nb, kpb + grp * nbc * kpanels, NULL);
          }
          packed = ch;
        }
        /* the next step's chunk: prompt i + 1's, else prompt 0's of the next chunk */
        const int64_t nx = i + 1 < n ? (i + 1) * r * p + c0 : ch + 1 < nch ? c0 + FA_CHUNK : -1;
        amx_pack_right(p0s + i * r * p + c0, r, p, 32 * nb, kr, 2 * nb, pb0, nx < 0 ? NULL : p0s + nx);
        amx_pack_right(p1s + i * r * p + c0, r, p, 32 * nb, kr, 2 * nb, pb1, nx < 0 ? NULL : p1s + nx);
        for (int64_t blk = 0; blk < nb; blk++) {
          const int64_t b0 = c0 + 32 * blk;
          const __m512 sc[4] = {_mm512_loadu_ps(s1 + i * p + b0), _mm512_loadu_ps(s1 + i * p + b0 + 16),
                                _mm512_loadu_ps(s2 + i * p + b0), _mm512_loadu_ps(s2 + i * p + b0 + 16)};
          for (int64_t grp = 0; grp < ng; grp++) {
            const uint16_t* a = left + (i * ng + grp) * 16 * ka;
            const uint16_t *kxg = kxb + (grp * nbc + blk) * kpanels, *kpg = kpb + (grp * nbc + blk) * kpanels;
            const uint16_t *p0g = pb0 + blk * ppanels, *p1g = pb1 + blk * ppanels;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            _tile_zero(4);
            _tile_zero(5);
            FA_PRODUCT(0, 1, a, p0g, kr)           /* X: f0 p0 */
            FA_PRODUCT(0, 1, a + 32 * kr, kxg, kq) /*  + q kx */
            FA_PRODUCT(2, 3, a + 16 * kr, p1g, kr) /* Y: f1 p1 */
            FA_PRODUCT(4, 5, a + 32 * kr, kpg, kq) /* Z: q kp */
            _tile_stored(0, acc, 64);
            _tile_stored(1, acc + 256, 64);
            _tile_stored(2, acc + 512, 64);
            _tile_stored(3, acc + 768, 64);
            _tile_stored(4, acc + 1024, 64);
            _tile_stored(5, acc + 1280, 64);
            const int64_t row0 = i * nh * nt + grp * gr;
            for (int64_t m = 0; m < gr; m++) {
              const __m512 cc = _mm512_set1_ps(c[row0 + m]);
              float* o = s + (row0 + m) * p + b0;
              for (int ct = 0; ct < 2; ct++) {
                const float* x = acc + ct * 256 + m * 16;
                __m512 v = _mm512_add_ps(_mm512_fmadd_ps(_mm512_loadu_ps(x), sc[ct], cc), _mm512_loadu_ps(x + 512));
                v = _mm512_add_ps(_mm512_mul_ps(v, sc[2 + ct]), _mm512_loadu_ps(x + 1024));
                _mm512_storeu_ps(o + 16 * ct, v);
              }
            }
          }
        }
      }
    }
    if (buf != NULL) amx_release();
    free(buf);
  }
  free(left);
  return failed ? 2 : 0;
}
#undef FA_PRODUCT
#else
int geosam_final_scores_amx(const float* f0, const float* f1, const float* p0s, const float* p1s, int64_t r,
                            const float* q, int64_t sn, int64_t sh, int64_t st, const float* kx, const float* kp,
                            const float* c, const float* s1, const float* s2, float* s, int64_t n, int64_t nh,
                            int64_t nt, int64_t dk, int64_t p, int threads) {
  return 1;
}
#endif
