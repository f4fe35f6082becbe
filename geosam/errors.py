"""One error hierarchy for geosam.

Every failure caused by user input is a `GeosamError` subclass whose
message names the file, band or coordinate at fault and says what to do.
"""

from __future__ import annotations


class GeosamError(Exception):
    """Base class of every geosam error."""


class InvalidRasterError(GeosamError):
    """A raster cannot be opened or read, or has unusable contents."""


class NoCRSError(InvalidRasterError):
    """A raster has no coordinate reference system."""


class BandError(InvalidRasterError):
    """A requested band does not exist or has an unusable role."""


class ConfigError(GeosamError, ValueError):
    """A parameter value is out of range or inconsistent."""


class ModelLoadError(GeosamError):
    """A model checkpoint cannot be found, downloaded or loaded."""


class PromptError(GeosamError):
    """A prompt is malformed."""


class PromptOutsideSceneError(PromptError):
    """Every prompt lies outside the scene (or on invalid pixels)."""


class ExportError(GeosamError):
    """A result cannot be written to the requested file."""


class DeviceMemoryError(GeosamError):
    """The accelerator ran out of memory even at the smallest batch."""


class StacError(InvalidRasterError):
    """A STAC item, catalog or search cannot be read or does not give usable imagery."""
