"""onnxruntime execution providers: ``providers=``, ``--providers`` and ``FACEALIGN_PROVIDERS``,
with the CPU as the fallback and one clear message for a provider the installed onnxruntime lacks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from facealign import FaceAligner, inference
from facealign.cli import main
from facealign.inference import PROVIDER_NAMES, resolve_providers

#: A provider this onnxruntime does not have (the CPU wheel lacks all but the CPU's).
MISSING = next((short for short, name in PROVIDER_NAMES.items() if name not in ort.get_available_providers()), None)
needs_missing = pytest.mark.skipif(MISSING is None, reason="this onnxruntime has every provider")


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test sees the once-per-process missing-provider warning afresh, without the environment's."""
    monkeypatch.setattr(inference, "_WARNED", set())
    monkeypatch.delenv(inference.PROVIDERS_ENV, raising=False)


def test_provider_names_resolve_in_order_with_the_cpu_last(monkeypatch) -> None:
    assert resolve_providers(None) == ("CPUExecutionProvider",)
    assert resolve_providers("CUDA, tensorrt") == (
        "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider",
    )  # fmt: skip
    assert resolve_providers(["cpu", "CoreMLExecutionProvider", "coreml"]) == (
        "CoreMLExecutionProvider", "CPUExecutionProvider",
    )  # fmt: skip
    monkeypatch.setenv(inference.PROVIDERS_ENV, "openvino")
    assert resolve_providers(None) == ("OpenVINOExecutionProvider", "CPUExecutionProvider")
    with pytest.raises(ValueError, match="'gpu' is not an onnxruntime execution provider; choose among coreml, cpu"):
        resolve_providers("gpu")


def _crops(aligner: FaceAligner, photo) -> list[np.ndarray]:
    return [aligned.crop for aligned in aligner.crop_faces(photo)]


def test_the_cpu_provider_gives_the_default_results(face_photos) -> None:
    aligner = FaceAligner(providers="cpu")
    assert aligner.engine._session().get_providers() == ["CPUExecutionProvider"]
    assert aligner.detector._get_session().get_providers() == ["CPUExecutionProvider"]
    for a, b in zip(_crops(aligner, face_photos[0]), _crops(FaceAligner(), face_photos[0])):
        np.testing.assert_array_equal(a, b)


@needs_missing
def test_a_missing_provider_falls_back_to_the_cpu_with_one_warning(face_photos) -> None:
    aligner = FaceAligner(providers=[MISSING])
    with pytest.warns(RuntimeWarning) as caught:
        crops = _crops(aligner, face_photos[0])
    messages = [str(w.message) for w in caught if "execution provider" in str(w.message)]
    assert len(messages) == 1  # the detector's and the engine's sessions: one warning
    name = PROVIDER_NAMES[MISSING]
    assert f"{name} not available in this onnxruntime" in messages[0]
    assert "running on CPUExecutionProvider" in messages[0]
    assert aligner.engine._session().get_providers() == ["CPUExecutionProvider"]
    for a, b in zip(crops, _crops(FaceAligner(), face_photos[0])):
        np.testing.assert_array_equal(a, b)


def test_an_unknown_provider_name_is_an_error_at_once() -> None:
    with pytest.raises(ValueError, match="'gpu' is not an onnxruntime execution provider"):
        FaceAligner(providers="gpu")


def test_cli_unknown_provider_is_a_usage_error(tmp_path) -> None:
    result = CliRunner().invoke(main, ["landmarks", str(tmp_path), "--providers", "gpu"])
    assert result.exit_code == 2 and "Invalid value for '--providers'" in result.stderr


@needs_missing
@pytest.mark.parametrize("how", ["option", "environment"])
def test_cli_missing_provider_says_so_once_and_runs_on_the_cpu(face_photos, how) -> None:
    args = ["landmarks", "--json", str(face_photos[0])]
    env = {}
    if how == "option":
        args += ["--providers", MISSING]
    else:
        env[inference.PROVIDERS_ENV] = MISSING
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("not available in this onnxruntime") == 1
    assert result.stderr.startswith(f"warning: onnxruntime execution provider {PROVIDER_NAMES[MISSING]} not available")
    default = CliRunner().invoke(main, ["landmarks", "--json", str(face_photos[0])])
    assert json.loads(result.stdout)["faces"] == json.loads(default.stdout)["faces"]


@needs_missing
@pytest.mark.parametrize("quiet_first", [True, False])
def test_cli_quiet_silences_the_missing_provider_warning_wherever_it_stands(face_photos, tmp_path, quiet_first) -> None:
    """``-q`` is read before ``--providers`` (an eager option), so the warning that option
    prints for a missing provider obeys it whatever the order on the command line."""
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    shutil.copy(face_photos[0], in_dir / "a.jpg")
    options = ["-q", "--providers", MISSING] if quiet_first else ["--providers", MISSING, "-q"]
    crop = CliRunner().invoke(main, ["crop", str(in_dir), str(tmp_path / "out"), *options])
    assert crop.exit_code == 0, crop.output
    assert crop.stderr == "" and crop.stdout == ""
    marks = CliRunner().invoke(main, ["landmarks", "--json", str(face_photos[0]), *options])
    assert marks.exit_code == 0, marks.output
    assert marks.stderr == "" and json.loads(marks.stdout)["faces"]


def test_crop_resumes_with_other_providers(face_photos, tmp_path) -> None:
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    shutil.copy(face_photos[0], in_dir / face_photos[0].name)
    first = CliRunner().invoke(main, ["crop", str(in_dir), str(tmp_path / "out"), "-j", "1", "--providers", "cpu"])
    assert first.exit_code == 0, first.output
    assert "providers" not in json.loads((tmp_path / "out" / ".facealign-crop.json").read_text())
    again = CliRunner().invoke(main, ["crop", str(in_dir), str(tmp_path / "out"), "-j", "1"])
    assert again.exit_code == 0 and "0 processed, 1 skipped" in again.stderr


def test_inference_docstring_examples_run() -> None:
    import doctest

    failed, attempted = doctest.testmod(inference, report=False)
    assert attempted >= 2 and failed == 0


@pytest.mark.skipif(not shutil.which("taskset"), reason="needs taskset (util-linux) to pin a process")
def test_available_cpus_follow_the_affinity_mask_and_the_loky_limit() -> None:
    """A process pinned to one core counts one CPU (as a container's cpuset gives), and
    LOKY_MAX_CPU_COUNT (standing in for a CPU quota, which joblib reads the same way) caps the
    count; without either, every core of this machine."""
    import os
    import subprocess
    import sys

    code = "from facealign.inference import available_cpus; print(available_cpus())"
    env = {k: v for k, v in os.environ.items() if k != "LOKY_MAX_CPU_COUNT"}

    def count(*prefix: str, **extra: str) -> int:
        out = subprocess.run(
            [*prefix, sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    cores = len(os.sched_getaffinity(0))
    assert count() == cores
    assert count("taskset", "-c", "0") == 1
    assert count(LOKY_MAX_CPU_COUNT="1") == 1
