"""Assembling: per-chip results, the seam stitcher, the assemblers of each mode, object records and the on-disk object store."""
