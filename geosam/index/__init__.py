"""Spectral indices (NDVI, ExG, ...): per-object statistics, ranking, and a prompt prefilter.

Indices are computed in float32 from reflectance (see `geosam.config.bands` for
roles and scaling) on valid pixels only; an invalid pixel or a zero
denominator gives NaN, and NaN pixels are left out of every statistic.

Formulas (``R, G, B, N, S1, RE`` are red, green, blue, NIR, SWIR-1 and red-edge
reflectance):

========  =============================================  ==================
index     formula                                        default threshold
========  =============================================  ==================
ndvi      (N - R) / (N + R)                              0.3
ndwi      (G - N) / (G + N)  (McFeeters, water > 0)      0.0
savi      1.5 (N - R) / (N + R + 0.5)                    0.2
evi       2.5 (N - R) / (N + 6 R - 7.5 B + 1)            0.2
ndmi      (N - S1) / (N + S1)                            0.0
ndre      (N - RE) / (N + RE)                            0.2
exg       (2 G - R - B) / (R + G + B)  (chromatic ExG)   0.05
vari      (G - R) / (G + R - B)                          0.0
gli       (2 G - R - B) / (2 G + R + B)                  0.0
========  =============================================  ==================

The default threshold is what ``{index}_frac_above`` counts against unless
``index_thresholds`` or ``min_index`` names another.

Per-object statistics (`ZonalStats`, a pipeline object hook) read the
index bands in each *final* object's bounding box at full resolution and use the
object's final pixel mask, so an object stitched from several chips gets exactly
the statistics of a single-chip run.

Prefilter (`Prefilter`). Before the decoder runs, a chip's
``prompt_mask`` is set to the pixels within ``radius_px`` (Chebyshev distance;
``SegmentConfig.prefilter_radius_px``, default 2 px, ``"grid"`` = one point-grid spacing) of a pixel whose index is >= the ``min_index``
threshold (for several indices: near a passing pixel of each). Grid prompts
elsewhere are not decoded, and a chip with no such pixel is skipped whole. The
mask of a pixel is computed on a window grown by ``radius_px``, so it does not
depend on the chip it is seen from.

Guarantee: an object whose mean index is >= t has at least one pixel >= t (a
mean is never above every value). With a generator that returns the object
under each prompt (the oracle, and what SAM aims at), the prefiltered run
keeps every object that the full run keeps after the ``min_index`` filter
provided one of the object's grid points lies within ``radius_px`` of one of
its pixels >= t. That always holds for objects whose bounding box is at most
``radius_px + 1`` px on its longer side, and for objects whose every pixel
passes (the grid point itself passes). Limits: a large object vegetated only in
a spot farther than ``radius_px`` from all of its grid points, whose mean still
passes, can be lost (raise ``prefilter_radius_px``); with SAM, removing prompts
also changes which masks win non-maximum suppression, and a prompt on the
vegetated part may segment only that part, so results are close to, not
identical with, the full run.

Choosing the radius: the default 2 px keeps prompts that land on a bare or
shadowed pixel next to vegetation (gaps between crop rows, crown shadows). One
grid spacing (``"grid"``) extends the guarantee to every object up to a grid cell
in size but saves little on mostly vegetated scenes: on the Sentinel-2 sample
(10 m pixels, 77 % of pixels with NDVI >= 0.3) it keeps every prompt, while
radius 0 keeps 76 % (see ``benchmarks/results/prefilter.json``).
"""
