/* Float32 attention of SAM's image encoder on AVX-512 CPUs: fused, to float rounding (not torch's bits).
 *
 * One layer's attention with SAM's decomposed relative positions, every head, from the qkv projection:
 *
 *     out[i, h] = softmax_j((q_i * scale) . k_j + rel_h[i, row(j)] + rel_w[i, col(j)]) v_j
 *     rel_h[i, r] = q_i . tab_h[row(i), r],  rel_w[i, c] = q_i . tab_w[col(i), c]
 *
 * for a block of BQ queries of one head at a time: their scores (BQ x N) are written once by a register-tiled
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

#define T512 __attribute__((target("avx512f,avx512dq,fma")))
#define INLINE static inline __attribute__((always_inline))

#define BQ 24       /* queries per block: 3 score groups of 8; 4, 6 or 8 value groups of 6, 4 or 3 */
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

INLINE T512 __mmask16 tail(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u); }

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

/* rows of the values tile for a head size of 16 nv */
static inline int av_rows(int64_t nv) { return nv <= 4 ? 6 : nv == 5 ? 4 : 3; }

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

/* row s (n = hh * ww scores, np padded) += rel_h[row] + rel_w[col]; softmax numerators in place (0 past n);
 * returns their sum */
INLINE T512 float softmax_row(float* s, const float* rh, const float* rw, int64_t hh, int64_t ww, int64_t np) {
  __m512 mx = _mm512_set1_ps(-__builtin_inff());
  for (int64_t r = 0; r < hh; r++) {
    float* row = s + r * ww;
    __m512 h = _mm512_set1_ps(rh[r]);
    int64_t c0 = 0;
    for (; c0 + 16 <= ww; c0 += 16) {  /* whole vectors: masked stores are slow on some CPUs (AMD Zen 4) */
      __m512 x = _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(row + c0), h), _mm512_loadu_ps(rw + c0));
      _mm512_storeu_ps(row + c0, x);
      mx = _mm512_max_ps(mx, x);
    }
    if (c0 < ww) {
      __mmask16 mk = tail(ww - c0);
      __m512 x = _mm512_add_ps(_mm512_add_ps(_mm512_maskz_loadu_ps(mk, row + c0), h), _mm512_maskz_loadu_ps(mk, rw + c0));
      _mm512_mask_storeu_ps(row + c0, mk, x);
      mx = _mm512_mask_max_ps(mx, mk, mx, x);
    }
  }
  __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
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

/* One head's attention for BQ queries (rows q[r], scaled by `scale` for the scores; tok[r] their token on the
 * hh x ww grid of keys, for the relative terms) against the keys packed (kp) and values vp (np rows of d, zero past
 * n): out[r][0:d] = the result, for the first nq. Scratch: s (BQ x (np + 16)), qs, o (BQ x d), rh (BQ x hh),
 * rw (BQ x ww, zeros without tables), inv (BQ). */
static T512 void attend_head(const float* const* q, const int64_t* tok, int64_t nq, float scale, const float* kp,
                             const float* vp, const float* tab_h, const float* tab_w, int64_t hh, int64_t ww,
                             int64_t d, float* const* out, float* s, float* qs, float* rh, float* rw, float* o,
                             float* inv) {
  int64_t n = hh * ww, np = (n + 31) / 32 * 32, nt = np / 16, ss = np + 16;  /* rows not 4 KiB apart */
  for (int64_t r = 0; r < BQ; r++) {
    const float* qi = q[r];
    for (int64_t c = 0; c < d; c++) qs[r * d + c] = qi[c] * scale;
    if (tab_h != NULL) {
      rel_row(qi, tab_h + (tok[r] / ww) * d * hh, d, hh, rh + r * hh);
      rel_row(qi, tab_w + (tok[r] % ww) * d * ww, d, ww, rw + r * ww);
    }
  }
  /* scores: key panels outer (a 32-key pair stays in L1 for the 3 groups of 8 queries) */
  for (int64_t t = 0; t < nt; t += 2) {
    for (int64_t g = 0; g < BQ; g += 8) {
      if (t + 1 < nt)
        qk_8x32(qs + g * d, d, kp + t * d * 16, kp + (t + 1) * d * 16, s + g * ss + t * 16, ss);
      else
        qk_8x16(qs + g * d, d, kp + t * d * 16, s + g * ss + t * 16, ss);
    }
  }
  for (int64_t r = 0; r < BQ; r++)  /* without tables rh and rw hold zeros */
    inv[r] = 1.0f / softmax_row(s + r * ss, tab_h ? rh + r * hh : rh, tab_h ? rw + r * ww : rw, hh, ww, np);
  memset(o, 0, sizeof(float) * BQ * d);
  for (int64_t j0 = 0; j0 < np; j0 += KBLOCK) {
    int64_t kn = np - j0 < KBLOCK ? np - j0 : KBLOCK;
    for (int64_t g = 0; g < BQ; g += av_rows(d / 16)) av_tile(d / 16, s + g * ss + j0, ss, vp + j0 * d, kn, o + g * d, d);
  }
  for (int64_t r = 0; r < nq; r++) {
    float* dst = out[r];
    __m512 f = _mm512_set1_ps(inv[r]);
    for (int64_t c = 0; c < d; c += 16) _mm512_storeu_ps(dst + c, _mm512_mul_ps(_mm512_loadu_ps(o + r * d + c), f));
  }
}

/* The keys and values of one head on an hh x ww grid of tokens, token j at tokp[j] (k at + koff, v at + voff):
 * keys in 16-wide panels (kp), values in rows of d (vp), np rows, zero past n */
static T512 void pack_head(const float* const* tokp, int64_t n, int64_t np, int64_t koff, int64_t voff, int64_t d,
                           float* kp, float* vp) {
  for (int64_t t = 0; t < np / 16; t++) {
    float* panel = kp + t * d * 16;
    for (int64_t l = 0; l < 16; l++) {
      int64_t j = t * 16 + l;
      const float* row = j < n ? tokp[j] + koff : NULL;
      for (int64_t c = 0; c < d; c++) panel[c * 16 + l] = row ? row[c] : 0.0f;
    }
  }
  for (int64_t j = 0; j < np; j++) {
    if (j < n)
      memcpy(vp + j * d, tokp[j] + voff, sizeof(float) * (size_t)d);
    else
      memset(vp + j * d, 0, sizeof(float) * (size_t)d);
  }
}

/* The tokens of window (wy, wx) of size hh x ww on an mh x mw map (token (y, x) at qkv + y * srow + x * scol;
 * those past the map: `bias`, the qkv projection of a zero token): tokp[0:hh ww]; returns how many of its rows
 * (*ry) and columns (*rx) lie on the map */
static void window_tokens(const float* qkv, int64_t srow, int64_t scol, int64_t mh, int64_t mw, int64_t hh,
                          int64_t ww, int64_t wy, int64_t wx, const float* bias, const float** tokp, int64_t* ry,
                          int64_t* rx) {
  int64_t y0 = wy * hh, x0 = wx * ww;
  *ry = mh - y0 < hh ? mh - y0 : hh;
  *rx = mw - x0 < ww ? mw - x0 : ww;
  for (int64_t r = 0; r < hh; r++)
    for (int64_t c = 0; c < ww; c++)
      tokp[r * ww + c] = (r < *ry && c < *rx) ? qkv + (y0 + r) * srow + (x0 + c) * scol : bias;
}

/* Queries b0 .. b0 + BQ of a window (its ry x rx tokens on the map, in order; a partial block repeats the first):
 * their rows (head offset qoff), grid tokens and output rows (out + y * orow + x * ocol + head offset) */
static void block_rows(const float* const* tokp, int64_t ww, int64_t ry, int64_t rx, int64_t b0, int64_t qoff,
                       float* out, int64_t orow, int64_t ocol, int64_t y0, int64_t x0, const float** q, int64_t* tok,
                       float** o, int64_t* nq) {
  int64_t m = ry * rx - b0 < BQ ? ry * rx - b0 : BQ;
  for (int64_t r = 0; r < BQ; r++) {
    int64_t i = b0 + (r < m ? r : 0), y = i / rx, x = i % rx;
    tok[r] = y * ww + x;
    q[r] = tokp[tok[r]] + qoff;
    o[r] = out + (y0 + y) * orow + (x0 + x) * ocol;
  }
  *nq = m;
}

/* A SAM attention layer, every head, from its qkv projection: an mh x mw map, token (y, x) at qkv + y * srow +
 * x * scol with the q, k, v of head h at h d, C + h d, 2C + h d (C = nh d); with ws > 0 in windows of ws x ws
 * (tokens past the map: `bias`, 3C numbers), else over the whole map. tab_h (hh, d, hh) and tab_w (ww, d, ww): the
 * layer's relative tables transposed (hh = ww = ws in windows, else the map's size), or NULL for none. out: token
 * (y, x) at out + y * orow + x * ocol, head h at + h d. d: a multiple of 16 up to 128. Returns 0, 1 (shape not
 * supported) or 2 (no memory). */
int geosam_attention512(const float* qkv, int64_t srow, int64_t scol, int64_t mh, int64_t mw, int64_t ws,
                        const float* bias, int64_t nh, int64_t d, float scale, const float* tab_h, const float* tab_w,
                        float* out, int64_t orow, int64_t ocol, int threads) {
  if (d % 16 != 0 || d < 16 || d > 128 || mh < 1 || mw < 1 || ws < 0 || (ws > 0 && bias == NULL)) return 1;
  int64_t hh = ws > 0 ? ws : mh, ww = ws > 0 ? ws : mw, n = hh * ww, np = (n + 31) / 32 * 32, cc = nh * d;
  int64_t nwy = (mh + hh - 1) / hh, nwx = (mw + ww - 1) / ww, nwin = nwy * nwx;
  /* windows: each (window, head) a task, packing its own keys and values; one map: every head packed first,
   * then the (head, block of queries) tasks */
  int whole = nwin == 1;
  int64_t nb = (hh * ww + BQ - 1) / BQ;
  size_t kv = (size_t)(np * d) * (whole ? (size_t)nh : 1);
  size_t work = (size_t)(BQ * (np + 16 + 2 * d + hh + ww) + 32);
  float* shared = NULL;
  const float** tok0 = NULL;
  int err = 0;
  if (whole) {
    shared = (float*)aligned_alloc(64, sizeof(float) * 2 * kv);
    tok0 = (const float**)malloc(sizeof(float*) * (size_t)n);
    if (shared == NULL || tok0 == NULL) {
      free(shared); free(tok0);
      return 2;
    }
    int64_t ry, rx;
    window_tokens(qkv, srow, scol, mh, mw, hh, ww, 0, 0, bias, tok0, &ry, &rx);
  }
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    float* s = (float*)aligned_alloc(64, sizeof(float) * (work + (whole ? 0 : 2 * kv)));
    const float** tokp = whole ? tok0 : (const float**)malloc(sizeof(float*) * (size_t)n);
    if (s == NULL || tokp == NULL) {
#pragma omp atomic write
      err = 2;
    }
    if (whole) {
#pragma omp for schedule(static)
      for (int64_t h = 0; h < nh; h++) pack_head(tok0, n, np, cc + h * d, 2 * cc + h * d, d, shared + h * np * d,
                                                 shared + kv + h * np * d);
    }
#pragma omp barrier
    int ok = s != NULL && tokp != NULL && err == 0;
    float *qs = s + BQ * (np + 16), *o = qs + BQ * d, *rh = o + BQ * d, *rw = rh + BQ * hh, *inv = rw + BQ * ww;
    if (ok && tab_h == NULL) memset(rh, 0, sizeof(float) * (size_t)(BQ * (hh + ww)));
    const float* q[BQ];
    int64_t tok[BQ], nq, ry = mh, rx = mw;
    float* orows[BQ];
    int64_t tasks = whole ? nh * nb : nwin * nh;
#pragma omp for schedule(static)
    for (int64_t w = 0; w < tasks; w++) {
      if (!ok) continue;
      if (whole) {
        int64_t h = w / nb;
        block_rows(tok0, ww, mh, mw, (w % nb) * BQ, h * d, out + h * d, orow, ocol, 0, 0, q, tok, orows, &nq);
        if (nq > 0)
          attend_head(q, tok, nq, scale, shared + h * np * d, shared + kv + h * np * d, tab_h, tab_w, hh, ww, d,
                      orows, s, qs, rh, rw, o, inv);
        continue;
      }
      int64_t win = w / nh, h = w % nh, wy = win / nwx, wx = win % nwx;
      float *kp = s + work, *vp = kp + kv;
      window_tokens(qkv, srow, scol, mh, mw, hh, ww, wy, wx, bias, tokp, &ry, &rx);
      pack_head(tokp, n, np, cc + h * d, 2 * cc + h * d, d, kp, vp);
      for (int64_t b0 = 0; b0 < ry * rx; b0 += BQ) {
        block_rows(tokp, ww, ry, rx, b0, h * d, out + h * d, orow, ocol, wy * hh, wx * ww, q, tok, orows, &nq);
        attend_head(q, tok, nq, scale, kp, vp, tab_h, tab_w, hh, ww, d, orows, s, qs, rh, rw, o, inv);
      }
    }
    free(s);
    if (!whole) free(tokp);
  }
  free(shared); free(tok0);
  return err;
}
