/* Whether this CPU's AMX tile work and AVX-512 vector work run side by side (benchmarks/bench_amx_tiles.py builds
 * and runs it). geosam's AMX attention (geosam/models/cpu_attention512.c, attend_head_amx) computes each block of 32
 * queries' scores against 32 keys on the tiles and then, in AVX-512 registers, adds the relative terms and takes
 * the rows' maxima; an out-of-order core could run one block's vector work while the next block's products run.
 *
 *   cc -O2 -DTCASE=CASE amx_overlap.c -o amx_overlap && ./amx_overlap [REPEATS]
 *
 * One "block" is the QK pass of 32 queries over 4096 keys with heads of 64 numbers (128 steps of 32 keys). Tile
 * work a step, by CASE: 0 the 8 products (TDPBF16PS) with their operands kept in tiles; 1 the products with their
 * tile loads (the queries from L1, the keys' panels from a 512 KiB area: a head's keys); 2 the products and the
 * four 32 x 32 score tiles stored into a ring of two 4 KiB blocks (L1); 3 the loads, products and stores (ring);
 * 4 the loads, products and stores into a 512 KiB area of scores (the kernel's own layout); 5 the products in the
 * transposed form (the queries kept in four tiles as the right-hand operand, 16 keys' rows as the left one: scores
 * key by query), loads and stores into the ring, 16 keys a step (the same products). Vector work a step: 32 rows of
 * 32 scores (from the ring; CASE 4: from the score area two steps back, stored back) scaled, plus a row and a column
 * term, into each row's maximum, as the kernel does. Prints microseconds a block for the tile work alone, the
 * vector work alone, both with all of a step's tile instructions before its vector work, and both with the tile
 * instructions spread between the rows (two rows between each): "both" near "tiles + vector" means they did not
 * run side by side. CASE is fixed when it is compiled, so that each case's code has its tile instructions in line,
 * not behind a switch. The best of REPEATS (default 5) runs of 50 blocks. Linux with AMX: asks for the tile state with
 * arch_prctl first. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TA __attribute__((target("amx-tile,amx-bf16,avx512f,avx512dq,avx512bw,avx512vl,fma"), noinline))
#define NK 4096
#define SS (NK + 16) /* a row of the score area (the kernel's: 16 floats of padding) */

typedef struct {
  uint8_t palette, start, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} tile_config;

static uint16_t keys[NK * 64] __attribute__((aligned(64)));
static uint16_t queries[32 * 64] __attribute__((aligned(64)));
static float scores[32 * SS] __attribute__((aligned(64)));
static float ring[2][32 * 32] __attribute__((aligned(64)));
static float rw[32 * 64] __attribute__((aligned(64)));
static __m512 mx[32];
#ifndef TCASE
#define TCASE 3
#endif
#define tcase TCASE

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* one row of the vector work: 32 scores scaled, plus the row's term h and the column terms, into the row's maximum */
#define ROW(src, stride, st, r)                                                                                       \
  do {                                                                                                                \
    float* row_ = (src) + (r) * (stride);                                                                             \
    const __m512 h_ = _mm512_set1_ps(0.25f * (r));                                                                    \
    const __m512 x0_ = _mm512_add_ps(_mm512_fmadd_ps(_mm512_loadu_ps(row_), f, h_), _mm512_loadu_ps(rw + (r) * 64)); \
    const __m512 x1_ =                                                                                                \
        _mm512_add_ps(_mm512_fmadd_ps(_mm512_loadu_ps(row_ + 16), f, h_), _mm512_loadu_ps(rw + (r) * 64 + 16));      \
    if (st) _mm512_storeu_ps(row_, x0_), _mm512_storeu_ps(row_ + 16, x1_);                                           \
    mx[r] = _mm512_max_ps(mx[r], _mm512_max_ps(x0_, x1_));                                                            \
  } while (0)

/* the tile work of step t (keys 16 t .. 16 t + 31), its 32 instructions or fewer numbered 0.. so that the
 * interleaved order can put two rows between each; returns how many there are */
#define TI __attribute__((target("amx-tile,amx-bf16,avx512f,avx512dq,avx512bw,avx512vl,fma"), always_inline)) inline
TI static int tile_op(int t, int i) {
  const uint16_t* k0 = keys + (int64_t)t * 1024;
  const uint16_t* k1 = k0 + 1024;
  float* rb = ring[(t >> 1) & 1];
  float* sb = scores + (int64_t)t * 16;
  const int loads = tcase == 1 || tcase == 3 || tcase == 4, stores = tcase >= 2;
  if (tcase == 5) { /* transposed: 16 keys' rows x 32 numbers as the left operand, the queries kept in tiles 4-7 */
    static const int n5 = 16;
    if (i >= n5) return n5;
    const int half = i / 8, j = i % 8; /* two steps of 16 keys */
    const uint16_t* kr = keys + ((int64_t)t + half) * 1024;
    float* r5 = rb + half * 512;
    switch (j) {
      case 0: _tile_zero(0); _tile_zero(1); break;
      case 1: _tile_loadd(2, kr, 128); break;
      case 2: _tile_loadd(3, kr + 32, 128); break;
      case 3: _tile_dpbf16ps(0, 2, 4); break;
      case 4: _tile_dpbf16ps(1, 2, 5); break;
      case 5: _tile_dpbf16ps(0, 3, 6); break;
      case 6: _tile_dpbf16ps(1, 3, 7); break;
      default: _tile_stored(0, r5, 128); _tile_stored(1, r5 + 16, 128); break;
    }
    return n5;
  }
  /* the kernel's order: per 32 of the head's numbers, q rows 0-15 and both key panels, 2 products, q rows 16-31, 2
   * products; then the four score tiles stored */
  static const int n = 22;
  if (i >= n) return n;
  if (i < 18) {
    const int c = (i / 9) * 32, j = i % 9;
    switch (j) {
      case 0: if (c == 0) { _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3); } break;
      case 1: if (loads) _tile_loadd(4, queries + c, 128); break;
      case 2: if (loads) _tile_loadd(6, k0 + 16 * c, 64); break;
      case 3: if (loads) _tile_loadd(7, k1 + 16 * c, 64); break;
      case 4: _tile_dpbf16ps(0, 4, 6); break;
      case 5: _tile_dpbf16ps(1, 4, 7); break;
      case 6: if (loads) _tile_loadd(5, queries + 32 * 32 + c, 128); break;
      case 7: _tile_dpbf16ps(2, 5, 6); break;
      default: _tile_dpbf16ps(3, 5, 7); break;
    }
  } else if (stores) {
    const int q = i - 18;
    float* dst = tcase == 4 ? sb + (q & 1) * 16 + (q >> 1) * 16 * SS : rb + (q & 1) * 16 + (q >> 1) * 512;
    const int64_t stride = tcase == 4 ? 4 * SS : 128;
    switch (q) {
      case 0: _tile_stored(0, dst, stride); break;
      case 1: _tile_stored(1, dst, stride); break;
      case 2: _tile_stored(2, dst, stride); break;
      default: _tile_stored(3, dst, stride); break;
    }
  }
  return n;
}

/* one block: 128 steps (the transposed case: 256 steps of 16 keys, tile_op taking two at a time); what: 1 tiles,
 * 2 vector, 3 both (tiles first), 4 both (interleaved) */
TA static float block(int what) {
  const __m512 f = _mm512_set1_ps(0.125f);
  for (int t = 0; t < NK / 16; t += 2) {
    float* src = tcase == 4 ? (t >= 4 ? scores + (int64_t)(t - 4) * 16 : NULL) : ring[((t >> 1) + 1) & 1];
    const int stride = tcase == 4 ? SS : 32, st = tcase == 4;
    const int nt = tile_op(t, 1 << 20);
    if (what == 1 || what == 3) {
#pragma GCC unroll 32
      for (int i = 0; i < 22; i++)
        if (i < nt) tile_op(t, i);
    }
    if ((what == 2 || what == 3) && src != NULL) {
#pragma GCC unroll 32
      for (int r = 0; r < 32; r++) ROW(src, stride, st, r);
    }
    if (what == 4) {
#pragma GCC unroll 16
      for (int r = 0; r < 32; r += 2) {
        if (r / 2 < nt) tile_op(t, r / 2);
        if (src != NULL) {
          ROW(src, stride, st, r);
          ROW(src, stride, st, r + 1);
        }
      }
#pragma GCC unroll 32
      for (int j = 16; j < 22; j++)
        if (j < nt) tile_op(t, j);
    }
  }
  return _mm512_reduce_max_ps(mx[3]);
}

TA static double timed(int what, int repeats) {
  double best = 1e30;
  for (int k = 0; k < repeats; k++) {
    const double t0 = now();
    for (int b = 0; b < 50; b++) block(what);
    const double t = now() - t0;
    if (t < best) best = t;
  }
  return best / 50 * 1e6;
}

TA int main(int argc, char** argv) {
  const int repeats = argc > 1 ? atoi(argv[1]) : 5;
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) {
    printf("no AMX permission\n");
    return 1;
  }
  tile_config cfg = {0};
  cfg.palette = 1;
  for (int i = 0; i < 8; i++) cfg.colsb[i] = 64, cfg.rows[i] = 16;
  _tile_loadconfig(&cfg);
  srand(1); /* random bf16 numbers in [2^-7, 2^-5) of either sign: no zeros, no overflow */
  for (long i = 0; i < NK * 64; i++) keys[i] = (uint16_t)(0x3c00 + (rand() & 0xff) + ((rand() & 1) << 15));
  for (long i = 0; i < 32 * 64; i++) queries[i] = (uint16_t)(0x3c00 + (rand() & 0xff) + ((rand() & 1) << 15));
  for (long i = 0; i < 32 * 64; i++) rw[i] = (float)rand() / RAND_MAX;
  for (long i = 0; i < 32 * SS; i++) scores[i] = (float)rand() / RAND_MAX;
  for (int i = 0; i < 32; i++) mx[i] = _mm512_setzero_ps();
  /* the operands every case keeps in tiles (the transposed case's queries; case 0's and 2's everything) */
  _tile_loadd(4, queries, 128);
  _tile_loadd(5, queries + 16 * 64, 128);
  _tile_loadd(6, keys, 64);
  _tile_loadd(7, keys + 1024, 64);
  const double tiles = timed(1, repeats), vector = timed(2, repeats), both = timed(3, repeats),
               interleaved = timed(4, repeats);
  printf("%.3f %.3f %.3f %.3f\n", tiles, vector, both, interleaved);
  _tile_release();
  return 0;
}
