"""Objects through time: per-object index series across dates, change ranking and object tracking.

Stage modules: `geosam.monitor.dates` (date scenes in), `geosam.monitor.zonal` (per-object statistics of one
date, read in that date's own grid, grouped by chip), `geosam.monitor.change` (first / last / delta / slope /
largest drop, flags, rank), `geosam.monitor.track` (objects of consecutive dates matched by overlap),
`geosam.monitor.table` (wide and long tables and their files), `geosam.monitor.segment` (objects segmented in
the run: one date, a composite from `geosam.monitor.composite`, every date), `geosam.monitor.series`
(`monitor_objects`, the entry point); its pictures are `geosam.plot.series` and `geosam.plot.change_map`.
"""
