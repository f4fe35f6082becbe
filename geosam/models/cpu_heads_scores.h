/* The factored second layer's scores and the final attention's scores of cpu_heads.c (see its sections 2 and 3),
 * written once for two register widths: included by cpu_heads.c twice, after defining
 *   HS_W      lanes per register (8: AVX2, 16: AVX-512)
 *   HS_ROWS   token rows per tile (4: AVX2's 16 registers; 8: AVX-512's 32, a head's 7 tokens in one tile); a tile is
 *             HS_ROWS rows x 2 HS_W positions
 *   HS_V      the register type; HS_ATTR the functions' target attribute; HS_NAME(x) x with the width's suffix
 *   HS_ZERO, HS_LOAD, HS_SET1, HS_FMA, HS_FNMA, HS_MUL, HS_STORE  the width's intrinsics
 * Each output is the same chain of operations at either width (so the same bits). The macros are undefined at the
 * end. geosam/models/cpu_build.py hashes every header with the kernel sources. */

#define HS_B (2 * HS_W) /* positions per block */

/* rows 0 .. r of a (r, p) matrix at columns b0 .. b0 + HS_B, packed into dst (r x HS_B): the rows lie 4 p bytes apart,
 * the same L1 sets for p = 4096. `next` (or NULL): the same rows of the block packed next, fetched into L2 meanwhile
 * (prefetch_l2) */
static inline HS_ATTR void HS_NAME(pack_block)(const float* src, int64_t r, int64_t p, int64_t b0, float* dst,
                                               const float* next) {
  for (int64_t j = 0; j < r; j++) {
    HS_STORE(dst + j * HS_B, HS_LOAD(src + j * p + b0));
    HS_STORE(dst + j * HS_B + HS_W, HS_LOAD(src + j * p + b0 + HS_W));
    if (next != NULL) prefetch_l2(next + j * p, HS_B);
  }
}

/* every head's block (columns b0 .. b0 + HS_B of its dk rows) of two (nh, dk, p) image sides packed into xs and ys
 * (nh dk x HS_B each): once per block for all prompts, not read where they lie (4 p bytes apart, a head's dk rows
 * share their L1 sets: stalls on a third of the factored kernel's loads, Intel Xeon) */
static inline HS_ATTR void HS_NAME(pack_heads)(const float* x, const float* y, int64_t nh, int64_t dk, int64_t p,
                                               int64_t b0, float* xs, float* ys) {
  for (int64_t h = 0; h < nh; h++) {
    HS_NAME(pack_block)(x + h * dk * p, dk, p, b0, xs + h * dk * HS_B, NULL);
    HS_NAME(pack_block)(y + h * dk * p, dk, p, b0, ys + h * dk * HS_B, NULL);
  }
}

/* where the (blk, i) loop's next iteration reads a (n, r, p) matrix's block: prompt i + 1's, else block blk + 1's
 * of prompt 0 */
static inline const float* HS_NAME(next_block)(const float* m, int64_t i, int64_t n, int64_t blk, int64_t nblk,
                                               int64_t r, int64_t p) {
  if (i + 1 < n) return m + (i + 1) * r * p + blk * HS_B;
  return blk + 1 < nblk ? m + (blk + 1) * HS_B : NULL;
}

/* a tile's accumulators: two registers per row */
#define HS_ACC HS_V c0[HS_ROWS], c1[HS_ROWS];                                                          \
  _Pragma("GCC unroll 8") for (int i = 0; i < HS_ROWS; i++) c0[i] = c1[i] = HS_ZERO();
/* the tile's rows' accumulators += sum_j f[row][j] pr[j] over kn packed rows of pr (rows of f r apart) */
#define HS_PRODUCT(f, pr, kn)                                                                          \
  for (int64_t j = 0; j < kn; j++) {                                                                   \
    const HS_V x0 = HS_LOAD(pr + j * HS_B), x1 = HS_LOAD(pr + j * HS_B + HS_W);                        \
    _Pragma("GCC unroll 8") for (int i = 0; i < HS_ROWS; i++) if (rows > i) {                          \
      const HS_V b = HS_SET1((f)[i * r + j]);                                                          \
      c0[i] = HS_FMA(b, x0, c0[i]);                                                                    \
      c1[i] = HS_FMA(b, x1, c1[i]);                                                                    \
    }                                                                                                  \
  }
/* the tile's rows' accumulators += sum_k ar[row][k] xb[k] over the dk rows of an image side's block (pack_heads) */
#define HS_HEADS(xb)                                                                                   \
  for (int64_t k = 0; k < dk; k++) {                                                                   \
    const HS_V x0 = HS_LOAD(xb + k * HS_B), x1 = HS_LOAD(xb + k * HS_B + HS_W);                        \
    _Pragma("GCC unroll 8") for (int i = 0; i < HS_ROWS; i++) if (rows > i) {                          \
      const HS_V b = HS_SET1(ar[i][k]);                                                                \
      c0[i] = HS_FMA(b, x0, c0[i]);                                                                    \
      c1[i] = HS_FMA(b, x1, c1[i]);                                                                    \
    }                                                                                                  \
  }
/* each of the tile's rows: its two registers through `op` (a statement on c0[i], c1[i]), then stored */
#define HS_EACH(op) _Pragma("GCC unroll 8") for (int i = 0; i < HS_ROWS; i++) if (rows > i) { op; }
#define HS_OUT() HS_EACH(HS_STORE(orow[i], c0[i]); HS_STORE(orow[i] + HS_W, c1[i]))

/* tokens t .. t + HS_ROWS of prompt i, head h (fewer at the end: those past nt repeat the first): their rows in q
 * (at i sn + h sh + t st) and their output rows in s (n, nh, nt, p) from position b0; returns how many are real */
static inline int HS_NAME(row_tile)(const float* q, int64_t sn, int64_t sh, int64_t st, float* s, int64_t nh,
                                    int64_t nt, int64_t p, int64_t i, int64_t h, int64_t t, int64_t b0,
                                    const float** ar, float** orow) {
  const int m = nt - t < HS_ROWS ? (int)(nt - t) : HS_ROWS;
  for (int j = 0; j < HS_ROWS; j++) {
    const int64_t tj = t + (j < m ? j : 0);
    ar[j] = q + i * sn + h * sh + tj * st;
    orow[j] = s + ((i * nh + h) * nt + tj) * p + b0;
  }
  return m;
}

/* a switch over a tile's real rows m (1 .. HS_ROWS) calling `call` with the count known at compile time */
#if HS_ROWS == 8
#define HS_SWITCH(m, call)                                                                             \
  switch (m) {                                                                                         \
    case 8: call(8); break; case 7: call(7); break; case 6: call(6); break; case 5: call(5); break;     \
    case 4: call(4); break; case 3: call(3); break; case 2: call(2); break; default: call(1); break;    \
  }
#else
#define HS_SWITCH(m, call)                                                                             \
  switch (m) { case 4: call(4); break; case 3: call(3); break; case 2: call(2); break; default: call(1); break; }
#endif

/* section 2's scores for one tile: f (rows r apart), pr the block of probs0 packed, xb / bb the two image sides'
 * packed blocks, fs the rows' fsum, m / sd the block's mean0 / rstd0 (two registers each) */
static inline __attribute__((always_inline)) HS_ATTR void HS_NAME(scores_tile)(
    const float* f, int64_t r, const float* pr, const float* const* ar, const float* xb, const float* bb,
    int64_t dk, const float* fs, const HS_V* m, const HS_V* sd, float* const* orow, const int rows) {
  HS_ACC
  HS_PRODUCT(f, pr, r)
  HS_HEADS(xb)
  HS_EACH(const HS_V fv = HS_SET1(fs[i]); c0[i] = HS_MUL(HS_FNMA(fv, m[0], c0[i]), sd[0]);
          c1[i] = HS_MUL(HS_FNMA(fv, m[1], c1[i]), sd[1]))
  HS_HEADS(bb)
  HS_OUT()
}

static HS_ATTR int HS_NAME(factored_scores)(const float* f, const float* probs0, int64_t r, const float* rows,
                                            int64_t sn, int64_t sh, int64_t st, const float* xp, const float* bp,
                                            const float* fsum, const float* mean0, const float* rstd0, float* s,
                                            int64_t n, int64_t nh, int64_t nt, int64_t dk, int64_t p, int threads) {
  const int64_t nblk = p / HS_B;
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
  /* the block of probs0, then every head's block of xp and bp, packed */
  float* pr = thread_buffer((size_t)(r * HS_B + 2 * nh * dk * HS_B), &failed);
  float* const xs = pr == NULL ? NULL : pr + r * HS_B;
  float* const bs = xs == NULL ? NULL : xs + nh * dk * HS_B;
  int64_t packed = -1; /* the block whose image sides xs and bs hold */
#pragma omp for schedule(static) collapse(2)
  for (int64_t blk = 0; blk < nblk; blk++) {
    for (int64_t i = 0; i < n; i++) {
      if (pr == NULL) continue;
      const int64_t p0 = blk * HS_B;
      if (packed != blk) {
        HS_NAME(pack_heads)(xp, bp, nh, dk, p, p0, xs, bs);
        packed = blk;
      }
      HS_NAME(pack_block)(probs0 + i * r * p, r, p, p0, pr, HS_NAME(next_block)(probs0, i, n, blk, nblk, r, p));
      const HS_V m[2] = {HS_LOAD(mean0 + i * p + p0), HS_LOAD(mean0 + i * p + p0 + HS_W)};
      const HS_V sd[2] = {HS_LOAD(rstd0 + i * p + p0), HS_LOAD(rstd0 + i * p + p0 + HS_W)};
      for (int64_t h = 0; h < nh; h++) {
        const float* xb = xs + h * dk * HS_B;
        const float* bb = bs + h * dk * HS_B;
        for (int64_t t = 0; t < nt; t += HS_ROWS) {
          const float* ar[HS_ROWS];
          float* orow[HS_ROWS];
          const int mt = HS_NAME(row_tile)(rows, sn, sh, st, s, nh, nt, p, i, h, t, p0, ar, orow);
          const float* fr = f + (i * nh * nt + h * nt + t) * r;
          const float* fs = fsum + (i * nh + h) * nt + t;
#define HS_CALL(k) HS_NAME(scores_tile)(fr, r, pr, ar, xb, bb, dk, fs, m, sd, orow, k)
          HS_SWITCH(mt, HS_CALL)
#undef HS_CALL
        }
      }
    }
  }
  free(pr);
  }
  return failed ? 2 : 0;
}

/* section 3's scores for one tile: f0 / f1 (rows r apart), pr0 / pr1 the blocks of p0 / p1 packed, kx / kp the key
 * sides' packed blocks, cv the rows' c, sc the block's s1 and s2 (two registers each) */
static inline __attribute__((always_inline)) HS_ATTR void HS_NAME(final_tile)(
    const float* f0, const float* f1, int64_t r, const float* pr0, const float* pr1, const float* const* ar,
    const float* kx, const float* kp, int64_t dk, const float* cv, const HS_V* sc, float* const* orow,
    const int rows) {
  HS_ACC
  HS_PRODUCT(f0, pr0, r)
  HS_HEADS(kx)
  HS_EACH(const HS_V cc = HS_SET1(cv[i]); c0[i] = HS_FMA(c0[i], sc[0], cc); c1[i] = HS_FMA(c1[i], sc[1], cc))
  HS_PRODUCT(f1, pr1, r)
  HS_EACH(c0[i] = HS_MUL(c0[i], sc[2]); c1[i] = HS_MUL(c1[i], sc[3]))
  HS_HEADS(kp)
  HS_OUT()
}

static HS_ATTR int HS_NAME(final_scores)(const float* f0, const float* f1, const float* p0s, const float* p1s,
                                         int64_t r, const float* q, int64_t sn, int64_t sh, int64_t st,
                                         const float* kx, const float* kp, const float* c, const float* s1,
                                         const float* s2, float* s, int64_t n, int64_t nh, int64_t nt, int64_t dk,
                                         int64_t p, int threads) {
  const int64_t nblk = p / HS_B;
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
  /* the blocks of p0 and p1, then every head's block of kx and kp, packed (as in factored_scores) */
  float* pr = thread_buffer((size_t)(2 * r * HS_B + 2 * nh * dk * HS_B), &failed);
  float* const kxs = pr == NULL ? NULL : pr + 2 * r * HS_B;
  float* const kps = kxs == NULL ? NULL : kxs + nh * dk * HS_B;
  int64_t packed = -1;
#pragma omp for schedule(static) collapse(2)
  for (int64_t blk = 0; blk < nblk; blk++) {
    for (int64_t i = 0; i < n; i++) {
      if (pr == NULL) continue;
      const int64_t b0 = blk * HS_B;
      if (packed != blk) {
        HS_NAME(pack_heads)(kx, kp, nh, dk, p, b0, kxs, kps);
        packed = blk;
      }
      HS_NAME(pack_block)(p0s + i * r * p, r, p, b0, pr, HS_NAME(next_block)(p0s, i, n, blk, nblk, r, p));
      HS_NAME(pack_block)(p1s + i * r * p, r, p, b0, pr + r * HS_B, HS_NAME(next_block)(p1s, i, n, blk, nblk, r, p));
      const HS_V sc[4] = {HS_LOAD(s1 + i * p + b0), HS_LOAD(s1 + i * p + b0 + HS_W), HS_LOAD(s2 + i * p + b0),
                          HS_LOAD(s2 + i * p + b0 + HS_W)};
      for (int64_t h = 0; h < nh; h++) {
        const float* kxb = kxs + h * dk * HS_B;
        const float* kpb = kps + h * dk * HS_B;
        for (int64_t t = 0; t < nt; t += HS_ROWS) {
          const float* ar[HS_ROWS];
          float* orow[HS_ROWS];
          const int m = HS_NAME(row_tile)(q, sn, sh, st, s, nh, nt, p, i, h, t, b0, ar, orow);
          const int64_t row = (i * nh + h) * nt + t;
          const float *g0 = f0 + row * r, *g1 = f1 + row * r, *cv = c + row, *p1b = pr + r * HS_B;
#define HS_CALL(k) HS_NAME(final_tile)(g0, g1, r, pr, p1b, ar, kxb, kpb, dk, cv, sc, orow, k)
          HS_SWITCH(m, HS_CALL)
#undef HS_CALL
        }
      }
    }
  }
  free(pr);
  }
  return failed ? 2 : 0;
}

#undef HS_ACC
#undef HS_EACH
#undef HS_SWITCH
#undef HS_ROWS
#undef HS_PRODUCT
#undef HS_HEADS
#undef HS_OUT
#undef HS_B
#undef HS_W
#undef HS_V
#undef HS_ATTR
#undef HS_NAME
#undef HS_ZERO
#undef HS_LOAD
#undef HS_SET1
#undef HS_FMA
#undef HS_FNMA
#undef HS_MUL
#undef HS_STORE
