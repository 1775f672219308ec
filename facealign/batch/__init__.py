"""The ``facealign crop`` batch job: every face of every image in a folder, aligned.

Layout
------
``IN_DIR`` is walked recursively and its
sub-folders are mirrored in ``OUT_DIR``: face ``k`` (``k`` from 0, largest face
first) of ``IN_DIR/a/b/photo.jpg`` becomes ``OUT_DIR/a/b/photo_<k>.<ext>``. When
two sources of one folder would share output names (``photo.jpg`` and
``photo.png`` with ``--format png``, or ``photo.jpg`` and ``photo.jpeg``) their
crops are named ``photo.jpg_<k>.<ext>`` and ``photo.png_<k>.<ext>`` instead.
Output names are valid UTF-8: a byte of a source name that is not UTF-8 is
written ``%XX`` (:func:`facealign.imageio.portable_name`).

Two append-only record files sit in ``OUT_DIR``:

* ``manifest.jsonl`` (or ``manifest.csv``): one row per crop, see
  :data:`MANIFEST_FIELDS`. Boxes, landmarks and the transform are in pixels of
  the *original* image as a viewer shows it (EXIF orientation applied), whatever
  resolution the job worked at.
* ``failures.jsonl``: one row per image that gave no crop, with a ``reason``
  (``unreadable file: ...``, ``unreadable image: ...``, ``no face found``,
  ``output name taken: ...``, ``failed: ...``), and one row with reason
  ``low quality`` per image with faces over the quality limits
  (``max_expected_error``, ``max_p_fail``; :mod:`facealign.quality`): those
  faces are not cropped and are listed under ``faces`` with their detection
  index (largest first), box, score, ``expected_error`` and ``p_fail``. The
  faces kept are numbered ``0..num_faces-1`` in the manifest.

Hidden files in ``OUT_DIR`` hold the job's state: ``.facealign-crop.lock`` is
locked by the job's process, ``.facealign-crop.workers`` (shared) by its worker
processes while they write, so that a second job on the same ``OUT_DIR`` stops
with a temporary error (:class:`CropJobTransientError`, exit 75) instead of
interleaving records, also while the workers of a killed job still run;
``.facealign-crop.json`` holds the settings (a rerun with other settings is
refused) and, for the record, the ``facealign_version`` and the ``weights_sha256``
of the landmark weights of the last run; ``.facealign-crop.pending`` lists the crop
names the current run may write (appended a folder at a time, before that
folder's images go out); ``.facealign-crop.dropped`` lists the records a run
dropped (sources changed, or gone with ``prune``) until it has rewritten the
record files without them; ``.facealign-crop.written`` is the journal of the
crops the job wrote (see Resuming).

The walk streams
----------------
The job never lists ``IN_DIR`` as a whole. A first pass counts image names
(:func:`facealign.imageio.count_images`: names only, no ``stat``, no list) to
size the job (``jobs="auto"``, the chunk size, the progress total) and to refuse
an ``IN_DIR`` without images when ``OUT_DIR`` has records. Then
:func:`facealign.imageio.walk_images` lists one folder at a time, in the order
of :func:`facealign.imageio.scan_folder`, and :class:`_Planner` plans each
folder when the walk reaches it (output names, its records, the pending list);
its images go out in chunks while the walk goes on, and the walk advances only
as chunks are submitted. So the driver holds the chunks in flight, the folder
being walked and the entries still to walk of the folders above it: a folder of
a million images costs as much as a listing of a million images, and a tree of
ten million images in folders of a few thousand costs a few thousand entries.
The records of earlier runs (:func:`_load_records`) are held for the whole run:
memory proportional to the images already recorded, the work done. Output names
are those of planning the whole tree at once (:func:`_plan`), as collisions can
only happen within a folder or between folders whose names differ only in case
or by ``%XX`` (their names are kept until the walk leaves their parent folder).

Resuming
--------
Records are written by the parent process as results arrive, a chunk at a time.
Workers write each chunk's crops to temporaries and make them durable at once
(one ``syncfs``); the parent then lists them in the journal
``.facealign-crop.written`` (output, size, SHA-256), gives them their names,
flushes the folders and only then appends their rows
(:mod:`facealign.batch.outdir`), so a crash never leaves a row for a missing or
partial crop, and the rows of one image are written in a single write: an image is
recorded either completely or not at all. A manifest row is the only thing that
makes a crop done: on a rerun, files named like the crops of the pending list (or
of dropped records) that the manifest does not list are deleted *if the journal
says the job wrote them* (same size and hash), and files named like a crop that
the job did not write (the user's) are never overwritten or deleted: their image
gets an ``output name taken`` failure. Images recorded in the manifest or
the failures list with the same relative path, byte size and modification time
are skipped; an image that changed since it was recorded is processed again and
its old rows and crops are dropped, and so, with ``prune``, are those of a source
no longer in ``IN_DIR`` (unless it lies in a sub-folder that could not be listed;
without ``prune`` they are kept, counted as missing, and their crop names stay
theirs): as the walk
reaches the source's folder (before any image of it goes out, so a new source
may take the name), or, for folders gone as a whole, at the end of the walk. Their
crops are deleted at once, after they are listed in the dropped list; the
record files are rewritten without their rows at the end of the run (streaming),
or by the next run if this one is killed first. Failures
in :data:`RETRIED_REASONS` are retried by every run. A torn last line (the job
killed mid-write) is discarded. ``overwrite=True`` deletes the records and the
crops they list and starts again.

Links
-----
OUT_DIR is the only place written: its files and folders are opened without
following symbolic links (:mod:`facealign.batch.outdir`). A record or state file
of the job planted as a link stops the job before it starts; an output folder
planted as a link gives its images the failure ``output name taken: OUT_DIR/sub is
a symbolic link ...`` (retried by every run).

Errors
------
Nothing in ``IN_DIR`` stops a job (:func:`facealign.imageio.walk_images`; every
image-named entry is cropped or gets a failure; with worker processes, an image
that kills its worker gets a failure too, see :func:`_run_chunks`). An error writing ``OUT_DIR``
(disk full, I/O, permissions, too many open files) is not the image's fault: the
job records what finished and stops with :class:`CropJobTransientError`; a
rerun continues.

On a cluster
------------
With a Dask ``client`` (``--cluster``) the chunks run on the cluster's workers
(:mod:`facealign.cluster`) instead of local processes; planning, records,
resuming and the locks are the same, and only this process writes records.

Large photographs
-----------------
Each image is decoded once, at the *working* resolution its detector and its
crops need (:mod:`facealign.pipeline`): the CNN detectors search a pyramid of
tiles (:class:`facealign.detection.PyramidDetector`) for faces down to
``min_face`` (by default a 32nd of the photo's longer side, 20 to 80 px), and a
JPEG is decoded at the smallest DCT scale (Pillow's draft mode) that keeps
such a face as wide as on the crop; dlib and Haar search at most 1,280 px
and get at most :data:`WORK_MAX_SIDE` pixels.
Detection, landmarks and the warp all run on that working image; coordinates
are mapped back to the original pixels for the records. Within a worker,
decoded images are batched for the landmark network until
:data:`BATCH_PIXELS` pixels are held, which bounds memory per worker.


Modules
-------
:mod:`~facealign.batch.job` (settings, file names, errors, the task of one
image), :mod:`~facealign.batch.plan` (folders, output names, planning as the
walk streams, clean-up), :mod:`~facealign.batch.records` (manifest, failures,
settings file, resuming), :mod:`~facealign.batch.worker` (a chunk of images to
crops and rows), :mod:`~facealign.batch.locks` (OUT_DIR's locks),
:mod:`~facealign.batch.run` (:func:`run_crop_job` and the processes),
:mod:`~facealign.batch.outdir` (OUT_DIR's files without following links, the journal,
durable writes in batches).
"""

from .job import (
    AUTO_IMAGES_PER_PROCESS,
    CHUNK_SIZE,
    FAILURES_NAME,
    MANIFEST_FIELDS,
    RETRIED_REASONS,
    CropJobError,
    CropJobTransientError,
    CropSettings,
    Summary,
)
from .records import manifest_name
from .run import balanced_chunk_size, run_crop_job
from .worker import get_aligner

__all__ = [
    "AUTO_IMAGES_PER_PROCESS",
    "CHUNK_SIZE",
    "FAILURES_NAME",
    "MANIFEST_FIELDS",
    "RETRIED_REASONS",
    "CropJobError",
    "CropJobTransientError",
    "CropSettings",
    "Summary",
    "balanced_chunk_size",
    "get_aligner",
    "manifest_name",
    "run_crop_job",
]
