"""Landmark engine v3 ablation: every run on the MTFL validation split, by pose and face size.

    python bench/engine_v3.py \
        --run "tcnn 0.5.0=tcnn:facealign/weights/tcnn.npz:shipped 0.5.0" \
        --run "C1=compact:runs/c64/compact.pt:facealign train-compact --out runs/c64/compact.pt --work-dir runs/c64" \
        --test "tcnn 0.5.0" --test C1 --out docs/hard/engine-v3.json

Each ``--run`` is ``LABEL=ENGINE:WEIGHTS:COMMAND`` (the command that reproduces the
weights, recorded in the table). Every engine runs as ``facealign crop`` runs it:
the default detector's boxes mapped to the training convention, re-boxing and
mirroring at the engine's defaults. Runs are chosen on the validation split only;
``--test`` names the runs also scored on the AFLW test set (the chosen one and the
baseline: never used to choose). Writes one JSON file (rows per split) that
``docs/hard/engine-v3.md`` renders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_CACHE, MTFL_ROOT  # noqa: E402
from facealign.constants import DEFAULT_DETECTOR  # noqa: E402
from facealign.engine import LandmarkEngine  # noqa: E402
from facealign.imageio import write_json  # noqa: E402
from facealign.research.evaluation import evaluate_engines  # noqa: E402

#: Face-width bins (px of the image, the detector's own box) of the size columns.
SIZE_BINS = (30.0, 40.0, 50.0, 60.0)


def parse_run(text: str) -> tuple[str, str, Path, str]:
    label, _, rest = text.partition("=")
    engine, _, rest = rest.partition(":")
    weights, _, command = rest.partition(":")
    if not (label and engine and weights):
        raise SystemExit(f"--run wants LABEL=ENGINE:WEIGHTS[:COMMAND], got {text!r}")
    return label, engine, Path(weights), command


def row(result: dict, command: str) -> dict:
    """The flat table row of one engine's :func:`evaluate_engines` result (NME and failures in %)."""
    out = {
        "command": command,
        "nme": result["nme"],
        "failure_rate": 100 * result["failure_rate"],
    }
    pose = result["by_pose"]
    for group in ("profile (1, 5)", "half (2, 4)", "frontal (3)"):
        name = group.split(" ")[0]
        out[f"{name}_nme"] = pose[group]["nme"]
        out[f"{name}_failure_rate"] = 100 * pose[group]["failure_rate"]
    out["size_nme"] = {group: summary["nme"] for group, summary in result["by_size"].items() if summary["detected"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="LABEL=ENGINE:WEIGHTS:COMMAND, repeatable")
    ap.add_argument("--test", action="append", default=[], help="label of a run also scored on AFLW, repeatable")
    ap.add_argument("--detector", default=DEFAULT_DETECTOR)
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=Path("docs/hard/engine-v3.json"))
    args = ap.parse_args()
    runs = [parse_run(r) for r in args.run]
    unknown = set(args.test) - {label for label, *_ in runs}
    if unknown:
        raise SystemExit(f"--test names no --run: {sorted(unknown)}")
    table: dict[str, dict] = {"validation": {}, "test": {}}
    for split, labels in (("validation", [r[0] for r in runs]), ("test", args.test)):
        engines = {label: LandmarkEngine(engine, weights=w) for label, engine, w, _ in runs if label in labels}
        if not engines:
            continue
        results = evaluate_engines(
            engines, MTFL_ROOT, args.cache_dir, args.detector, split, by=("pose", "size"), size_bins=SIZE_BINS
        )
        commands = {label: command for label, _, _, command in runs}
        for label, result in results.items():
            table[split][label] = row(result, commands[label])
            r = table[split][label]
            print(
                f"{split:10s} {label:24s} NME {r['nme']:.2f}%  fail {r['failure_rate']:.1f}%  "
                f"profile {r['profile_nme']:.2f}%  frontal {r['frontal_nme']:.2f}%"
            )
    write_json({"detector": args.detector, "size_bins_px": list(SIZE_BINS), **table}, args.out)


if __name__ == "__main__":
    main()
