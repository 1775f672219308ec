"""Regenerate golden_landmarks.json from the shipped weights (run after retraining).

python tests/data/make_golden.py
"""

import json
from pathlib import Path

import numpy as np

from facealign.detection import get_detector
from facealign.engine import LandmarkEngine
from facealign.imageio import read_image
from facealign.research.data import load_mtfl, match_detection

ROOT = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "mtfl"
ROWS = (0, 1, 2, 3, 4)


def main() -> None:
    data = load_mtfl(ROOT, "test")
    det = get_detector("dlib")
    engines = {name: LandmarkEngine(name) for name in ("tcnn", "vanilla")}
    cases = []
    for i in ROWS:
        image = read_image(ROOT / data.paths[i])
        d = det.detect(image)
        k = match_detection(d.boxes, data.points[i])
        box = d.boxes[k].astype(float)
        case = {"image": data.paths[i], "box": [round(v, 3) for v in box.tolist()], "truth": data.points[i].tolist()}
        for name, eng in engines.items():
            case[name] = np.round(eng.predict(image, np.array([case["box"]]))[0], 4).tolist()
        cases.append(case)
    out = Path(__file__).with_name("golden_landmarks.json")
    out.write_text(json.dumps({"weights": "shipped", "cases": cases}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
