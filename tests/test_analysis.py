"""The section 2.2 analysis (``facealign analyze``): statistics, clustering, the command.

Statistics are checked against values computed by hand on tiny examples; the
command is run on a small MTFL sample with the shipped (possibly placeholder)
weights, so only the report's structure and internal consistency are checked,
never what a trained network shows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from facealign.cli import main
from facealign.research.analysis.clustering import cluster_features, reduce_features
from facealign.research.analysis.figures import mosaic
from facealign.research.analysis.report import ASSIGNMENTS, FIG1, FIG3, FIG3_SCATTER, FIG4, REPORT_JSON, REPORT_MD
from facealign.research.analysis.representations import AnalysisSettings, analyze_representations
from facealign.research.analysis.statistics import (
    binary_attribute_labels,
    cluster_mean_images,
    cluster_sizes,
    label_cluster_variances,
    landmark_cluster_variances,
    mean_se,
    principal_axis_variance,
    size_summary,
)

# --------------------------------------------------------------------------- #
# A hand-computed example: 4 clusters, 2 landmarks
#   cluster 0: landmark 0 at (0,0), (1,1), (2,2), (3,3): along the diagonal the
#              positions are 0, r, 2r, 3r with r = sqrt(2): variance 2 * 1.25 = 2.5
#   cluster 1: landmark 0 at the corners of a 4 x 2 rectangle: var x 4, var y 1,
#              no covariance: 4
#   landmark 1 is the same point in every face: 0
#   cluster 2: one face (skipped), cluster 3: empty (skipped)
# --------------------------------------------------------------------------- #

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
LANDMARK0 = [(0, 0), (1, 1), (2, 2), (3, 3), (0, 0), (4, 0), (0, 2), (4, 2), (7, 7)]


def _example_points() -> np.ndarray:
    pts = np.zeros((len(LABELS), 2, 2))
    pts[:, 0] = LANDMARK0
    pts[:, 1] = (5.0, -3.0)
    return pts


def test_principal_axis_variance_by_hand() -> None:
    assert principal_axis_variance(np.array(LANDMARK0[:4], float)) == pytest.approx(2.5, abs=1e-12)
    assert principal_axis_variance(np.array(LANDMARK0[4:8], float)) == pytest.approx(4.0, abs=1e-12)
    assert principal_axis_variance(np.array([[3.0, 4.0]])) == 0.0
    with pytest.raises(ValueError, match="n x 2"):
        principal_axis_variance(np.zeros((3, 3)))


def test_landmark_cluster_variances_by_hand() -> None:
    lam = landmark_cluster_variances(_example_points(), LABELS, k=4)
    assert lam.shape == (4, 2)
    np.testing.assert_allclose(lam[:2], [[2.5, 0.0], [4.0, 0.0]], atol=1e-12)
    assert np.isnan(lam[2:]).all()  # one face, and empty
    # min_size=1 keeps the single-face cluster, with variance 0
    lam1 = landmark_cluster_variances(_example_points(), LABELS, k=4, min_size=1)
    np.testing.assert_allclose(lam1[2], [0.0, 0.0])
    # Eq. 3: mean over the clusters kept, SE = std(ddof=1) / sqrt(n)
    stat = mean_se(lam[:, 0])
    assert stat["mean"] == pytest.approx(3.25)
    assert stat["se"] == pytest.approx(0.75)
    assert stat["clusters"] == 2


def test_landmark_cluster_variances_match_numpy() -> None:
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(200, 5, 2)) * [3.0, 1.0] @ np.array([[0.8, 0.6], [-0.6, 0.8]])
    labels = rng.integers(0, 6, 200)
    lam = landmark_cluster_variances(pts, labels, 6)
    for c in range(6):
        for j in range(5):
            cov = np.cov(pts[labels == c, j].T, ddof=0)
            assert lam[c, j] == pytest.approx(np.linalg.eigvalsh(cov)[-1], rel=1e-10)


def test_cluster_sizes_and_table1_by_hand() -> None:
    sizes = cluster_sizes(LABELS, 4)
    assert sizes.tolist() == [4, 4, 1, 0]
    summary = size_summary(sizes)
    assert summary["median"] == 2.5
    # population SD: mean 2.25, squared deviations 3.0625, 3.0625, 1.5625, 5.0625
    assert summary["sd"] == pytest.approx(math.sqrt(12.75 / 4))
    assert (summary["min"], summary["max"], summary["empty"]) == (0, 4, 1)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        cluster_sizes(LABELS, 2)


def test_attribute_variance_by_hand() -> None:
    #            cluster 0     cluster 1          cluster 2
    values = np.array([1, 1, 1, 0, 1, 0, np.nan, 0, 1], float)
    var = label_cluster_variances(values, LABELS, 4)
    assert var[0] == pytest.approx(0.75 * 0.25)  # p = 3/4
    assert var[1] == pytest.approx(2 / 9)  # the unknown label dropped: p = 1/3
    assert np.isnan(var[2]) and np.isnan(var[3])
    assert mean_se(var)["mean"] == pytest.approx((0.1875 + 2 / 9) / 2)


def test_label_variances_match_numpy() -> None:
    rng = np.random.default_rng(5)
    values = rng.integers(0, 2, 500).astype(float)
    labels = rng.integers(0, 7, 500)
    var = label_cluster_variances(values, labels, 7)
    np.testing.assert_allclose(var, [np.var(values[labels == c]) for c in range(7)], rtol=1e-12)


def test_binary_attribute_labels() -> None:
    attrs = np.array([[1, 2, 2, 3], [2, 1, -1, 1], [-1, 1, 1, 5]])
    lab = binary_attribute_labels(attrs)
    assert list(lab) == ["gender", "smile", "glasses"]
    np.testing.assert_array_equal(lab["gender"], [1.0, 0.0, np.nan])  # 1 = male
    np.testing.assert_array_equal(lab["smile"], [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(lab["glasses"], [0.0, np.nan, 1.0])
    with pytest.raises(ValueError, match="gender"):
        binary_attribute_labels(np.array([[3, 1, 1, 1]]))


def test_mean_se_edge_cases() -> None:
    one = mean_se(np.array([np.nan, 2.0]))
    assert one["mean"] == 2.0 and math.isnan(one["se"]) and one["clusters"] == 1
    assert math.isnan(mean_se(np.array([np.nan]))["mean"])


# --------------------------------------------------------------------------- #
# Reduction, clustering, images
# --------------------------------------------------------------------------- #


def test_reduce_features_only_wide_layers() -> None:
    rng = np.random.default_rng(0)
    low = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 400))  # rank 5 in 400 dims
    x = low + 0.01 * rng.normal(size=low.shape)
    y, info = reduce_features(x, dims=8, above=256, seed=0)
    assert y.shape == (300, 8)
    assert info["pca"] and info["input_dims"] == 400 and info["dims"] == 8
    assert 0.999 < info["explained_variance"] <= 1.0
    kept, info2 = reduce_features(x[:, :100], dims=8, above=256, seed=0)
    assert kept.shape == (300, 100) and not info2["pca"] and info2["explained_variance"] is None
    np.testing.assert_allclose(kept, x[:, :100])


def _blobs(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(3), 60)
    centres = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    return centres[truth] + rng.normal(size=(180, 3)), truth


def test_cluster_features_recovers_blobs_deterministically() -> None:
    x, truth = _blobs()
    labels, info = cluster_features(x, k=3, seed=7)
    # every true blob maps onto exactly one cluster (up to relabelling)
    pairs = {(t, lab) for t, lab in zip(truth, labels)}
    assert len(pairs) == 3 and len({lab for _, lab in pairs}) == 3
    assert info["converged"] and info["reg_covar"] > 0
    again, _ = cluster_features(x, k=3, seed=7)
    np.testing.assert_array_equal(labels, again)
    with pytest.raises(ValueError, match="cannot fit"):
        cluster_features(x[:2], k=3, seed=0)


def test_cluster_mean_images_and_mosaic() -> None:
    crops = np.zeros((3, 4, 4, 3), np.uint8)
    crops[0], crops[1], crops[2] = 10, 30, 200
    means = cluster_mean_images(crops, np.array([0, 0, 2]), k=5)
    assert means[0, 0, 0, 0] == pytest.approx(20.0) and means[2, 0, 0, 0] == pytest.approx(200.0)
    assert np.isnan(means[1]).all() and np.isnan(means[3]).all()
    grid = mosaic(means, pad=2, scale=2)
    # 5 tiles -> ceil(sqrt(5)) = 3 columns, 2 rows of 8 x 8 tiles with 2-pixel gaps
    assert grid.shape == (2 * 8 + 3 * 2, 3 * 8 + 4 * 2, 3) and grid.dtype == np.uint8
    assert grid[2 + 4, 2 + 4, 0] == 20  # tile 0 (flat, so bicubic keeps it)
    assert grid[2 + 4, 2 + 8 + 2 + 4, 0] == 128  # tile 1 is empty: grey
    assert grid[0, 0, 0] == 255  # padding


def test_analyze_representations_tells_informative_layer_apart() -> None:
    """A layer whose features encode the landmarks gives tighter clusters than noise."""
    rng = np.random.default_rng(2)
    n = 400
    pose = rng.integers(0, 4, n)  # four "poses" shift all landmarks
    base = np.array([[12, 15], [28, 15], [20, 22], [14, 30], [26, 30]], float)
    points = base + (pose[:, None, None] * 3.0) + rng.normal(scale=0.5, size=(n, 5, 2))
    smile = (pose % 2).astype(int)  # smiling follows the pose
    attrs = np.stack([rng.integers(1, 3, n), 2 - smile, np.full(n, 2), np.full(n, 3)], 1)
    informative = points.reshape(n, -1) + rng.normal(scale=0.2, size=(n, 10))
    noise = rng.normal(size=(n, 10))
    settings = AnalysisSettings(clusters=4, seed=0)
    stats, labels = analyze_representations({"CL1": noise, "FC5": informative}, {"input40": points}, attrs, settings)
    lv = {layer: stats["layers"][layer]["landmark"]["input40"]["mean"] for layer in ("CL1", "FC5")}
    assert lv["FC5"] < 0.2 * lv["CL1"]
    av = {layer: stats["layers"][layer]["attribute"]["smile"]["mean"] for layer in ("CL1", "FC5")}
    assert av["FC5"] < 0.02 and av["CL1"] > 0.15
    assert stats["layers"]["FC5"]["sizes"].sum() == n
    assert stats["reference"]["attribute"]["smile"]["positive_fraction"] == pytest.approx(smile.mean())
    assert labels["FC5"].shape == (n,)


# --------------------------------------------------------------------------- #
# The command, on a small MTFL sample
# --------------------------------------------------------------------------- #

N_FACES = 240
K = 4
LAYERS = ["CL1", "CL2", "CL3", "CL4", "FC5", "FC6"]


@pytest.fixture(scope="module")
def mtfl(shared_datasets: Path) -> Path:
    root = shared_datasets / "mtfl"
    if not (root / "train.txt").is_file():
        pytest.skip("MTFL not found")
    return root


@pytest.fixture(scope="module")
def analysis_run(mtfl: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("analysis")
    args = ["analyze", "--data", mtfl, "--out", tmp / "report", "--faces", N_FACES, "--clusters", K,
            "--seed", 3, "--cache-dir", tmp / "cache"]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return tmp, args, result


def test_analyze_command_report(analysis_run) -> None:
    tmp, _, result = analysis_run
    out = tmp / "report"
    rep = json.loads((out / REPORT_JSON).read_text())
    assert rep["layers"] == LAYERS
    assert rep["layer_labels"]["CL1"] == "RGB (CL1 input)"
    faces = rep["faces"]
    assert faces["listed"] == 10000 and faces["sampled"] == N_FACES
    assert faces["analysed"] + faces["missed"] == N_FACES and faces["analysed"] > 0.9 * N_FACES
    assert rep["settings"]["clusters"] == K and rep["settings"]["seed"] == 3
    for layer in LAYERS:
        sizes = rep["cluster_sizes"][layer]
        assert len(sizes) == K and sum(sizes) == faces["analysed"]
        assert rep["table1"][layer]["median"] == pytest.approx(float(np.median(sizes)))
        assert rep["table1"][layer]["sd"] == pytest.approx(float(np.std(sizes)))
        for frame in ("input40", "image80"):
            lv = rep["landmark_variance"][frame][layer]
            assert list(lv["per_landmark"]) == ["left_eye", "right_eye", "nose", "left_mouth", "right_mouth"]
            means = [v["mean"] for v in lv["per_landmark"].values()]
            assert all(m > 0 for m in means) and lv["mean"] == pytest.approx(np.mean(means))
        assert set(rep["attribute_variance"][layer]) == {"gender", "smile", "glasses"}
        for a in rep["attribute_variance"][layer].values():
            assert 0 <= a["mean"] <= 0.25 and a["clusters"] + a["skipped_clusters"] == K
    red = rep["reduction"]
    # PCA exactly where a layer's input is wider than pca_above (the shipped
    # network's widths decide which: CL1-CL4 always, FC6's 200-wide input never).
    above = rep["settings"]["pca_above"]
    assert [red[layer]["pca"] for layer in LAYERS] == [red[layer]["input_dims"] > above for layer in LAYERS]
    assert red["CL4"]["pca"] and not red["FC6"]["pca"]
    assert red["CL1"]["input_dims"] == 4800 and red["CL1"]["dims"] == 64
    assert 0 < red["CL1"]["explained_variance"] <= 1
    ratio = rep["landmark_variance_ratio"]
    lv40 = rep["landmark_variance"]["input40"]
    assert ratio["input40"]["mean"] == pytest.approx(lv40["FC5"]["mean"] / lv40["CL1"]["mean"])
    lv80 = rep["landmark_variance"]["image80"]
    assert lv80["CL1"]["mean"] > 0 and lv80["CL1"]["mean"] != pytest.approx(lv40["CL1"]["mean"])
    assert ratio["image80"]["mean"] == pytest.approx(lv80["FC5"]["mean"] / lv80["CL1"]["mean"])
    assert "timing_s" in rep and rep["timing_s"]["total"] > 0
    assign = np.load(out / ASSIGNMENTS)
    assert assign["FC5"].shape == (faces["analysed"],) and assign["rows"].max() < 10000


def test_analyze_command_figures_and_markdown(analysis_run) -> None:
    tmp, _, result = analysis_run
    out = tmp / "report"
    for name in (FIG1, FIG3, FIG3_SCATTER, FIG4):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
    md = (out / REPORT_MD).read_text()
    for name in (FIG1, FIG3, FIG4):
        assert f"]({name})" in md
    assert "Measured ratio of mean landmark variance FC5 / RGB" in md
    assert f"missed {json.loads((out / REPORT_JSON).read_text())['faces']['missed']}" in md
    assert "FC5 / RGB" in result.stderr and "Analysing" in result.stderr
    assert result.stdout == ""


def test_analyze_command_deterministic_and_quiet(analysis_run) -> None:
    tmp, args, _ = analysis_run
    again = [*[str(a) for a in args], "--quiet"]
    again[again.index("--out") + 1] = str(tmp / "again")
    result = CliRunner().invoke(main, again, catch_exceptions=False)
    assert result.exit_code == 0 and result.output == ""
    a, b = np.load(tmp / "report" / ASSIGNMENTS), np.load(tmp / "again" / ASSIGNMENTS)
    for key in ["rows", *LAYERS]:
        np.testing.assert_array_equal(a[key], b[key])


def test_analyze_command_too_many_clusters(analysis_run) -> None:
    tmp, args, _ = analysis_run
    bad = [str(a) for a in args]
    bad[bad.index("--clusters") + 1] = str(N_FACES + 1)
    bad[bad.index("--out") + 1] = str(tmp / "bad")
    result = CliRunner().invoke(main, bad)
    assert result.exit_code == 1
    assert f"fewer than the {N_FACES + 1} clusters" in result.output
