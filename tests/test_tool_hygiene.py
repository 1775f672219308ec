"""Tool hygiene: the API on empty images, exit codes, where ``evaluate`` reads and
writes, the packaging metadata, ``python -m facealign`` and the help text."""

from __future__ import annotations

import configparser
import glob
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from facealign.cli import main
from facealign.constants import DEFAULT_DETECTOR

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 50, 3), (40, 0, 3)])
def test_empty_image_is_a_clear_value_error(shape) -> None:
    from facealign import FaceAligner

    aligner = FaceAligner()
    image = np.zeros(shape, np.uint8)
    with pytest.raises(ValueError, match="empty image"):
        aligner.process(image)
    with pytest.raises(ValueError, match="empty image"):
        aligner.landmarks(image, np.array([[0.0, 0.0, 10.0, 10.0]]))


def test_landmarks_of_a_missing_input_exits_1(face_photos, tmp_path) -> None:
    result = run_cli("landmarks", "--json", face_photos[0], tmp_path / "nonexistent")
    assert result.exit_code == 1
    assert result.stdout == "" and "no such file or folder" in result.output
    # An image given by name that exists but cannot be decoded is reported, then exit 1
    # (images found in a folder are reported without changing the exit code, as in crop).
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    result = run_cli("landmarks", "--json", bad)
    assert result.exit_code == 1 and json.loads(result.stdout)["error"].startswith("unreadable image")


def test_exit_codes_are_documented() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    for code in ("0", "1", "2", "75", "130", "143"):
        assert f"`{code}`" in section


def test_evaluate_reads_facealign_mtfl_and_caches_outside_the_cwd(shared_datasets, tmp_path, monkeypatch) -> None:
    source = shared_datasets / "mtfl"
    lines = [line for line in (source / "test_aflw.txt").read_text().splitlines() if not line.startswith("#")][:4]
    data = tmp_path / "mtfl"
    for line in lines:
        rel = line.split()[0]
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / rel, data / rel)
    for name in ("test_aflw.txt", "train.txt"):
        (data / name).write_text("\n".join(lines) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("FACEALIGN_MTFL", str(data))
    monkeypatch.delenv("FACEALIGN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    result = run_cli("evaluate", "--engine", "vanilla", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["detector"] == DEFAULT_DETECTOR
    assert list(work.iterdir()) == []  # nothing written in the current folder
    assert list((tmp_path / "xdg" / "facealign").glob(f"detections-{DEFAULT_DETECTOR}-*.npy"))
    monkeypatch.setenv("FACEALIGN_CACHE", str(tmp_path / "mine"))
    assert run_cli("evaluate", "--engine", "vanilla", "--json").exit_code == 0
    assert list((tmp_path / "mine").glob(f"detections-{DEFAULT_DETECTOR}-*.npy"))


def test_license_and_package_data() -> None:
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "facealign authors" in license_text
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg["metadata"]["license"] == "MIT"
    assert (REPO / cfg["metadata"]["license_files"].strip()).is_file()
    # The detector's network and its licence are written by the build (setup.py), not committed.
    built = {"weights/*.onnx", "weights/*.LICENSE"}
    for package, patterns in cfg["options.package_data"].items():
        for pattern in patterns.split(","):
            if pattern.strip() in built:
                continue
            assert glob.glob(str(REPO / package / pattern.strip())), f"{package}: {pattern.strip()} matches nothing"


def test_python_dash_m_facealign_runs_the_command_line() -> None:
    import subprocess
    import sys
    from importlib.util import find_spec

    import facealign

    # The package's own __main__, not one that another installed copy of facealign provides.
    spec = find_spec("facealign.__main__")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).parent == Path(facealign.__file__).parent
    child = subprocess.run(
        [sys.executable, "-m", "facealign", "--version"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == f"facealign {facealign.__version__}"


def test_help_shows_no_python_type_names_as_metavars() -> None:
    """``-j, --jobs _JOBS_TYPE`` was 0.5.0's: a function name where the user reads what to type."""
    import re

    runner = CliRunner()
    names = main.list_commands(None)  # type: ignore[arg-type]
    assert "crop" in names
    for name in names:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert not re.search(r"\b_?[A-Z_]+_TYPE\b", result.output), (name, result.output)
    crop = runner.invoke(main, ["crop", "--help"]).output
    assert "-j, --jobs N|auto" in crop


def test_readme_is_a_short_users_page_and_the_notebook_lives_in_docs() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    # The exact commands .ci/run uses are the README's.
    ci = (REPO / ".ci" / "run").read_text()
    for command in ("pip install torch==2.13.0 -e '.[test]'", "python -m pytest -q tests"):
        assert command in readme and command in ci
    # Every page the README links to exists.
    import re

    for target in re.findall(r"\]\(((?:docs/|CHANGELOG)[^)#]*)", readme):
        assert (REPO / target).exists(), target


def test_tests_are_named_after_behaviour_not_issue_items() -> None:
    import re

    named_after_items = [
        f"{path.name}::{name}"
        for path in sorted((REPO / "tests").glob("test_*.py"))
        for name in re.findall(r"^def (test_\w+)", path.read_text(), re.M)
        if re.match(r"test_(issue\d+_)?item\d+_", name)
    ]
    assert not named_after_items
