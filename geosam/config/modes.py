"""Composed configs of the run modes: parts plus flat-setting routing."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from geosam.config.index import IndexConfig
from geosam.config.outline import OutlineConfig
from geosam.config.parts import (
    DEFAULT_PROMPT_MODEL,
    AmgConfig,
    EngineConfig,
    ModelConfig,
    OutputConfig,
    PromptWindowConfig,
    ReadConfig,
    TilingConfig,
    int_at_least,
)
from geosam.errors import ConfigError

if TYPE_CHECKING:
    from typing_extensions import Self

class _Composed:
    """A config composed of parts; flat settings are routed to the part that owns them."""

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name."""
        out: dict[str, Any] = {}
        for part in fields(self):  # type: ignore[arg-type]
            value = getattr(self, part.name)
            if hasattr(value, "__dataclass_fields__"):
                out.update({f.name: getattr(value, f.name) for f in fields(value)})
            else:
                out[part.name] = value
        return out

    def with_overrides(self, **overrides: Any) -> Self:
        """A copy with flat settings replaced (``None`` keeps the current value, except ``to_crs``)."""
        owners: dict[str, str] = {}
        for part in fields(self):  # type: ignore[arg-type]
            value = getattr(self, part.name)
            if hasattr(value, "__dataclass_fields__"):
                owners.update({f.name: part.name for f in fields(value)})
        unknown = sorted(set(overrides) - set(owners))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(owners)}")
        by_part: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            if value is None and key not in self._none_allowed:
                continue
            by_part.setdefault(owners[key], {})[key] = value
        return replace(self, **{p: replace(getattr(self, p), **kv) for p, kv in by_part.items()})  # type: ignore[type-var]

    _none_allowed: tuple[str, ...] = ("to_crs",)


@dataclass(frozen=True)
class SegmentConfig(_Composed):
    """Settings of a segment-everything run over a scene, composed of parts that own their defaults.

    Build one from flat settings with `SegmentConfig.from_settings(chip_size_px=512, ...)`; each
    setting goes to the part that owns it, and everything checkable without pixels or a model
    fails there (`ConfigError`).

    Attributes:
        read: Bands, fill value, stretch (`ReadConfig`).
        tiling: Chip size and overlap (`TilingConfig`).
        model: Checkpoint, device, dtype (`ModelConfig`).
        amg: SAM's segment-everything parameters (`AmgConfig`).
        index: Band roles, reflectance, indices, filters, ranking, prefilter (`IndexConfig`).
        engine: Batching, prefetch, compile, progress, bad chips (`EngineConfig`).
        output: Minimum area, output CRS (`OutputConfig`).
    """

    read: ReadConfig = field(default_factory=ReadConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    amg: AmgConfig = field(default_factory=AmgConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    outline: OutlineConfig = field(default_factory=OutlineConfig)

    @classmethod
    def from_settings(cls, **settings: Any) -> SegmentConfig:
        """A config from flat settings (``chip_size_px=512, points_per_side=16, ...``)."""
        return cls().with_overrides(**settings)


@dataclass(frozen=True)
class PromptTilingConfig:
    """Prompt mode's chip grid: ``chip_size_px`` > 0 groups prompts on a grid (sharing an image
    embedding); 0 gives every prompt its own context window; None picks 0 for models whose masks
    depend on the crop size (LiteMedSAM) and 1024 otherwise."""

    chip_size_px: int | None = None
    overlap_px: int = 128

    def __post_init__(self) -> None:
        if self.chip_size_px is not None:
            int_at_least("chip_size_px (0 = one window per prompt)", self.chip_size_px, 0)
        int_at_least("overlap_px", self.overlap_px, 0)
        if self.chip_size_px and self.overlap_px >= self.chip_size_px:
            raise ConfigError(f"overlap_px ({self.overlap_px}) must be smaller than chip_size_px ({self.chip_size_px})")


@dataclass(frozen=True)
class PromptConfig(_Composed):
    """Settings of a prompt-mode run (`segment_prompts`), composed like `SegmentConfig`.

    Attributes:
        read: Bands, fill value, stretch (`ReadConfig`).
        tiling: Prompt mode's chip grid (`PromptTilingConfig`).
        model: Checkpoint (default the built-in LiteMedSAM), device, dtype (`ModelConfig`).
        window: Context windows around prompts (`PromptWindowConfig`).
        engine: Batching, prefetch, compile, progress (`EngineConfig`).
        output: Minimum area, output CRS (`OutputConfig`).
    """

    read: ReadConfig = field(default_factory=ReadConfig)
    tiling: PromptTilingConfig = field(default_factory=PromptTilingConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(model=DEFAULT_PROMPT_MODEL))
    window: PromptWindowConfig = field(default_factory=PromptWindowConfig)
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(progress=False))
    output: OutputConfig = field(default_factory=OutputConfig)
    outline: OutlineConfig = field(default_factory=OutlineConfig)

    _none_allowed = ("to_crs", "chip_size_px", "multimask")

    @classmethod
    def from_settings(cls, **settings: Any) -> PromptConfig:
        return cls().with_overrides(**settings)


__all__ = ["PromptConfig", "PromptTilingConfig", "SegmentConfig"]
