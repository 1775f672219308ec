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

Then the cases of issue 22 (a folder an attacker or a careless operator controls),
each on its own small IN_DIR and OUT_DIR, in a table: item, case, entries written,
changed or removed outside OUT_DIR (IN_DIR and a folder beside it, once the case
has set them up), image-named inputs neither cropped nor listed, tracebacks, and
whether the promise held (``docs/guide/promises.md``): links planted in OUT_DIR
(record files, an output folder linked into IN_DIR, a folder swapped for a link
after ``kill -9``), a PostScript file named ``.jpg``, line separators in names
(JSON lines and CSV), the same bytes with ``--jobs 1``, ``--jobs 2 --chunk-size 3``
and a killed and resumed run, damaged manifests (deleted, BOM + CRLF, torn), a
hand-edited manifest with ``--prune``, an unmounted sub-folder, and the items of
point 8 (a 255-byte crop name, a second job, a missing scheduler file,
``num_faces`` edited to 10^12).

Usage: ``python bench/reliability.py [--seed 0] [--fuzz 500] [--photos 1000] [--kills 3]
[--issue22-only]`` (2 to 8 minutes on 2 cores, with their load; the issue 22 cases
alone under a minute).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------- issue 22


@dataclass
class Case:
    """One case of issue 22 and what it found."""

    item: str
    name: str
    outside: int = 0  # entries written, changed or removed outside OUT_DIR (IN_DIR included)
    unlisted: int = 0  # image-named inputs neither cropped nor listed
    tracebacks: int = 0
    ok: bool = False
    note: str = ""
    ready: Any = None  # called by a case once its inputs are set up


def _cli(in_dir: Path, out: Path, *extra: str, quiet: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """The crop command (``--jobs 1``); a run past ``timeout`` seconds is killed and gives exit 124."""
    command = [sys.executable, "-m", "facealign.cli", "crop", str(in_dir), str(out), "--jobs", "1", *extra]
    command += ["-q"] * quiet
    try:
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(command, 124, exc.stdout or b"", exc.stderr or b"")


def _records(out: Path) -> tuple[list[dict], list[dict]]:
    problems: list[str] = []
    return read_records(out / "manifest.jsonl", problems), read_records(out / "failures.jsonl", problems)


def _unlisted(in_dir: Path, out: Path) -> int:
    rows, failures = _records(out)
    reported = {source_key(r) for r in rows} | {source_key(f) for f in failures}
    return len(expected_sources(in_dir) - reported)


def _case(item: str, name: str, work: Path, photos: list[Path], body) -> Case:
    """Run ``body(in_dir, out, elsewhere, case)`` on a fresh IN_DIR (four photos in ``a/``, two in
    ``b/``) and OUT_DIR, counting what changed outside OUT_DIR."""
    root = work / f"case-{item}-{name.replace(' ', '-')}"
    in_dir, out, elsewhere = root / "in", root / "out", root / "elsewhere"
    for n, photo in enumerate(photos[:6]):
        folder = in_dir / ("a" if n < 4 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / photo.name)
    elsewhere.mkdir(parents=True)
    (elsewhere / "file").write_bytes(b"not OUT_DIR's")
    out.mkdir()
    case = Case(item, name)
    before = {**snapshot(in_dir), **snapshot(elsewhere)}

    def ready() -> None:  # the case has set up its inputs: what changes from now on counts
        before.clear()
        before.update({**snapshot(in_dir), **snapshot(elsewhere)})

    case.ready = ready
    try:
        body(in_dir, out, elsewhere, case)
    except Exception as exc:  # a failed check of the case itself
        case.ok, case.note = False, f"{type(exc).__name__}: {exc}"
    after = {**snapshot(in_dir), **snapshot(elsewhere)}
    case.outside = len(set(before) ^ set(after)) + sum(before[p] != after[p] for p in before if p in after)
    return case


def _run(case: Case, in_dir: Path, out: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = _cli(in_dir, out, *extra, timeout=timeout)
    case.tracebacks += b"Traceback" in done.stderr
    return done


def issue22_cases(work: Path, photos: list[Path]) -> list[Case]:
    """The cases of issue 22 (items 1-8), each on its own small IN_DIR and OUT_DIR."""
    cases = []

    def planted_record_links(in_dir: Path, out: Path, elsewhere: Path, case: Case) -> None:
        (out / "manifest.jsonl").symlink_to(elsewhere / "new")
        (out / "failures.jsonl").symlink_to(elsewhere / "file")
        done = _run(case, in_dir, out)
        case.ok = done.returncode == 1 and b"is a symbolic link" in done.stderr
        case.note = done.stderr.decode(errors="replace").strip()[:90]

    def planted_folder_link(in_dir: Path, out: Path, elsewhere: Path, case: Case) -> None:
        (out / "b").symlink_to(in_dir / "b")
        runs = [_run(case, in_dir, out) for _ in range(2)]
        _, failures = _records(out)
        case.unlisted = _unlisted(in_dir, out)
        case.ok = (
            all(r.returncode == 0 for r in runs)
            and [f["reason"] for f in failures]
            == [
                "output name taken: OUT_DIR/b is a symbolic link; facealign writes only inside OUT_DIR: "
                "remove the link and rerun"
            ]
            * 2
        )
        case.note = f"{len(failures)} images of b/ failed: 'output name taken: OUT_DIR/b is a symbolic link ...'"

    def killed_then_link(in_dir: Path, out: Path, elsewhere: Path, case: Case) -> None:
        command = crop_command(in_dir, out, "1") + ["--chunk-size", "1"]
        proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        manifest = out / "manifest.jsonl"
        while proc.poll() is None and not (manifest.exists() and manifest.stat().st_size):
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        (elsewhere / ".x_0.jpg.abcd.part").write_bytes(b"someone's temporary")
        shutil.rmtree(out / "a", ignore_errors=True)  # the folder the killed run was writing
        (out / "a").symlink_to(elsewhere)
        case.ready()
        done = _run(case, in_dir, out)
        case.ok = done.returncode == 0 and (elsewhere / ".x_0.jpg.abcd.part").exists()
        case.note = "kill -9, OUT_DIR/a swapped for a link, resumed: nothing deleted there"

    def postscript(in_dir: Path, out: Path, elsewhere: Path, case: Case) -> None:
        (in_dir / "a" / "page.jpg").write_bytes(b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
        case.ready()
        done = _run(case, in_dir, out)
        _, failures = _records(out)
        reasons = {f["source"]: f["reason"] for f in failures}
        case.unlisted = _unlisted(in_dir, out)
        case.ok = done.returncode == 0 and reasons.get("a/page.jpg") == "unreadable image: unsupported format EPS"
        case.note = reasons.get("a/page.jpg", "not listed")

    def line_separators(in_dir: Path, out: Path, elsewhere: Path, case: Case) -> None:
        for n, char in enumerate(["\u2028", "\u2029", "\x85", "\r", "\n", "\x1e"]):
            shutil.copy(photos[n], in_dir / f"x{char}y.jpg")
        case.ready()
        for fmt in ("jsonl", "csv"):
            fmt_out = out / fmt
            first, again = _run(case, in_dir, fmt_out, "--manifest-format", fmt), None
            again = _cli(in_dir, fmt_out, "--manifest-format", fmt)
            case.ok = first.returncode == again.returncode == 0 and b" 0 processed" in _summary(in_dir, fmt_out, fmt)
        case.unlisted = _unlisted(in_dir, out / "jsonl")
        case.note = "U+2028, U+2029, U+0085, CR, LF, RS in names; rerun processes none (JSON lines and CSV)"

    def determinism(in_dir: Path, out: Path, elsewhere: Path, case: Case) -> None:
        for n, photo in enumerate(photos[6:30]):
            shutil.copy(photo, in_dir / "ab"[n % 2] / photo.name)
        case.ready()
        outs = {}
        for name, extra in (("jobs1", ("--jobs", "1")), ("jobs2", ("--jobs", "2", "--chunk-size", "3"))):
            _run(case, in_dir, out / name, *extra)
            outs[name] = _outputs(out / name)
        killed_run(in_dir, out / "resumed", 10, [])
        _run(case, in_dir, out / "resumed", "--jobs", "2", "--chunk-size", "5")
        outs["resumed"] = _outputs(out / "resumed")
        case.ok = outs["jobs1"] == outs["jobs2"] == outs["resumed"]
        case.note = f"{len(outs['jobs1'][1])} crops: --jobs 1, --jobs 2 --chunk-size 3, killed and resumed"

    def damaged_manifest(in_dir: Path, out: Path, elsewhere: Path, case: Case) -> None:
        ok = True
        for damage in ("deleted", "bom-crlf", "torn"):
            _run(case, in_dir, out / damage)
            manifest = out / damage / "manifest.jsonl"
            text = manifest.read_bytes()
            if damage == "deleted":
                manifest.unlink()
            elif damage == "bom-crlf":
                manifest.write_bytes(b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n"))
            else:
                manifest.write_bytes(text[: text.rstrip(b"\n").rfind(b"\n") + 20])
            _run(case, in_dir, out / damage)
            _, failures = _records(out / damage)
            ok = ok and not failures and not check_out_dir(out / damage)[1]
        case.ok = ok
        case.note = "deleted, BOM + CRLF re-save, torn last row: no failures, consistent"

    def hand_edited(in_dir: Path, out: Path, elsewhere: Path, case: Case) -> None:
        _run(case, in_dir, out)
        rows, _ = _records(out)
        (out / "notes.txt").write_bytes(b"the user's")
        edited = [{**rows[0], "source": "gone.jpg", "output": "notes.txt"},
                  {**rows[1], "source": "ghost.jpg", "output": rows[0]["output"]}]  # fmt: skip
        with open(out / "manifest.jsonl", "a") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in edited))
        kept = (out / rows[0]["output"]).read_bytes()
        pruned = _run(case, in_dir, out, "--prune")
        case.ok = (
            pruned.returncode == 0 and (out / "notes.txt").exists() and (out / rows[0]["output"]).read_bytes() == kept
        )
        case.note = "rows naming notes.txt and another image's crop, dropped with --prune: both files kept"

    def vanished(in_dir: Path, out: Path, elsewhere: Path, case: Case) -> None:
        _run(case, in_dir, out)
        crops = snapshot(out / "b")
        shutil.move(in_dir / "b", elsewhere / "b-unmounted")
        done = _cli(in_dir, out, quiet=False)  # the summary
        shutil.move(elsewhere / "b-unmounted", in_dir / "b")
        case.tracebacks += b"Traceback" in done.stderr
        case.ok = done.returncode == 0 and b"missing from IN_DIR" in done.stderr and snapshot(out / "b") == crops
        case.note = "b/ unmounted: records and crops kept, summary counts them"

    def point8(in_dir: Path, out: Path, elsewhere: Path, case: Case) -> None:
        import fcntl

        checks = []
        stem = "n" * 249
        shutil.copy(photos[0], in_dir / "a" / f"{stem}.jpg")  # a crop name of 255 bytes
        done = _run(case, in_dir, out)
        checks.append(done.returncode == 0 and (out / "a" / f"{stem}_0.jpg").exists())
        with open(out / ".facealign-crop.lock", "a") as lock:  # a second job at once
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            checks.append(_run(case, in_dir, out).returncode == 75)
        start = time.monotonic()
        done = _run(case, in_dir, out, "--cluster", str(elsewhere / "scheduler.json"), timeout=60)
        checks.append(done.returncode == 1 and time.monotonic() - start < 60)
        text = (out / "manifest.jsonl").read_text(encoding="utf-8")
        (out / "manifest.jsonl").write_text(text.replace('"num_faces": 1,', '"num_faces": 1000000000000,', 1))
        checks.append(_run(case, in_dir, out).returncode == 0)
        case.ready()
        times = os.stat(in_dir / "a")
        fd = os.open(in_dir / "a", os.O_RDONLY)  # an image under a path longer than PATH_MAX (removed after)
        for _ in range(22):
            os.mkdir("d" * 200, dir_fd=fd)
            child = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        image = os.open("p.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(image, photos[0].read_bytes())
        os.close(image)
        os.close(fd)
        done = _run(case, in_dir, out)
        _, failures = _records(out)
        reasons = [f["reason"] for f in failures if f["source"].endswith("/p.jpg")]
        checks.append(done.returncode == 0 and reasons == ["unreadable file: file name too long"])
        shutil.rmtree(in_dir / "a" / ("d" * 200))
        os.utime(in_dir / "a", ns=(times.st_atime_ns, times.st_mtime_ns))  # as the case found it
        case.unlisted = _unlisted(in_dir, out)
        case.ok = all(checks)
        case.note = "255-byte crop name, second job (75), missing scheduler file, num_faces 10^12, path > PATH_MAX: "
        case.note += " ".join("ok" if c else "FAILED" for c in checks)

    for item, name, body in (
        ("1", "record files planted as links", planted_record_links),
        ("1", "output folder linked into IN_DIR", planted_folder_link),
        ("1", "kill -9, then a folder swapped for a link", killed_then_link),
        ("2", "PostScript named .jpg", postscript),
        ("3", "line separators in names", line_separators),
        ("4", "same bytes whatever the parallelism", determinism),
        ("5", "damaged manifests", damaged_manifest),
        ("6", "hand-edited manifest", hand_edited),
        ("7", "sub-folder unmounted", vanished),
        ("8", "names, locks, scheduler, edits", point8),
    ):
        cases.append(_case(item, name, work, photos, body))
    return cases


def _summary(in_dir: Path, out: Path, fmt: str) -> bytes:
    """The summary line of a rerun (not quiet)."""
    done = _cli(in_dir, out, "--manifest-format", fmt, quiet=False)
    return done.stderr if b" images: " in done.stderr else done.stdout


def _outputs(out: Path) -> tuple[list[str], dict[str, bytes]]:
    text = (out / "manifest.jsonl").read_text(encoding="utf-8")
    rows = sorted(text.split("\n")[:-1])
    crops = {json.loads(r)["output"]: (out / json.loads(r)["output"]).read_bytes() for r in rows}
    return rows, crops


def print_cases(cases: list[Case]) -> None:
    print("| item | case | writes outside OUT_DIR | neither cropped nor listed | tracebacks | result |")
    print("|---|---|---|---|---|---|")
    for c in cases:
        print(f"| {c.item} | {c.name} | {c.outside} | {c.unlisted} | {c.tracebacks} | "
              f"{'ok' if c.ok else 'FAILED'}: {c.note} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fuzz", type=int, default=500, help="damaged files to make")
    parser.add_argument("--photos", type=int, default=1000, help="celeba_wild photos in the killed job")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="work folder [default: a temporary one, removed]")
    parser.add_argument("--issue22-only", action="store_true", help="only the cases of issue 22")
    args = parser.parse_args()
    if args.issue22_only:
        work = Path(tempfile.mkdtemp(prefix="facealign-issue22-")) if args.work is None else args.work
        try:
            cases = issue22_cases(work, sample_paths(CELEBA_IMAGES, 40))
        finally:
            if args.work is None:
                shutil.rmtree(work, ignore_errors=True)
        print_cases(cases)
        bad = [c for c in cases if not c.ok or c.outside or c.unlisted or c.tracebacks]
        sys.exit(1 if bad else 0)
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
        cases = issue22_cases(work / "issue22", photos[:40])
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
    print_cases(cases)
    bad = [c for c in cases if not c.ok or c.outside or c.unlisted or c.tracebacks]
    sys.exit(0 if (crashes, len(changed), len(problems), len(tried) - len(reported), len(bad)) == (0,) * 5 else 1)


if __name__ == "__main__":
    main()
