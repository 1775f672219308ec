"""``facealign evaluate --by pose / --by size`` (issue 16): per-group NME and failure rate."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from facealign.cli import main
from facealign.research.evaluation import grouped_summaries, size_bin_labels


def test_grouped_by_pose_counts_misses_in_their_pose() -> None:
    pose = np.array([1, 3, 3, 5, 2, -1])
    found = np.array([0, 1, 2, 4, 5])  # face 3 (pose 5) missed
    errors = np.array([0.20, 0.04, 0.06, 0.05, 0.08])
    g = grouped_summaries(errors, found, 6, "pose", pose=pose)
    assert g["1"]["n"] == 1 and g["1"]["failure_rate"] == 1.0 and g["1"]["nme"] == pytest.approx(20.0)
    assert g["3"]["nme"] == pytest.approx(5.0) and g["3"]["failure_rate"] == 0.0
    assert g["5"] == {**g["5"], "n": 1, "detected": 0, "misses": 1, "failure_rate": 1.0}
    assert g["profile (1, 5)"]["n"] == 2 and g["profile (1, 5)"]["failures"] == 2
    assert g["unknown"]["n"] == 1 and "4" not in g  # empty groups are left out
    assert sum(g[k]["n"] for k in ("1", "2", "3", "4", "5", "unknown") if k in g) == 6


def test_grouped_by_size_bins_and_missed_group() -> None:
    assert size_bin_labels([30, 40]) == ["<30", "30-40", ">=40"]
    errors = np.array([0.02, 0.12, 0.03, 0.05])
    widths = np.array([25.0, 30.0, 39.9, 70.0])  # an edge belongs to the bin above it
    g = grouped_summaries(errors, np.arange(4), 5, "size", widths=widths, size_bins=(30, 40))
    assert list(g) == ["<30", "30-40", ">=40", "missed"]
    assert g["30-40"]["n"] == 2 and g["30-40"]["failures"] == 1 and g["30-40"]["nme"] == pytest.approx(7.5)
    assert g["missed"]["failure_rate"] == 1.0 and g["missed"]["misses"] == 1
    with pytest.raises(ValueError, match="by must be"):
        grouped_summaries(errors, np.arange(4), 4, "age")


def test_evaluate_by_pose_and_size_cli(shared_datasets, tmp_path) -> None:
    """Six AFLW faces through the real command: the groups add up to the whole."""
    source = shared_datasets / "mtfl"
    lines = [line for line in (source / "test_aflw.txt").read_text().splitlines() if not line.startswith("#")][:6]
    data = tmp_path / "mtfl"
    for line in lines:
        rel = line.split()[0]
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / rel, data / rel)
    for name in ("test_aflw.txt", "train.txt"):
        (data / name).write_text("\n".join(lines) + "\n")
    args = ["evaluate", "--data", data, "--cache-dir", tmp_path / "cache", "--by", "pose", "--by", "size"]
    result = CliRunner().invoke(main, [str(a) for a in args + ["--json"]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    poses = {int(line.split()[-1]) for line in lines}
    assert {k for k in r["by_pose"] if k.isdigit()} == {str(p) for p in poses if p > 0}
    assert sum(v["n"] for k, v in r["by_pose"].items() if k.isdigit() or k == "unknown") == r["n"] == 6
    assert sum(v["n"] for v in r["by_size"].values()) == 6
    assert sum(v["failures"] for v in r["by_size"].values()) == r["failures"]
    table = CliRunner().invoke(main, [str(a) for a in args + ["--size-bins", "45,55"]], catch_exceptions=False)
    assert table.exit_code == 0 and "| pose (MTFL label) |" in table.stdout and "| 45-55 |" in table.stdout
