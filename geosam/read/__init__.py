"""Reading: the GDAL environment, a scene (file, dataset or DataArray) with its validity mask and stretch, and chip prefetching."""
