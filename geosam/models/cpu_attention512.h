/* Pieces shared by the AVX-512 attention kernels of SAM's image encoder (cpu_attention512.c's float32 and bf16
 * products): block sizes, e^x, the relative-position rows, the window's tokens and a
 * block's query rows. Included, not compiled on its own; geosam/models/cpu_build.py hashes it with every kernel
 * source, so a change here rebuilds them. */
#ifndef GEOSAM_CPU_ATTENTION512_H
#define GEOSAM_CPU_ATTENTION512_H
#include <immintrin.h>
#include <stdint.h>

#define T512 __attribute__((target("avx512f,avx512dq,fma")))
#define INLINE static inline __attribute__((always_inline))

#define BQ 24       /* queries per block in windows: 3 score groups of 8; 4, 6 or 8 value groups of 6, 4 or 3 */
#define BQ_MAP 48   /* queries per block of a whole map (AVX-512 BF16 products, float32 maps not in chunks): a head's keys and values
                     * (1 + 1 MiB for a ViT-B's 64 x 64 map in float32) do not stay in a 2 MiB L2 beside a block's
                     * scores, so they stream in for every block: twice the block, half the streams (a global layer
                     * 447-465 -> 420-439 ms, Intel Xeon, one thread; in a window 24 wastes less on padding) */
#define BQ_FLASH 96 /* queries per block of a whole float32 map in chunks of keys (attend_head_flash) */
#define KC_FLASH 256 /* keys per chunk there, whole map rows (4 of a ViT-B's 64 x 64 map) */
#define BQ_MAX 96   /* the largest of BQ, BQ_MAP, BQ_FLASH and BQ_AMX */
#define BQ_AMX 32   /* queries per block on AMX tiles: two tiles of 16 rows */
#define KBLOCK 512  /* keys per block of the values product (d = 64: 128 KiB of values, in L2) */

/* e^x for x <= 0 (a score minus its row's maximum): Cephes' expf polynomial, 2^n by scalef; 0 below -104 */
INLINE T512 __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

/* e^(x - m) where the result is rounded to bf16 next (the bf16 modes' numerators, x <= m the row's maximum), given
 * nm = -m log2 e (`minus_max_log2`, once a row): 2^t, t = x log2 e + nm in one fused multiply-add, as 2^floor(t)
 * (scalef, which floors t itself) times a near-minimax polynomial of degree 4 in t - floor(t) (vreduceps), relative
 * error 2.6e-6 against bf16's half unit of 2e-3 (one numerator in ~700 rounds to the other neighbour); 0 far below
 * the maximum. 7 operations: exp512 takes 14, and the previous form (x - m, times log2 e, rounded, the fraction
 * taken apart, polynomial, scalef; and a clamp) 10: Intel Xeon with AMX, one thread, a ViT-B global layer 139.6 ->
 * 128.4 ms, a window layer 13.8 -> 13.1 ms, SAM 3's DETR map of heads of 32 numbers 91.0 -> 84.0 ms (alternating). */
INLINE T512 __m512 exp512_bf16(__m512 x, __m512 nm) {
  const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), nm);
  const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.013534165918827057f), f, _mm512_set1_ps(0.05201146751642227f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.2414427548646927f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6930038332939148f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000026226043701f));
  return _mm512_scalef_ps(p, t);
}

/* exp512_bf16's nm for a row whose maximum is m */
INLINE T512 __m512 minus_max_log2(float m) { return _mm512_set1_ps(-m * 1.44269504088896341f); }

/* lane l holds l * stride: the offsets of a 16-lane gather down a column of rows `stride` elements apart */
INLINE T512 __m512i lane_offsets(int64_t stride) {
  return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                            _mm512_set1_epi32((int)stride));
}

INLINE T512 __mmask16 tail(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u); }

/* the lines of p[0:bytes] fetched into L1 ahead of their loads (rows of the map, which are read from L3) */
INLINE void fetch_lines(const void* p, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch((const char*)p + b, _MM_HINT_T0);
}

/* the lines of p[0:bytes] fetched into L2 (a later task's rows, while this one's work runs) */
INLINE void fetch_l2(const void* p, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch((const char*)p + b, _MM_HINT_T1);
}

/* the lines of p[0:bytes] fetched for writing (prefetchw), so that the stores that follow find them owned: rows of
 * outputs and terms in large arrays, whose stores otherwise miss to L3 one by one and fill the store buffer */
INLINE __attribute__((target("prfchw"))) void fetch_for_writing(void* p, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch((char*)p + b, 1, 3);
}

/* dst[0:n] = src[0:n] (32-bit words: floats, or pairs of bf16 numbers) in 16-word vectors, inline: the calls to
 * memcpy for a row of a few hundred bytes, twice per query of a global layer, cost more than the copy */
INLINE T512 void copy_words(float* dst, const float* src, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = tail(n - j);
    _mm512_mask_storeu_ps(dst + j, k, _mm512_maskz_loadu_ps(k, src + j));
  }
}

/* rows of the values tile for a head size of 16 nv */
static inline int av_rows(int64_t nv) { return nv <= 4 ? 6 : nv == 5 ? 4 : 3; }

/* rel[0:m] = q . tab[0:m] with tab (d, m) (one query row of a transposed table); d a multiple of 4 */
INLINE T512 void rel_row(const float* q, const float* tab, int64_t d, int64_t m, float* rel) {
  for (int64_t c0 = 0; c0 < m; c0 += 16) {
    __mmask16 mk = tail(m - c0);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;  /* four chains: the FMA latency hidden */
    for (int64_t c = 0; c < d; c += 4) {
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(q[c]), _mm512_maskz_loadu_ps(mk, tab + c * m + c0), a0);
      a1 = _mm512_fmadd_ps(_mm512_set1_ps(q[c + 1]), _mm512_maskz_loadu_ps(mk, tab + (c + 1) * m + c0), a1);
      a2 = _mm512_fmadd_ps(_mm512_set1_ps(q[c + 2]), _mm512_maskz_loadu_ps(mk, tab + (c + 2) * m + c0), a2);
      a3 = _mm512_fmadd_ps(_mm512_set1_ps(q[c + 3]), _mm512_maskz_loadu_ps(mk, tab + (c + 3) * m + c0), a3);
    }
    _mm512_mask_storeu_ps(rel + c0, mk, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }
}

/* The tokens of window (wy, wx) of size hh x ww on an mh x mw map (token (y, x) at qkv + y * srow + x * scol
 * numbers of esz bytes: 4 float32, 2 bf16; those past the map: `bias`, the qkv projection of a zero token):
 * tokp[0:hh ww] (bf16 tokens' addresses carried as float pointers); returns how many of its rows (*ry) and columns
 * (*rx) lie on the map */
static void window_tokens(const void* qkv, int64_t srow, int64_t scol, int esz, int64_t mh, int64_t mw, int64_t hh,
                          int64_t ww, int64_t wy, int64_t wx, const void* bias, const float** tokp, int64_t* ry,
                          int64_t* rx) {
  int64_t y0 = wy * hh, x0 = wx * ww;
  *ry = mh - y0 < hh ? mh - y0 : hh;
  *rx = mw - x0 < ww ? mw - x0 : ww;
  for (int64_t r = 0; r < hh; r++)
    for (int64_t c = 0; c < ww; c++)
      tokp[r * ww + c] = (const float*)((r < *ry && c < *rx) ? (const char*)qkv + ((y0 + r) * srow + (x0 + c) * scol) * esz
                                                              : (const char*)bias);
}

/* Queries b0 .. b0 + bq of a window (its ry x rx tokens on the map, in order; a partial block repeats the first):
 * their rows (head offset qoff numbers of esz bytes), grid tokens and output rows (out + y * orow + x * ocol + head
 * offset; numbers of oesz bytes: float32 or bf16 outputs; d numbers each, fetched for writing here) */
__attribute__((target("prfchw"))) static void block_rows(const float* const* tokp, int64_t ww, int64_t ry, int64_t rx,
                                                         int64_t b0, int64_t bq, int64_t qoff, int esz, char* out,
                                                         int64_t orow, int64_t ocol, int oesz, int64_t y0, int64_t x0,
                                                         int64_t d, const float** q, int64_t* tok, float** o,
                                                         int64_t* nq) {
  int64_t m = ry * rx - b0 < bq ? ry * rx - b0 : bq;
  const int64_t yb = b0 / rx, xb = b0 % rx; /* the first query's place; the others' by steps (no division a row) */
  int64_t y = yb, x = xb;
  for (int64_t r = 0; r < bq; r++) {
    if (r == m) y = yb, x = xb; /* a partial block's rows past m: the first query again */
    tok[r] = y * ww + x;
    q[r] = (const float*)((const char*)tokp[tok[r]] + qoff * esz);
    o[r] = (float*)(out + ((y0 + y) * orow + (x0 + x) * ocol) * oesz);
    if (r < m) /* the output row owned ahead of the block's stores (the store buffer filled with misses to L3, then
                * the next block's first stores stalled: ~15 % of a windowed layer, AMX mode) */
      fetch_for_writing(o[r], d * oesz);
    if (r < m && ++x == rx) x = 0, y++;
  }
  *nq = m;
}

#endif
