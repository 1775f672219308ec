"""Does ``facealign crop`` survive bad folders and kills? (issue 11)

Builds, in a temporary folder (never inside the data sets):

* ``corpus/bad``: the bad inputs of issue 11 -- names that are not UTF-8 (a file
  and a folder), a broken symbolic link, a link to itself, a FIFO named ``.jpg``,
  a symbolic link to a folder, ``.heic`` and ``.txt`` files, zero-byte,
  truncated and non-image files, a JPEG with corrupt EXIF (decodes, with a
  warning), a PNG header claiming 50000 x 50000 pixels, an 8000 x 6000 photo, odd
  but valid encodings (grey, RGBA, 16-bit, CMYK, palette GIF, EXIF-rotated), a
  folder without permissions (readable anyway when run as root), and in OUT_DIR
  a file of the user's named like a crop;
* ``corpus/fuzz``: ``--fuzz`` files (500) made from celeba_wild photos encoded as
  JPEG, PNG, GIF, TIFF and WebP, then damaged with a fixed seed (bytes
  overwritten, truncated, garbage inserted, header scrambled);
* ``photos``: ``--photos`` (1,000) celeba_wild photos as symbolic links.

Then it crops the corpus twice (the second run must skip all but the retried
failures), and crops the photos with ``--jobs 2``, killing the main process
(SIGKILL) at ``--kills`` (3) random points of progress and resuming each time,
until the job finishes. It prints:

* files tried: image-named entries of the inputs;
* files reported: those found in the manifest or in ``failures.jsonl``;
* crashes: runs that exited other than 0 without being killed, or printed a traceback;
* inputs changed: input entries whose type, size, time, link target or content changed;
* manifest inconsistencies: crops listed twice or missing on disk, crop files not
  listed, incomplete images, sources both cropped and failed, ``.part`` or pending
  files left, records that are not strict UTF-8 JSON.

Usage: ``python bench/reliability.py [--seed 0] [--fuzz 500] [--photos 1000] [--kills 3]``
(2 to 8 minutes on 2 cores, with their load).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import CELEBA_IMAGES, REPO_ROOT, sample_paths
from PIL import Image

sys.path.insert(0, str(REPO_ROOT / "tests"))
from conftest import _save_variants  # noqa: E402  (the odd encodings the tests use)

from facealign.batch.job import _CROP_NAME, _PENDING_NAME  # noqa: E402
from facealign.constants import IMAGE_EXTENSIONS  # noqa: E402

FUZZ_FORMATS = (("JPEG", ".jpg"), ("PNG", ".png"), ("GIF", ".gif"), ("TIFF", ".tif"), ("WEBP", ".webp"))


# --------------------------------------------------------------------------- corpus


def build_bad(folder: Path, photo: Path, out_dir: Path) -> None:
    """The bad inputs of issue 11 (see the module notes)."""
    folder.mkdir(parents=True)
    data = photo.read_bytes()
    raw = os.fsencode(folder)
    with open(raw + b"/caf\xe9.jpg", "wb") as handle:
        handle.write(data)
    os.mkdir(raw + b"/d\xe9j\xe0")
    with open(raw + b"/d\xe9j\xe0/photo.jpg", "wb") as handle:
        handle.write(data)
    (folder / "dangling.jpg").symlink_to(folder / "missing.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    os.mkfifo(folder / "fifo.jpg")
    _save_variants(photo, folder / "odd")
    (folder / "dirlink").symlink_to(folder / "odd", target_is_directory=True)
    (folder / "photo.heic").write_bytes(data)
    (folder / "notes.txt").write_text("not a photo\n")
    header = (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    )
    (folder / "bomb.png").write_bytes(header + b"\x00" * 64)
    big = Image.new("RGB", (8000, 6000), (120, 110, 100))
    face = Image.open(photo).convert("RGB")
    big.paste(face.resize((face.width * 6, face.height * 6)), (2000, 1500))
    big.save(folder / "big.jpg", quality=80)
    exif = Image.Exif()
    exif[0x0110] = "M" * 40
    raw_exif = bytearray(exif.tobytes())
    struct.pack_into(">I", raw_exif, 6 + struct.unpack_from(">I", raw_exif, 10)[0] + 2 + 8, 0xFFFFF0)
    face.save(folder / "corrupt_exif.jpg", exif=bytes(raw_exif), quality=95)
    locked = folder / "locked"
    locked.mkdir()
    (locked / "inside.jpg").write_bytes(data)
    locked.chmod(0)
    # A file of the user's in OUT_DIR, named like the crop of odd/gray.png.
    (out_dir / "bad" / "odd").mkdir(parents=True)
    (out_dir / "bad" / "odd" / "gray_0.png").write_bytes(b"the user's own file")


def build_fuzz(folder: Path, photos: list[Path], n: int, rng: random.Random) -> None:
    """``n`` damaged image files (see the module notes)."""
    folder.mkdir(parents=True)
    encoded = []
    for photo in photos:
        image = Image.open(photo).convert("RGB")
        for fmt, ext in FUZZ_FORMATS:
            buffer = io.BytesIO()
            image.save(buffer, fmt)
            encoded.append((buffer.getvalue(), ext))
    for i in range(n):
        data, ext = rng.choice(encoded)
        data = bytearray(data)
        kind = rng.choice(("overwrite", "truncate", "insert", "header"))
        if kind == "overwrite":
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == "truncate":
            data = data[: rng.randrange(1, len(data))]
        elif kind == "insert":
            at = rng.randrange(len(data))
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
        else:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(min(64, len(data)))] = rng.randrange(256)
        if rng.random() < 0.05:  # a wrong extension
            ext = rng.choice([e for _, e in FUZZ_FORMATS])
        (folder / f"fuzz{i:04d}{ext}").write_bytes(bytes(data))


# --------------------------------------------------------------------------- checks


def snapshot(root: Path) -> dict[str, tuple]:
    """Type, size, times, link target and content hash of every entry under ``root`` (links not followed)."""
    found = {}
    for directory, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                extra = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    extra = hashlib.sha1(handle.read()).hexdigest()
            else:
                extra = None
            found[path] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_size, info.st_mtime_ns, extra)
    return found


def snapshot_inputs(corpus: Path, photo_dir: Path) -> dict[str, tuple]:
    """:func:`snapshot` of both inputs, the locked folder opened for the time of it."""
    locked = corpus / "bad" / "locked"
    locked.chmod(0o700)
    try:
        return {**snapshot(corpus), **snapshot(photo_dir)}
    finally:
        locked.chmod(0)


def expected_sources(root: Path) -> set[str]:
    """Image-named entries under ``root`` that are not hidden and not in hidden folders.

    Links to folders are not followed.
    """
    found = set()
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            path = os.path.join(directory, name)
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            if os.path.islink(path) and os.path.isdir(path):
                continue
            found.add(os.path.relpath(path, root).replace(os.sep, "/"))
    return found


def read_records(path: Path, problems: list[str]) -> list[dict]:
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode("utf-8")  # strict
        return [json.loads(line) for line in text.splitlines()]
    except ValueError as exc:
        problems.append(f"{path.name} is not strict UTF-8 JSON lines: {exc}")
        return []


def source_key(row: dict) -> str:
    raw = row.get("source_b64")
    return os.fsdecode(base64.b64decode(raw)) if raw else row["source"]


def check_out_dir(out: Path) -> tuple[set[str], list[str]]:
    """Sources reported in ``out``, and the inconsistencies found."""
    problems: list[str] = []
    rows = read_records(out / "manifest.jsonl", problems)
    failures = read_records(out / "failures.jsonl", problems)
    outputs = Counter(r["output"] for r in rows)
    problems += [f"crop listed {n} times: {o}" for o, n in outputs.items() if n > 1]
    problems += [f"listed crop missing: {o}" for o in outputs if not (out / o).is_file()]
    for directory, _, files in os.walk(out):
        for name in files:
            rel = os.path.relpath(os.path.join(directory, name), out).replace(os.sep, "/")
            if name.endswith(".part"):
                problems.append(f"temporary left: {rel}")
            elif _CROP_NAME.match(name) and rel not in outputs and rel != "bad/odd/gray_0.png":
                problems.append(f"crop not listed: {rel}")
    faces: dict[str, list[dict]] = {}
    for r in rows:
        faces.setdefault(source_key(r), []).append(r)
    for source, group in faces.items():
        if sorted(r["face"] for r in group) != list(range(group[0]["num_faces"])):
            problems.append(f"incomplete image: {source}")
    failed = Counter(source_key(f) for f in failures)
    problems += [f"failure listed {n} times: {s}" for s, n in failed.items() if n > 1]
    problems += [f"both cropped and failed: {s}" for s in set(faces) & set(failed)]
    if (out / _PENDING_NAME).exists():
        problems.append("pending list left after a finished run")
    return set(faces) | set(failed), problems


# --------------------------------------------------------------------------- runs


def crop_command(in_dir: Path, out: Path, jobs: str, quiet: bool = True) -> list[str]:
    return [sys.executable, "-m", "facealign.cli", "crop", str(in_dir), str(out), "--jobs", jobs] + ["--quiet"] * quiet


def run_to_end(in_dir: Path, out: Path, jobs: str, log: list[str]) -> int:
    """Run the crop job until it finishes; a job refused because killed workers still run is retried."""
    while True:
        done = subprocess.run(crop_command(in_dir, out, jobs, quiet=False), cwd=REPO_ROOT, capture_output=True)
        if done.returncode == 75 and b"still writing" in done.stderr:
            time.sleep(1)
            continue
        crashed = done.returncode != 0 or b"Traceback" in done.stderr
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        summary = next((line for line in reversed(lines) if " images: " in line), "")
        log.append(f"run {in_dir.name}: exit {done.returncode}; {summary}" + (f"\n{lines[-5:]}" if crashed else ""))
        return int(crashed)


def killed_run(in_dir: Path, out: Path, target_rows: int, log: list[str]) -> int:
    """Start the job and SIGKILL its main process once the manifest holds ``target_rows`` rows."""
    proc = subprocess.Popen(crop_command(in_dir, out, "2"), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    manifest = out / "manifest.jsonl"
    while proc.poll() is None:
        rows = manifest.read_bytes().count(b"\n") if manifest.exists() else 0
        if rows >= target_rows:
            proc.kill()
            proc.wait()
            log.append(f"killed at {rows} manifest rows (target {target_rows})")
            return 0
        time.sleep(0.05)
    stderr = proc.stderr.read()
    log.append(f"finished before the kill at {target_rows} rows: exit {proc.returncode}")
    return int(proc.returncode != 0 or b"Traceback" in stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fuzz", type=int, default=500, help="damaged files to make")
    parser.add_argument("--photos", type=int, default=1000, help="celeba_wild photos in the killed job")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="work folder [default: a temporary one, removed]")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="facealign-reliability-")) if args.work is None else args.work
    work.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    try:
        photos = sample_paths(CELEBA_IMAGES, args.photos)
        corpus, corpus_out = work / "corpus", work / "corpus-out"
        build_bad(corpus / "bad", photos[0], corpus_out)
        build_fuzz(corpus / "fuzz", photos[:20], args.fuzz, rng)
        photo_dir, photo_out = work / "photos", work / "photos-out"
        photo_dir.mkdir()
        for p in photos:
            (photo_dir / p.name).symlink_to(p.resolve())
        before = snapshot_inputs(corpus, photo_dir)
        user_file = (corpus_out / "bad" / "odd" / "gray_0.png").read_bytes()

        crashes = run_to_end(corpus, corpus_out, "auto", log)
        crashes += run_to_end(corpus, corpus_out, "auto", log)  # the rerun: retried failures only
        points = sorted(rng.sample(range(50, int(0.9 * len(photos))), args.kills))
        for target in points:
            crashes += killed_run(photo_dir, photo_out, target, log)
        crashes += run_to_end(photo_dir, photo_out, "2", log)

        after = snapshot_inputs(corpus, photo_dir)
        changed = sorted(set(before) ^ set(after)) + sorted(p for p in before if p in after and before[p] != after[p])
        changed += ["OUT_DIR: the user's file was changed"] * (
            (corpus_out / "bad" / "odd" / "gray_0.png").read_bytes() != user_file
        )
        tried = expected_sources(corpus) | {f"photos/{n}" for n in expected_sources(photo_dir)}
        reported_corpus, problems = check_out_dir(corpus_out)
        reported_photos, more = check_out_dir(photo_out)
        problems += more
        reported = (reported_corpus | {f"photos/{n}" for n in reported_photos}) & tried
    finally:
        if args.work is None:
            locked = work / "corpus" / "bad" / "locked"
            if locked.exists():
                locked.chmod(0o755)
            shutil.rmtree(work, ignore_errors=True)
    for line in log:
        print(line)
    for item in (problems + [f"input changed: {os.fsdecode(c)}" for c in changed])[:20]:
        print(item)
    print(f"files tried: {len(tried)} ({len(tried) - len(photos)} in the bad and fuzzed corpus, {len(photos)} photos)")
    print(f"files reported: {len(reported)}")
    print(f"crashes: {crashes}")
    print(f"inputs changed: {len(changed)}")
    print(f"manifest inconsistencies: {len(problems)}")
    sys.exit(0 if (crashes, len(changed), len(problems), len(tried) - len(reported)) == (0, 0, 0, 0) else 1)


if __name__ == "__main__":
    main()
