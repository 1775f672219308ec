"""The plain dlib pipeline a user would write instead of facealign (the speed reference).

    python bench/dlib_pipeline.py IN_DIR OUT_DIR [--shard K/N]

dlib's HOG detector with one pyramid upsampling, the 68-point shape predictor
(``face-recognition-models``, the ``bench`` extra) and ``dlib.get_face_chip``
at 112 px, every face of every JPEG under IN_DIR written as OUT_DIR/<stem>_<k>.jpg
with OpenCV. ``--shard K/N`` takes every N-th image from the K-th, so that N
processes share a folder. Deliberately as short as a user's script: no resume,
no manifest, no error handling. (The model file is located with
``facealign.research.peers.dlib_model_path``: ``face_recognition_models``' own helper
imports ``pkg_resources``, which recent setuptools no longer ship.)
"""

import argparse
import pathlib

import cv2
import dlib

from facealign.research.peers import dlib_model_path  # the model file of face-recognition-models

ap = argparse.ArgumentParser()
ap.add_argument("in_dir", type=pathlib.Path)
ap.add_argument("out_dir", type=pathlib.Path)
ap.add_argument("--shard", default="0/1")
args = ap.parse_args()
k, n = map(int, args.shard.split("/"))
detector = dlib.get_frontal_face_detector()
predictor = dlib.shape_predictor(str(dlib_model_path(68)))
args.out_dir.mkdir(parents=True, exist_ok=True)
for path in sorted(args.in_dir.rglob("*.jpg"))[k::n]:
    rgb = dlib.load_rgb_image(str(path))
    for i, rect in enumerate(detector(rgb, 1)):
        chip = dlib.get_face_chip(rgb, predictor(rgb, rect), size=112)
        cv2.imwrite(str(args.out_dir / f"{path.stem}_{i}.jpg"), cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
