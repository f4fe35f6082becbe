"""What geosam's fused CPU encoders keep beside a model (geosam/models/cpu_fused.py's `Kept` and `Weights`): a value
per key made again when a tensor it came from changes - in place, through ``.data`` or by a new tensor in its place -
the stale value dropped rather than kept beside the new one, and a freed tensor's value freed with it."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import torch
from torch import nn

from geosam.models.cpu_fused import Kept, Weights


class _Counting:
    """``make`` functions that record how often they ran."""

    def __init__(self) -> None:
        self.made = 0

    def of(self, t: torch.Tensor) -> Any:
        def make() -> torch.Tensor:
            self.made += 1
            return t.detach().clone() * 2

        return make


def test_kept_makes_a_value_once_while_its_tensors_stay_as_they_were() -> None:
    kept, count = Kept(), _Counting()
    a, b = torch.ones(3), torch.zeros(2)
    first = kept("k", (a, b), count.of(a))
    assert kept("k", (a, b), count.of(a)) is first and count.made == 1
    kept("other", (b,), count.of(b))
    assert count.made == 2 and len(kept) == 2


def test_kept_makes_the_value_again_when_a_tensor_changes_in_place_through_data_or_is_replaced() -> None:
    kept, count = Kept(), _Counting()
    a = torch.ones(3)
    kept("k", (a,), count.of(a))
    with torch.no_grad():
        a.mul_(3)  # in place (load_state_dict): its version
    assert torch.equal(kept("k", (a,), count.of(a)), torch.full((3,), 6.0)) and count.made == 2
    p = nn.Parameter(torch.ones(3))
    kept("p", (p,), count.of(p))
    p.data = torch.full((3,), 5.0)  # the same object and version, another storage
    assert p._version == 0
    assert torch.equal(kept("p", (p,), count.of(p)), torch.full((3,), 10.0)) and count.made == 4
    other = torch.full((3,), 7.0)  # another tensor under the same key (load_state_dict(assign=True))
    assert torch.equal(kept("p", (other,), count.of(other)), torch.full((3,), 14.0)) and count.made == 5
    assert len(kept) == 2  # one value per key: the stale ones dropped


def test_kept_drops_the_stale_value_before_making_the_new_one() -> None:
    kept = Kept()
    a = torch.ones(3)
    old = kept("k", (a,), lambda: torch.zeros(1000))
    gone = weakref.ref(old)
    del old
    a.add_(1)
    seen: list[bool] = []
    kept("k", (a,), lambda: seen.append(gone() is None) or torch.ones(1))
    assert seen == [True]


def test_kept_frees_a_value_with_its_tensor() -> None:
    """A value made from a tensor that is freed goes with it: a replaced parameter leaves nothing behind, and a new
    tensor given the freed one's id is not mistaken for it."""
    kept = Kept()
    a = torch.ones(3)
    value = kept(("k", id(a)), (a,), lambda: torch.zeros(1000))
    freed = weakref.ref(value)
    del value, a
    gc.collect()
    assert len(kept) == 0 and freed() is None


def test_weights_do_not_grow_when_a_module_is_loaded_again_and_again() -> None:
    """A notebook loading fine-tuned weights into the same model, in place or by assignment, then running the fused
    path each time: one converted copy per parameter, always the current weights."""
    lin = nn.Linear(8, 4)
    wt = Weights(torch.bfloat16)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        state = {"weight": torch.randn((4, 8), generator=g), "bias": torch.randn(4, generator=g)}
        lin.load_state_dict(state, assign=bool(seed % 2))
        assert torch.equal(wt(lin.weight), state["weight"].to(torch.bfloat16))
        assert torch.equal(wt(lin.bias), state["bias"].to(torch.bfloat16))
        gc.collect()
        assert len(wt.kept) == 2
