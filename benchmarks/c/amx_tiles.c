/* What this CPU's AMX tiles do with bf16 products (benchmarks/bench_amx_tiles.py builds and runs it): the
 * throughput of TDPBF16PS (16 x 16 x 32, float32 sums) alone and with the tile loads and stores the attention kernel
 * (geosam/models/cpu_attention512.c, attend_head_amx) and a GEMM make around it.
 *
 *   amx_tiles MODE BYTES [STORE_BYTES [DATA]]
 *
 * Four accumulator tiles (C0..C3 = A0 B0, A0 B1, A1 B0, A1 B1: a 32 x 32 block of float32 sums) per step of 4
 * products. MODE 0: the operands stay in tiles (the peak); 1: both B tiles loaded every step from a BYTES-sized area
 * read in turn (a head's keys or values), A from one place (a block's queries: L1); 2: as 1, and every second step
 * the four C tiles stored (a 32 x 32 block of scores with heads of 64 numbers: two steps of 32) into a STORE_BYTES
 * area in turn and zeroed; 3: as 2 with A also read in turn from a 512 KiB area (probabilities read back from the
 * scores); 4: a K-blocked GEMM's inner loop: A read in turn from a 16 KiB block (32 rows x 256 of K), B from the
 * BYTES area in turn, the four C tiles loaded from a STORE_BYTES area of partial sums before and stored after every 8
 * steps. DATA 0: operands of zeros; 1 (default): random bf16 numbers (zeros run faster: the tiles' power and the
 * caches both depend on the data). Prints GFLOP/s and ns a product. Linux: asks for the AMX state with arch_prctl
 * first. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  uint8_t palette, start, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} tile_config;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("amx-tile,amx-bf16"))) int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const int mode = atoi(argv[1]);
  const long bytes = atol(argv[2]), store_bytes = argc > 3 ? atol(argv[3]) : 262144;
  const int random_data = argc > 4 ? atoi(argv[4]) : 1;
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) {
    printf("no AMX permission\n");
    return 1;
  }
  tile_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int i = 0; i < 8; i++) cfg.colsb[i] = 64, cfg.rows[i] = 16;
  _tile_loadconfig(&cfg);
  const long a_bytes = 1 << 19, nb = bytes / 1024 > 2 ? bytes / 1024 : 2, ns = store_bytes / 4096 > 1 ? store_bytes / 4096 : 1;
  uint16_t* a = aligned_alloc(64, a_bytes);
  uint16_t* b = aligned_alloc(64, nb * 1024);
  float* c = aligned_alloc(64, ns * 4096);
  memset(a, 0, a_bytes), memset(b, 0, nb * 1024), memset(c, 0, ns * 4096);
  if (random_data) { /* numbers of either sign in [1, 4) and [2^-7, 2^-5): no zeros, no overflow over 20 M products */
    srand(1);
    for (long i = 0; i < a_bytes / 2; i++) a[i] = (uint16_t)(0x3f80 + (rand() & 0xff) + ((rand() & 1) << 15));
    for (long i = 0; i < nb * 512; i++) b[i] = (uint16_t)(0x3c00 + (rand() & 0xff) + ((rand() & 1) << 15));
  }
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, a, 64);
  _tile_loadd(5, a + 512, 64);
  _tile_loadd(6, b, 64);
  _tile_loadd(7, b + 512, 64);
  const long steps = 5000000;
  const double t0 = now();
  for (long s = 0; s < steps; s++) {
    float* part = c + ((s >> 3) % ns) * 1024; /* mode 4: a block of 8 steps, one 32 x 32 block of sums over 256 of K */
    if (mode == 4 && (s & 7) == 0) {
      _tile_loadd(0, part, 64);
      _tile_loadd(1, part + 256, 64);
      _tile_loadd(2, part + 512, 64);
      _tile_loadd(3, part + 768, 64);
    }
    if (mode >= 1) {
      const uint16_t* ap = mode == 4 ? a + (s & 7) * 1024 : mode == 3 ? a + (s % (a_bytes / 2048)) * 1024 : a;
      _tile_loadd(4, ap, 64);
      _tile_loadd(5, ap + 512, 64);
      _tile_loadd(6, b + ((2 * s) % nb) * 512, 64);
      _tile_loadd(7, b + ((2 * s + 1) % nb) * 512, 64);
    }
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
    const int store = mode == 4 ? (s & 7) == 7 : mode >= 2 && (s & 1);
    if (store) {
      float* cp = mode == 4 ? part : c + ((s >> 1) % ns) * 1024;
      _tile_stored(0, cp, 64);
      _tile_stored(1, cp + 256, 64);
      _tile_stored(2, cp + 512, 64);
      _tile_stored(3, cp + 768, 64);
      if (mode != 4) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
    }
  }
  _tile_stored(0, c, 64);
  const double sec = now() - t0, products = 4.0 * steps;
  printf("%.1f %.3f\n", products * 16 * 16 * 32 * 2 / sec / 1e9, sec / products * 1e9);
  _tile_release();
  return 0;
}
