"""Failure kinds travel as an enum beside their message, and the messages are those of 0.5.0."""

from __future__ import annotations

from pathlib import Path

import pytest

from facealign.failures import RETRIED_KINDS, FailureKind


@pytest.mark.parametrize("kind", list(FailureKind))
def test_a_message_reads_back_as_its_kind(kind: FailureKind) -> None:
    assert FailureKind.of(kind.reason()) is kind
    assert FailureKind.of(kind.reason("photo.jpg: Permission denied")) is kind
    assert kind.reason("x").startswith(kind.prefix)


def test_messages_of_no_kind_and_look_alikes_are_not_misread() -> None:
    assert FailureKind.of("some other text") is None
    assert FailureKind.of("failedX: y") is None
    assert FailureKind.of("unreadable files: y") is None


def test_the_record_prefixes_and_reasons_are_those_facealign_always_wrote() -> None:
    from facealign.batch.job import LOW_QUALITY, RETRIED_REASONS, WORKER_DIED_REASON

    assert RETRIED_REASONS == ("unreadable file: ", "output name taken: ", "unreadable image: out of memory")
    assert {FailureKind.of(r) for r in RETRIED_REASONS} == RETRIED_KINDS
    # The most specific kind wins: running out of memory is retried, a bad image is not.
    assert FailureKind.of("unreadable image: out of memory while decoding") is FailureKind.OUT_OF_MEMORY
    assert FailureKind.of("unreadable image: not a JPEG") is FailureKind.UNREADABLE_IMAGE
    assert LOW_QUALITY == "low quality" and FailureKind.NO_FACE.reason() == "no face found"
    assert WORKER_DIED_REASON.startswith("failed: the worker process died on it")


def test_an_image_that_fails_carries_its_kind_beside_the_message(tmp_path: Path) -> None:
    from facealign.batch import CropSettings, get_aligner

    aligner = get_aligner(CropSettings())
    (tmp_path / "not_an_image.jpg").write_bytes(b"plain text, not a JPEG")
    item = aligner.load_and_detect(tmp_path / "not_an_image.jpg")
    assert item.kind is FailureKind.UNREADABLE_IMAGE
    assert item.error is not None and FailureKind.of(item.error) is item.kind
    missing = aligner.load_and_detect(tmp_path / "missing.jpg")
    assert missing.kind is FailureKind.UNREADABLE_FILE and missing.error.startswith("unreadable file: ")
