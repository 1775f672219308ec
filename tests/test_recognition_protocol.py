"""Tests of recognition.protocol: CS2-style writer, reader and input lists."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from recognition.protocol import (
    METADATA_COLUMNS,
    items_from_folders,
    items_from_identity_list,
    make_protocol,
    read_comparisons,
    read_metadata,
    read_protocol,
    read_split,
    sample_subjects,
)

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def synthetic_items(n_subjects: int = 30) -> list[tuple[str, str]]:
    """Subjects with 1..9 images each (subject i has 1 + i % 9 images)."""
    return [(f"s{i:02d}/img{j}.jpg", f"id{i:02d}") for i in range(n_subjects) for j in range(1 + i % 9)]


def read_all(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_structure(tmp_path: Path) -> None:
    items = synthetic_items()
    identity = dict(items)
    images_of: dict[str, set[str]] = defaultdict(set)
    for path, subject in items:
        images_of[subject].add(path)
    summary = make_protocol(items, tmp_path, n_splits=3, seed=5, impostor_ratio=10.0)
    protocol = read_protocol(tmp_path)
    assert [s.index for s in protocol.splits] == [1, 2, 3]
    assert protocol.summary == summary
    assert summary["images"] == len(items) and summary["subjects"] == 30

    for split, info in zip(protocol.splits, summary["splits"]):
        train_subjects = {row.subject_id for row in split.train}
        test_subjects = {rows[0].subject_id for rows in split.templates.values()}
        assert train_subjects.isdisjoint(test_subjects)
        assert train_subjects | test_subjects == set(images_of)
        assert len(test_subjects) == info["test_subjects"] == 20  # round(2/3 * 30)
        assert all(len(images_of[s]) >= 2 for s in test_subjects)
        assert len(split.train) == info["train_images"]
        assert {row.file for row in split.train} == set().union(*(images_of[s] for s in train_subjects))
        # Each test subject's images are partitioned exactly into its templates.
        files_by_subject: dict[str, list[str]] = defaultdict(list)
        templates_by_subject: dict[str, list[int]] = defaultdict(list)
        for tid, rows in split.templates.items():
            assert len(rows) >= 1
            assert {identity[r.file] for r in rows} == {rows[0].subject_id}
            files_by_subject[rows[0].subject_id] += [r.file for r in rows]
            templates_by_subject[rows[0].subject_id].append(tid)
        for subject, files in files_by_subject.items():
            assert sorted(files) == sorted(images_of[subject])
            n = len(images_of[subject])
            assert len(templates_by_subject[subject]) == max(2, min(4, n // 4))
        assert len(split.templates) == info["test_templates"]
        assert sum(len(r) for r in split.templates.values()) == info["test_images"]
        # Comparisons: unique, genuine flags from the true identities, all genuine pairs present.
        pairs = [tuple(p) for p in split.comparisons.tolist()]
        assert len(set(pairs)) == len(pairs)
        assert all(a != b for a, b in pairs)
        expected_genuine = [
            identity[split.templates[a][0].file] == identity[split.templates[b][0].file] for a, b in pairs
        ]
        np.testing.assert_array_equal(split.genuine, expected_genuine)
        all_genuine = {tuple(sorted(p)) for ids in templates_by_subject.values() for p in combinations(ids, 2)}
        assert {tuple(sorted(p)) for p, g in zip(pairs, split.genuine) if g} == all_genuine
        n_genuine = len(all_genuine)
        n_templates = len(split.templates)
        available = n_templates * (n_templates - 1) // 2 - n_genuine
        assert int(split.genuine.sum()) == info["genuine"] == n_genuine
        assert int((~split.genuine).sum()) == info["impostor"] == min(10 * n_genuine, available)
        assert split.comparisons.dtype == np.int64 and split.comparisons.shape == (len(pairs), 2)
        assert all(row.box is None for rows in split.templates.values() for row in rows)
        train_ids = {row.template_id for row in split.train}
        assert train_ids.isdisjoint(split.templates)


def test_impostor_sampling_is_capped(tmp_path: Path) -> None:
    summary = make_protocol(synthetic_items(12), tmp_path, n_splits=1, seed=0, impostor_ratio=1000.0)
    split = read_split(tmp_path, 1)
    n = len(split.templates)
    assert summary["splits"][0]["genuine"] + summary["splits"][0]["impostor"] == n * (n - 1) // 2


def test_same_seed_is_deterministic_other_seed_differs(tmp_path: Path) -> None:
    items = synthetic_items()
    make_protocol(items, tmp_path / "a", n_splits=2, seed=1)
    make_protocol(list(items), tmp_path / "b", n_splits=2, seed=1)
    make_protocol(items, tmp_path / "c", n_splits=2, seed=2)
    a, b, c = read_all(tmp_path / "a"), read_all(tmp_path / "b"), read_all(tmp_path / "c")
    assert a == b
    assert a["split1/verify_metadata_1.csv"] != c["split1/verify_metadata_1.csv"]
    # Splits of one protocol differ from each other.
    assert a["split1/verify_metadata_1.csv"] != a["split2/verify_metadata_2.csv"]
    assert a["split1/train_1.csv"] != a["split2/train_2.csv"]


def test_boxes_round_trip_and_validation(tmp_path: Path) -> None:
    items = synthetic_items(6)
    boxes = {items[0][0]: (10.0, 20.0, 50.5, 80.0)}
    make_protocol(items, tmp_path, n_splits=1, seed=0, train_fraction=0.0, boxes=boxes)
    split = read_split(tmp_path, 1)
    rows = {r.file: r for rs in split.templates.values() for r in rs} | {r.file: r for r in split.train}
    assert rows[items[0][0]].box == pytest.approx((10.0, 20.0, 50.5, 80.0))
    assert rows[items[1][0]].box is None
    with pytest.raises(ValueError, match="x2 > x1"):
        make_protocol(items, tmp_path / "bad", n_splits=1, boxes={items[0][0]: (10, 10, 5, 20)})


def test_make_protocol_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        make_protocol([("a.jpg", "x"), ("a.jpg", "y")] + synthetic_items(), tmp_path)
    with pytest.raises(ValueError, match="two test subjects"):
        make_protocol([("a.jpg", "x"), ("b.jpg", "x"), ("c.jpg", "y")], tmp_path)
    with pytest.raises(ValueError, match="train_fraction"):
        make_protocol(synthetic_items(), tmp_path, train_fraction=1.0)


def test_reader_tolerates_extra_columns_and_checks_content(tmp_path: Path) -> None:
    folder = tmp_path / "split1"
    folder.mkdir()
    header = ",".join(METADATA_COLUMNS) + ",EXTRA"
    (folder / "train_1.csv").write_text(header + "\n9,s3,img/9.jpg,9,9,,,,,,x\n")
    (folder / "verify_metadata_1.csv").write_text(
        header + "\n"
        "1,s1,img/1.jpg,1,1,,10,20,30,40,a\n"
        "1,s1,frame/2.jpg,2,1,7,,,,,b\n"
        "2,s1,img/3.jpg,3,3,,,,,,c\n"
        "3,s2,img/4.jpg,4,4,,1.5,2.5,3,4,d\n"
    )
    (folder / "verify_comparisons_1.csv").write_text("1,2\n1,3\n2,3\n")
    split = read_split(tmp_path, 1)
    np.testing.assert_array_equal(split.comparisons, [[1, 2], [1, 3], [2, 3]])
    np.testing.assert_array_equal(split.genuine, [True, False, False])
    assert [r.file for r in split.templates[1]] == ["img/1.jpg", "frame/2.jpg"]
    assert split.templates[1][0].box == (10.0, 20.0, 40.0, 60.0)
    assert split.templates[1][1].box is None and split.templates[1][1].frame == "7"
    assert split.templates[3][0].extra == {"EXTRA": "d"}
    assert split.template_subject(3) == "s2"
    assert split.train_files == ["img/9.jpg"]

    (folder / "verify_comparisons_1.csv").write_text("1,2\n1,99\n")
    with pytest.raises(ValueError, match="not in verify_metadata_1.csv"):
        read_split(tmp_path, 1)
    bad = tmp_path / "bad.csv"
    bad.write_text("TEMPLATE_ID,SUBJECT_ID,FILE\n1,s,a.jpg\n")
    with pytest.raises(ValueError, match="missing column"):
        read_metadata(bad)
    bad.write_text(header + "\n1,s1,a.jpg,1,1,,10,20,,,x\n")
    with pytest.raises(ValueError, match="all given or all empty"):
        read_metadata(bad)
    bad.write_text(header + "\n1,s1,a.jpg,1,1,,,,,,x\n1,s2,b.jpg,1,1,,,,,,x\n")
    (folder / "verify_metadata_1.csv").write_text(bad.read_text())
    (folder / "verify_comparisons_1.csv").write_text("")
    with pytest.raises(ValueError, match="mixes subjects"):
        read_split(tmp_path, 1)
    bad.write_text("1,2,3\n")
    with pytest.raises(ValueError, match="two TEMPLATE_IDs"):
        read_comparisons(bad)
    with pytest.raises(FileNotFoundError):
        read_split(tmp_path, 2)


def test_items_from_identity_list_and_folders(tmp_path: Path) -> None:
    listing = tmp_path / "ids.txt"
    listing.write_text("# image identity\n001.jpg 7\n\nsub dir/002.jpg 8\n")
    assert items_from_identity_list(listing) == [("001.jpg", "7"), ("sub dir/002.jpg", "8")]
    listing.write_text("# header\nlonely\n")
    with pytest.raises(ValueError, match=":2:"):
        items_from_identity_list(listing)

    for person, names in {"Ann": ["a.jpg", "b.PNG", "notes.txt"], "Bob": ["x/c.jpeg"]}.items():
        for name in names:
            path = tmp_path / "faces" / person / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    assert items_from_folders(tmp_path / "faces") == [
        ("Ann/a.jpg", "Ann"),
        ("Ann/b.PNG", "Ann"),
        ("Bob/x/c.jpeg", "Bob"),
    ]


@pytest.mark.skipif(not (DATASETS / "celeba_wild" / "identities.txt").is_file(), reason="celeba_wild not present")
def test_celeba_identity_list() -> None:
    items = items_from_identity_list(DATASETS / "celeba_wild" / "identities.txt")
    counts = Counter(identity for _, identity in items)
    assert len(items) == 4174 and len(counts) == 299
    assert min(counts.values()) >= 2
    assert all((DATASETS / "celeba_wild" / "images" / path).is_file() for path, _ in items[:20])


def test_sample_subjects_is_seeded_and_keeps_whole_subjects() -> None:
    items = [(f"{s}_{n}.jpg", s) for s in "abcdefgh" for n in range(3)]
    sample = sample_subjects(items, 3, seed=5)
    assert len({s for _, s in sample}) == 3 and len(sample) == 9  # every image of the chosen subjects
    assert sample == [item for item in items if item in sample]  # order kept
    assert sample == sample_subjects(items, 3, seed=5)
    assert len({frozenset(s for _, s in sample_subjects(items, 3, seed=k)) for k in range(10)}) > 1
    assert sample_subjects(items, 8) == items and sample_subjects(items, 20) == items
    with pytest.raises(ValueError):
        sample_subjects(items, 1)
