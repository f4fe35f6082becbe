"""The ``geosam`` command line: a thin click layer over :mod:`geosam.modes.everything`."""
