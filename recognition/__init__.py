"""Face-verification benchmark that measures what an alignment is worth.

Modules
-------
protocol
    IJB-A / Janus CS2 style protocol files: reader and a seeded writer
    (:func:`~recognition.protocol.make_protocol`) for any identity-labelled
    image collection.
matching
    Power normalisation, PCA fitted on training features, Pearson correlation
    and SoftMax template fusion (paper, section 5.2).
metrics
    ROC, TAR at a given FAR, LFW-style 10-fold verification accuracy and the
    LFW ``pairs.txt`` reader.
backbone
    The :class:`~recognition.backbone.Backbone` protocol and an AlexNet defined
    in this package, with a wrapper that embeds aligned RGB crops.
training
    Identity-classification training of the AlexNet on aligned crops, with
    resumable per-epoch checkpoints.
dlib_resnet
    dlib's ResNet face descriptor as a backbone, dlib's chip layout measured as
    a template, and dlib's 5-point model as a landmark step.
statistics
    Paired comparison of aligners: sign-flip and Wilcoxon tests over splits,
    bootstrap over test subjects.
caches
    The cache folder and the shared detection (:class:`~recognition.caches.DetectionCache`),
    keyed by detector, a fingerprint of its settings and the image root.
aligners
    The face box of every image and the interchangeable aligners (``tcnn``,
    ``vanilla``, ``dlib-ert``, ``dlib-5pt``, ``retinaface``, ``detector:NAME``,
    ``box``, ``manifest:PATH``).
conditions
    Hard conditions: the reference landmarks (dlib-ert) that decide them, yaw for
    cross-pose protocols, and the reduction of low-resolution probes.
backbones
    Which backbone embeds the crops (:func:`~recognition.backbones.load_backbone`),
    with its template and cache key.
features
    Backbone features of the aligned faces, cached per aligner.
evaluate
    Per-split matching and TAR at FAR of one aligner; :func:`~recognition.evaluate.run_aligner`.
report
    JSON results, the Table 2 figure format and the ROC plot.

Only the alignment differs between the aligners compared (paper, section
5.2): detection (``caches``), face box choice, backbone, matching and metrics
are shared and computed once.
"""

__version__ = "0.1.0"
