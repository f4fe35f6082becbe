/* Float32 attention of SAM's image encoder on AVX-512 CPUs: fused, to float rounding (not torch's bits).
 *
 * One layer's attention with SAM's decomposed relative positions, every head, from the qkv projection:
 *
 *     out[i, h] = softmax_j((q_i * scale) . k_j + rel_h[i, row(j)] + rel_w[i, col(j)]) v_j
 *     rel_h[i, r] = q_i . tab_h[row(i), r],  rel_w[i, c] = q_i . tab_w[col(i), c]
 *
 * for a block of queries of one head at a time (BQ_MAP, BQ in windows; float32 maps of whole panel pairs a row in
 * chunks of keys with a running softmax: attend_head_flash): their scores (bq x N) are written once by a register-tiled
 * product (8 queries x 32 keys, the keys packed in 16-wide panels), the relative positions added and the
 * maximum taken in one pass, the exponentials and their sum in another (all while the rows are in cache),
 * and the values product (6 queries x d, keys in blocks that stay in L2) scaled by 1 / sum at the end.
 * torch, on these CPUs, writes a block of scores to memory and reads it again for every one of those steps.
 *
 * The sums run in another order than torch's GEMM and softmax, and expf is a polynomial of Cephes' (<= 2 ulp),
 * so results equal torch's to float rounding, not bit for bit: geosam/models/cpu_attention.py checks them
 * against torch on load and uses the kernel only where torch itself runs its AVX-512 kernels (where the
 * bit-for-bit AVX2 kernels of cpu_kernels.c do not apply). The functions carry their target (AVX-512F), so the
 * file builds with the common flags of cpu_build.py.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "cpu_attention512.h"
#include "cpu_bf16.h"
#include "cpu_amx.h"

/* s[r, 0:32] = qs[r] . keys of panels p0, p1 for 8 rows of qs (stride d) */
INLINE T512 void qk_8x32(const float* qs, int64_t d, const float* p0, const float* p1, float* s, int64_t ss) {
  __m512 a0 = _mm512_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0, a4 = a0, b4 = a0,
         a5 = a0, b5 = a0, a6 = a0, b6 = a0, a7 = a0, b7 = a0;
  for (int64_t c = 0; c < d; c++) {
    __m512 k0 = _mm512_loadu_ps(p0 + c * 16), k1 = _mm512_loadu_ps(p1 + c * 16), x;
    x = _mm512_set1_ps(qs[c]); a0 = _mm512_fmadd_ps(x, k0, a0); b0 = _mm512_fmadd_ps(x, k1, b0);
    x = _mm512_set1_ps(qs[d + c]); a1 = _mm512_fmadd_ps(x, k0, a1); b1 = _mm512_fmadd_ps(x, k1, b1);
    x = _mm512_set1_ps(qs[2 * d + c]); a2 = _mm512_fmadd_ps(x, k0, a2); b2 = _mm512_fmadd_ps(x, k1, b2);
    x = _mm512_set1_ps(qs[3 * d + c]); a3 = _mm512_fmadd_ps(x, k0, a3); b3 = _mm512_fmadd_ps(x, k1, b3);
    x = _mm512_set1_ps(qs[4 * d + c]); a4 = _mm512_fmadd_ps(x, k0, a4); b4 = _mm512_fmadd_ps(x, k1, b4);
    x = _mm512_set1_ps(qs[5 * d + c]); a5 = _mm512_fmadd_ps(x, k0, a5); b5 = _mm512_fmadd_ps(x, k1, b5);
    x = _mm512_set1_ps(qs[6 * d + c]); a6 = _mm512_fmadd_ps(x, k0, a6); b6 = _mm512_fmadd_ps(x, k1, b6);
    x = _mm512_set1_ps(qs[7 * d + c]); a7 = _mm512_fmadd_ps(x, k0, a7); b7 = _mm512_fmadd_ps(x, k1, b7);
  }
  _mm512_storeu_ps(s, a0); _mm512_storeu_ps(s + 16, b0);
  _mm512_storeu_ps(s + ss, a1); _mm512_storeu_ps(s + ss + 16, b1);
  _mm512_storeu_ps(s + 2 * ss, a2); _mm512_storeu_ps(s + 2 * ss + 16, b2);
  _mm512_storeu_ps(s + 3 * ss, a3); _mm512_storeu_ps(s + 3 * ss + 16, b3);
  _mm512_storeu_ps(s + 4 * ss, a4); _mm512_storeu_ps(s + 4 * ss + 16, b4);
  _mm512_storeu_ps(s + 5 * ss, a5); _mm512_storeu_ps(s + 5 * ss + 16, b5);
  _mm512_storeu_ps(s + 6 * ss, a6); _mm512_storeu_ps(s + 6 * ss + 16, b6);
  _mm512_storeu_ps(s + 7 * ss, a7); _mm512_storeu_ps(s + 7 * ss + 16, b7);
}

/* the same for one panel (16 keys): the last one of an odd count */
INLINE T512 void qk_8x16(const float* qs, int64_t d, const float* p0, float* s, int64_t ss) {
  __m512 acc[8];
#pragma GCC unroll 8
  for (int r = 0; r < 8; r++) acc[r] = _mm512_setzero_ps();
  for (int64_t c = 0; c < d; c++) {
    __m512 k0 = _mm512_loadu_ps(p0 + c * 16);
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(qs[r * d + c]), k0, acc[r]);
  }
#pragma GCC unroll 8
  for (int r = 0; r < 8; r++) _mm512_storeu_ps(s + r * ss, acc[r]);
}

/* o[r, 0:16 NV] += sum_{j < kn} p[r, j] v[j, 0:16 NV] for ROWS rows (p stride sp, v rows of 16 NV, o stride so):
 * ROWS x NV accumulators in registers (at most 24 of the 32) */
#define AV_TILE(NV, ROWS)                                                                                            \
  INLINE T512 void av_tile_##NV(const float* p, int64_t sp, const float* v, int64_t kn, float* o, int64_t so) {      \
    __m512 acc[ROWS][NV];                                                                                            \
    _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; r++)                                                           \
      _Pragma("GCC unroll 8") for (int c = 0; c < NV; c++) acc[r][c] = _mm512_loadu_ps(o + r * so + 16 * c);         \
    for (int64_t j = 0; j < kn; j++) {                                                                               \
      __m512 vv[NV];                                                                                                 \
      _Pragma("GCC unroll 8") for (int c = 0; c < NV; c++) vv[c] = _mm512_loadu_ps(v + j * 16 * NV + 16 * c);        \
      _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; r++) {                                                       \
        __m512 x = _mm512_set1_ps(p[r * sp + j]);                                                                    \
        _Pragma("GCC unroll 8") for (int c = 0; c < NV; c++) acc[r][c] = _mm512_fmadd_ps(x, vv[c], acc[r][c]);       \
      }                                                                                                              \
    }                                                                                                                \
    _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; r++)                                                           \
      _Pragma("GCC unroll 8") for (int c = 0; c < NV; c++) _mm512_storeu_ps(o + r * so + 16 * c, acc[r][c]);         \
  }
AV_TILE(1, 6)
AV_TILE(2, 6)
AV_TILE(3, 6)
AV_TILE(4, 6)
AV_TILE(5, 4)
AV_TILE(6, 3)
AV_TILE(7, 3)
AV_TILE(8, 3)

/* the block's values product, rows g .. g + av_rows(nv) */
INLINE T512 void av_tile(int64_t nv, const float* p, int64_t sp, const float* v, int64_t kn, float* o, int64_t so) {
  switch (nv) {
    case 1: av_tile_1(p, sp, v, kn, o, so); break;
    case 2: av_tile_2(p, sp, v, kn, o, so); break;
    case 3: av_tile_3(p, sp, v, kn, o, so); break;
    case 4: av_tile_4(p, sp, v, kn, o, so); break;
    case 5: av_tile_5(p, sp, v, kn, o, so); break;
    case 6: av_tile_6(p, sp, v, kn, o, so); break;
    case 7: av_tile_7(p, sp, v, kn, o, so); break;
    default: av_tile_8(p, sp, v, kn, o, so); break;
  }
}

/* The grid row and column of every key of a grid of at most 16 x 16 keys (a window), for scores_rel_max_small's
 * permutes: at_h = lanes[0:256], at_w = lanes[256:512], kept per thread for the last grid size; NULL for a larger
 * grid. Fetched once per block of queries (a thread-local's address is a call in a loaded library: once per row of
 * scores, ~3 % of a windowed layer in the AMX mode) */
static int32_t* grid_lanes(int64_t hh, int64_t ww) {
  static __thread int64_t grid = -1;
  static __thread int32_t lanes[512];
  if (!(hh <= 16 && ww < 16)) return NULL;
  if (grid != hh * 64 + ww) {
    const int64_t n = hh * ww;
    for (int64_t j = 0; j < (n + 15) / 16 * 16; j++) {
      lanes[j] = (int32_t)(j < n ? j / ww : 0);
      lanes[256 + j] = (int32_t)(j < n ? j % ww : 0);
    }
    grid = hh * 64 + ww;
  }
  return lanes;
}

/* scores_rel_max for a grid of at most 16 x 16 keys (a window): the row in whole 16-wide vectors of the flattened
 * grid (lanes past n written too: the row has room to np, and the softmax zeroes them), each score's two relative
 * terms picked by permutes from rh and rw held in one register each; the same operations on each score. A window's
 * rows of ww < 16 scores, each a masked store read back by the next row's load, stalled on store forwarding (Intel
 * Xeon: 20 % of a windowed layer's samples in the AMX mode). lanes: grid_lanes(hh, ww). */
INLINE T512 float scores_rel_max_small(float* s, const float* rh, const float* rw, int64_t hh, int64_t ww, float scale,
                                       const int32_t* lanes) {
  const int32_t *at_h = lanes, *at_w = lanes + 256;
  const int64_t n = hh * ww;
  const __m512 h = _mm512_maskz_loadu_ps(tail(hh), rh), w = _mm512_maskz_loadu_ps(tail(ww), rw);
  const __m512 f = _mm512_set1_ps(scale);
  __m512 mx = _mm512_set1_ps(-__builtin_inff());
  for (int64_t j = 0; j < n; j += 16) {
    const __m512 rel_h = _mm512_permutexvar_ps(_mm512_loadu_si512(at_h + j), h);
    const __m512 rel_w = _mm512_permutexvar_ps(_mm512_loadu_si512(at_w + j), w);
    const __m512 x = _mm512_add_ps(_mm512_fmadd_ps(_mm512_loadu_ps(s + j), f, rel_h), rel_w);
    _mm512_storeu_ps(s + j, x);
    mx = _mm512_mask_max_ps(mx, tail(n - j), mx, x);
  }
  return _mm512_reduce_max_ps(mx);
}

/* 16 scores of one key row in place: s * f + h + rw[0:16] (that row's term, 16 of its columns' terms); returns them */
INLINE T512 __m512 scores_rel16(float* s, __m512 f, __m512 h, const float* rw) {
  const __m512 x = _mm512_add_ps(_mm512_fmadd_ps(_mm512_loadu_ps(s), f, h), _mm512_loadu_ps(rw));
  _mm512_storeu_ps(s, x);
  return x;
}

/* row s (n = hh * ww scores) = s * scale + rel_h[row] + rel_w[col] in place; returns its maximum. With scale 1 (the
 * float32 kernel's queries come scaled) the fused multiply-add rounds as the plain add */
INLINE T512 float scores_rel_max(float* s, const float* rh, const float* rw, int64_t hh, int64_t ww, float scale,
                                 const int32_t* lanes) {
  if (hh <= 16 && ww < 16) return scores_rel_max_small(s, rh, rw, hh, ww, scale, lanes);
  __m512 mx = _mm512_set1_ps(-__builtin_inff()), f = _mm512_set1_ps(scale);
  for (int64_t r = 0; r < hh; r++) {
    float* row = s + r * ww;
    __m512 h = _mm512_set1_ps(rh[r]);
    int64_t c0 = 0;
    for (; c0 + 16 <= ww; c0 += 16)  /* whole vectors: masked stores are slow on some CPUs (AMD Zen 4) */
      mx = _mm512_max_ps(mx, scores_rel16(row + c0, f, h, rw + c0));
    if (c0 < ww) {
      __mmask16 mk = tail(ww - c0);
      __m512 x = _mm512_add_ps(_mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, row + c0), f, h), _mm512_maskz_loadu_ps(mk, rw + c0));
      _mm512_mask_storeu_ps(row + c0, mk, x);
      mx = _mm512_mask_max_ps(mx, mk, mx, x);
    }
  }
  return _mm512_reduce_max_ps(mx);
}

/* the relative terms of a block's bq queries (nothing without tables: rh, rw then hold zeros): rh[r] = q[r] .
 * tab_h[row of tok[r]], rw[r] = q[r] . tab_w[column of tok[r]]; copied from `rel` (rel_rows' terms of every token,
 * rows of hh + ww) where given */
INLINE T512 void block_rel(const float* const* q, const int64_t* tok, int64_t bq, const float* tab_h, const float* tab_w,
                           int64_t hh, int64_t ww, int64_t d, const float* rel, float* rh, float* rw) {
  if (tab_h == NULL) return;
  for (int64_t r = 0; r < bq; r++) {
    if (rel != NULL) {
      copy_words(rh + r * hh, rel + tok[r] * (hh + ww), hh);
      copy_words(rw + r * ww, rel + tok[r] * (hh + ww) + hh, ww);
      continue;
    }
    rel_row(q[r], tab_h + (tok[r] / ww) * d * hh, d, hh, rh + r * hh);
    rel_row(q[r], tab_w + (tok[r] % ww) * d * ww, d, ww, rw + r * ww);
  }
}

/* rel_row for three queries q[0..2] (outputs rel[0..2]) of one table: each output the same four chains (by c mod 4)
 * summed as rel_row sums them, so the same bits; 32 columns a step, every table vector loaded once for the three
 * (rel_row alone loads two numbers per FMA: a ViT-B global layer's terms ~28 ms of its ~430, Intel Xeon, one thread) */
INLINE T512 void rel_row3(const float* const* q, const float* tab, int64_t d, int64_t m, float* const* rel) {
  for (int64_t c0 = 0; c0 < m; c0 += 32) {
    const __mmask16 k0 = tail(m - c0), k1 = m - c0 > 16 ? tail(m - c0 - 16) : 0;
    __m512 a[3][2][4];
#pragma GCC unroll 3
    for (int r = 0; r < 3; r++)
#pragma GCC unroll 4
      for (int j = 0; j < 4; j++) a[r][0][j] = a[r][1][j] = _mm512_setzero_ps();
    for (int64_t c = 0; c < d; c += 4) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; j++) {
        const __m512 t0 = _mm512_maskz_loadu_ps(k0, tab + (c + j) * m + c0);
        const __m512 t1 = _mm512_maskz_loadu_ps(k1, tab + (c + j) * m + c0 + 16);
#pragma GCC unroll 3
        for (int r = 0; r < 3; r++) {
          const __m512 x = _mm512_set1_ps(q[r][c + j]);
          a[r][0][j] = _mm512_fmadd_ps(x, t0, a[r][0][j]);
          a[r][1][j] = _mm512_fmadd_ps(x, t1, a[r][1][j]);
        }
      }
    }
#pragma GCC unroll 3
    for (int r = 0; r < 3; r++) {
      _mm512_mask_storeu_ps(rel[r] + c0, k0, _mm512_add_ps(_mm512_add_ps(a[r][0][0], a[r][0][1]), _mm512_add_ps(a[r][0][2], a[r][0][3])));
      if (k1) _mm512_mask_storeu_ps(rel[r] + c0 + 16, k1, _mm512_add_ps(_mm512_add_ps(a[r][1][0], a[r][1][1]), _mm512_add_ps(a[r][1][2], a[r][1][3])));
    }
  }
}

/* block_rel's terms of one row (by_col 0: rel_h of the tokens of map row i) or one column (by_col 1: rel_w of the
 * tokens of map column i) of a whole map for the head whose q is at tokp[j] + qoff, into rel (rows of hh + ww): the
 * same rel_row calls, ordered so that each table (16 KiB for a ViT's 64 x 64 map) is read once for the 64 queries
 * that use it. In block order a block's 24 queries lie in 24 columns: every block read 24 tables of the column terms
 * (1 MiB for a head, from L3: 3 GB per encode), 7 % of the float32 encoder's time on an Intel Xeon. */
__attribute__((target("prfchw"))) static T512 void rel_rows(const float* const* tokp, int64_t qoff,
                                                          const float* tab_h, const float* tab_w, int64_t hh,
                                                          int64_t ww, int64_t d, int64_t i, int by_col, float* rel) {
  const int64_t nq = by_col ? hh : ww, m = by_col ? ww : hh, off = by_col ? hh : 0;
  const float* tab = by_col ? tab_w + i * d * ww : tab_h + i * d * hh;
  int64_t j = 0;
  for (; j + 3 <= nq; j += 3) { /* the queries of map row i (column i) by threes: one table for all */
    const float* q[3];
    float* o[3];
    for (int r = 0; r < 3; r++) {
      const int64_t t = by_col ? (j + r) * ww + i : i * ww + j + r;
      q[r] = tokp[t] + qoff;
      o[r] = rel + t * (hh + ww) + off;
      fetch_for_writing(o[r], m * (int64_t)sizeof(float)); /* as in rel_rows8, the next three's queries fetched */
      if (j + 3 + r < nq)
        fetch_lines(tokp[by_col ? (j + 3 + r) * ww + i : i * ww + j + 3 + r] + qoff, d * (int64_t)sizeof(float));
    }
    rel_row3(q, tab, d, m, o);
  }
  for (; j < nq; j++) {
    const int64_t t = by_col ? j * ww + i : i * ww + j;
    rel_row(tokp[t] + qoff, tab, d, m, rel + t * (hh + ww) + off);
  }
}

/* rel_rows' terms for the AMX mode, as products of 8 queries x 32 table columns in registers (each term one chain
 * of FMAs over d, not rel_row's four: other roundings, so not for the float32 and AVX-512 BF16 modes, whose bits
 * stay): a ViT-B global layer's relative terms 23 -> 16 ms (Intel Xeon with AMX, one thread; perf samples), each
 * query row read once per 32 columns instead of once per 16. The 8 queries are widened to float32 first (bf16
 * tokens) into qf (8 x d), so that the products' loop broadcasts from memory: widened inside it, the loop ran out of
 * registers and kept its accumulators on the stack (the same numbers, the same chains: the same bits). d <= 128 */
__attribute__((target("prfchw"))) static T512 void rel_rows8(const float* const* tokp, int64_t qoff, int tok16,
                                                           const float* tab_h, const float* tab_w, int64_t hh,
                                                           int64_t ww, int64_t d, int64_t i, int by_col, float* rel) {
  const int64_t nq = by_col ? hh : ww, m = by_col ? ww : hh, off = by_col ? hh : 0;
  const float* tab = by_col ? tab_w + i * d * ww : tab_h + i * d * hh;
  float qf[8 * 128];
  for (int64_t g = 0; g < nq; g += 8) {
    const float* q[8];
    float* o[8];
    const int rows = nq - g < 8 ? (int)(nq - g) : 8;
    for (int r = 0; r < 8; r++) {
      const int64_t j = g + (r < rows ? r : 0), t = by_col ? j * ww + i : i * ww + j;
      q[r] = (const float*)((const char*)tokp[t] + qoff * (tok16 ? 2 : 4));
      o[r] = rel + t * (hh + ww) + off;
      /* the terms' rows owned for writing, the next group's query rows fetched (a head's 2 MiB of terms and its
       * queries down a column of the map miss to L3): a ViT-B global layer 120.9 -> 117.5 ms (AMX mode) */
      fetch_for_writing(o[r], m * (int64_t)sizeof(float));
      if (g + 8 + r < nq)
        fetch_lines((const char*)tokp[by_col ? (g + 8 + r) * ww + i : i * ww + g + 8 + r] + qoff * (tok16 ? 2 : 4),
                    d * (tok16 ? 2 : 4));
      if (tok16) {
        bf16_row_to_f32((const uint16_t*)q[r], d, qf + r * d);
        q[r] = qf + r * d;
      }
    }
    for (int64_t c0 = 0; c0 < m; c0 += 32) {
      const __mmask16 k0 = tail(m - c0), k1 = m - c0 > 16 ? tail(m - c0 - 16) : 0;
      __m512 a[8][2];
#pragma GCC unroll 8
      for (int r = 0; r < 8; r++) a[r][0] = a[r][1] = _mm512_setzero_ps();
      for (int64_t c = 0; c < d; c++) {
        const __m512 t0 = _mm512_maskz_loadu_ps(k0, tab + c * m + c0), t1 = _mm512_maskz_loadu_ps(k1, tab + c * m + c0 + 16);
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++) {
          const __m512 x = _mm512_set1_ps(q[r][c]);
          a[r][0] = _mm512_fmadd_ps(x, t0, a[r][0]);
          a[r][1] = _mm512_fmadd_ps(x, t1, a[r][1]);
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < 8; r++) /* constant indices: the accumulators stay in registers */
        if (r < rows) {
          _mm512_mask_storeu_ps(o[r] + c0, k0, a[r][0]);
          if (k1) _mm512_mask_storeu_ps(o[r] + c0 + 16, k1, a[r][1]);
        }
    }
  }
}

/* rel_row for up to seven queries q[0 .. cnt) of one table of m <= 16 columns (a window's): each output rel_row's
 * four chains (by c mod 4) summed as rel_row sums them, so the same bits; the table's vector for each c loaded once
 * for the seven (rel_row alone: four short chains a query, latency-bound); 28 accumulators, a window row of 14 in two
 * calls. Queries past cnt repeat the first, unstored. */
INLINE T512 void rel_row7(const float* const* q, int cnt, const float* tab, int64_t d, int64_t m, float* const* rel) {
  const __mmask16 k = tail(m);
  __m512 a[7][4];
#pragma GCC unroll 7
  for (int r = 0; r < 7; r++)
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) a[r][j] = _mm512_setzero_ps();
  for (int64_t c = 0; c < d; c += 4) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
      const __m512 t = _mm512_maskz_loadu_ps(k, tab + (c + j) * m);
#pragma GCC unroll 7
      for (int r = 0; r < 7; r++) a[r][j] = _mm512_fmadd_ps(_mm512_set1_ps(q[r][c + j]), t, a[r][j]);
    }
  }
#pragma GCC unroll 7
  for (int r = 0; r < 7; r++) /* constant indices: the accumulators stay in registers */
    if (r < cnt)
      _mm512_mask_storeu_ps(rel[r], k, _mm512_add_ps(_mm512_add_ps(a[r][0], a[r][1]), _mm512_add_ps(a[r][2], a[r][3])));
}

/* block_rel's terms of the ry x rx real tokens (the queries) of one window (hh x ww <= 16 x 16) for the head whose q
 * is at tokp[t] + qoff, into rel (rows of hh + ww, by token) for block_rel to copy: the queries of each window row
 * share its row table, those of each column its column table, seven to a table read (rel_row7: rel_row's chains,
 * the same bits). One query at a time through rel_row, the chains' latency made a quarter of a windowed layer's time
 * in the AMX mode (Intel Xeon, one thread). bf16 tokens (tok16) are widened into qf (hh ww x d) first. */
static T512 void window_rel(const float* const* tokp, int64_t qoff, int tok16, const float* tab_h, const float* tab_w,
                            int64_t hh, int64_t ww, int64_t ry, int64_t rx, int64_t d, float* qf, float* rel) {
  for (int64_t y = 0; y < ry; y++)
    for (int64_t x = 0; x < rx; x++) {
      const int64_t t = y * ww + x;
      if (tok16)
        bf16_row_to_f32((const uint16_t*)tokp[t] + qoff, d, qf + t * d);
      else
        copy_words(qf + t * d, tokp[t] + qoff, d);
    }
  for (int by_col = 0; by_col < 2; by_col++) {
    const int64_t lines = by_col ? rx : ry, len = by_col ? ry : rx, m = by_col ? ww : hh, off = by_col ? hh : 0;
    for (int64_t i = 0; i < lines; i++) {
      const float* tab = by_col ? tab_w + i * d * ww : tab_h + i * d * hh;
      for (int64_t j0 = 0; j0 < len; j0 += 7) {
        const float* q[7];
        float* o[7];
        const int cnt = len - j0 < 7 ? (int)(len - j0) : 7;
        for (int r = 0; r < 7; r++) {
          const int64_t j = j0 + (r < cnt ? r : 0), t = by_col ? j * ww + i : i * ww + j;
          q[r] = qf + t * d;
          o[r] = rel + t * (hh + ww) + off;
        }
        rel_row7(q, cnt, tab, d, m, o);
      }
    }
  }
}

/* out[r][0:d] = o[r] * inv[r] for the block's first nq queries (o's rows so >= d apart, a multiple of 16), in float32
 * or (out16) rounded to bf16 as torch's conversion rounds (out[r] then the address of d bf16 numbers): the bf16
 * encoder's next product takes them as they are, without a pass over the layer's whole float32 output (12 MiB for a
 * ViT-B) to round them. d a multiple of 8: a last 8 columns written alone (the next head's outputs not touched) */
static T512 void block_out(const float* o, const float* inv, int64_t nq, int64_t d, int64_t so, float* const* out,
                           int out16) {
  for (int64_t r = 0; r < nq; r++) {
    __m512 f = _mm512_set1_ps(inv[r]);
    for (int64_t c = 0; c < d; c += 16) {
      const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(o + r * so + c), f);
      if (out16 && d - c >= 16)
        _mm256_storeu_si256((__m256i*)((uint16_t*)out[r] + c), round16_aten(x));
      else if (out16)
        _mm_storeu_si128((__m128i*)((uint16_t*)out[r] + c), _mm256_castsi256_si128(round16_aten(x)));
      else if (d - c >= 16) /* whole vectors unmasked: masked stores are slow on some CPUs (AMD Zen 4) */
        _mm512_storeu_ps(out[r] + c, x);
      else
        _mm512_mask_storeu_ps(out[r] + c, tail(d - c), x);
    }
  }
}

/* row s (n = hh * ww scores, np padded) += rel_h[row] + rel_w[col]; softmax numerators in place (0 past n);
 * returns their sum */
INLINE T512 float softmax_row(float* s, const float* rh, const float* rw, int64_t hh, int64_t ww, int64_t np,
                              const int32_t* lanes) {
  __m512 m = _mm512_set1_ps(scores_rel_max(s, rh, rw, hh, ww, 1.0f, lanes));
  int64_t n = hh * ww;
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < np; j += 16) {
    __mmask16 mk = j < n ? tail(n - j) : 0;
    __m512 e = _mm512_maskz_mov_ps(mk, exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), m)));
    _mm512_storeu_ps(s + j, e);
    sum = _mm512_add_ps(sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

/* One head's attention for bq queries (rows q[r], scaled by `scale` for the scores; tok[r] their token on the
 * hh x ww grid of keys, for the relative terms) against the keys packed (kp) and values vp (np rows of d, zero past
 * n): o[r][0:d] * inv[r] = the result, for the first nq (block_out writes it); bq a multiple of 24. Scratch: s
 * (bq x (np + 16)), qs, rh (bq x hh), rw (bq x ww, zeros without tables). */
static T512 void attend_head(const float* const* q, const int64_t* tok, int64_t nq, int64_t bq, float scale,
                             const float* kp, const float* vp, const float* tab_h, const float* tab_w, const float* rel,
                             int64_t hh, int64_t ww, int64_t d, float* s, float* qs, float* rh,
                             float* rw, float* o, float* inv) {
  int64_t n = hh * ww, np = (n + 31) / 32 * 32, nt = np / 16, ss = np + 16;  /* rows not 4 KiB apart */
  const int32_t* lanes = grid_lanes(hh, ww); /* a window's: once for the block's rows */
  /* a block's rows past its nq queries (a window's last block: 4 of 24) are not computed: the groups of 8 (scores)
   * and of av_rows (values) that hold a query, the softmax of the queries' rows; their outputs are not written */
  const int64_t nq8 = (nq + 7) / 8 * 8;
  const __m512 f = _mm512_set1_ps(scale);
  for (int64_t r = 0; r < nq8; r++) /* whole vectors (d a multiple of 16): a scalar loop stalled on the rows' misses */
    for (int64_t c = 0; c < d; c += 16) _mm512_storeu_ps(qs + r * d + c, _mm512_mul_ps(_mm512_loadu_ps(q[r] + c), f));
  block_rel(q, tok, nq, tab_h, tab_w, hh, ww, d, rel, rh, rw);
  /* scores: key panels outer (a 32-key pair stays in L1 for the 3 groups of 8 queries) */
  for (int64_t t = 0; t < nt; t += 2) {
    for (int64_t g = 0; g < nq8; g += 8) {
      if (t + 1 < nt)
        qk_8x32(qs + g * d, d, kp + t * d * 16, kp + (t + 1) * d * 16, s + g * ss + t * 16, ss);
      else
        qk_8x16(qs + g * d, d, kp + t * d * 16, s + g * ss + t * 16, ss);
    }
  }
  for (int64_t r = 0; r < nq; r++)  /* without tables rh and rw hold zeros */
    inv[r] = 1.0f / softmax_row(s + r * ss, tab_h ? rh + r * hh : rh, tab_h ? rw + r * ww : rw, hh, ww, np, lanes);
  memset(o, 0, sizeof(float) * bq * d);
  for (int64_t j0 = 0; j0 < np; j0 += KBLOCK) {
    int64_t kn = np - j0 < KBLOCK ? np - j0 : KBLOCK;
    for (int64_t g = 0; g < nq; g += av_rows(d / 16)) av_tile(d / 16, s + g * ss + j0, ss, vp + j0 * d, kn, o + g * d, d);
  }
}

/* attend_head_flash's keys per chunk on a map ww keys wide: the whole map rows that fit in KC_FLASH (one at least) */
static inline int64_t flash_chunk(int64_t ww) { return ww >= KC_FLASH ? ww : KC_FLASH / ww * ww; }

/* attend_head for a whole map of float32 tokens in chunks of keys, with a running softmax: each chunk's scores
 * (bq x kc, in L1 / L2) get their relative terms, the rows' running maxima and sums are updated (the partial values
 * products and sums rescaled by e^(old max - new max) where a maximum grows), their numerators computed in place,
 * and the chunk's values product added. The whole-map path above keeps a block's scores for all keys (48 x 4096:
 * 768 KiB) beside a head's keys and values (1 + 1 MiB for a ViT-B), more than a 2 MiB L2: both streamed in from L3
 * for every block of 48 queries. Here a chunk's scores stay small, so a block can hold BQ_FLASH queries, and the keys
 * and values stream in once per BQ_FLASH queries. The same function to float rounding (the sums of a row are
 * associated by chunks, and a numerator may be rescaled once per chunk). The keys in chunks of whole map rows:
 * ww a multiple of 32 (panel pairs), kc = the rows that fit in KC_FLASH keys. Scratch: s (bq x (kc + 16)), qs, o
 * (bq x d), rh (bq x hh), rw (bq x ww), mx and sum (bq). */
static T512 void attend_head_flash(const float* const* q, const int64_t* tok, int64_t nq, int64_t bq, float scale,
                                   const float* kp, const float* vp, const float* tab_h, const float* tab_w,
                                   const float* rel, int64_t hh, int64_t ww, int64_t d, float* s,
                                   float* qs, float* rh, float* rw, float* o, float* mx, float* sum) {
  const int64_t n = hh * ww, kc = flash_chunk(ww), ss = kc + 16;
  const int64_t nq8 = (nq + 7) / 8 * 8;
  const __m512 f = _mm512_set1_ps(scale);
  for (int64_t r = 0; r < nq8; r++)
    for (int64_t c = 0; c < d; c += 16) _mm512_storeu_ps(qs + r * d + c, _mm512_mul_ps(_mm512_loadu_ps(q[r] + c), f));
  block_rel(q, tok, nq, tab_h, tab_w, hh, ww, d, rel, rh, rw);
  memset(o, 0, sizeof(float) * bq * d);
  for (int64_t r = 0; r < nq; r++) {
    mx[r] = -__builtin_inff();
    sum[r] = 0.0f;
  }
  for (int64_t j0 = 0; j0 < n; j0 += kc) {
    const int64_t kn = n - j0 < kc ? n - j0 : kc, t0 = j0 / 16; /* kn: whole map rows, a multiple of 32 */
    for (int64_t t = 0; t < kn / 16; t += 2)
      for (int64_t g = 0; g < nq8; g += 8)
        qk_8x32(qs + g * d, d, kp + (t0 + t) * d * 16, kp + (t0 + t + 1) * d * 16, s + g * ss + t * 16, ss);
    for (int64_t r = 0; r < nq; r++) {
      float* row = s + r * ss;
      const float mc =
          scores_rel_max(row, tab_h ? rh + r * hh + j0 / ww : rh, tab_h ? rw + r * ww : rw, kn / ww, ww, 1.0f, NULL);
      const float m0 = mx[r], m1 = mc > m0 ? mc : m0;
      if (m1 > m0 && m0 > -__builtin_inff()) { /* rescale what the row holds: e^(m0 - m1) */
        const __m512 k = exp512(_mm512_set1_ps(m0 - m1));
        for (int64_t c = 0; c < d; c += 16) _mm512_storeu_ps(o + r * d + c, _mm512_mul_ps(_mm512_loadu_ps(o + r * d + c), k));
        sum[r] *= _mm512_cvtss_f32(k);
      }
      mx[r] = m1;
      const __m512 m = _mm512_set1_ps(m1);
      __m512 acc = _mm512_setzero_ps();
      for (int64_t j = 0; j < kn; j += 16) {
        const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(row + j), m));
        _mm512_storeu_ps(row + j, e);
        acc = _mm512_add_ps(acc, e);
      }
      sum[r] += _mm512_reduce_add_ps(acc);
    }
    for (int64_t g = 0; g < nq; g += av_rows(d / 16)) av_tile(d / 16, s + g * ss, ss, vp + j0 * d, kn, o + g * d, d);
  }
  for (int64_t r = 0; r < nq; r++) sum[r] = 1.0f / sum[r];
}

/* 0: whole float32 maps run attend_head (the scores of all keys kept) instead of attend_head_flash: the tests'
 * reference and the benchmarks' A / B */
static int flash_map = 1;
void geosam_attention512_flash(int on) { flash_map = on; }

/* The keys and values of one head on an hh x ww grid of tokens, token j at tokp[j] (k at + koff, v at + voff):
 * keys in 16-wide panels (kp), values in rows of d (vp), np rows, zero past n */
static T512 void pack_head(const float* const* tokp, int64_t n, int64_t np, int64_t koff, int64_t voff, int64_t d,
                           float* kp, float* vp) {
  /* 16 keys' rows copied whole first (their loads independent: the tokens' rows are strided misses, which the
   * element-by-element transposition waited on one after another: 6 of a ViT-B windowed layer's 37 ms, Intel Xeon),
   * then each column of the panel gathered from that copy in L1 */
  float rows[16 * 128];
  const __m512i at = lane_offsets(d);
  for (int64_t t = 0; t < np / 16; t++) {
    float* panel = kp + t * d * 16;
    for (int64_t l = 0; l < 16; l++) {
      const int64_t j = t * 16 + l;
      for (int64_t c = 0; c < d; c += 16)
        _mm512_storeu_ps(rows + l * d + c, j < n ? _mm512_loadu_ps(tokp[j] + koff + c) : _mm512_setzero_ps());
    }
    for (int64_t c = 0; c < d; c++) _mm512_storeu_ps(panel + c * 16, _mm512_i32gather_ps(at, rows + c, 4));
  }
  for (int64_t j = 0; j < np; j++) {
    if (j < n)
      memcpy(vp + j * d, tokp[j] + voff, sizeof(float) * (size_t)d);
    else
      memset(vp + j * d, 0, sizeof(float) * (size_t)d);
  }
}

/* --- bf16 products (AVX-512 BF16): queries, keys, probabilities and values rounded to bf16, pairs of them
 * multiplied and summed in float32 by vdpbf16ps (two float32 FMAs' work per instruction); the relative positions,
 * scores, softmax and sums in float32. */
/* TBF, to_bf16, pair_at, dot2: cpu_bf16.h */

/* the scores' tiles: 8 rows of queries (d bf16 each) against 1 or 2 panels of 16 keys (panel t at kp + t d 16, the
 * pair (c, c + 1) of its key l at c 16 + 2 l) */
BF16_TILE(8, 1)
BF16_TILE(8, 2)

/* o[r, 0:16 NV] += sum_j p[r, j] v[j, 0:16 NV] for ROWS rows, p in bf16 (row stride sp), v in pairs of rows
 * (rows j, j + 1 at v + j 16 NV: column c's pair at 2 c), kn even */
#define AVB_TILE(NV, ROWS)                                                                                           \
  INLINE TBF void avb_tile_##NV(const uint16_t* p, int64_t sp, const uint16_t* v, int64_t kn, float* o, int64_t so) { \
    __m512 acc[ROWS][NV];                                                                                            \
    _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; r++)                                                           \
      _Pragma("GCC unroll 8") for (int c = 0; c < NV; c++) acc[r][c] = _mm512_loadu_ps(o + r * so + 16 * c);         \
    for (int64_t j = 0; j < kn; j += 2) {                                                                            \
      __m512i vv[NV];                                                                                                \
      _Pragma("GCC unroll 8") for (int c = 0; c < NV; c++) vv[c] = _mm512_loadu_si512(v + j * 16 * NV + 32 * c);     \
      _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; r++) {                                                       \
        __m512i x = pair_at(p + r * sp + j);                                                                         \
        _Pragma("GCC unroll 8") for (int c = 0; c < NV; c++) acc[r][c] = dot2(acc[r][c], x, vv[c]);                  \
      }                                                                                                              \
    }                                                                                                                \
    _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; r++)                                                           \
      _Pragma("GCC unroll 8") for (int c = 0; c < NV; c++) _mm512_storeu_ps(o + r * so + 16 * c, acc[r][c]);         \
  }
AVB_TILE(1, 6)
AVB_TILE(2, 6)
AVB_TILE(3, 6)
AVB_TILE(4, 6)
AVB_TILE(5, 4)
AVB_TILE(6, 3)
AVB_TILE(7, 3)
AVB_TILE(8, 3)

INLINE TBF void avb_tile(int64_t nv, const uint16_t* p, int64_t sp, const uint16_t* v, int64_t kn, float* o, int64_t so) {
  switch (nv) {
    case 1: avb_tile_1(p, sp, v, kn, o, so); break;
    case 2: avb_tile_2(p, sp, v, kn, o, so); break;
    case 3: avb_tile_3(p, sp, v, kn, o, so); break;
    case 4: avb_tile_4(p, sp, v, kn, o, so); break;
    case 5: avb_tile_5(p, sp, v, kn, o, so); break;
    case 6: avb_tile_6(p, sp, v, kn, o, so); break;
    case 7: avb_tile_7(p, sp, v, kn, o, so); break;
    default: avb_tile_8(p, sp, v, kn, o, so); break;
  }
}

/* The numerators of keys j .. j + 31 of a row whose scores (relative terms added) are in place, nm from its maximum
 * (minus_max_log2): rounded to bf16, written over the row's start (bf16 j over float j / 2: floats already read) and
 * added to the row's 16 sums as 16-lane adds of the widened numbers in key order would add them (lane i: e[j + i],
 * then e[j + 16 + i]) -- by vdpbf16ps against ones, which adds word 2 i + 1, then word 2 i, each product exact and
 * each sum rounded as an add (bf16 numbers are never subnormal): one instruction and a permute for four. 0 past n
 * (masked in the row's last block only). */
INLINE TBF __m512 numerators32_bf16(float* row, int64_t j, int64_t n, __m512 nm, __m512 sum) {
  __m512 e0 = exp512_bf16(_mm512_loadu_ps(row + j), nm), e1 = exp512_bf16(_mm512_loadu_ps(row + j + 16), nm);
  if (j + 32 > n) {
    e0 = _mm512_maskz_mov_ps(j < n ? tail(n - j) : 0, e0);
    e1 = _mm512_maskz_mov_ps(j + 16 < n ? tail(n - j - 16) : 0, e1);
  }
  const __m512i e = (__m512i)_mm512_cvtne2ps_pbh(e1, e0); /* e0's numbers first */
  _mm512_storeu_si512((uint16_t*)row + j, e);
  const __m512i pairs = _mm512_set_epi16(15, 31, 14, 30, 13, 29, 12, 28, 11, 27, 10, 26, 9, 25, 8, 24, 7, 23, 6, 22, 5,
                                         21, 4, 20, 3, 19, 2, 18, 1, 17, 0, 16); /* word 2 i: e1[i], 2 i + 1: e0[i] */
  return _mm512_dpbf16_ps(sum, (__m512bh)_mm512_permutexvar_epi16(pairs, e), (__m512bh)_mm512_set1_epi16(0x3F80));
}

/* softmax_row's work on a row of unscaled scores (times `scale` first), the numerators rounded to bf16 and written
 * in place over the row's start; returns the sum of the rounded numerators. np a multiple of 32 */
INLINE TBF float softmax_row_bf16(float* s, const float* rh, const float* rw, int64_t hh, int64_t ww, int64_t np,
                                  float scale, const int32_t* lanes) {
  const __m512 nm = minus_max_log2(scores_rel_max(s, rh, rw, hh, ww, scale, lanes));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < np; j += 32) sum = numerators32_bf16(s, j, hh * ww, nm, sum);
  return _mm512_reduce_add_ps(sum);
}

/* 0: the bf16 modes run as the kernel did before numerators32_bf16 and the overlap: attend_head_amx's vector passes
 * between the tiles' products, both modes' softmax 16 numbers a step (the tests compare the two: the same bits) */
static int overlap_tiles = 1;

/* 1: a window's task fetches the next task's q, k and v rows into L2 while its own products and softmax run (the
 * rows of a window, hh x ww tokens srow apart, defeat the hardware's prefetchers: the keys' packing and the queries'
 * copies waited on L3 or memory). Bits unchanged; 0 for the benchmarks' comparison. */
static int prefetch_next = 1;

/* 1: windows without tables (SAM 2's, SAM 3's) take attend_head_amx's fused pass (each block's maxima as it leaves the
 * tiles) whatever their width; 0: only maps of 32k columns, as before (the benchmarks' comparison). Bits unchanged. */
static int fused_windows = 1;
void geosam_attention512_fused_windows(int on) { fused_windows = on; }
void geosam_attention512_prefetch(int on) { prefetch_next = on; }
void geosam_attention512_overlap(int on) { overlap_tiles = on; }

/* softmax_row_bf16 as it ran before numerators32_bf16: 16 numbers a step, each rounded, stored and widened again
 * into the sums; the order numerators32_bf16 keeps, run with geosam_attention512_overlap(0) for the tests to compare */
INLINE TBF float softmax_row_bf16_lanes(float* s, const float* rh, const float* rw, int64_t hh, int64_t ww, int64_t np,
                                        float scale, const int32_t* lanes) {
  const __m512 nm = minus_max_log2(scores_rel_max(s, rh, rw, hh, ww, scale, lanes));
  const int64_t n = hh * ww;
  __m512 sum = _mm512_setzero_ps();
  uint16_t* pb = (uint16_t*)s;
  for (int64_t j = 0; j < np; j += 16) {
    const __mmask16 mk = j < n ? tail(n - j) : 0;
    const __m256i e = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_mov_ps(mk, exp512_bf16(_mm512_loadu_ps(s + j), nm)));
    _mm256_storeu_si256((__m256i*)(pb + j), e);
    sum = _mm512_add_ps(sum, bf16_to_f32(e));
  }
  return _mm512_reduce_add_ps(sum);
}

/* attend_head with bf16 products: the same arguments, kp / vp packed by pack_head_bf16 */
static TBF void attend_head_bf16(const float* const* q, const int64_t* tok, int64_t nq, int64_t bq, float scale,
                                 const uint16_t* kp, const uint16_t* vp, const float* tab_h, const float* tab_w,
                                 const float* rel, int64_t hh, int64_t ww, int64_t d, float* s,
                                 float* qs, float* rh, float* rw, float* o, float* inv) {
  int64_t n = hh * ww, np = (n + 31) / 32 * 32, nt = np / 16, ss = np + 16;
  const int32_t* lanes = grid_lanes(hh, ww); /* a window's: once for the block's rows */
  uint16_t* qb = (uint16_t*)qs;
  const int64_t nq8 = (nq + 7) / 8 * 8; /* as attend_head: the rows past the block's queries not computed */
  for (int64_t r = 0; r < nq8; r++) /* as to_bf16, in whole vectors */
    for (int64_t c = 0; c < d; c += 16)
      _mm256_storeu_si256((__m256i*)(qb + r * d + c), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(q[r] + c)));
  block_rel(q, tok, nq, tab_h, tab_w, hh, ww, d, rel, rh, rw);
  for (int64_t t = 0; t < nt; t += 2)
    for (int64_t g = 0; g < nq8; g += 8) {
      if (t + 1 < nt)
        bf16_tile_8x2(qb + g * d, d, kp + t * d * 16, d / 2, s + g * ss + t * 16, ss);
      else
        bf16_tile_8x1(qb + g * d, d, kp + t * d * 16, d / 2, s + g * ss + t * 16, ss);
    }
  for (int64_t r = 0; r < nq; r++)
    if (overlap_tiles)
      inv[r] = 1.0f / softmax_row_bf16(s + r * ss, tab_h ? rh + r * hh : rh, tab_h ? rw + r * ww : rw, hh, ww, np, scale,
                                       lanes);
    else
      inv[r] = 1.0f / softmax_row_bf16_lanes(s + r * ss, tab_h ? rh + r * hh : rh, tab_h ? rw + r * ww : rw, hh, ww, np,
                                             scale, lanes);
  memset(o, 0, sizeof(float) * bq * d);
  const uint16_t* pb = (const uint16_t*)s;
  for (int64_t j0 = 0; j0 < np; j0 += KBLOCK) {
    int64_t kn = np - j0 < KBLOCK ? np - j0 : KBLOCK;
    for (int64_t g = 0; g < nq; g += av_rows(d / 16))
      avb_tile(d / 16, pb + g * 2 * ss + j0, 2 * ss, vp + j0 * d, kn, o + g * d, d);
  }
}

/* the AMX mode's width of the queries' bf16 rows and the keys' panels: d rounded up to a tile's 32 numbers of K (zeros
 * past d); pack_head_bf16 / pack_head_tok16 write the panels and attend_head_amx reads them with it */
INLINE int64_t amx_key_width(int64_t d) { return (d + 31) / 32 * 32; }

/* the AMX mode's width of the values' pairs of rows and the blocks' outputs: d rounded up to a tile's 16 columns (zeros
 * past d: heads of a multiple of 8, SAM 2's Hiera-B+ 56, Hiera-L 72); pack_head_tok16 writes the values with it,
 * attend_head_amx reads them and writes its outputs with it, block_out reads those */
INLINE int64_t amx_value_width(int64_t d) { return (d + 15) / 16 * 16; }

/* --- bf16 products on AMX tiles (Intel Xeon): the same numbers as attend_head_bf16's (q, k, probabilities and v
 * rounded to bf16, sums in float32, in the tiles' order) for BQ_AMX queries, two tiles of 16 rows: the scores 32
 * queries x 32 keys at a time (four float32 tiles, the keys' panels of pack_head_bf16 are AMX's right operand as
 * they are), the values product 32 queries x 32 columns over all keys (the probabilities' bf16 rows, written over
 * the scores' by the numerators, are the left operand; pack_head_bf16's pairs of value rows the right one).
 * The vector work runs beside the tiles' products instead of between them: each block of scores gets its relative
 * terms and goes into its rows' maxima as it leaves the tiles (maps of 32 k columns), and the numerators of each 32
 * keys are computed in the first values pass just before the tiles read them. The same operations on every number
 * as softmax_row_bf16 (the same bits): Intel Xeon with AMX, one thread, a ViT-B global layer 135 -> 127 ms, a
 * windowed one 20.2 -> 19.1 ms (alternating).
 * d a multiple of 16: the queries' bf16 rows and the keys' panels are dk = d rounded up to 32 wide, zeros past d (a
 * tile's 32 numbers of K; ViT-H's heads of 80), the values' products skip the right tile of a last 16 columns. With
 * bf16 tokens and no tables d may be a multiple of 8 (Hiera's 56, 72): the values and the outputs o are then dv = d
 * rounded up to 16 wide (amx_value_width; zero columns past d, which block_out does not write). The calling thread has
 * run amx_configure. */
#if GEOSAM_AMX
static TAMX void attend_head_amx(const float* const* q, int tok16, const int64_t* tok, int64_t nq, float scale,
                                 const uint16_t* kp, const uint16_t* vp, const float* tab_h, const float* tab_w,
                                 const float* rel, int64_t hh, int64_t ww, int64_t d, float* s,
                                 float* qs, float* rh, float* rw, float* o, float* inv, float* qf) {
  const int64_t n = hh * ww, np = (n + 31) / 32 * 32, nt = np / 16, ss = np + 16, dk = amx_key_width(d);
  const int64_t dv = amx_value_width(d);
  const int32_t* lanes = grid_lanes(hh, ww); /* a window's: once for the block's rows */
  uint16_t* qb = (uint16_t*)qs;
  const float* qw[BQ_AMX]; /* the queries in float32 for the relative terms (bf16 tokens: widened into qf) */
  /* a block of at most 16 queries (a window's last: 4 of 32) runs the first tile of rows only; the softmax for the
   * queries' rows */
  const int half = nq <= 16;
  for (int64_t r = 0; r < (half ? 16 : BQ_AMX); r++) {
    qw[r] = q[r];
    if (tok16) {
      copy_words((float*)(qb + r * dk), q[r], d / 2); /* d / 2 words of two bf16 numbers */
      if (tab_h != NULL && rel == NULL) {
        bf16_row_to_f32((const uint16_t*)q[r], d, qf + r * d);
        qw[r] = qf + r * d;
      }
    } else
      for (int64_t c = 0; c < d; c += 16)
        _mm256_storeu_si256((__m256i*)(qb + r * dk + c), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(q[r] + c)));
    for (int64_t c = d; c < dk; c += 8) _mm_storeu_si128((__m128i*)(qb + r * dk + c), _mm_setzero_si128()); /* zeros */
  }
  block_rel(qw, tok, nq, tab_h, tab_w, hh, ww, d, rel, rh, rw);
  const int64_t pb = 16 * dk, sc = 4 * ss; /* a key panel (bf16); bytes between score rows */
  /* rows of whole 32-wide vectors (a map of 32 k columns), or no tables (the terms zeros: any window, as SAM 2's and
   * SAM 3's): each 32 x 32 block of scores gets its relative terms and goes into the rows' maxima as it leaves the
   * tiles (scores_rel_max's operations in its order), while the next block's products run */
  const int overlap = overlap_tiles, fused = overlap && (ww % 32 == 0 || (tab_h == NULL && fused_windows));
  const __m512 fs = _mm512_set1_ps(scale);
  __m512 mxv[BQ_AMX], sumv[BQ_AMX];
  for (int64_t r = 0; r < nq; r++) mxv[r] = _mm512_set1_ps(-__builtin_inff());
  for (int64_t t = 0; t < nt; t += 2) { /* np a multiple of 32: panels in pairs */
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t c = 0; c < dk; c += 32) {
      _tile_loadd(4, qb + c, 2 * dk);
      _tile_loadd(6, kp + t * pb + 16 * c, 64);
      _tile_loadd(7, kp + (t + 1) * pb + 16 * c, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      if (!half) {
        _tile_loadd(5, qb + 16 * dk + c, 2 * dk);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
    }
    _tile_stored(0, s + t * 16, sc);
    _tile_stored(1, s + t * 16 + 16, sc);
    if (!half) {
      _tile_stored(2, s + 16 * ss + t * 16, sc);
      _tile_stored(3, s + 16 * ss + t * 16 + 16, sc);
    }
    if (fused) {
      const int64_t j = t * 16, kr = j / ww, kc = j % ww;
      /* the padded keys' scores (a last block past n: windows without tables) kept out of the maxima */
      const __mmask16 k0 = j < n ? tail(n - j) : 0, k1 = j + 16 < n ? tail(n - j - 16) : 0;
      for (int64_t r = 0; r < nq; r++) {
        float* row = s + r * ss + j;
        const float* rwr = (tab_h ? rw + r * ww : rw) + kc; /* no tables: zeros (rh, rw hold bq (hh + ww) of them) */
        const __m512 h = _mm512_set1_ps((tab_h ? rh + r * hh : rh)[kr]);
        const __m512 x0 = scores_rel16(row, fs, h, rwr), x1 = scores_rel16(row + 16, fs, h, rwr + 16);
        const __m512 m0 = _mm512_mask_max_ps(mxv[r], k0, mxv[r], x0);
        mxv[r] = _mm512_mask_max_ps(m0, k1, m0, x1);
      }
    }
  }
  for (int64_t r = 0; r < nq && !overlap; r++)
    inv[r] = 1.0f / softmax_row_bf16_lanes(s + r * ss, tab_h ? rh + r * hh : rh, tab_h ? rw + r * ww : rw, hh, ww, np,
                                           scale, lanes);
  for (int64_t r = 0; r < nq && overlap; r++) {
    const float m = fused ? _mm512_reduce_max_ps(mxv[r])
                          : scores_rel_max(s + r * ss, tab_h ? rh + r * hh : rh, tab_h ? rw + r * ww : rw, hh, ww, scale,
                                           lanes);
    mxv[r] = minus_max_log2(m); /* from here the rows' nm */
    sumv[r] = _mm512_setzero_ps();
  }
  const uint16_t* pr = (const uint16_t*)s; /* probability row r at pr + 2 r ss */
  for (int64_t c = 0; c < dv; c += 32) {
    const int two = c + 16 < dv; /* a right tile of columns c + 16 .. c + 32 (not past a last 16) */
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t j = 0; j < np; j += 32) {
      if (c == 0 && overlap) /* the rows' numerators of these 32 keys, computed while the previous keys' products run */
        for (int64_t r = 0; r < nq; r++) sumv[r] = numerators32_bf16(s + r * ss, j, n, mxv[r], sumv[r]);
      _tile_loadd(4, pr + j, sc);
      _tile_loadd(6, vp + j * dv + 2 * c, 4 * dv);
      _tile_dpbf16ps(0, 4, 6);
      if (two) {
        _tile_loadd(7, vp + j * dv + 2 * c + 32, 4 * dv);
        _tile_dpbf16ps(1, 4, 7);
      }
      if (!half) {
        _tile_loadd(5, pr + 32 * ss + j, sc);
        _tile_dpbf16ps(2, 5, 6);
        if (two) _tile_dpbf16ps(3, 5, 7);
      }
    }
    if (c == 0 && overlap)
      for (int64_t r = 0; r < nq; r++) inv[r] = 1.0f / _mm512_reduce_add_ps(sumv[r]);
    _tile_stored(0, o + c, 4 * dv);
    if (two) _tile_stored(1, o + c + 16, 4 * dv);
    if (!half) {
      _tile_stored(2, o + 16 * dv + c, 4 * dv);
      if (two) _tile_stored(3, o + 16 * dv + c + 16, 4 * dv);
    }
  }
}
#endif

/* 16 floats (zeros for NULL) rounded to bf16, each in the low half of a 32-bit lane */
INLINE TBF __m512i bf16_lanes(const float* x) {
  return x ? _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x))) : _mm512_setzero_si512();
}

/* pack_head in bf16: keys in panels of 16 with pairs of columns (c, c + 1) side by side (one 32-bit word: the even
 * bf16 numbers of a key's row gathered by one permute), dk columns wide (d, or for the AMX mode d rounded up to 32:
 * zeros past d), values in pairs of rows (row j in the low half of each word, j + 1 in the high half); d a multiple
 * of 16 */
static TBF void pack_head_bf16(const float* const* tokp, int64_t n, int64_t np, int64_t koff, int64_t voff, int64_t d,
                               int64_t dk, uint16_t* kp, uint16_t* vp) {
  uint32_t words[64];  /* a key's d <= 128 columns as d / 2 pairs, zeros to the next 32 columns */
  for (int64_t j = 0; j < np; j++) {
    uint32_t* panel = (uint32_t*)kp + (j / 16) * (dk / 2) * 16 + j % 16;
    for (int64_t c = 0; c < d; c += 32) {
      const float* row = j < n ? tokp[j] + koff + c : NULL;
      __m512i lo = bf16_lanes(row), hi = bf16_lanes(row && c + 16 < d ? row + 16 : NULL);
      __m512i pairs = _mm512_permutex2var_epi16(lo, _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36,
                                                                       34, 32, 30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10,
                                                                       8, 6, 4, 2, 0), hi);
      _mm512_storeu_si512(words + c / 2, pairs);
    }
    for (int64_t w = 0; w < dk / 2; w++) panel[w * 16] = words[w];
  }
  for (int64_t j = 0; j < np; j += 2) {
    const float* r0 = j < n ? tokp[j] + voff : NULL;
    const float* r1 = j + 1 < n ? tokp[j + 1] + voff : NULL;
    uint32_t* dst = (uint32_t*)vp + (j / 2) * d;
    for (int64_t c = 0; c < d; c += 16)
      _mm512_storeu_si512(dst + c, _mm512_or_si512(bf16_lanes(r0 ? r0 + c : NULL),
                                                   _mm512_slli_epi32(bf16_lanes(r1 ? r1 + c : NULL), 16)));
  }
}

/* pack_head_bf16's layouts (the AMX mode's: keys dk = d rounded up to 32 wide, values dv = d rounded up to 16) from
 * bf16 tokens (tokp: their addresses; koff, voff in bf16 numbers): a key's pairs of columns are its row's 32-bit words
 * as they are, a pair of value rows is interleaved by halves of each word; d a multiple of 8, a token's numbers past
 * its head's d never read (zeros in their place) */
static TBF void pack_head_tok16(const float* const* tokp, int64_t n, int64_t np, int64_t koff, int64_t voff, int64_t d,
                                uint16_t* kp, uint16_t* vp) {
  const int64_t dk = amx_key_width(d), dv = amx_value_width(d);
  uint32_t rows[16 * 64]; /* as pack_head: 16 keys' rows (dk / 2 words each, zeros past d) copied whole first */
  const __m512i at = lane_offsets(dk / 2);
  for (int64_t t = 0; t < np / 16; t++) {
    uint32_t* panel = (uint32_t*)kp + t * (dk / 2) * 16;
    for (int64_t l = 0; l < 16; l++) { /* the next panel's key rows and this one's value rows on their way to L1 */
      const int64_t j = t * 16 + l;
      if (j + 16 < n) fetch_lines((const uint16_t*)tokp[j + 16] + koff, 2 * d);
      if (j < n) fetch_lines((const uint16_t*)tokp[j] + voff, 2 * d);
    }
    for (int64_t l = 0; l < 16; l++) {
      const int64_t j = t * 16 + l;
      const uint16_t* row = j < n ? (const uint16_t*)tokp[j] + koff : NULL;
      for (int64_t c = 0; c < d; c += 32) /* a last 8, 16 or 24 columns: the token's next numbers not read */
        _mm512_storeu_si512(rows + l * (dk / 2) + c / 2,
                            row ? _mm512_maskz_loadu_epi16(d - c >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << (d - c)) - 1u),
                                                           row + c)
                                : _mm512_setzero_si512());
    }
    for (int64_t w = 0; w < dk / 2; w++) _mm512_storeu_si512(panel + w * 16, _mm512_i32gather_epi32(at, rows + w, 4));
  }
  for (int64_t j = 0; j < np; j += 2) {
    const uint16_t* r0 = j < n ? (const uint16_t*)tokp[j] + voff : NULL;
    const uint16_t* r1 = j + 1 < n ? (const uint16_t*)tokp[j + 1] + voff : NULL;
    uint32_t* dst = (uint32_t*)vp + (j / 2) * dv;
    for (int64_t c = 0; c < dv; c += 16) {
      const __mmask16 k = tail(d - c); /* a last 8 columns of a head of a multiple of 8 */
      const __m512i lo = r0 ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, r0 + c)) : _mm512_setzero_si512();
      const __m512i hi = r1 ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, r1 + c)) : _mm512_setzero_si512();
      _mm512_storeu_si512(dst + c, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

/* out[0:d] = the largest of the four bf16 rows a, b, c, e, number by number (each a bf16 number as it is: the widened
 * numbers' maximum, narrowed exactly) */
INLINE TBF void max4_bf16(const uint16_t* a, const uint16_t* b, const uint16_t* c, const uint16_t* e, int64_t d,
                          uint16_t* out) {
  for (int64_t j = 0; j < d; j += 16) {
    const __mmask16 k = tail(d - j);
    const __m512 ab = _mm512_max_ps(bf16_to_f32(_mm256_maskz_loadu_epi16(k, a + j)),
                                    bf16_to_f32(_mm256_maskz_loadu_epi16(k, b + j)));
    const __m512 ce = _mm512_max_ps(bf16_to_f32(_mm256_maskz_loadu_epi16(k, c + j)),
                                    bf16_to_f32(_mm256_maskz_loadu_epi16(k, e + j)));
    const __m512i m = _mm512_srli_epi32(_mm512_castps_si512(_mm512_max_ps(ab, ce)), 16);
    _mm256_mask_storeu_epi16(out + j, k, _mm512_cvtepi32_epi16(m));
  }
}

/* SAM 2's query pooling (qpool): window (wy, wx)'s queries are the 2 x 2 maxima of its tokens' q (head offset qoff,
 * bf16 tokens), those on the pooled output map (mh / 2 x mw / 2: each from four tokens on the map), written into qp
 * (rows of d bf16 numbers, row-major over the window's pooled grid cut to the map); returns how many, their grid's
 * width in *pw */
static TBF int64_t pooled_queries(const float* const* tokp, int64_t qoff, int64_t d, int64_t mh, int64_t mw,
                                  int64_t hh, int64_t ww, int64_t wy, int64_t wx, uint16_t* qp, int64_t* pw) {
  const int64_t ph = hh / 2, pwid = ww / 2;
  const int64_t ly = mh / 2 - wy * ph, lx = mw / 2 - wx * pwid; /* pooled rows and columns left on the map */
  const int64_t ny = ly < ph ? ly : ph, nx = lx < pwid ? lx : pwid;
  *pw = nx;
  if (ny <= 0 || nx <= 0) return 0;
  for (int64_t y = 0; y < ny; y++)
    for (int64_t x = 0; x < nx; x++) {
      const int64_t t = 2 * y * ww + 2 * x;
#define QROW(T) ((const uint16_t*)tokp[T] + qoff)
      max4_bf16(QROW(t), QROW(t + ww), QROW(t + 1), QROW(t + ww + 1), d, qp + (y * nx + x) * d);
#undef QROW
    }
  return ny * nx;
}

/* one head's keys and values packed, and a block of its queries attended: in float32 (mode 0), with bf16 products
 * (1) or with bf16 products on AMX tiles (2: BQ_AMX queries; the bf16 arrays in the float buffers' first halves) */
static void pack(int mode, int tok16, const float* const* tokp, int64_t n, int64_t np, int64_t koff, int64_t voff,
                 int64_t d, float* kp, float* vp) {
  if (tok16)
    pack_head_tok16(tokp, n, np, koff, voff, d, (uint16_t*)kp, (uint16_t*)vp);
  else if (mode)
    pack_head_bf16(tokp, n, np, koff, voff, d, mode == 2 ? amx_key_width(d) : d, (uint16_t*)kp, (uint16_t*)vp);
  else
    pack_head(tokp, n, np, koff, voff, d, kp, vp);
}

static void attend(int mode, int tok16, const float* const* q, const int64_t* tok, int64_t nq, int64_t bq, float scale,
                   const float* kp, const float* vp, const float* tab_h, const float* tab_w, const float* rel,
                   int64_t hh, int64_t ww, int64_t d, float* s, float* qs, float* rh, float* rw,
                   float* o, float* inv) {
#if GEOSAM_AMX
  if (mode == 2) {
    attend_head_amx(q, tok16, tok, nq, scale, (const uint16_t*)kp, (const uint16_t*)vp, tab_h, tab_w, rel, hh, ww, d,
                    s, qs, rh, rw, o, inv, inv + BQ_AMX);
    return;
  }
#endif
  if (mode)
    attend_head_bf16(q, tok, nq, bq, scale, (const uint16_t*)kp, (const uint16_t*)vp, tab_h, tab_w, rel, hh, ww, d, s,
                     qs, rh, rw, o, inv);
  else
    attend_head(q, tok, nq, bq, scale, kp, vp, tab_h, tab_w, rel, hh, ww, d, s, qs, rh, rw, o, inv);
}

/* the q, k and v rows of head offset hoff (d numbers each; C = cc) of the map's tokens y0 .. y1 x x0 .. x1 fetched
 * into L2 */
static void fetch_window_rows(const void* qkv, int64_t srow, int64_t scol, int esz, int64_t y0, int64_t y1, int64_t x0,
                              int64_t x1, int64_t cc, int64_t hoff, int64_t d) {
  for (int64_t y = y0; y < y1; y++)
    for (int64_t x = x0; x < x1; x++) {
      const char* t = (const char*)qkv + (y * srow + x * scol) * esz;
      for (int part = 0; part < 3; part++) fetch_l2(t + (part * cc + hoff) * esz, d * esz);
    }
}

/* A SAM attention layer, every head, from its qkv projection: an mh x mw map, token (y, x) at qkv + y * srow +
 * x * scol with the q, k, v of head h at h d, C + h d, 2C + h d (C = nh d); with ws > 0 in windows of ws x ws
 * (tokens past the map: `bias`, 3C numbers), else over the whole map. tab_h (hh, d, hh) and tab_w (ww, d, ww): the
 * layer's relative tables transposed (hh = ww = ws in windows, else the map's size), or NULL for none. out: token
 * (y, x) at out + y * orow + x * ocol, head h at + h d. d: a multiple of 16 up to 128 (of 8 with tok16 and no
 * tables). Returns 0, 1 (shape not
 * supported) or 2 (no memory). mode: 0 float32, 1 bf16 products (AVX-512 BF16), 2 bf16 products on AMX tiles (the
 * process has been granted them: geosam_amx_init; 1 where the compiler has no AMX).
 * tok16: qkv and bias are bf16 numbers (strides in numbers as for float32), mode 2 only (1 returned otherwise): the
 * AMX mode reads the bf16 projection as it is, without a float32 copy of it. out16: out holds bf16 numbers (strides
 * in numbers), the results rounded as torch rounds float32 to bf16 (any mode). qpool: SAM 2's query pooling (a
 * stride of 2 in windows: ws even, no tables, tok16, mode 2; 1 returned otherwise): each window's queries are the
 * 2 x 2 maxima of its tokens' q (pooled_queries), attending to all its keys; out is the pooled map (mh / 2 x mw / 2,
 * odd edges dropped), each output from four tokens on the map. On an Intel Xeon with AMX, one thread, Hiera-tiny's
 * three pooling blocks' attention with their projections 97 / 40 / 30 ms against 124 / 57 / 50 ms with the windows
 * copied out, q pooled by torch and torch's fused attention on windows of 4 to 49 queries. */
int geosam_attention512(const void* qkv, int64_t srow, int64_t scol, int64_t mh, int64_t mw, int64_t ws,
                        const void* bias, int64_t nh, int64_t d, float scale, const float* tab_h, const float* tab_w,
                        void* out, int64_t orow, int64_t ocol, int threads, int mode, int tok16, int out16,
                        int qpool) {
  if (d % 8 != 0 || d < 16 || d > 128 || mh < 1 || mw < 1 || ws < 0 || (ws > 0 && bias == NULL)) return 1;
  if (qpool && (ws < 2 || ws % 2 != 0 || tab_h != NULL || !tok16 || mode != 2 || mh < 2 || mw < 2)) return 1;
  if (mode == 2 && !GEOSAM_AMX) mode = 1;
  if (tok16 && mode != 2) return 1;
  if (d % 16 != 0 && !(tok16 && tab_h == NULL)) return 1; /* heads of 8 more than 16s: bf16 tokens, AMX, no tables */
  const int esz = tok16 ? 2 : 4, oesz = out16 ? 2 : 4;
  const int64_t dv = mode == 2 ? amx_value_width(d) : d; /* the blocks' outputs' row: attend_head_amx's o */
  int64_t hh = ws > 0 ? ws : mh, ww = ws > 0 ? ws : mw, n = hh * ww, np = (n + 31) / 32 * 32, cc = nh * d;
  int64_t nwy = (mh + hh - 1) / hh, nwx = (mw + ww - 1) / ww, nwin = nwy * nwx;
  /* windows: each (window, head) a task, packing its own keys and values; one map: every head packed first,
   * then the (head, block of queries) tasks */
  int whole = nwin == 1 && !qpool; /* pooled queries: always by windows */
  /* float32 maps whose rows are whole pairs of key panels: the running softmax in chunks of keys */
  const int flash = mode == 0 && whole && flash_map && ww % 32 == 0;
  const int64_t bq = flash ? BQ_FLASH : mode == 2 ? BQ_AMX : whole ? BQ_MAP : BQ;
  const int64_t sw = (flash ? flash_chunk(ww) : np) + 16; /* a row of scores */
  int64_t nb = (hh * ww + bq - 1) / bq;
  size_t kv = (size_t)(np * d) * (whole ? (size_t)nh : 1);
  size_t work = (size_t)(bq * (sw + d + dv + hh + ww) + 2 * bq + 32 + (tok16 ? bq * d : 0)); /* + the widened queries */
  float* shared = NULL;
  float* rel = NULL; /* a whole map's relative terms of one head's tokens (rel_rows), n rows of hh + ww */
  const float** tok0 = NULL;
  int err = 0;
  if (whole) {
    shared = (float*)aligned_alloc(64, sizeof(float) * 2 * kv);
    tok0 = (const float**)malloc(sizeof(float*) * (size_t)n);
    rel = tab_h != NULL ? (float*)malloc(sizeof(float) * (size_t)(n * (hh + ww))) : NULL;
    if (shared == NULL || tok0 == NULL || (tab_h != NULL && rel == NULL)) {
      free(shared); free(tok0); free(rel);
      return 2;
    }
    int64_t ry, rx;
    window_tokens(qkv, srow, scol, esz, mh, mw, hh, ww, 0, 0, bias, tok0, &ry, &rx);
  }
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    /* windows: their keys and values packed, then their tokens' relative terms and (tables given) q in float32 */
    float* s = (float*)aligned_alloc(64, sizeof(float) * (work + (whole ? 0 : 2 * kv + (size_t)(n * (hh + ww + d)))));
    const float** tokp = whole ? tok0 : (const float**)malloc(sizeof(float*) * (size_t)n);
    if (s == NULL || tokp == NULL) {
#pragma omp atomic write
      err = 2;
    }
    if (whole) {
#pragma omp for schedule(static)
      for (int64_t h = 0; h < nh; h++) pack(mode, tok16, tok0, n, np, cc + h * d, 2 * cc + h * d, d, shared + h * np * d,
                                            shared + kv + h * np * d);
    }
#pragma omp barrier
    int ok = s != NULL && tokp != NULL && err == 0;
    float *qs = s + bq * sw, *o = qs + bq * d, *rh = o + bq * dv, *rw = rh + bq * hh, *inv = rw + bq * ww;
    if (ok && tab_h == NULL) memset(rh, 0, sizeof(float) * (size_t)(bq * (hh + ww)));
    const float* q[BQ_MAX];
    int64_t tok[BQ_MAX], nq, ry = mh, rx = mw;
    float* orows[BQ_MAX];
#if GEOSAM_AMX
    if (mode == 2) amx_configure();
#endif
    if (whole) /* head by head: its relative terms by rows and columns of the map, then its blocks of queries */
      for (int64_t h = 0; h < nh; h++) {
        if (rel != NULL) {
#pragma omp for schedule(static)
          for (int64_t i = 0; i < hh + ww; i++)
            if (mode == 2)
              rel_rows8(tok0, h * d, tok16, tab_h, tab_w, hh, ww, d, i < hh ? i : i - hh, i >= hh, rel);
            else
              rel_rows(tok0, h * d, tab_h, tab_w, hh, ww, d, i < hh ? i : i - hh, i >= hh, rel);
        }
#pragma omp for schedule(static)
        for (int64_t b = 0; b < nb; b++) {
          if (!ok) continue;
          block_rows(tok0, ww, mh, mw, b * bq, bq, h * d, esz, (char*)out + h * d * oesz, orow, ocol, oesz, 0, 0, d, q,
                     tok, orows, &nq);
          if (nq > 0 && flash)
            attend_head_flash(q, tok, nq, bq, scale, shared + h * np * d, shared + kv + h * np * d, tab_h, tab_w, rel, hh,
                              ww, d, s, qs, rh, rw, o, inv, inv + bq);
          else if (nq > 0)
            attend(mode, tok16, q, tok, nq, bq, scale, shared + h * np * d, shared + kv + h * np * d, tab_h, tab_w, rel, hh, ww,
                   d, s, qs, rh, rw, o, inv);
          block_out(o, flash ? inv + bq : inv, nq, d, dv, orows, out16); /* the reciprocal sums: the flash's after mx */
        }
      }
    else {
#pragma omp for schedule(static)
      for (int64_t w = 0; w < nwin * nh; w++) {
        if (!ok) continue;
        int64_t win = w / nh, h = w % nh, wy = win / nwx, wx = win % nwx;
        float *kp = s + work, *vp = kp + kv, *wrel = vp + kv, *qf = wrel + n * (hh + ww);
        window_tokens(qkv, srow, scol, esz, mh, mw, hh, ww, wy, wx, bias, tokp, &ry, &rx);
        if (prefetch_next && w + 1 < nwin * nh) { /* the next task's q, k and v rows on their way to L2 */
          const int64_t w1 = (w + 1) / nh, y0 = (w1 / nwx) * hh, x0 = (w1 % nwx) * ww;
          fetch_window_rows(qkv, srow, scol, esz, y0, y0 + hh < mh ? y0 + hh : mh, x0, x0 + ww < mw ? x0 + ww : mw, cc,
                            ((w + 1) % nh) * d, d);
        }
        pack(mode, tok16, tokp, n, np, cc + h * d, 2 * cc + h * d, d, kp, vp);
        if (qpool) { /* the window's pooled queries (in qf's place: no tables) against all its keys */
          int64_t pw;
          const int64_t npool = pooled_queries(tokp, h * d, d, mh, mw, hh, ww, wy, wx, (uint16_t*)qf, &pw);
          char* oh = (char*)out + h * d * oesz;
          for (int64_t b0 = 0; b0 < npool; b0 += bq) {
            nq = npool - b0 < bq ? npool - b0 : bq;
            for (int64_t r = 0; r < bq; r++) {
              const int64_t j = b0 + (r < nq ? r : 0), y = wy * (hh / 2) + j / pw, x = wx * (ww / 2) + j % pw;
              q[r] = (const float*)((const uint16_t*)qf + j * d);
              tok[r] = 0;
              orows[r] = (float*)(oh + (y * orow + x * ocol) * oesz);
            }
            attend(mode, tok16, q, tok, nq, bq, scale, kp, vp, NULL, NULL, NULL, hh, ww, d, s, qs, rh, rw, o, inv);
            block_out(o, inv, nq, d, dv, orows, out16);
          }
          continue;
        }
        const int small = tab_h != NULL && hh <= 16 && ww <= 16; /* the window's terms first, for every block */
        if (small) window_rel(tokp, h * d, tok16, tab_h, tab_w, hh, ww, ry, rx, d, qf, wrel);
        for (int64_t b0 = 0; b0 < ry * rx; b0 += bq) {
          char* oh = (char*)out + h * d * oesz; /* the head's outputs */
          block_rows(tokp, ww, ry, rx, b0, bq, h * d, esz, oh, orow, ocol, oesz, wy * hh, wx * ww, d, q, tok, orows, &nq);
          attend(mode, tok16, q, tok, nq, bq, scale, kp, vp, tab_h, tab_w, small ? wrel : NULL, hh, ww, d, s, qs, rh,
                 rw, o, inv);
          block_out(o, inv, nq, d, dv, orows, out16);
        }
      }
    }
#if GEOSAM_AMX
    if (mode == 2) amx_release();
#endif
    free(s);
    if (!whole) free(tokp);
  }
  free(shared); free(tok0); free(rel);
  return err;
}
