"""Why an image gave no crop: the failure kinds, one owner for their names.

A failure travels as a :class:`FailureKind` beside its message (e.g.
:attr:`facealign.pipeline.ImageFaces.kind`); the records
(``failures.jsonl``, the landmarks command's ``"error"``) keep the message,
``"<kind>: <detail>"`` or the kind alone, as facealign has always written it.
:meth:`FailureKind.of` reads the kind back from such a message (the records
of earlier runs).
"""

from __future__ import annotations

from enum import Enum

__all__ = ["RETRIED_KINDS", "FailureKind"]


class FailureKind(Enum):
    """The kinds of failure; the value is the message's prefix."""

    #: The file system failed to give the bytes (permissions, I/O): retried by every rerun.
    UNREADABLE_FILE = "unreadable file"
    #: The bytes are not an image facealign decodes.
    UNREADABLE_IMAGE = "unreadable image"
    #: The detector found no face.
    NO_FACE = "no face found"
    #: Every face is over the quality limits (``--max-expected-error``, ``--max-p-fail``).
    LOW_QUALITY = "low quality"
    #: A crop's name in OUT_DIR holds something else (a folder, a link): retried by every rerun.
    OUTPUT_NAME_TAKEN = "output name taken"
    #: Anything else (a detector's or a worker's error).
    FAILED = "failed"
    #: Decoding ran out of memory (a kind of unreadable image): retried by every rerun.
    OUT_OF_MEMORY = "unreadable image: out of memory"

    @property
    def prefix(self) -> str:
        """What every message of this kind starts with (:data:`facealign.batch.RETRIED_REASONS`)."""
        return self.value if self is FailureKind.OUT_OF_MEMORY else f"{self.value}: "

    def reason(self, detail: object = None) -> str:
        """The message of this kind: ``"<kind>: <detail>"``, or the kind alone without ``detail``
        (:attr:`OUT_OF_MEMORY`: ``"<kind> <detail>"``)."""
        if detail is None:
            return self.value
        return f"{self.value} {detail}" if self is FailureKind.OUT_OF_MEMORY else f"{self.value}: {detail}"

    @classmethod
    def of(cls, reason: str) -> FailureKind | None:
        """The kind of a message :meth:`reason` wrote (the most specific); None for a message of no kind."""
        found = [kind for kind in cls if reason == kind.value or reason.startswith(kind.prefix)]
        return max(found, key=lambda kind: len(kind.value), default=None)


#: Kinds that every rerun retries, because what caused them can be gone by then.
RETRIED_KINDS: frozenset[FailureKind] = frozenset(
    {FailureKind.UNREADABLE_FILE, FailureKind.OUT_OF_MEMORY, FailureKind.OUTPUT_NAME_TAKEN}
)
