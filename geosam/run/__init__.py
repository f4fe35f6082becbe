"""Running: the one run loop, its journal (resume), the Dask executor and the run summary."""
