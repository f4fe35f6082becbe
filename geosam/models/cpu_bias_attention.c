/* Window attention with a dense additive bias per head (LiteMedSAM's TinyViT: a learned bias per head and offset) on
 * AMX tiles, one (window, head) task at a time: bf16 q, k, v in, bf16 out.
 *
 * torch's fused attention (scaled_dot_product_attention with the bias as its mask) spends most of a call on its own
 * blocking for these small windows (49 or 196 tokens, heads of 32): Intel Xeon with AMX, one thread, 2.9 ns a score
 * for 49-token windows. Here a task packs its window's keys and values as AMX's right operands (pairs of numbers
 * side by side, cpu_amx.h), computes the scores 16 queries x 16 keys a tile (TDPBF16PS: bf16 products, float32
 * sums), scales them, adds the bias row, takes the softmax in float32 (Cephes' e^x, cpu_attention512.h) and rounds
 * the probabilities to bf16 for the values' product, 16 queries x 16 numbers a tile, then divides by the row's sum
 * and rounds to bf16 as torch does. What torch's bf16 attention computes (bf16 operands, float32 sums, bf16
 * probabilities) to float rounding; geosam/models/cpu_bias_attention.py checks it against a float64 reference
 * before use.
 *
 * qkv: nw x n x nh x 3 x d bf16 numbers (window, token, head, q / k / v, channel); bias: nh x n x n float32 (added
 * to the scaled scores); out: nw x n x nh x d bf16. d 32 or 64, n up to NMAX. Returns 0, 1 (shape not supported, or
 * no AMX in this build) or 2 (no memory). The process must have been granted the tiles (geosam_amx_init).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "cpu_attention512.h" /* T512, INLINE, exp512, tail */
#include "cpu_bf16.h"         /* round16_aten */
#include "cpu_amx.h"          /* GEOSAM_AMX, TAMX, amx_configure, geosam_amx_init */

#define NMAX 256 /* tokens per window */

#if GEOSAM_AMX
/* In each thread of an entry point's parallel region: its scratch of `bytes` (64-byte aligned, whole cache lines) with
 * the tiles configured, or NULL and *err 2 (no memory: the thread's tasks are skipped); thread_end after its tasks */
static TAMX char* thread_begin(size_t bytes, int* err) {
  char* buf = (char*)aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (buf == NULL) {
#pragma omp atomic write
    *err = 2;
  } else
    amx_configure();
  return buf;
}

static TAMX void thread_end(char* buf) {
  if (buf != NULL) amx_release();
  free(buf);
}

/* Scratch of one task, n16 = n rounded up to 16, n32 to 32: q (n16 x d bf16), keys packed (n16 / 16 tiles of d / 32
 * chunks of 512 bf16), values packed (n32 / 32 chunks of d / 16 tiles of 512 bf16), scores (n16 x n16 float32),
 * probabilities (n16 x n32 bf16), a tile's outputs (16 x 16 float32) */
static size_t scratch_bytes(int64_t n, int64_t d) {
  const int64_t n16 = (n + 15) / 16 * 16, n32 = (n + 31) / 32 * 32;
  return (size_t)(2 * (n16 * d + n16 * d + n32 * d + n16 * n32) + 4 * (n16 * n16 + 256)) + 64;
}

/* out (16 x 16 float32, rows so bytes apart) = the sum over `count` steps of a 16-row left tile (rows sa bytes apart,
 * a_step numbers further each step) times a packed right tile (512 numbers, b_step numbers further each step) */
static inline __attribute__((always_inline)) TAMX void tile_sum(const uint16_t* a, int64_t a_step, int64_t sa,
                                                                 const uint16_t* b, int64_t b_step, int64_t count,
                                                                 float* out, int64_t so) {
  _tile_zero(0);
  for (int64_t c = 0; c < count; c++) {
    _tile_loadd(4, a + c * a_step, sa);
    _tile_loadd(6, b + c * b_step, 64);
    _tile_dpbf16ps(0, 4, 6);
  }
  _tile_stored(0, out, so);
}

/* keys (n rows `stride` numbers apart, 32 dc channels each) as AMX's right operand, kp[key tile][chunk of 32
 * channels][16 pair rows][16 keys x 2]: a tile's 32-bit words (a pair of channels) are the keys' words transposed,
 * key j's 16 words of a chunk down column j % 16 of its tile (one scatter, rows 64 bytes apart) */
static inline __attribute__((always_inline)) TAMX void pack_keys(const uint16_t* k, int64_t stride, int64_t n,
                                                                  int64_t dc, uint16_t* kp) {
  const __m512i down = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(16));
  for (int64_t j = 0; j < n; j++)
    for (int64_t c = 0; c < dc; c++)
      _mm512_i32scatter_epi32((int*)(kp + ((j / 16) * dc + c) * 512) + j % 16, down,
                              _mm512_loadu_si512((const void*)(k + j * stride + 32 * c)), 4);
}

/* values (n rows `stride` numbers apart, 32 dc channels each) as AMX's right operand, vp[chunk of 32 keys][tile of
 * 16 channels][16 pair rows][16 x 2]: row pairs (2r, 2r + 1) of a chunk interleaved number by number (zeros for a
 * last odd row) */
static inline __attribute__((always_inline)) TAMX void pack_values(const uint16_t* v, int64_t stride, int64_t n,
                                                                    int64_t dc, uint16_t* vp) {
  const int64_t dt = 2 * dc;
  const __m512i lo = _mm512_setr_epi32(0x00200000, 0x00210001, 0x00220002, 0x00230003, 0x00240004, 0x00250005,
                                       0x00260006, 0x00270007, 0x00280008, 0x00290009, 0x002a000a, 0x002b000b,
                                       0x002c000c, 0x002d000d, 0x002e000e, 0x002f000f); /* a0 b0 a1 b1 ... a15 b15 */
  const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));                      /* a16 b16 ... a31 b31 */
  for (int64_t j = 0; j < n; j += 2) {
    const uint16_t* a = v + j * stride;
    const uint16_t* b = j + 1 < n ? a + stride : NULL;
    uint16_t* dst = vp + (j / 32) * dt * 512 + ((j % 32) / 2) * 32;
    for (int64_t c = 0; c < dc; c++) {
      const __m512i x = _mm512_loadu_si512((const void*)(a + 32 * c));
      const __m512i y = b ? _mm512_loadu_si512((const void*)(b + 32 * c)) : _mm512_setzero_si512();
      _mm512_storeu_si512((void*)(dst + (2 * c) * 512), _mm512_permutex2var_epi16(x, lo, y));
      _mm512_storeu_si512((void*)(dst + (2 * c + 1) * 512), _mm512_permutex2var_epi16(x, hi, y));
    }
  }
}

static TAMX void attend_window(const uint16_t* qkv, int64_t w, int64_t h, int64_t n, int64_t nh, int64_t d,
                               float scale, const float* bias, uint16_t* out, char* buf) {
  const int64_t n16 = (n + 15) / 16 * 16, n32 = (n + 31) / 32 * 32, tok = nh * 3 * d, base = w * n * tok + h * 3 * d;
  uint16_t* qb = (uint16_t*)buf;           /* n16 x d */
  uint16_t* kp = qb + n16 * d;             /* [key tile][chunk of 32 channels][16 pair rows][16 keys x 2] */
  uint16_t* vp = kp + n16 * d;             /* [chunk of 32 keys][tile of 16 channels][16 pair rows][16 x 2] */
  uint16_t* pb = vp + n32 * d;             /* n16 x n32 probabilities */
  float* s = (float*)(pb + n16 * n32);     /* n16 x n16 scores */
  float* o = s + n16 * n16;                /* 16 x 16 */
  /* zeros where the tiles read past the window: q rows past n, the last key tile, the last chunk of values, the
   * probabilities' rows past n (their columns past n16 are zeroed row by row below) */
  memset(qb + n * d, 0, (size_t)(2 * (n16 - n) * d));
  memset(kp + (n16 / 16 - 1) * (d / 32) * 512, 0, (size_t)(2 * (d / 32) * 512));
  memset(vp + (n32 / 32 - 1) * (d / 16) * 512, 0, (size_t)(2 * (d / 16) * 512));
  memset(pb + n * n32, 0, (size_t)(2 * (n16 - n) * n32));
  const int64_t dc = d / 32, dt = d / 16;
  for (int64_t j = 0; j < n; j++) memcpy(qb + j * d, qkv + base + j * tok, (size_t)(2 * d));
  pack_keys(qkv + base + d, tok, n, dc, kp);
  pack_values(qkv + base + 2 * d, tok, n, dc, vp);
  /* scores: 16 queries x 16 keys a tile, over d / 32 chunks of channels */
  for (int64_t qi = 0; qi < n16; qi += 16)
    for (int64_t kt = 0; kt < n16 / 16; kt++)
      tile_sum(qb + qi * d, 32, 2 * d, kp + kt * dc * 512, 512, dc, s + qi * n16 + 16 * kt, 4 * n16);
  /* each row: scaled, + its bias, maximum, e^(x - max) (0 past n), sum; probabilities rounded to bf16 */
  const int64_t nv = n16 / 16;
  const __mmask16 last = tail(n - (nv - 1) * 16);
  const __m512 fs = _mm512_set1_ps(scale);
  float sums[NMAX];
  const float* bh = bias + h * n * n;
  for (int64_t i = 0; i < n; i++) {
    float* row = s + i * n16;
    const float* br = bh + i * n;
    __m512 mx = _mm512_set1_ps(-__builtin_inff());
    for (int64_t v = 0; v < nv; v++) {
      const __mmask16 k = v == nv - 1 ? last : (__mmask16)0xFFFF;
      const __m512 x = _mm512_fmadd_ps(_mm512_loadu_ps(row + 16 * v), fs, _mm512_maskz_loadu_ps(k, br + 16 * v));
      _mm512_storeu_ps(row + 16 * v, x);
      mx = _mm512_mask_max_ps(mx, k, mx, x);
    }
    const __m512 nm = minus_max_log2(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t v = 0; v < nv; v++) {
      const __mmask16 k = v == nv - 1 ? last : (__mmask16)0xFFFF;
      const __m512 e = _mm512_maskz_mov_ps(k, exp512_bf16(_mm512_loadu_ps(row + 16 * v), nm));
      const __m256i eb = (__m256i)_mm512_cvtneps_pbh(e); /* the probabilities the product takes, summed as such */
      _mm256_storeu_si256((__m256i*)(pb + i * n32 + 16 * v), eb);
      sum = _mm512_add_ps(sum, bf16_to_f32(eb));
    }
    if (n32 > n16) _mm256_storeu_si256((__m256i*)(pb + i * n32 + n16), _mm256_setzero_si256());
    sums[i] = _mm512_reduce_add_ps(sum);
  }
  /* values: 16 queries x 16 channels a tile, over n32 / 32 chunks of keys; divided by the sums, rounded to bf16 */
  for (int64_t qi = 0; qi < n16; qi += 16)
    for (int64_t ct = 0; ct < dt; ct++) {
      tile_sum(pb + qi * n32, 32, 2 * n32, vp + ct * 512, dt * 512, n32 / 32, o, 64);
      for (int64_t r = 0; r < 16 && qi + r < n; r++) {
        const int64_t i = qi + r;
        const __m512 y = _mm512_mul_ps(_mm512_loadu_ps(o + 16 * r), _mm512_set1_ps(1.0f / sums[i]));
        _mm256_storeu_si256((__m256i*)(out + ((w * n + i) * nh + h) * d + 16 * ct), round16_aten(y));
      }
    }
}
#endif

int geosam_bias_attention(const uint16_t* qkv, int64_t nw, int64_t n, int64_t nh, int64_t d, float scale,
                          const float* bias, uint16_t* out, int threads) {
#if GEOSAM_AMX
  if (d % 32 || d < 32 || d > 64 || n < 1 || n > NMAX || nw < 1 || nh < 1) return 1;
  const size_t bytes = scratch_bytes(n, d);
  int err = 0;
#pragma omp parallel num_threads(threads) if (threads > 1 && nw * nh > 1)
  {
    char* buf = thread_begin(bytes, &err);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < nw * nh; t++)
      if (buf != NULL) attend_window(qkv, t / nh, t % nh, n, nh, d, scale, bias, out, buf);
    thread_end(buf);
  }
  return err;
#else
  (void)qkv; (void)nw; (void)n; (void)nh; (void)d; (void)scale; (void)bias; (void)out; (void)threads;
  return 1;
#endif
}

/* Queries attending a map's tokens with a bias per query that is a row term plus a column term (SAM 3's DETR
 * decoder: its box relative-position bias), on AMX tiles, one (batch, head) task at a time: the bias of query i and
 * key r ww + c is rh[i][r] + rw[i][c] (that sum rounded to bf16 first with round_bias, as torch's bf16 add of the
 * two terms makes the matrix it is given), 0 for the first zero_rows queries (the decoder's presence token, whose row
 * it pads with zeros); the (queries x keys) matrix of biases is never written. Per block of 16 queries: the scores
 * against every key (16 x 16 a tile), the scale and the bias added key row by key row with the rows' maxima, the
 * numerators (exp512_bf16) rounded to bf16 and summed as such, the values' product 16 queries x 16 numbers a tile,
 * divided by the sums and rounded to bf16 as torch rounds.
 * q: nb x nq x nh x d bf16; k, v: nb x nk x nh x d bf16 (nk = hh ww keys in map order); rh: nb x nh x (nq - zero_rows)
 * x hh float32; rw: nb x nh x (nq - zero_rows) x ww float32; out: nb x nq x nh x d bf16. d 32, 64, 96 or 128. */
#define NK_MAX (1 << 20)

#if GEOSAM_AMX
static size_t rowcol_bytes(int64_t nk, int64_t d) {
  const int64_t n16 = (nk + 15) / 16 * 16, n32 = (nk + 31) / 32 * 32;
  return (size_t)(2 * (16 * d + n16 * d + n32 * d + 16 * n32) + 4 * (16 * n16 + 256)) + 64;
}

static TAMX void attend_rowcol(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t b, int64_t h,
                               int64_t nq, int64_t nk, int64_t nh, int64_t d, int64_t hh, int64_t ww,
                               int64_t zero_rows, float scale, const float* rh, const float* rw, int round_bias,
                               uint16_t* out, char* buf) {
  const int64_t n16 = (nk + 15) / 16 * 16, n32 = (nk + 31) / 32 * 32, tok = nh * d, dc = d / 32, dt = d / 16;
  const int64_t nqb = nq - zero_rows;
  uint16_t* qb = (uint16_t*)buf;       /* 16 x d */
  uint16_t* kp = qb + 16 * d;          /* [key tile][chunk of 32 channels][16 pair rows][16 keys x 2] */
  uint16_t* vp = kp + n16 * d;         /* [chunk of 32 keys][tile of 16 channels][16 pair rows][16 x 2] */
  uint16_t* pb = vp + n32 * d;         /* 16 x n32 probabilities */
  float* s = (float*)(pb + 16 * n32);  /* 16 x n16 scores */
  float* o = s + 16 * n16;             /* 16 x 16 */
  const uint16_t* kb = k + b * nk * tok + h * d;
  const uint16_t* vb = v + b * nk * tok + h * d;
  memset(kp + (n16 / 16 - 1) * dc * 512, 0, (size_t)(2 * dc * 512));
  memset(vp + (n32 / 32 - 1) * dt * 512, 0, (size_t)(2 * dt * 512));
  memset(pb, 0, (size_t)(2 * 16 * n32));
  pack_keys(kb, tok, nk, dc, kp);
  pack_values(vb, tok, nk, dc, vp);
  const __m512 fs = _mm512_set1_ps(scale);
  const int64_t nv = n16 / 16;
  const __mmask16 last = tail(nk - (nv - 1) * 16);
  for (int64_t q0 = 0; q0 < nq; q0 += 16) {
    const int64_t rows = nq - q0 < 16 ? nq - q0 : 16;
    for (int64_t r = 0; r < 16; r++)
      if (r < rows)
        memcpy(qb + r * d, q + ((b * nq + q0 + r) * nh + h) * d, (size_t)(2 * d));
      else
        memset(qb + r * d, 0, (size_t)(2 * d));
    for (int64_t kt = 0; kt < n16 / 16; kt++)
      tile_sum(qb, 32, 2 * d, kp + kt * dc * 512, 512, dc, s + 16 * kt, 4 * n16);
    float sums[16];
    for (int64_t r = 0; r < rows; r++) {
      const int64_t i = q0 + r;
      float* row = s + r * n16;
      __m512 mx = _mm512_set1_ps(-__builtin_inff());
      if (i < zero_rows)
        for (int64_t u = 0; u < nv; u++) {
          const __mmask16 m = u == nv - 1 ? last : (__mmask16)0xFFFF;
          const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(row + 16 * u), fs);
          _mm512_storeu_ps(row + 16 * u, x);
          mx = _mm512_mask_max_ps(mx, m, mx, x);
        }
      else {
        const float* hr = rh + ((b * nh + h) * nqb + i - zero_rows) * hh;
        const float* wr = rw + ((b * nh + h) * nqb + i - zero_rows) * ww;
        for (int64_t y = 0; y < hh; y++) {
          const __m512 hb = _mm512_set1_ps(hr[y]);
          float* seg = row + y * ww;
          for (int64_t c = 0; c < ww; c += 16) {
            const __mmask16 m = tail(ww - c);
            __m512 bias = _mm512_add_ps(hb, _mm512_maskz_loadu_ps(m, wr + c));
            if (round_bias) bias = bf16_to_f32((__m256i)_mm512_cvtneps_pbh(bias));
            const __m512 x = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, seg + c), fs, bias);
            _mm512_mask_storeu_ps(seg + c, m, x);
            mx = _mm512_mask_max_ps(mx, m, mx, x);
          }
        }
      }
      const __m512 nm = minus_max_log2(_mm512_reduce_max_ps(mx));
      __m512 sum = _mm512_setzero_ps();
      uint16_t* pr = pb + r * n32;
      for (int64_t u = 0; u < nv; u++) {
        const __mmask16 m = u == nv - 1 ? last : (__mmask16)0xFFFF;
        const __m256i eb = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_mov_ps(m, exp512_bf16(_mm512_loadu_ps(row + 16 * u), nm)));
        _mm256_storeu_si256((__m256i*)(pr + 16 * u), eb);
        sum = _mm512_add_ps(sum, bf16_to_f32(eb));
      }
      sums[r] = _mm512_reduce_add_ps(sum);
    }
    for (int64_t ct = 0; ct < dt; ct++) {
      tile_sum(pb, 32, 2 * n32, vp + ct * 512, dt * 512, n32 / 32, o, 64);
      for (int64_t r = 0; r < rows; r++) {
        const __m512 y = _mm512_mul_ps(_mm512_loadu_ps(o + 16 * r), _mm512_set1_ps(1.0f / sums[r]));
        _mm256_storeu_si256((__m256i*)(out + ((b * nq + q0 + r) * nh + h) * d + 16 * ct), round16_aten(y));
      }
    }
  }
}
#endif

/* Returns 0, 1 (shape not supported, or no AMX in this build) or 2 (no memory). The process must have been granted
 * the tiles (geosam_amx_init). */
int geosam_rowcol_attention(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t nb, int64_t nq,
                            int64_t nh, int64_t d, int64_t hh, int64_t ww, int64_t zero_rows, float scale,
                            const float* rh, const float* rw, int round_bias, uint16_t* out, int threads) {
#if GEOSAM_AMX
  const int64_t nk = hh * ww;
  if (d % 32 || d < 32 || d > 128 || nq < 1 || nk < 1 || nk > NK_MAX || nb < 1 || nh < 1 || zero_rows < 0 ||
      zero_rows > nq)
    return 1;
  const size_t bytes = rowcol_bytes(nk, d);
  int err = 0;
#pragma omp parallel num_threads(threads) if (threads > 1 && nb * nh > 1)
  {
    char* buf = thread_begin(bytes, &err);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < nb * nh; t++)
      if (buf != NULL)
        attend_rowcol(q, k, v, t / nh, t % nh, nq, nk, nh, d, hh, ww, zero_rows, scale, rh, rw, round_bias, out, buf);
    thread_end(buf);
  }
  return err;
#else
  (void)q; (void)k; (void)v; (void)nb; (void)nq; (void)nh; (void)d; (void)hh; (void)ww; (void)zero_rows;
  (void)scale; (void)rh; (void)rw; (void)round_bias; (void)out; (void)threads;
  return 1;
#endif
}

