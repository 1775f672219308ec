"""The import rule, as ``.ci/run`` checks it with ``lint-imports`` (contracts in pyproject.toml).

The run time (``facealign/`` outside ``facealign/research/``) imports neither
research code nor torch, scikit-learn, SciPy or matplotlib, at any depth, and no
package or module of facealign imports another in a cycle. Each test lints a copy
of the sources (``.py`` files and pyproject.toml only) into which one forbidden
import was written, and checks that the linter fails, naming the contract.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="lint-imports comes with the test extra (import-linter)")

REPO = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LINT, "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """A copy of the packages' Python sources and pyproject.toml."""
    only_python = shutil.ignore_patterns("__pycache__", "*.npz", "*.pt", "*.onnx", "*.json", "*.LICENSE", "*.md")
    for package in ("facealign", "recognition"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=only_python)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n\n" + code + "\n")


def test_the_sources_keep_the_import_rule(sources: Path) -> None:
    result = _lint(sources)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("package", ["torch", "sklearn", "scipy", "matplotlib"])
def test_a_run_time_module_importing_a_training_package_fails(sources: Path, package: str) -> None:
    # Inside a function, as the lazy imports were: still an import.
    _append(sources / "facealign" / "geometry.py", f"def _late():\n    import {package}  # noqa\n")
    result = _lint(sources)
    assert result.returncode == 1
    assert "The run time never imports torch, scikit-learn, SciPy or matplotlib BROKEN" in result.stdout
    assert f"facealign.geometry -> {package}" in result.stdout


def test_a_run_time_module_importing_research_fails_even_through_another(sources: Path) -> None:
    # cropping imports research.data; the engine, which imports cropping, is reported too.
    _append(sources / "facealign" / "cropping.py", "def _late():\n    from .research import data  # noqa\n")
    result = _lint(sources)
    assert result.returncode == 1
    assert "The run time never imports facealign.research BROKEN" in result.stdout
    assert "facealign.cropping -> facealign.research.data" in result.stdout
    assert "facealign.engine is not allowed to import facealign.research" in result.stdout


def test_an_import_cycle_fails(sources: Path) -> None:
    # batch -> cluster, while cluster -> batch: the cycle 0.5.0 had.
    _append(
        sources / "facealign" / "batch" / "job.py",
        "def _late():\n    from ..cluster import CLUSTER_CHUNK_SIZE  # noqa\n",
    )
    result = _lint(sources)
    assert result.returncode == 1
    assert "No import cycle between the modules and packages of facealign or of recognition BROKEN" in result.stdout
