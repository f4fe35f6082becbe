/* AMX bf16 products for geosam's decoder kernels (Intel Xeon with AMX: tiles of 16 rows x 64 bytes, TDPBF16PS sums
 * bf16 pairs into float32 at several times the AVX-512 FMAs' rate). Included, not compiled on its own;
 * geosam/models/cpu_build.py hashes it with every kernel source.
 *
 * The tiles need the kernel's permission (Linux: arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA, asked by
 * geosam_amx_init) and a configuration in every thread that uses them (amx_configure: eight tiles of 16 x 64 bytes:
 * tmm0-3 float32 outputs, tmm4 the left operand, tmm5-7 the right one). Compilers without AMX intrinsics (GCC < 11,
 * clang < 12) get a geosam_amx_init that says no, and the products are never called. */
#ifndef GEOSAM_CPU_AMX_H
#define GEOSAM_CPU_AMX_H
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include "cpu_bf16.h" /* pack_pairs (the right operand's tiles), rows_to_bf16 (the left one's rows) */

#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define GEOSAM_AMX 1
#else
#define GEOSAM_AMX 0
#endif

#if GEOSAM_AMX
#include <sys/syscall.h>
#include <unistd.h>

#define TAMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,fma")))
#define AMX_UNUSED __attribute__((unused)) /* not every kernel including this header calls every function */

/* 0 if this process may use the AMX tiles (asks the kernel; a second ask is harmless), else -1 */
int geosam_amx_init(void) { return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0 ? 0 : -1; }

typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} amx_config;

/* one configuration for every product: a static object, all of whose 64 bytes are written (a configuration on the
 * stack, filled field by field, had its unused tiles' bytes dropped by GCC 12's dead-store elimination: stack
 * garbage there makes ldtilecfg fault) */
static const amx_config AMX_CONFIG = {1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

static AMX_UNUSED TAMX void amx_configure(void) { _tile_loadconfig(&AMX_CONFIG); }

static AMX_UNUSED TAMX void amx_release(void) { _tile_release(); }

/* K rounded up to whole tiles: 32 bf16 (16 pairs) */
static inline int64_t amx_k(int64_t kn) { return (kn + 31) / 32 * 32; }

/* heads per row tile of attention rows grouped by head (nt tokens each): the most whose nt tokens fit 16 rows and
 * that divide nh (at least 1; nt <= 16) */
static inline int64_t amx_row_group(int64_t nt, int64_t nh) {
  int64_t g = 16 / nt < nh ? 16 / nt : nh;
  while (nh % g) g--;
  return g;
}

/* out (rows16 x n, rows `so` floats apart; rows16 = rows rounded up to 16, those past `rows` zeros) = x (rows x kn,
 * rows sx apart, float32, rounded to bf16 into xb: rows16 rows of amx_k(kn)) times the panels of pack_pairs with
 * amx_k(kn) / 2 pairs of rows (its 16-pair chunks are the right operand's tiles, 64-byte rows); n a multiple of 32. The calling thread has run amx_configure. */
static AMX_UNUSED TAMX void amx_product(const float* x, int64_t sx, int64_t rows, const uint16_t* kp, int64_t kn,
                                        int64_t n, float* out, int64_t so, uint16_t* xb) {
  const int64_t kp2 = amx_k(kn), rows16 = (rows + 15) / 16 * 16, nq = kp2 / 32;
  rows_to_bf16(x, sx, rows, rows16, kn, kp2, xb);
  const int64_t sa = 2 * kp2, sc = 4 * so, pb = 16 * kp2; /* bytes between rows of x and of out; a panel (bf16) */
  for (int64_t r = 0; r < rows16; r += 16) {
    const uint16_t* a = xb + r * kp2;
    float* o = out + r * so;
    for (int64_t t = 0; t < n; t += 64) { /* four output tiles (64 columns), or two for the last 32 */
      const int four = n - t >= 64;
      const uint16_t* p = kp + t / 16 * pb;
      _tile_zero(0);
      _tile_zero(1);
      if (four) {
        _tile_zero(2);
        _tile_zero(3);
      }
      for (int64_t q = 0; q < nq; q++) {
        _tile_loadd(4, a + 32 * q, sa);
        _tile_loadd(5, p + 512 * q, 64);
        _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(6, p + pb + 512 * q, 64);
        _tile_dpbf16ps(1, 4, 6);
        if (four) {
          _tile_loadd(7, p + 2 * pb + 512 * q, 64);
          _tile_dpbf16ps(2, 4, 7);
          _tile_loadd(5, p + 3 * pb + 512 * q, 64);
          _tile_dpbf16ps(3, 4, 5);
        }
      }
      _tile_stored(0, o + t, sc);
      _tile_stored(1, o + t + 16, sc);
      if (four) {
        _tile_stored(2, o + t + 32, sc);
        _tile_stored(3, o + t + 48, sc);
      }
    }
  }
}

/* The right operand of AMX products from a float32 matrix whose rows are the inner index: rows 0 .. kn (rows `sm`
 * floats apart, kn <= kpad, kpad a multiple of 32) and columns 0 .. nc, rounded to bf16 into nt panels of 16 columns
 * of kpad / 2 pairs of rows (panel t at dst + 16 t kpad; in it, pair k2's two numbers of column j at 32 k2 + 2 j, the
 * layout TDPBF16PS reads); zeros past kn and nc. Each row is read as one run. `next` (or NULL): the same rows of the
 * matrix packed next, fetched into L2 meanwhile. */
static AMX_UNUSED TAMX void amx_pack_right(const float* m, int64_t kn, int64_t sm, int64_t nc, int64_t kpad,
                                           int64_t nt, uint16_t* dst, const float* next) {
  const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0); /* word 2 j: a[j], 2 j + 1: b[j] */
  for (int64_t k2 = 0; k2 < kpad / 2; k2++) {
    const float* a = m + 2 * k2 * sm;
    for (int64_t e = 0; next != NULL && e < 2 && 2 * k2 + e < kn; e++)
      for (int64_t c = 0; c < nc; c += 16) _mm_prefetch((const char*)(next + (2 * k2 + e) * sm + c), _MM_HINT_T1);
    for (int64_t t = 0; t < nt; t++) {
      const int64_t left = nc - 16 * t;
      const __mmask16 cols = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1u);
      const __m512 x = 2 * k2 < kn ? _mm512_maskz_loadu_ps(cols, a + 16 * t) : _mm512_setzero_ps();
      const __m512 y = 2 * k2 + 1 < kn ? _mm512_maskz_loadu_ps(cols, a + sm + 16 * t) : _mm512_setzero_ps();
      const __m512i w = (__m512i)_mm512_cvtne2ps_pbh(y, x); /* x's numbers first */
      _mm512_storeu_si512(dst + (t * (kpad / 2) + k2) * 32, _mm512_permutexvar_epi16(pairs, w));
    }
  }
}
#else
int geosam_amx_init(void) { return -1; }
static inline int64_t amx_k(int64_t kn) { return (kn + 31) / 32 * 32; }
#endif

#endif
