/* SAM's masks at chip resolution on AVX2 CPUs: low-res logits upsampled bilinearly and thresholded in one
 * pass, bit for bit what torch computes there.
 *
 * torch's CPU `upsample_bilinear2d` (align_corners=False, one channel, outputs over 128 px: ATen's generic
 * N-d kernel) interpolates each output along the width first, t = x[j0] * w0 + x[j1] * w1, then along the
 * height, t0 * h0 + t1 * h1, and its AVX2 build contracts each of those into one fused multiply-add,
 * fma(a, wa, b * wb) (the second product rounded, the first fused). The indices and weights are ATen's:
 * src = max(scale * (o + 0.5) - 0.5, 0), i0 = (int) src, i1 = i0 + (i0 < n - 1), w1 = src - i0,
 * w0 = 1 - w1, with scale = n_in / n_out (exact for SAM's 4x). Then `> threshold`.
 *
 * Here each input row is interpolated along the width once (torch does it for every output row that reads it),
 * two such rows are kept, and the output rows are combined, compared and written as bytes (0/1, torch's bool)
 * eight at a time; the float logits at chip resolution (4 MiB a mask) are never written. Built with
 * -ffp-contract=off: the only fused multiply-adds are the explicit ones. geosam/models/cpu_masks.py compiles,
 * loads and checks it against torch at load. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "cpu_vec.h"

/* ATen's source indices and weights along one axis of n_in -> n_out samples (only the first `used`). */
static void axis_table(int64_t n_in, int64_t n_out, int64_t used, int32_t* i0, int32_t* i1, float* w0, float* w1) {
    const float scale = (float)n_in / (float)n_out;
    for (int64_t o = 0; o < used; o++) {
        float src = scale * ((float)o + 0.5f) - 0.5f;
        if (src < 0.f) src = 0.f;
        int64_t a = (int64_t)src;
        float l1 = src - (float)a;
        if (l1 < 0.f) l1 = 0.f;
        if (l1 > 1.f) l1 = 1.f;
        i0[o] = (int32_t)a;
        i1[o] = (int32_t)(a + (a < n_in - 1 ? 1 : 0));
        w1[o] = l1;
        w0[o] = 1.f - l1;
    }
}

/* One input row (iw values) interpolated along the width: t[o] = fma(x[i0], w0, x[i1] * w1). */
static void width_pass(const float* x, int64_t iw, int64_t ow, const int32_t* i0, const int32_t* i1,
                       const float* w0, const float* w1, float* t) {
    int64_t o = 0;
    for (; o + 8 <= ow; o += 8) {
        __m256i a = _mm256_loadu_si256((const __m256i*)(i0 + o)), b = _mm256_loadu_si256((const __m256i*)(i1 + o));
        __m256 xa, xb;
        const int32_t base = i0[o];
        if (i1[o + 7] - base < 8 && base + 8 <= iw) { /* the 8 outputs read 8 neighbouring inputs (upsampling): one
                                                     * load and two permutes, not two gathers (slow on AMD CPUs) */
            const __m256 v = _mm256_loadu_ps(x + base);
            const __m256i sb = _mm256_set1_epi32(base);
            xa = _mm256_permutevar8x32_ps(v, _mm256_sub_epi32(a, sb));
            xb = _mm256_permutevar8x32_ps(v, _mm256_sub_epi32(b, sb));
        } else {
            xa = _mm256_i32gather_ps(x, a, 4);
            xb = _mm256_i32gather_ps(x, b, 4);
        }
        __m256 prod = _mm256_mul_ps(xb, _mm256_loadu_ps(w1 + o));
        _mm256_storeu_ps(t + o, _mm256_fmadd_ps(xa, _mm256_loadu_ps(w0 + o), prod));
    }
    for (; o < ow; o++) t[o] = fmaf(x[i0[o]], w0[o], x[i1[o]] * w1[o]);
}

/* The maximum of each of the h input rows of one mask (NaN-free rows; a NaN row gets NaN), 8 columns at a time. */
static void row_max(const float* x, int64_t h, int64_t w, float* out) {
    for (int64_t r = 0; r < h; r++) {
        const float* p = x + r * w;
        __m256 m8 = _mm256_set1_ps(p[0]), nan8 = _mm256_setzero_ps();
        int64_t c = 0;
        for (; c + 8 <= w; c += 8) {
            const __m256 v = _mm256_loadu_ps(p + c);
            nan8 = _mm256_or_ps(nan8, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            m8 = _mm256_max_ps(m8, v);
        }
        float m = reduce_max(m8);
        int nan = _mm256_movemask_ps(nan8) != 0;
        for (; c < w; c++) {
            nan |= p[c] != p[c];
            m = p[c] > m ? p[c] : m;
        }
        out[r] = nan ? NAN : m;
    }
}

/* Whether no output row interpolated from input rows a and b can exceed thr: every value there is a convex
 * combination of those rows' values (weights in [0, 1] summing to 1), exact up to a few ulps of their size. */
static int rows_below(const float* rmax, int32_t a, int32_t b, float thr) {
    float m = rmax[a] > rmax[b] ? rmax[a] : rmax[b];
    if (m != m) return 0;
    float margin = 1e-6f * (fabsf(m) > fabsf(thr) ? fabsf(m) : fabsf(thr)) + 1e-30f;
    return m < thr - margin;
}

/* out[o] = fma(t0[o], h0, t1[o] * h1) > thr, as bytes 0 / 1; or the values themselves into vals. */
static void height_pass(const float* t0, const float* t1, float h0, float h1, float thr, int64_t ow, uint8_t* out,
                        float* vals) {
    if (vals != NULL) {
        for (int64_t o = 0; o < ow; o++) vals[o] = fmaf(t0[o], h0, t1[o] * h1);
        return;
    }
    const __m256 vh0 = _mm256_set1_ps(h0), vh1 = _mm256_set1_ps(h1), vt = _mm256_set1_ps(thr);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7), one = _mm256_set1_epi8(1);
    int64_t o = 0;
    for (; o + 32 <= ow; o += 32) {
        __m256i m[4];
        for (int k = 0; k < 4; k++) {
            __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(t0 + o + 8 * k), vh0,
                                       _mm256_mul_ps(_mm256_loadu_ps(t1 + o + 8 * k), vh1));
            m[k] = _mm256_castps_si256(_mm256_cmp_ps(v, vt, _CMP_GT_OQ));
        }
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(m[0], m[1]), _mm256_packs_epi32(m[2], m[3]));
        p = _mm256_permutevar8x32_epi32(p, order);
        _mm256_storeu_si256((__m256i*)(out + o), _mm256_and_si256(p, one));
    }
    for (; o < ow; o++) out[o] = fmaf(t0[o], h0, t1[o] * h1) > thr;
}

/* The source rows / columns and weights of an upsampled grid's first oh rows and ow columns. */
typedef struct {
    int32_t *r0, *r1, *c0, *c1;
    float *hw0, *hw1, *cw0, *cw1;
} Grid;

static int grid_make(Grid* g, int64_t h, int64_t w, int64_t full_h, int64_t full_w, int64_t oh, int64_t ow) {
    int32_t* idx = malloc(sizeof(int32_t) * 2 * (size_t)(oh + ow));
    float* wts = malloc(sizeof(float) * 2 * (size_t)(oh + ow));
    if (idx == NULL || wts == NULL) {
        free(idx);
        free(wts);
        return -1;
    }
    g->r0 = idx, g->r1 = idx + oh, g->c0 = idx + 2 * oh, g->c1 = idx + 2 * oh + ow;
    g->hw0 = wts, g->hw1 = wts + oh, g->cw0 = wts + 2 * oh, g->cw1 = wts + 2 * oh + ow;
    axis_table(h, full_h, oh, g->r0, g->r1, g->hw0, g->hw1);
    axis_table(w, full_w, ow, g->c0, g->c1, g->cw0, g->cw1);
    return 0;
}

static void grid_free(Grid* g) {
    free(g->r0);
    free(g->hw0);
}

/* Output row o's two width-interpolated input rows, from the two buffers in rows (have: the input rows they
 * hold), computing a row that is not there into the buffer the other wanted row does not hold. */
static void wanted_rows(const Grid* g, const float* x, int64_t w, int64_t ow, int64_t o, int64_t have[2],
                        float* rows, const float** t0, const float** t1) {
    const int32_t a = g->r0[o], b = g->r1[o];
    int s0 = have[0] == a ? 0 : have[1] == a ? 1 : -1;
    if (s0 < 0) {
        s0 = have[0] == b ? 1 : 0;
        width_pass(x + (int64_t)a * w, w, ow, g->c0, g->c1, g->cw0, g->cw1, rows + s0 * ow);
        have[s0] = a;
    }
    int s1 = have[0] == b ? 0 : have[1] == b ? 1 : -1;
    if (s1 < 0) {
        s1 = 1 - s0;
        width_pass(x + (int64_t)b * w, w, ow, g->c0, g->c1, g->cw0, g->cw1, rows + s1 * ow);
        have[s1] = b;
    }
    *t0 = rows + s0 * ow;
    *t1 = rows + s1 * ow;
}

/* low: n x h x w float32 (contiguous); out: n x oh x ow bytes, the top-left oh x ow of the full_h x full_w
 * upsampled grid > thr (or, with vals, that grid's values: for the checks). Returns 0, or -1 if out of memory. */
int geosam_upsample_gt(const float* low, int64_t n, int64_t h, int64_t w, int64_t full_h, int64_t full_w,
                       int64_t oh, int64_t ow, float thr, uint8_t* out, float* vals, int threads) {
    Grid g;
    const int made = grid_make(&g, h, w, full_h, full_w, oh, ow) == 0;
    int failed = !made;
    const int32_t *r0 = failed ? NULL : g.r0, *r1 = failed ? NULL : g.r1;
    const float *hw0 = failed ? NULL : g.hw0, *hw1 = failed ? NULL : g.hw1;
#pragma omp parallel num_threads(threads) if (threads > 1 && !failed)
    {
        float* rows = failed ? NULL : malloc(sizeof(float) * (2 * (size_t)ow + (size_t)h));
        if (rows == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t m = 0; m < n; m++) {
            if (rows == NULL) continue;
            const float* x = low + m * h * w;
            float* rmax = rows + 2 * ow;
            row_max(x, h, w, rmax);
            int64_t have[2] = {-1, -1}; /* the input rows in the two buffers */
            for (int64_t o = 0; o < oh; o++) {
                if (vals == NULL && rows_below(rmax, r0[o], r1[o], thr)) {
                    memset(out + (m * oh + o) * ow, 0, (size_t)ow);
                    continue;
                }
                const float *t0, *t1;
                wanted_rows(&g, x, w, ow, o, have, rows, &t0, &t1);
                const int64_t at = (m * oh + o) * ow;
                height_pass(t0, t1, hw0[o], hw1[o], thr, ow, out + at, vals == NULL ? NULL : vals + at);
            }
        }
        free(rows);
    }
    if (made) grid_free(&g);
    return failed ? -1 : 0;
}

/* A row's columns 0 .. n16 (a multiple of 16) of the statistics below in 16-lane registers (CPUs with AVX-512):
 * each value the same fused multiply-add, the counts and column bits the same as 8 at a time (cpu_masks.py checks
 * it on load). Adds to cnt, ors into colhit (8 columns a byte) and returns whether a value passed tb. The counts
 * run in 16 integer lanes per threshold (a masked add: one instruction, not a mask move, popcount and add), summed
 * at the row's end; the column bits are or-ed 16 at a time. NT: the thresholds (1 .. 8), known at compile time. */
#define T512 __attribute__((target("avx512f,fma")))
static inline __attribute__((always_inline)) T512 int stats_span512_nt(const float* t0, const float* t1, float h0,
                                                                      float h1, int64_t n16, const float* thr,
                                                                      float tb, int64_t* cnt, uint8_t* colhit,
                                                                      const uint8_t* vrow, const int nt) {
    const __m512 vh0 = _mm512_set1_ps(h0), vh1 = _mm512_set1_ps(h1), vb = _mm512_set1_ps(tb);
    const __m512i one = _mm512_set1_epi32(1);
    __m512 vt[8];
    __m512i cv[8];
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++)
        if (k < nt) {
            vt[k] = _mm512_set1_ps(thr[k]);
            cv[k] = _mm512_setzero_si512();
        }
    unsigned row_hit = 0;
    for (int64_t c = 0; c < n16; c += 16) {
        const __m512 v = _mm512_fmadd_ps(_mm512_loadu_ps(t0 + c), vh0, _mm512_mul_ps(_mm512_loadu_ps(t1 + c), vh1));
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++)
            if (k < nt) cv[k] = _mm512_mask_add_epi32(cv[k], _mm512_cmp_ps_mask(v, vt[k], _CMP_GT_OQ), cv[k], one);
        uint16_t hit = (uint16_t)_mm512_cmp_ps_mask(v, vb, _CMP_GT_OQ);
        if (vrow != NULL) { /* only valid pixels count for the box */
            uint16_t ok;
            memcpy(&ok, vrow + (c >> 3), sizeof ok);
            hit &= ok;
        }
        uint16_t bits; /* columns c .. c + 15: bytes c / 8 and c / 8 + 1, the low one first */
        memcpy(&bits, colhit + (c >> 3), sizeof bits);
        bits = (uint16_t)(bits | hit);
        memcpy(colhit + (c >> 3), &bits, sizeof bits);
        row_hit |= hit;
    }
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++)
        if (k < nt) cnt[k] += _mm512_reduce_add_epi32(cv[k]); /* at most n16 / 16 a lane */
    return row_hit != 0;
}

static T512 int stats_span512(const float* t0, const float* t1, float h0, float h1, int64_t n16, const float* thr,
                              int nt, float tb, int64_t* cnt, uint8_t* colhit, const uint8_t* vrow) {
    switch (nt) {
#define S_CASE(k) case k: return stats_span512_nt(t0, t1, h0, h1, n16, thr, tb, cnt, colhit, vrow, k);
        S_CASE(1) S_CASE(2) S_CASE(3) S_CASE(4) S_CASE(5) S_CASE(6) S_CASE(7)
#undef S_CASE
        default: return stats_span512_nt(t0, t1, h0, h1, n16, thr, tb, cnt, colhit, vrow, 8);
    }
}

/* Per mask, over the full_h x full_w upsampled grid (the values as above, never stored): counts[m, k] =
 * #(up > thr[k]) for nt thresholds, and boxes[m] = the inclusive XYXY box of up > tb ((0, 0, 0, 0) if empty).
 * valid (or NULL): the grid's valid pixels as bits, row o's at valid + o * ((full_w + 7) / 8), column c bit c % 8
 * of byte c / 8; then the box is that of the valid pixels of up > tb, (-1, -1, -1, -1) where there is none (the
 * counts stay over every pixel). wide: the row's first columns in 16-lane registers (stats_span512). Returns 0, or
 * -1 if out of memory. */
int geosam_upsample_stats(const float* low, int64_t n, int64_t h, int64_t w, int64_t full_h, int64_t full_w,
                          const float* thr, int nt, float tb, int64_t* counts, int64_t* boxes, const uint8_t* valid,
                          int wide, int threads) {
    const int64_t oh = full_h, ow = full_w;
    Grid g;
    const int made = nt >= 1 && nt <= 8 && grid_make(&g, h, w, full_h, full_w, oh, ow) == 0;
    int failed = !made;
    const int32_t *r0 = failed ? NULL : g.r0, *r1 = failed ? NULL : g.r1;
    const float *hw0 = failed ? NULL : g.hw0, *hw1 = failed ? NULL : g.hw1;
#pragma omp parallel num_threads(threads) if (threads > 1 && !failed)
    {
        float* rows = failed ? NULL : malloc(sizeof(float) * (2 * (size_t)ow + (size_t)h) + (size_t)ow + 8);
        if (rows == NULL) {
#pragma omp atomic write
            failed = 1;
        }
        uint8_t* colhit = rows == NULL ? NULL : (uint8_t*)(rows + 2 * ow + h);
        float lowest = tb;
        for (int k = 0; k < nt; k++) lowest = thr[k] < lowest ? thr[k] : lowest;
#pragma omp for schedule(static)
        for (int64_t m = 0; m < n; m++) {
            if (rows == NULL) continue;
            const float* x = low + m * h * w;
            int64_t have[2] = {-1, -1}, cnt[8] = {0}, y0 = -1, y1 = -1;
            memset(colhit, 0, (size_t)ow + 8);
            __m256 vt[8];
            for (int k = 0; k < nt; k++) vt[k] = _mm256_set1_ps(thr[k]);
            const __m256 vb = _mm256_set1_ps(tb);
            float* rmax = rows + 2 * ow;
            row_max(x, h, w, rmax);
            for (int64_t o = 0; o < oh; o++) {
                if (rows_below(rmax, r0[o], r1[o], lowest)) continue; /* no pixel of this row above any threshold */
                const float *t0, *t1;
                wanted_rows(&g, x, w, ow, o, have, rows, &t0, &t1);
                const float h0 = hw0[o], h1 = hw1[o];
                const __m256 vh0 = _mm256_set1_ps(h0), vh1 = _mm256_set1_ps(h1);
                const uint8_t* vrow = valid == NULL ? NULL : valid + o * ((ow + 7) / 8);
                int row_hit = 0;
                int64_t c = wide ? ow & ~(int64_t)15 : 0;
                if (c > 0) row_hit = stats_span512(t0, t1, h0, h1, c, thr, nt, tb, cnt, colhit, vrow);
                for (; c + 8 <= ow; c += 8) {
                    __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(t0 + c), vh0, _mm256_mul_ps(_mm256_loadu_ps(t1 + c), vh1));
                    for (int k = 0; k < nt; k++)
                        cnt[k] += __builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, vt[k], _CMP_GT_OQ)));
                    int hit = _mm256_movemask_ps(_mm256_cmp_ps(v, vb, _CMP_GT_OQ));
                    if (vrow != NULL) hit &= vrow[c >> 3];
                    colhit[c >> 3] |= (uint8_t)hit;
                    row_hit |= hit;
                }
                for (; c < ow; c++) {
                    float v = fmaf(t0[c], h0, t1[c] * h1);
                    for (int k = 0; k < nt; k++) cnt[k] += v > thr[k];
                    if (v > tb && (vrow == NULL || (vrow[c >> 3] >> (c & 7)) & 1)) {
                        colhit[(ow >> 3) + (c & 7)] = 1; /* the tail's columns, one byte each, after the bitmasks */
                        row_hit = 1;
                    }
                }
                if (row_hit) {
                    if (y0 < 0) y0 = o;
                    y1 = o;
                }
            }
            for (int k = 0; k < nt; k++) counts[m * nt + k] = cnt[k];
            int64_t x0 = -1, x1 = -1;
            for (int64_t c = 0; c < ow; c++) {
                int on = c < (ow & ~(int64_t)7) ? (colhit[c >> 3] >> (c & 7)) & 1 : colhit[(ow >> 3) + (c & 7)];
                if (on) {
                    if (x0 < 0) x0 = c;
                    x1 = c;
                }
            }
            int64_t* b = boxes + m * 4;
            if (y1 < 0) {
                b[0] = b[1] = b[2] = b[3] = valid == NULL ? 0 : -1;
            } else {
                b[0] = x0, b[1] = y0, b[2] = x1, b[3] = y1;
            }
        }
        free(rows);
    }
    if (made) grid_free(&g);
    return failed ? -1 : 0;
}
