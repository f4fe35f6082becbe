/* Float32 kernels for SAM's image encoder on AVX2 CPUs, bit for bit what torch computes there.
 *
 * 1. Softmax over the last axis, with SAM's relative positions added first or
 * without: ATen's `_vec_softmax_lastdim` (torch.softmax over the last dim of a
 * contiguous float32 tensor, AVX2 dispatch) computes per row the maximum (vector
 * reduction, then ATen's horizontal reduction order), exp(x - max) with Sleef's
 * expf8_u10, the sum of those in the same order, then each times 1 / sum. The
 * same operations in the same order give the same bits; what is gained is that
 * each row is read from memory once and finished while it is in cache (ATen makes
 * a separate pass over the whole block for every step), and that the relative
 * position terms are added in the same pass as the maximum.
 * 2. One head of a global attention layer with both products fused around 1
 * (below).
 *
 * Built with -ffp-contract=off so that the compiler fuses no multiply-add torch
 * does not. geosam/models/cpu_kernels.py compiles, loads and checks it against
 * torch.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include "cpu_vec.h"

/* ATen's vec::maximum: the larger, NaN if either is NaN */
static inline __m256 vmax(__m256 a, __m256 b) {
  return _mm256_or_ps(_mm256_max_ps(a, b), _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
}

static inline __m256i tail_mask(int64_t n) { /* the first n (0..7) lanes */
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* max of a row (n >= 8) as ATen's reduce_all: the first vector, then the full ones, then the tail's lanes */
static inline float row_max(const float* x, int64_t n) {
  int64_t d, full = n - n % 8;
  __m256 acc = _mm256_loadu_ps(x);
  for (d = 8; d < full; d += 8) acc = vmax(acc, _mm256_loadu_ps(x + d));
  if (d < n) {
    __m256i m = tail_mask(n - d);
    acc = _mm256_blendv_ps(acc, vmax(acc, _mm256_maskload_ps(x + d, m)), _mm256_castsi256_ps(m));
  }
  return reduce_max(acc);
}

/* y = softmax of a row x (n >= 8) whose maximum is mx; y may be x */
static inline void row_softmax(const float* x, float* y, int64_t n, float mx) {
  int64_t d, full = n - n % 8;
  __m256 vm = _mm256_set1_ps(mx);
  __m256 acc = exp_u10(_mm256_sub_ps(_mm256_loadu_ps(x), vm));
  _mm256_storeu_ps(y, acc);
  for (d = 8; d < full; d += 8) {
    __m256 e = exp_u10(_mm256_sub_ps(_mm256_loadu_ps(x + d), vm));
    _mm256_storeu_ps(y + d, e);
    acc = _mm256_add_ps(acc, e);
  }
  __m256i m = tail_mask(n - full);
  if (d < n) { /* ATen: exp of the zero-filled tail, stored in part, then summed as loaded back */
    __m256 e = exp_u10(_mm256_sub_ps(_mm256_maskload_ps(x + d, m), vm));
    _mm256_maskstore_ps(y + d, m, e);
    __m256 back = _mm256_maskload_ps(y + d, m);
    acc = _mm256_blendv_ps(acc, _mm256_add_ps(acc, back), _mm256_castsi256_ps(m));
  }
  __m256 inv = _mm256_set1_ps(1.0f / reduce_add(acc));
  for (d = 0; d < full; d += 8) _mm256_storeu_ps(y + d, _mm256_mul_ps(_mm256_loadu_ps(y + d), inv));
  if (d < n) _mm256_maskstore_ps(y + d, m, _mm256_mul_ps(_mm256_maskload_ps(y + d, m), inv));
}

/* y = the softmax of each of `rows` rows of n floats (row stride n) of x; y may be x; n >= 8 */
void geosam_softmax(const float* x, float* y, int64_t rows, int64_t n, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t i = 0; i < rows; i++) row_softmax(x + i * n, y + i * n, n, row_max(x + i * n, n));
}

/* SAM's relative positions then softmax, in place: row i of x (hh x ww scores, key row-major) gets
 * (x + rel_h[i, key row]) + rel_w[i, key column], as torch's two broadcast add_ calls, then its softmax.
 * rel_h rows are hh floats, `sh` apart; rel_w rows ww floats, `sw` apart; hh * ww >= 8. */
/* r[a * ww + b] = (r[a * ww + b] + h[a]) + w[b]: torch's two broadcast add_ calls on one row of scores */
static inline void add_rel_row(float* r, const float* h, const float* w, int64_t hh, int64_t ww) {
  const int64_t full = ww - ww % 8;
  const __m256i m = tail_mask(ww - full);
  for (int64_t a = 0; a < hh; a++) {
    __m256 vh = _mm256_set1_ps(h[a]);
    float* ra = r + a * ww;
    int64_t b;
    for (b = 0; b < full; b += 8)
      _mm256_storeu_ps(ra + b, _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(ra + b), vh), _mm256_loadu_ps(w + b)));
    if (b < ww)
      _mm256_maskstore_ps(ra + b, m,
                          _mm256_add_ps(_mm256_add_ps(_mm256_maskload_ps(ra + b, m), vh), _mm256_maskload_ps(w + b, m)));
  }
}

void geosam_rel_softmax_(float* x, const float* rel_h, const float* rel_w, int64_t rows, int64_t hh, int64_t ww,
                         int64_t sh, int64_t sw, int threads) {
  const int64_t n = hh * ww;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t i = 0; i < rows; i++) {
    float* r = x + i * n;
    add_rel_row(r, rel_h + i * sh, rel_w + i * sw, hh, ww);
    row_softmax(r, r, n, row_max(r, n));
  }
}

/* 2. One head of a global attention layer, fused: scores, relative positions, softmax, values.
 *
 * torch's path (geosam/models/fast_encoder.py) for a block of queries: `linear(qs, keys)` (MKL), the relative
 * positions and softmax (above), `linear(probs, values_t)` (MKL). MKL's float32 AVX2 GEMM sums the inner dimension
 * in order with one FMA chain per output from zero, in blocks of `kc` whose partial sums are added in order (kc =
 * 192 for these shapes on an AMD EPYC Zen 3; cpu_kernels.py finds it on the machine at hand by comparing with
 * torch and does not use this code where none matches). The same chains here give the same bits, with the block
 * of scores kept in L2 from the product to the values instead of written to and read back from memory three times.
 */
/* o[r, 0:16] (+)= sum_{j < kn} p[r, j] * v[j, 0:16] for `rows` (<= 6) rows: one FMA chain from zero, then
 * stored (first block) or added to o */
static inline __attribute__((always_inline)) void av_tile(const float* p, int64_t sp, const float* v, int64_t sv,
                                                          int64_t kn, float* o, int64_t so, int first, const int rows) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
         c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t j = 0; j < kn; j++) {
    __m256 b0 = _mm256_loadu_ps(v + j * sv), b1 = _mm256_loadu_ps(v + j * sv + 8), a;
    if (rows > 0) { a = _mm256_broadcast_ss(p + j); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01); }
    if (rows > 1) { a = _mm256_broadcast_ss(p + sp + j); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11); }
    if (rows > 2) { a = _mm256_broadcast_ss(p + 2 * sp + j); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21); }
    if (rows > 3) { a = _mm256_broadcast_ss(p + 3 * sp + j); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31); }
    if (rows > 4) { a = _mm256_broadcast_ss(p + 4 * sp + j); c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41); }
    if (rows > 5) { a = _mm256_broadcast_ss(p + 5 * sp + j); c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51); }
  }
#define AV_OUT(r, c0, c1)                                                                    \
  if (rows > r) {                                                                            \
    float* orow = o + r * so;                                                                \
    if (first) { _mm256_storeu_ps(orow, c0); _mm256_storeu_ps(orow + 8, c1); }              \
    else {                                                                                   \
      _mm256_storeu_ps(orow, _mm256_add_ps(_mm256_loadu_ps(orow), c0));                      \
      _mm256_storeu_ps(orow + 8, _mm256_add_ps(_mm256_loadu_ps(orow + 8), c1));              \
    }                                                                                        \
  }
  AV_OUT(0, c00, c01) AV_OUT(1, c10, c11) AV_OUT(2, c20, c21) AV_OUT(3, c30, c31) AV_OUT(4, c40, c41)
  AV_OUT(5, c50, c51)
#undef AV_OUT
}

static void av_rows(const float* p, int64_t sp, const float* v, int64_t sv, int64_t kn, float* o, int64_t so,
                    int first, int rows) {
  switch (rows) {
    case 6: av_tile(p, sp, v, sv, kn, o, so, first, 6); break;
    case 5: av_tile(p, sp, v, sv, kn, o, so, first, 5); break;
    case 4: av_tile(p, sp, v, sv, kn, o, so, first, 4); break;
    case 3: av_tile(p, sp, v, sv, kn, o, so, first, 3); break;
    case 2: av_tile(p, sp, v, sv, kn, o, so, first, 2); break;
    default: av_tile(p, sp, v, sv, kn, o, so, first, 1); break;
  }
}

/* kp = the first n of keys k (rows `sk` apart) in panels of 16 for qk_rows: kp[t][c][j] = k[t + j][c], zero past n
 * up to np (a multiple of 16) */
static void pack_keys(const float* k, int64_t sk, int64_t n, int64_t np, int64_t d, float* kp) {
  for (int64_t t = 0; t < np; t += 16)
    for (int64_t c = 0; c < d; c++)
      for (int64_t j = 0; j < 16; j++) kp[t * d + c * 16 + j] = t + j < n ? k[(t + j) * sk + c] : 0.f;
}

/* s = q k^T for nq rows of q (`sq` apart) against np packed keys; rows of s `ss` apart */
static void scores_rows(const float* q, int64_t sq, int64_t nq, const float* kp, int64_t np, int64_t d, float* s,
                        int64_t ss) {
  for (int64_t t = 0; t < np; t += 16)
    for (int64_t r = 0; r < nq; r += QK_ROWS)
      qk_rows(q + r * sq, sq, kp + t * d, d, s + r * ss + t, ss, (int)(nq - r < QK_ROWS ? nq - r : QK_ROWS));
}

/* o = p v for nq rows of p (`sp` apart) over n values (rows `sv` apart), in blocks of kc keys added in order */
static void values_rows(const float* p, int64_t sp, int64_t nq, const float* v, int64_t sv, int64_t n, int64_t d,
                        int64_t kc, float* o, int64_t so) {
  for (int64_t j0 = 0; j0 < n; j0 += kc)
    for (int64_t r = 0; r < nq; r += QK_ROWS)
      for (int64_t c = 0; c < d; c += 16)
        av_rows(p + r * sp + j0, sp, v + j0 * sv + c, sv, (n - j0 < kc ? n - j0 : kc), o + r * so + c, so, j0 == 0,
                (int)(nq - r < QK_ROWS ? nq - r : QK_ROWS));
}

/* products only, for the check against torch: s = q k^T (n_q x n), o = p v with blocks of kc */
void geosam_qk(const float* q, int64_t sq, const float* k, int64_t sk, int64_t nq, int64_t n, int64_t d, float* s) {
  if (n % 16) return;
  float* kp = (float*)malloc(sizeof(float) * n * d);
  if (!kp) return;
  pack_keys(k, sk, n, n, d, kp);
  scores_rows(q, sq, nq, kp, n, d, s, n);
  free(kp);
}

void geosam_av(const float* p, int64_t sp, const float* v, int64_t sv, int64_t nq, int64_t n, int64_t d, int64_t kc,
               float* o, int64_t so) {
  values_rows(p, sp, nq, v, sv, n, d, kc, o, so);
}

/* SAM's decomposed relative positions of query i (on an hh x ww grid, row qh = i / ww, column qw = i % ww):
 * rel_h[kh] = sum_c q[c] * tab_h[qh, c, kh], rel_w[kw] = sum_c q[c] * tab_w[qw, c, kw] (the tables transposed from
 * get_rel_pos's (query, key, c) to (query, c, key)), each an FMA chain over c from zero, as torch's einsum -> bmm
 * sums them; q unscaled. */
static inline void rel_terms_row(const float* q, int64_t i, const float* tab_h, const float* tab_w, int64_t hh,
                                 int64_t ww, int64_t d, float* rel_h, float* rel_w) {
  for (int pass = 0; pass < 2; pass++) {
    const int64_t nk = pass ? ww : hh;
    const float* t = pass ? tab_w + (i % ww) * d * ww : tab_h + (i / ww) * d * hh;
    float* o = pass ? rel_w : rel_h;
    int64_t kk = 0;
    for (; kk + 8 <= nk; kk += 8) {
      __m256 acc = _mm256_setzero_ps();
      for (int64_t c = 0; c < d; c++) acc = _mm256_fmadd_ps(_mm256_broadcast_ss(q + c), _mm256_loadu_ps(t + c * nk + kk), acc);
      _mm256_storeu_ps(o + kk, acc);
    }
    if (kk < nk) { /* the last keys: the same chains in part of a vector */
      const __m256i m = tail_mask(nk - kk);
      __m256 acc = _mm256_setzero_ps();
      for (int64_t c = 0; c < d; c++)
        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(q + c), _mm256_maskload_ps(t + c * nk + kk, m), acc);
      _mm256_maskstore_ps(o + kk, m, acc);
    }
  }
}

/* for the check against torch: the relative terms of nq queries (rows of q, stride sq) */
void geosam_rel_terms(const float* q, int64_t sq, int64_t nq, const float* tab_h, const float* tab_w, int64_t hh,
                      int64_t ww, int64_t d, float* rel_h, float* rel_w) {
  for (int64_t i = 0; i < nq; i++) rel_terms_row(q + i * sq, i, tab_h, tab_w, hh, ww, d, rel_h + i * hh, rel_w + i * ww);
}

/* out = softmax(qs k^T + relative terms) v for nq rows: qs (nq x d, contiguous) the scaled queries, rh / rw
 * (nq x hh, nq x ww) their relative terms, kp the keys packed (np >= n), vc the n values (contiguous rows); s: nq
 * rows of np floats of scratch; out rows `so` apart. */
static void attend_rows(const float* qs, const float* rh, const float* rw, int64_t nq, const float* kp,
                        const float* vc, int64_t n, int64_t np, int64_t hh, int64_t ww, int64_t d, int64_t kc, float* s,
                        float* out, int64_t so) {
  scores_rows(qs, d, nq, kp, np, d, s, np);
  for (int64_t r = 0; r < nq; r++) {
    float* row = s + r * np;
    add_rel_row(row, rh + r * hh, rw + r * ww, hh, ww);
    row_softmax(row, row, n, row_max(row, n));
  }
  values_rows(s, np, nq, vc, d, n, d, kc, out, so);
}

/* out[i] = softmax((q[i] * scale) . k[j] + rel_h[i, j / ww] + rel_w[i, j % ww] over j) @ v for the nq = n queries of
 * one head, the keys on an hh x ww grid (n = hh * ww, a multiple of 16), d a multiple of 16; rel_h / rel_w from the
 * transposed tables (rel_terms_row). q, k, v, out: rows with the given strides (elements), unit stride within a
 * row. `block` queries at a time per thread (their scores, block x n floats, stay in L2). 0, or < 0 on failure. */
int geosam_global_attention(const float* q, int64_t sq, float scale, const float* k, int64_t sk, const float* v,
                            int64_t sv, const float* tab_h, const float* tab_w, float* out, int64_t so, int64_t hh,
                            int64_t ww, int64_t d, int64_t kc, int64_t block, int threads) {
  const int64_t n = hh * ww;
  if (n % 16 || d % 16 || kc <= 0 || block <= 0) return -1;
  float* kp = (float*)malloc(sizeof(float) * n * d); /* keys in panels of 16 */
  float* vc = (float*)malloc(sizeof(float) * n * d); /* values, contiguous rows */
  if (!kp || !vc) { free(kp); free(vc); return -2; }
  pack_keys(k, sk, n, n, d, kp);
  for (int64_t j = 0; j < n; j++)
    for (int64_t c = 0; c < d; c++) vc[j * d + c] = v[j * sv + c];
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    /* per thread: the block's scores, scaled queries and relative terms */
    float* s = (float*)malloc(sizeof(float) * block * (n + d + hh + ww));
    if (!s) failed = 1;
#pragma omp for schedule(static)
    for (int64_t b0 = 0; b0 < n; b0 += block) {
      if (!s) continue;
      const int64_t nb = n - b0 < block ? n - b0 : block;
      float* qs = s + block * n;
      float* rh = qs + block * d;
      float* rw = rh + block * hh;
      for (int64_t r = 0; r < nb; r++) {
        const float* qr = q + (b0 + r) * sq;
        for (int64_t c = 0; c < d; c++) qs[r * d + c] = qr[c] * scale;
        rel_terms_row(qr, b0 + r, tab_h, tab_w, hh, ww, d, rh + r * hh, rw + r * ww);
      }
      attend_rows(qs, rh, rw, nb, kp, vc, n, n, hh, ww, d, kc, s, out + b0 * so, so);
    }
    free(s);
  }
  free(kp);
  free(vc);
  return failed ? -2 : 0;
}

/* 3. One window of a windowed attention layer, all heads: softmax((q * scale) k^T + relative terms) v per head.
 *
 * win: the window's qkv projection, n = ws * ws tokens of 3 * nh * d floats (q, k, v, heads within each), as
 * fast_encoder's window buffer holds it (padded tokens carry the qkv bias). out: the output map at the window's
 * top-left token, `orow` floats between map rows, nh * d floats per token; only the ry x rx tokens inside the map
 * are written. tables: (ws, d, ws) transposed relative tables (rel_terms_row). torch's path here is two batched
 * products (bmm) around the softmax: the scores one FMA chain over d from zero, the values chains over the keys in
 * blocks of kc whose partial sums are added in order. The heads are shared among the threads. */
int geosam_window_attention(const float* win, float* out, int64_t orow, int64_t ry, int64_t rx, int64_t ws, int64_t nh,
                            int64_t d, float scale, const float* tab_h, const float* tab_w, int64_t kc, int threads) {
  const int64_t n = ws * ws, np = (n + 15) / 16 * 16, c3 = 3 * nh * d;
  if (d % 16 || kc <= 0) return -1;
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    /* per thread: scores (n x np), keys in panels (np x d), values (n x d), scaled queries, relative terms, output */
    float* buf = (float*)malloc(sizeof(float) * (n * np + np * d + 3 * n * d + 2 * n * ws));
    if (!buf) failed = 1;
#pragma omp for schedule(static)
    for (int64_t h = 0; h < nh; h++) {
      if (!buf) continue;
      float *s = buf, *kp = s + n * np, *vc = kp + np * d, *qs = vc + n * d, *o = qs + n * d, *rh = o + n * d,
            *rw = rh + n * ws;
      const float *q = win + h * d, *k = win + nh * d + h * d, *v = win + 2 * nh * d + h * d;
      pack_keys(k, c3, n, np, d, kp);
      for (int64_t j = 0; j < n; j++)
        for (int64_t c = 0; c < d; c++) {
          vc[j * d + c] = v[j * c3 + c];
          qs[j * d + c] = q[j * c3 + c] * scale;
        }
      for (int64_t i = 0; i < n; i++) rel_terms_row(q + i * c3, i, tab_h, tab_w, ws, ws, d, rh + i * ws, rw + i * ws);
      attend_rows(qs, rh, rw, n, kp, vc, n, np, ws, ws, d, kc, s, o, d);
      for (int64_t y = 0; y < ry; y++)
        for (int64_t x = 0; x < rx; x++)
          for (int64_t c = 0; c < d; c++) out[y * orow + x * nh * d + h * d + c] = o[(y * ws + x) * d + c];
    }
    free(buf);
  }
  return failed ? -2 : 0;
}
