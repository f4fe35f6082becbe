"""What geosam's CPU encoders built on oneDNN's fused operators share (`geosam.models.fast_tinyvit`,
`geosam.models.fast_hiera`): a module's weights converted once to the compute dtype and kept beside it, and the
products, convolutions and layer norms on channels-last (pixels, channels) matrices those encoders are made of.

* `Kept`: values made from a module's tensors (converted weights, tables), one per key, made again when one of
  those tensors changes - in place (its ``_version``: ``load_state_dict``), through ``.data``, or replaced by another
  tensor (``load_state_dict(assign=True)``) - the stale value dropped, not kept beside the new one;
* `Weights`: parameters in one dtype, shaped for the operators (1 x 1 convolutions as product weights, kernels
  channels-last), converted on first use and kept (`Kept`); `weights_of` keeps one per module and dtype in a
  weak-keyed table, so a pickled model carries none;
* `product`: oneDNN's ``t @ w.T + b`` with the exact GELU fused into its output, or a residual added as it writes
  (the binary post-op of ``_linear_pointwise``);
* `conv2d`: oneDNN's convolution of a channels-last map, GELU fused where asked;
* `ops_work`: whether this torch build's oneDNN runs those operators in a dtype (AVX2-only CPUs have no bf16 kernels).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geosam.models.cpu_gemm import linear_low, op_works_in, pointwise_linear

__all__ = ["Kept", "Weights", "conv2d", "kept_linear_low", "layer_norm", "linear", "linear_params", "ops_work", "product",
           "weights_of"]

_mk = torch.ops.mkldnn


@functools.lru_cache(maxsize=4)
def ops_work(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused linear (`geosam.models.cpu_gemm`'s check) and convolution take ``dtype`` with an exact
    GELU in this torch build (AVX2-only CPUs have no bf16 kernels: "could not create a primitive")."""
    if not op_works_in(dtype):
        return False
    try:
        m = torch.ones((1, 4, 3, 3), dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.ones((4, 1, 3, 3), dtype=dtype).contiguous(memory_format=torch.channels_last)
        conv = _mk._convolution_pointwise(m, w, None, [1, 1], [1, 1], [1, 1], 4, "gelu", [], "none")
        return conv.shape == (1, 4, 3, 3) and abs(float(conv[0, 0, 1, 1]) - 9.0) < 0.05
    except (RuntimeError, TypeError, AttributeError):  # a build without this oneDNN kernel
        return False


class _Entry:
    __slots__ = ("__weakref__", "refs", "stamp", "value")

    def __init__(self, refs: tuple[weakref.ref[torch.Tensor], ...], stamp: tuple[tuple[int, int], ...], value: Any):
        self.refs, self.stamp, self.value = refs, stamp, value


def _stamp(tensors: Sequence[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    return tuple((t._version, t.data_ptr()) for t in tensors)


class Kept:
    """Values made from tensors, one per key, each kept while the tensors it was made from stay as they were.

    ``kept(key, tensors, make)`` gives the value kept under ``key`` if it was made from these same tensor objects with
    the same versions and storage, else ``make()`` (kept in its place: the stale value is dropped first, so a model
    whose weights are loaded again and again does not grow its cache). A tensor freed while its value is kept
    takes the value with it (a parameter replaced by ``load_state_dict(assign=True)``), and a new tensor that Python
    gives the freed one's ``id`` is not mistaken for it."""

    def __init__(self) -> None:
        self._values: dict[Hashable, _Entry] = {}

    def __len__(self) -> int:
        return len(self._values)

    def __call__(self, key: Hashable, tensors: Sequence[torch.Tensor], make: Callable[[], Any]) -> Any:
        entry = self._values.get(key)
        if (entry is not None and entry.stamp == _stamp(tensors)
                and all(r() is t for r, t in zip(entry.refs, tensors, strict=True))):  # fmt: skip
            return entry.value
        entry = None
        self._values.pop(key, None)  # the stale value freed before the new one is made
        value = make()
        owner = weakref.ref(self)  # the callbacks hold neither this table nor the entry

        def drop(_: Any, key: Hashable = key) -> None:
            kept, live = owner(), made_ref()
            if kept is not None and live is not None and kept._values.get(key) is live:
                del kept._values[key]

        made = _Entry(tuple(weakref.ref(t, drop) for t in tensors), _stamp(tensors), value)
        made_ref = weakref.ref(made)
        self._values[key] = made
        return value


class Weights:
    """A module's parameters in one dtype, shaped for the operators (made once per dtype, kept)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.kept = Kept()

    def get(self, p: torch.Tensor | None, kind: str = "") -> torch.Tensor | None:
        """``p`` in the dtype: ``kind`` "1x1" (a (out, in, 1, 1) kernel as the product's (out, in) weight), "conv"
        (a kernel channels-last), else contiguous; None stays None."""
        if p is None:
            return None

        def make() -> torch.Tensor:
            t = p.detach().to(self.dtype)
            if kind == "1x1":
                return t.reshape(t.shape[0], t.shape[1]).contiguous()
            if kind == "conv":
                return t.contiguous(memory_format=torch.channels_last)
            return t.contiguous()

        return self.kept((id(p), kind), (p,), make)

    def __call__(self, p: torch.Tensor | None, kind: str = "") -> torch.Tensor:
        t = self.get(p, kind)
        assert t is not None
        return t


#: Converted weights per module and dtype: beside the modules, not in them, so that a pickled model (a bundle
#: shipped to a worker) carries none (their keys are the parameters' ids in this process).
_WEIGHTS: weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, Weights]] = weakref.WeakKeyDictionary()


def weights_of(module: nn.Module, dtype: torch.dtype) -> Weights:
    """The `Weights` kept for ``module`` in ``dtype``."""
    cache = _WEIGHTS.setdefault(module, {})
    if dtype not in cache:
        cache[dtype] = Weights(dtype)
    return cache[dtype]


def linear_params(lin: Any, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``lin``'s weight and bias rounded to ``dtype`` as autocast rounds them (the same bits), kept beside the module
    (`weights_of`: made again when a parameter changes) instead of rounded on every call: Intel Xeon with AMX, one
    thread, ViT-B at 1024 px, 48 weights rounded each encode were 0.11 of its 1.78 s. The kept copies cost half the
    float32 weights' memory (ViT-B ~0.18 GB, ViT-H ~1.3 GB). The parameters as they are where autograd records (the
    copies are detached)."""
    if torch.is_grad_enabled() and lin.weight.requires_grad:
        return lin.weight, lin.bias
    wt = weights_of(lin, dtype)
    return wt(lin.weight), wt.get(lin.bias)


def kept_linear_low(lin: Any, x: torch.Tensor, dtype: torch.dtype, relu: bool = False) -> torch.Tensor:
    """``lin(x)`` (then its ReLU with ``relu``) for a plain ``nn.Linear`` under autocast to ``dtype``, autocast's
    bits: `geosam.models.cpu_gemm.linear_low` on the weight and bias rounded once and kept (`linear_params`)."""
    return linear_low(x, *linear_params(lin, dtype), dtype, relu=relu)


def product(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, gelu: bool = False,
            add: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """oneDNN's ``t @ w.T + b`` on tokens (n, K): GELU fused (`geosam.models.cpu_gemm`'s product), or ``add`` (n, N)
    added as the sums are written (its binary post-op)."""
    if add is not None:
        return _mk._linear_pointwise.binary(t, add, w, b, "add")
    return pointwise_linear(t, w, b, gelu)


def linear(t: torch.Tensor, lin: nn.Linear, wt: Weights, gelu: bool = False,
           add: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """``lin`` on tokens (n, in) in ``wt``'s dtype (`product`)."""
    return product(t, wt(lin.weight), wt.get(lin.bias), gelu, add)


def conv2d(m: torch.Tensor, conv: nn.Conv2d, wt: Weights, gelu: bool = False) -> torch.Tensor:
    """oneDNN's convolution of a channels-last map (the module's padding, stride, dilation, groups), GELU fused if
    ``gelu``."""
    pad = conv.padding
    assert isinstance(pad, tuple)
    return _mk._convolution_pointwise(
        m, wt(conv.weight, "conv"), wt.get(conv.bias), list(pad), list(conv.stride), list(conv.dilation), conv.groups,
        "gelu" if gelu else "none", [], "none" if gelu else "",
    )  # fmt: skip


def layer_norm(t: torch.Tensor, ln: Any, wt: Weights) -> torch.Tensor:
    """``ln`` (a layer norm over the last axis) on tokens, its weights in ``wt``'s dtype."""
    return F.layer_norm(t, ln.normalized_shape, wt.get(ln.weight), wt.get(ln.bias), ln.eps)
