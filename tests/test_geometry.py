"""Pixel-centre rescaling (:mod:`facealign.geometry`): one rule, both directions, points and matrices."""

from __future__ import annotations

import numpy as np
import pytest

from facealign.geometry import from_resized, from_resized_matrix, to_resized, to_resized_matrix


@pytest.mark.parametrize("scale", [0.5, 0.137, 3.0, (0.25, 0.4), np.array([2.0, 0.75])])
def test_round_trip_points_and_matrices(scale) -> None:
    rng = np.random.default_rng(1)
    points = rng.uniform(-10, 500, (7, 5, 2))
    there = to_resized(points, scale)
    np.testing.assert_allclose(from_resized(there, scale), points, rtol=0, atol=1e-9)
    np.testing.assert_allclose(to_resized(from_resized(points, scale), scale), points, rtol=0, atol=1e-9)
    # The matrices are the same maps, and each other's inverse.
    homogeneous = np.concatenate([points.reshape(-1, 2), np.ones((35, 1))], axis=1)
    np.testing.assert_allclose((homogeneous @ to_resized_matrix(scale).T)[:, :2], there.reshape(-1, 2), atol=1e-9)
    np.testing.assert_allclose(to_resized_matrix(scale) @ from_resized_matrix(scale), np.eye(3), atol=1e-12)


def test_image_edges_map_onto_edges() -> None:
    # A W-pixel image spans [-0.5, W - 0.5]; resized by s it spans [-0.5, s W - 0.5].
    width, height, s = 640, 480, 0.3
    corners = np.array([[-0.5, -0.5], [width - 0.5, height - 0.5]])
    np.testing.assert_allclose(to_resized(corners, s), [[-0.5, -0.5], [s * width - 0.5, s * height - 0.5]])
    np.testing.assert_allclose(to_resized([[0.0, 0.0]], 2.0), [[0.5, 0.5]])  # a pixel centre of the upscaled image


def test_one_owner_and_argument_forms() -> None:
    from facealign.detection import base

    assert base.from_resized is from_resized  # the detectors use the same function
    p = np.array([[3.0, 4.0]])
    np.testing.assert_array_equal(from_resized(p, 0.5, 0.25), from_resized(p, (0.5, 0.25)))
    np.testing.assert_array_equal(to_resized(p, 0.5, 0.25), to_resized(p, (0.5, 0.25)))
    np.testing.assert_array_equal(from_resized(p, 2.0), [[1.25, 1.75]])
    with pytest.raises(ValueError, match="scale"):
        to_resized(p, (1.0, 2.0, 3.0))
