"""Box crops and box-normalised coordinates (facealign.cropping)."""

import numpy as np
import pytest

from facealign.constants import INPUT_SIZE
from facealign.cropping import box_matrices, crop_boxes, from_box_coordinates, to_box_coordinates, warp_crop


def test_box_edges_map_to_crop_edges():
    box = np.array([[10.0, 20.0, 90.0, 100.0]])
    m = box_matrices(box)[0]
    corners = np.array([[10.0, 20.0, 1.0], [90.0, 100.0, 1.0]]) @ m.T
    # Box edges land on the crop's outer pixel edges (-0.5 and S - 0.5), exactly.
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [INPUT_SIZE - 0.5, INPUT_SIZE - 0.5]], atol=1e-12)


def test_box_coordinates_round_trip():
    rng = np.random.default_rng(0)
    boxes = np.array([[5.0, 7.0, 45.0, 47.0], [100.0, 50.0, 300.0, 250.0]])
    pts = rng.uniform(0, 300, (2, 5, 2))
    np.testing.assert_allclose(from_box_coordinates(to_box_coordinates(pts, boxes), boxes), pts, atol=1e-9)
    u = to_box_coordinates(np.array([[[5.0, 7.0], [45.0, 47.0]]]), boxes[:1])
    np.testing.assert_allclose(u, [[[0, 0], [1, 1]]])


@pytest.mark.parametrize("side", [40, 400])
def test_crop_puts_a_dot_where_box_coordinates_say(side):
    # A bright 3x3 dot at a known position must appear at u * S - 0.5 in the crop,
    # for small (no pre-reduction) and large (area pre-reduction) boxes alike.
    img = np.zeros((side + 20, side + 20, 3), np.uint8)
    x, y = 10 + int(side * 0.3), 10 + int(side * 0.6)
    r = max(1, side // 40)
    img[y - r : y + r + 1, x - r : x + r + 1] = 255
    box = np.array([[9.5, 9.5, 9.5 + side, 9.5 + side]])
    crop = crop_boxes(img, box)[0].astype(float).sum(2)
    cy, cx = np.unravel_index(np.argmax(crop), crop.shape)
    u = to_box_coordinates(np.array([[[x, y]]], float), box)[0, 0]
    assert abs(cx - (u[0] * INPUT_SIZE - 0.5)) <= 1.0
    assert abs(cy - (u[1] * INPUT_SIZE - 0.5)) <= 1.0


def test_large_box_is_antialiased():
    # A 1-pixel checkerboard must average to grey, not alias into stripes.
    img = ((np.indices((800, 800)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2)
    crop = warp_crop(img, box_matrices(np.array([[0.0, 0.0, 800.0, 800.0]]))[0])
    assert abs(crop.mean() - 127.5) < 3
    assert crop.std() < 8


def test_bad_boxes_rejected():
    with pytest.raises(ValueError):
        box_matrices(np.array([[10, 10, 5, 20]]))
    with pytest.raises(ValueError):
        box_matrices(np.array([[np.nan, 10, 5, 20]]))
