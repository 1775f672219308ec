"""What is the vanilla network learning? The analysis of the paper's section 2.2.

``facealign analyze`` takes every MTFL training face (``train.txt``) that the
detector finds, crops it to the 40 x 40 network input, and extracts the
representation at the *input* of each layer of the vanilla CNN
(:meth:`facealign.research.model.VanillaCNN.layer_inputs`). Layers carry the paper's
names: ``CL1`` is the normalised RGB input (shown as "RGB (CL1 input)"),
``CL2`` .. ``CL4`` the outputs of the convolutional layers before them, ``FC5``
the CL4 output that TCNN clusters. ``FC6`` (the FC5 output) is an extra column
that the paper does not show.

Per layer, the representations are clustered into K groups with a Gaussian
mixture fitted by EM (diagonal covariances, seeded k-means start, one run) and
every face goes to the component of highest posterior (Eq. 2). Layers wider
than ``pca_above`` dimensions are first projected onto their first
``pca_dims`` principal components (no whitening), which keeps EM on 10,000
faces within minutes on two cores. Then:

* Table 1 -- :func:`.statistics.size_summary`: median and SD of the K cluster sizes.
* Eq. 3 / Fig. 3 -- :func:`.statistics.landmark_cluster_variances`: per cluster and
  landmark the variance along the principal axis of the ground-truth points
  (largest eigenvalue of their 2 x 2 covariance), averaged over clusters with
  its standard error (:func:`.statistics.mean_se`).
* Eq. 4 / Fig. 4 -- :func:`.statistics.label_cluster_variances`: per cluster the variance of
  a 0/1 attribute label (gender, smile, glasses), averaged likewise.
* Fig. 1 -- :func:`.statistics.cluster_mean_images` and :func:`.figures.mosaic`: the average input
  crop of every cluster of the RGB input and of the FC5 input.

Conventions
-----------
* Variances are population variances (divide by n), so a cluster of identical
  values has variance 0 and the variance of 0/1 labels is ``p (1 - p)``. The
  SD of Table 1 is the population SD of the K cluster sizes (empty clusters
  count as size 0).
* Clusters with fewer than ``min_cluster_size`` (default 2) faces -- for
  attributes, fewer than 2 *labelled* faces -- are skipped, and the means of
  Eq. 3 and Eq. 4 are taken over the remaining clusters; the report says how
  many were skipped.
* Landmark coordinates for Eq. 3: by default the detector-box-normalised
  frame times 40, i.e. pixels of the 40 x 40 network input, so that the face's
  size in the 80 x 80 MTFL image does not dominate the variances; the report
  also gives them in raw 80 x 80 image pixels.
* Attribute labels: MTFL codes 1/2 become 1/0 (1 = male, smiling, wearing
  glasses); -1 (unknown) is dropped.

Modules
-------
* :mod:`.statistics`: the cluster statistics (Table 1, Eqs. 3 and 4, cluster means).
* :mod:`.clustering`: PCA for wide layers and the Gaussian mixture (Eq. 2).
* :mod:`.features`: the layers analysed and their inputs from the network.
* :mod:`.representations`: the settings; per layer, clustering then statistics.
* :mod:`.figures`: Figs 1, 3 and 4.
* :mod:`.report`: ``report.json`` and ``report.md``.
* :mod:`.command`: :func:`.command.run_analysis` and the click command ``analyze``.

Importing this package imports none of them.
"""
