"""Objects through time: per-object index series across dates, change ranking and object tracking.

Stage modules: `geosam.monitor.dates` (date scenes in), `geosam.monitor.zonal` (per-object statistics of one
date, read in that date's own grid, grouped by chip), `geosam.monitor.chips` (those reads as chip tasks),
`geosam.monitor.measure` (the tasks through the journal / Dask machinery of `geosam.run.tasks`),
`geosam.monitor.store` (the results on disk), `geosam.monitor.stream` (the tables built from it in batches), `geosam.monitor.change` (first / last / delta / slope /
largest drop, flags, rank), `geosam.monitor.track` (objects of consecutive dates matched by overlap),
`geosam.monitor.table` (wide and long tables and their files), `geosam.monitor.segment` (objects segmented in
the run: one date, a composite from `geosam.monitor.composite`, every date), `geosam.monitor.series`
(`monitor_objects`, the entry point); its pictures are `geosam.plot.series` and `geosam.plot.change_map`.
"""
