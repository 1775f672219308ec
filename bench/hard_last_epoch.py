"""Weights of the *last* epoch of a ``facealign train-hard`` run (docs/hard/ablation.md, rows marked last).

    python bench/hard_last_epoch.py WORK_DIR BEST_WEIGHTS OUT

``BEST_WEIGHTS`` is the run's ``--out`` file (its mean/std images, box model and
meta are kept); the network is replaced by the ``model`` entry of
``WORK_DIR/hard-checkpoint.pt`` (the state after the last epoch run). The mirror
shift is dropped (vanilla-level evaluation runs without the mirror).
"""

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facealign.research.training_weights import load_weights, save_weights  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(f"usage: python {sys.argv[0]} WORK_DIR BEST_WEIGHTS OUT")
    work_dir, best, out = sys.argv[1:4]
    ck = torch.load(Path(work_dir) / "hard-checkpoint.pt", map_location="cpu", weights_only=False)
    w = load_weights(best)
    w["vanilla"] = ck["model"]
    w["meta"] = dict(w["meta"], best_epoch=ck["epoch"], selection="last epoch")
    w.pop("mirror_shift", None)
    save_weights(w, out)
    print(f"wrote {out}: epoch {ck['epoch']}")
