"""The ``geosam`` command line: a thin click layer over `geosam.modes.everything`."""
