"""Band roles (``red``, ``nir``, ...) and reflectance scaling for spectral indices.

Roles come from, in order of precedence:

1. an explicit mapping, ``{"red": 1, "nir": 4}`` or the CLI text
   ``red=1,green=2,blue=3,nir=4`` (1-based band numbers, like GDAL);
2. a preset name (`PRESETS`): ``sentinel2``, ``landsat8``, ``naip``, ``rgb``;
3. with neither, the scene's band descriptions (STAC ``eo`` common names such
   as ``red``, ``nir``, ``swir16``, or the role names themselves) and colour
   interpretation (red/green/blue).

Reflectance. Integer products store scaled reflectance; indices with
constants (SAVI, EVI) need true reflectance in [0, 1]:
``reflectance = DN * reflectance_scale + reflectance_offset``. The scale and
offset are, in order of precedence:

1. the ``reflectance_scale`` / ``reflectance_offset`` settings;
2. the raster's own band scale/offset (GDAL metadata), when not 1 / 0;
3. the preset's: ``sentinel2`` L2A scale 1e-4 with offset -0.1 when the file
   says its processing baseline is >= 04.00 (``PROCESSING_BASELINE`` tag; products
   since 25 Jan 2022 carry ``BOA_ADD_OFFSET`` = -1000), else 0 -- pass
   ``reflectance_offset=-0.1`` for such products that lost their metadata;
   ``landsat8`` Collection 2 Level-2 scale 2.75e-5, offset -0.2;
4. by data type: uint8 -> 1/255, anything else -> 1 (already reflectance).

Ratio indices (NDVI, NDWI, GLI, VARI, ExG as computed here) do not depend on
the scale, only on the offset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from geosam.errors import BandError, ConfigError

#: Every band role geosam knows.
ROLES = (
    "coastal",
    "blue",
    "green",
    "red",
    "rededge",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir",
    "nir08",
    "watervapour",
    "swir1",
    "swir2",
)

#: Band description (lower case, letters and digits only) -> role.
DESCRIPTION_ROLES = {
    **{r: r for r in ROLES},
    "r": "red",
    "g": "green",
    "b": "blue",
    "nearinfrared": "nir",
    "nearir": "nir",
    "swir16": "swir1",
    "swir22": "swir2",
    "coastalaerosol": "coastal",
}


@dataclass(frozen=True)
class Preset:
    """Band roles of a product and its reflectance scaling (None: by data type)."""

    roles: Mapping[str, int]
    scale: float | None = None
    offset: float | None = None
    note: str = ""


_S2_L2A = {  # B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12
    "coastal": 1, "blue": 2, "green": 3, "red": 4, "rededge": 5, "rededge1": 5, "rededge2": 6,
    "rededge3": 7, "nir": 8, "nir08": 9, "watervapour": 10, "swir1": 11, "swir2": 12,
}
_S2_L1C = {**{k: v for k, v in _S2_L2A.items() if v <= 10}, "swir1": 12, "swir2": 13}  # B10 (cirrus) is band 11

#: Presets by name. ``sentinel2`` fits 12-band L2A stacks (B01-B09, B8A, B11, B12 in
#: band-number order) and 13-band L1C stacks (with B10).
PRESETS: dict[str, Preset] = {
    "sentinel2": Preset(_S2_L2A, scale=1e-4, offset=0.0, note="12-band L2A (B01..B12 without B10) or 13-band L1C"),
    "landsat8": Preset(
        {"coastal": 1, "blue": 2, "green": 3, "red": 4, "nir": 5, "swir1": 6, "swir2": 7},
        scale=2.75e-5,
        offset=-0.2,
        note="Collection 2 Level-2 SR_B1..SR_B7",
    ),
    "naip": Preset({"red": 1, "green": 2, "blue": 3, "nir": 4}, note="R, G, B, NIR"),
    "rgb": Preset({"red": 1, "green": 2, "blue": 3}, note="R, G, B"),
}


@dataclass(frozen=True)
class BandRoles:
    """Resolved roles of one scene: role -> 1-based band, and reflectance scaling.

    ``reflectance = DN * scale + offset`` (per role, from ``scales``/``offsets``).
    """

    path: str
    bands: Mapping[str, int]
    scales: Mapping[str, float] = field(default_factory=dict)
    offsets: Mapping[str, float] = field(default_factory=dict)
    source: str = "explicit"

    def band(self, role: str, index: str) -> int:
        """The band of ``role``; `BandError` naming the index, role and file if unmapped."""
        if role in self.bands:
            return self.bands[role]
        if role == "rededge" and "rededge1" in self.bands:
            return self.bands["rededge1"]
        known = ", ".join(f"{k}={v}" for k, v in sorted(self.bands.items(), key=lambda kv: kv[1])) or "none"
        raise BandError(
            f"{self.path}: index {index!r} needs the {role!r} band, which is not mapped "
            f"(band roles from {self.source}: {known}). Give band roles, e.g. "
            f"band_roles={{'{role}': N}} / --band-roles {role}=N, or a preset ({', '.join(PRESETS)})"
        )

    def scale_offset(self, role: str) -> tuple[float, float]:
        return self.scales.get(role, 1.0), self.offsets.get(role, 0.0)


def parse_band_roles(text: str) -> str | dict[str, int]:
    """CLI text -> a preset name or a role mapping: ``'red=1,nir=4'`` -> ``{'red': 1, 'nir': 4}``."""
    text = text.strip()
    if "=" not in text:
        return text.lower()
    out: dict[str, int] = {}
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        role, sep, num = part.partition("=")
        if not sep:
            raise ConfigError(f"band roles must look like red=1,nir=4, got {text!r}")
        try:
            out[role.lower()] = int(num)
        except ValueError:
            raise ConfigError(f"band roles need integer band numbers, got {part!r} in {text!r}") from None
    return out


def normalise_band_roles(value: Any) -> str | tuple[tuple[str, int], ...] | None:
    """A setting value -> preset name or sorted ``((role, band), ...)``; validates names and numbers."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_band_roles(value)
        if isinstance(value, str):
            if value not in PRESETS:
                raise ConfigError(f"unknown band-role preset {value!r}; presets: {sorted(PRESETS)}")
            return value
    if not isinstance(value, (Mapping, tuple, list)):
        raise ConfigError(f"band_roles must be a preset name or a mapping like {{'red': 1}}, got {value!r}")
    items = dict(value.items() if isinstance(value, Mapping) else value)
    out = []
    for role, band in items.items():
        role = str(role).lower()
        if role not in ROLES:
            raise ConfigError(f"unknown band role {role!r}; roles: {list(ROLES)}")
        if int(band) != band or int(band) < 1:
            raise ConfigError(f"band numbers are 1-based integers, got {role}={band}")
        out.append((role, int(band)))
    _check_distinct(dict(out))
    return tuple(sorted(out))


def _check_distinct(roles: Mapping[str, int]) -> None:
    """ConfigError when one band is given for two roles that an index compares (``red=4,nir=4``: NDVI 0 everywhere)."""
    from geosam.config.index_table import INDICES

    for d in INDICES.values():
        given = [(r, roles[r]) for r in d.roles if r in roles]
        for i, (role_a, band_a) in enumerate(given):
            for role_b, band_b in given[i + 1:]:
                if band_a == band_b:
                    raise ConfigError(
                        f"band_roles: band {band_a} is given for both {role_a} and {role_b}, which {d.name} compares "
                        f"(it would be constant); give each role its own band, e.g. {role_a}={band_a},{role_b}=..."
                    )


def roles_from_descriptions(descriptions: tuple[str | None, ...], colorinterp: tuple[str, ...]) -> dict[str, int]:
    """Roles named by band descriptions (STAC common names, role names), then colour interpretation."""
    out: dict[str, int] = {}
    for i, d in enumerate(descriptions, start=1):
        key = re.sub(r"[^a-z0-9]", "", (d or "").lower())
        role = DESCRIPTION_ROLES.get(key)
        if role is not None and role not in out:
            out[role] = i
    for i, ci in enumerate(colorinterp, start=1):
        ci = ci.lower()
        if ci in ("red", "green", "blue") and ci not in out:
            out[ci] = i
    return out


def _processing_baseline(tags: Mapping[str, str]) -> float | None:
    for k, v in tags.items():
        if k.upper().endswith("PROCESSING_BASELINE"):
            try:
                return float(v)
            except ValueError:
                return None
    return None


def resolve_band_roles(
    scene: Any,
    band_roles: Any = None,
    reflectance_scale: float | None = None,
    reflectance_offset: float | None = None,
) -> BandRoles:
    """Resolve roles and scaling for an open `Scene`.

    Raises `BandError` naming the file when a preset does not fit the
    band count or a mapped band does not exist.
    """
    info = scene.info
    spec = normalise_band_roles(band_roles)
    preset: Preset | None = None
    if spec is None:
        bands = roles_from_descriptions(info.descriptions, info.colorinterp)
        source = "band descriptions"
    elif isinstance(spec, str):
        preset = PRESETS[spec]
        bands = dict(preset.roles)
        if spec == "sentinel2":
            if info.count == 13:
                bands = dict(_S2_L1C)
            elif info.count != 12:
                raise BandError(
                    f"{info.path}: preset 'sentinel2' expects 12 (L2A) or 13 (L1C) bands in band-number order, "
                    f"the raster has {info.count}; give explicit roles, e.g. --band-roles red=1,green=2,blue=3,nir=4"
                )
        source = f"preset {spec!r}"
    else:
        bands = dict(spec)
        source = "explicit roles"
    for role, b in bands.items():
        if b > info.count:
            raise BandError(f"{info.path}: band role {role}={b} does not exist (the raster has bands 1..{info.count})")

    default_scale = 1.0 / 255.0 if info.dtype == "uint8" else 1.0
    default_offset = 0.0
    if preset is not None and preset.scale is not None:
        default_scale = preset.scale
    if preset is not None and preset.offset is not None:
        default_offset = preset.offset
    if spec == "sentinel2":
        pb = _processing_baseline(scene.ds.tags())
        if pb is not None and pb >= 4.0:
            default_offset = -0.1
    file_scales = getattr(scene.ds, "scales", None) or (1.0,) * info.count
    file_offsets = getattr(scene.ds, "offsets", None) or (0.0,) * info.count
    scales: dict[str, float] = {}
    offsets: dict[str, float] = {}
    for role, b in bands.items():
        fs, fo = float(file_scales[b - 1]), float(file_offsets[b - 1])
        from_file = fs != 1.0 or fo != 0.0
        scales[role] = float(reflectance_scale) if reflectance_scale is not None else (fs if from_file else default_scale)
        offsets[role] = (
            float(reflectance_offset) if reflectance_offset is not None else (fo if from_file else default_offset)
        )
    return BandRoles(path=info.path, bands=bands, scales=scales, offsets=offsets, source=source)


__all__ = [
    "PRESETS",
    "ROLES",
    "BandRoles",
    "Preset",
    "normalise_band_roles",
    "parse_band_roles",
    "resolve_band_roles",
    "roles_from_descriptions",
]
