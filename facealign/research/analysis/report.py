"""The report of the section 2.2 analysis: ``report.json`` and ``report.md``.

The names of the files in the report folder, :func:`build_report` (the JSON
content), :func:`report_markdown` (the text) and the JSON conversion
(:func:`facealign.imageio.to_jsonable`).
"""

from __future__ import annotations

import math
from typing import Any

from .features import LAYER_LABELS
from .representations import landmark_ratio
from .statistics import ATTRIBUTE_POSITIVE, LANDMARK_FRAMES

#: Paper's observation for the landmark variance ratio FC5 / RGB.
PAPER_RATIO = 0.5

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FIG1 = "fig1_cluster_means.png"
FIG3 = "fig3_landmark_variance.png"
FIG3_SCATTER = "fig3_scatter.png"
FIG4 = "fig4_attribute_variance.png"
ASSIGNMENTS = "assignments.npz"


def build_report(stats: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``report.json`` content from :func:`analyze_representations` output and run facts."""
    layers = list(stats["layers"])
    rep: dict[str, Any] = dict(meta)
    rep["layers"] = layers
    rep["layer_labels"] = {layer: LAYER_LABELS.get(layer, layer) for layer in layers}
    rep["reduction"] = {layer: stats["layers"][layer]["reduction"] for layer in layers}
    rep["gmm"] = {layer: stats["layers"][layer]["gmm"] for layer in layers}
    rep["cluster_sizes"] = {layer: stats["layers"][layer]["sizes"] for layer in layers}
    rep["table1"] = {layer: stats["layers"][layer]["table1"] for layer in layers}
    rep["landmark_variance"] = {
        frame: {
            layer: {
                key: stats["layers"][layer]["landmark"][frame][key]
                for key in ("per_landmark", "mean", "skipped_clusters")
            }
            for layer in layers
        }
        for frame in LANDMARK_FRAMES
        if frame in stats["layers"][layers[0]]["landmark"]
    }
    rep["landmark_frames"] = {f: LANDMARK_FRAMES[f] for f in rep["landmark_variance"]}
    if "CL1" in layers and "FC5" in layers:
        rep["landmark_variance_ratio"] = {
            "definition": "mean landmark variance (Eq. 3, averaged over the 5 landmarks) "
            "at FC5 input / at RGB (CL1 input)",
            "paper": PAPER_RATIO,
            **{f: landmark_ratio(stats, f) for f in rep["landmark_variance"]},
        }
    rep["attribute_variance"] = {layer: stats["layers"][layer]["attribute"] for layer in layers}
    rep["attribute_coding"] = {a: f"1 = {p}, 0 = not; unknown (-1) dropped" for a, p in ATTRIBUTE_POSITIVE.items()}
    rep["pose_variance"] = {
        "note": "extra, not in the paper: variance of the MTFL pose index 1..5 within clusters",
        **{layer: stats["layers"][layer]["pose"] for layer in layers},
    }
    rep["reference_one_cluster"] = stats["reference"]
    return rep


def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def report_markdown(rep: dict[str, Any]) -> str:
    """A short ``report.md`` for a :func:`build_report` dictionary (PNGs are referenced by name)."""
    layers = rep["layers"]
    labels = [rep["layer_labels"][layer] for layer in layers]
    s = rep["settings"]
    f = rep["faces"]
    lines = [
        "# What is the vanilla network learning? (paper section 2.2)",
        "",
        f"Weights: `{rep['weights']['path']}`"
        + (f" (validation NME {rep['weights']['val_nme']:.2f}%)" if rep["weights"].get("val_nme") is not None else "")
        + ".",
    ]
    if rep["weights"].get("placeholder"):
        lines.append(
            "**These weights are an untrained placeholder: the figures below say nothing about a trained network.**"
        )
    lines += [
        "",
        f"Faces: {f['listed']} listed in `train.txt`"
        + (f", a seeded sample of {f['sampled']}" if f["sampled"] != f["listed"] else "")
        + f"; the {s['detector']} detector missed {f['missed']}, which are skipped; "
        f"**{f['analysed']} faces analysed**.",
        f"Clustering: Gaussian mixture by EM, K = {s['clusters']}, diagonal covariances, one k-means-seeded run "
        f"(seed {s['seed']}), at most {s['max_iter']} iterations, reg_covar {s['reg_covar']:g} x the mean feature "
        "variance; each face goes to the component of highest posterior (Eq. 2).",
    ]
    red = rep["reduction"]
    pca = [layer for layer in layers if red[layer]["pca"]]
    raw = [layer for layer in layers if not red[layer]["pca"]]
    if pca:
        lines.append(
            "PCA (no whitening) before clustering: "
            + ", ".join(
                f"{rep['layer_labels'][layer]} {red[layer]['input_dims']} -> {red[layer]['dims']} dims "
                f"({100 * red[layer]['explained_variance']:.1f}% of the variance)"
                for layer in pca
            )
            + "."
        )
    if raw:
        lines.append(
            "Clustered in full: "
            + ", ".join(f"{rep['layer_labels'][layer]} ({red[layer]['input_dims']} dims)" for layer in raw)
            + "."
        )
    nconv = [layer for layer in layers if not rep["gmm"][layer]["converged"]]
    if nconv:
        lines.append("EM stopped at the iteration limit before converging for: " + ", ".join(nconv) + ".")
    lines += ["", "## Table 1: cluster sizes (median ± SD over the K clusters)", ""]
    lines.append("| | " + " | ".join(labels) + " |")
    lines.append("|---" * (len(layers) + 1) + "|")
    t1 = rep["table1"]
    lines.append(
        "| size | "
        + " | ".join(f"{_fmt(t1[layer]['median'], 1)} ± {_fmt(t1[layer]['sd'], 1)}" for layer in layers)
        + " |"
    )
    lines.append("| empty clusters | " + " | ".join(str(t1[layer]["empty"]) for layer in layers) + " |")
    lines.append("")
    lines.append("Paper (K = 64, 7,571 faces): 92.0 ± 98.3, 110.5 ± 55.1, 116.0 ± 70.0, 118.5 ± 81.6, 110.0 ± 58.3.")

    lv = rep["landmark_variance"]["input40"]
    lines += ["", "## Landmark positions (Eq. 3, Fig. 3)", "", f"![Fig. 3]({FIG3})", ""]
    lines.append(
        "Variance along the principal axis of each landmark's ground-truth points in a cluster, averaged over "
        f"clusters (± SE), in {LANDMARK_FRAMES['input40']}; clusters with fewer than {s['min_cluster_size']} faces "
        "are skipped. `report.json` also has them in raw 80 x 80 image pixels (`image80`)."
    )
    lines.append("")
    names = list(lv[layers[0]]["per_landmark"])
    lines.append("| landmark | " + " | ".join(labels) + " |")
    lines.append("|---" * (len(layers) + 1) + "|")
    for j in names:
        lines.append(
            f"| {j} | "
            + " | ".join(
                f"{_fmt(lv[layer]['per_landmark'][j]['mean'])} ± {_fmt(lv[layer]['per_landmark'][j]['se'])}"
                for layer in layers
            )
            + " |"
        )
    lines.append("| **mean** | " + " | ".join(_fmt(lv[layer]["mean"]) for layer in layers) + " |")
    lines.append("| skipped clusters | " + " | ".join(str(lv[layer]["skipped_clusters"]) for layer in layers) + " |")
    ratio = rep.get("landmark_variance_ratio")
    if ratio:
        r40, r80 = ratio["input40"]["mean"], ratio.get("image80", {}).get("mean")
        lines += [
            "",
            f"**Measured ratio of mean landmark variance FC5 / RGB: {_fmt(r40, 3)}** "
            f"(mean variance {_fmt(lv['CL1']['mean'])} -> {_fmt(lv['FC5']['mean'])} px²; "
            f"in 80 x 80 image pixels: {_fmt(r80, 3)}). "
            f"The paper reports that it roughly halves (ratio about {PAPER_RATIO}).",
            "In 80 x 80 image pixels the variances also hold where the detector put the face box and how large it "
            "made it, which no layer sees: every layer works on the box crop.",
        ]
    lines += ["", f"![Fig. 3 scatter]({FIG3_SCATTER})", ""]
    lines.append(
        "Ground-truth points (40 x 40 input frame) of 15 faces from the cluster with the largest mean landmark "
        "variance of the RGB input and of the FC5 input."
    )

    av = rep["attribute_variance"]
    ref = rep["reference_one_cluster"]["attribute"]
    lines += ["", "## Facial attributes (Eq. 4, Fig. 4)", "", f"![Fig. 4]({FIG4})", ""]
    lines.append(
        "Variance of the 0/1 label within a cluster, averaged over clusters (± SE). The last column is the "
        "variance over all faces, p (1 - p), i.e. what clusters unrelated to the attribute would give."
    )
    lines.append("")
    lines.append("| attribute | " + " | ".join(labels) + " | all faces (p) |")
    lines.append("|---" * (len(layers) + 2) + "|")
    for a in av[layers[0]]:
        lines.append(
            f"| {a} | "
            + " | ".join(f"{_fmt(av[layer][a]['mean'], 3)} ± {_fmt(av[layer][a]['se'], 3)}" for layer in layers)
            + f" | {_fmt(ref[a]['variance'], 3)} (p = {_fmt(ref[a]['positive_fraction'], 3)}) |"
        )
    if "CL1" in layers and "FC5" in layers:
        lines.append("")
        for a in av["CL1"]:
            lo, hi = av["CL1"][a]["mean"], av["FC5"][a]["mean"]
            change = (hi - lo) / lo if lo else float("nan")
            lines.append(
                f"- {a}: {_fmt(lo, 3)} at the RGB input -> {_fmt(hi, 3)} at the FC5 input ({100 * change:+.0f}%)."
            )

    lines += [
        "",
        "## Cluster means (Fig. 1)",
        "",
        f"![Fig. 1]({FIG1})",
        "",
        "Average 40 x 40 input crop of every cluster (largest cluster first, empty clusters grey) when clustering "
        "the RGB input (left) and the FC5 input (right); the same faces in both.",
        "",
        "## Run",
        "",
        f"Seconds: {', '.join(f'{k} {v:.1f}' for k, v in rep['timing_s'].items())}.",
        "",
    ]
    return "\n".join(lines)
