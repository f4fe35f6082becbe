"""Merge two ``bench_amg.py`` result files run on different grids (e.g. side by side, one per core) into one.

Every per-grid figure (the ``grids`` entries and the top-level dictionaries keyed by grid name, at any depth) of
``--add`` is added to ``--into``; the figures that are not per grid (encoders, matmul peaks) stay those of ``--into``,
and ``--add``'s are kept whole under ``merged_runs``. ``dtype_auto.bf16_mask_agreement_min`` (and ``..._over_chips_min``) becomes the minimum
of both; ``peak_bounds`` are computed again from the merged figures (``bench_amg.add_peak_bounds``).

    .venv/bin/python benchmarks/merge_amg_results.py --into benchmarks/results/latest.json --add other.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_amg import add_peak_bounds


def merge_grids(into: dict, add: dict, grids: set[str]) -> None:
    """Add ``add``'s entries keyed by a grid name in ``grids`` to ``into``, recursively, in place."""
    for key, value in add.items():
        if key in grids and key not in into:
            into[key] = value
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            merge_grids(into[key], value, grids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--into", required=True)
    ap.add_argument("--add", required=True)
    args = ap.parse_args()
    into, add = json.loads(Path(args.into).read_text()), json.loads(Path(args.add).read_text())
    grids = set(add["grids"])
    merge_grids(into, add, grids)
    auto_into, auto_add = into.get("dtype_auto", {}), add.get("dtype_auto", {})
    for key in ("bf16_mask_agreement_min", "bf16_mask_agreement_over_chips_min"):  # the minimum over both runs' grids
        if key in auto_into and key in auto_add:
            auto_into[key] = min(auto_into[key], auto_add[key])
    into["settings"]["grids"] = sorted(set(into["settings"]["grids"]) | set(add["settings"]["grids"]))
    into.setdefault("merged_runs", []).append({"source": args.add, **{k: v for k, v in add.items() if k != "grids"}})
    into.pop("peak_bounds", None)
    add_peak_bounds(into)
    Path(args.into).write_text(json.dumps(into, indent=2) + "\n")
    print(f"merged grids {sorted(grids)} of {args.add} into {args.into}")


if __name__ == "__main__":
    main()
