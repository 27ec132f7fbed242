"""One canonical frame for both methods: ``canonical = scale · rotation · (world − centre)``, with ``scale`` in
canonical units per world unit for the ``fit`` method's frame and the ``gtr`` method's alike."""

from __future__ import annotations

import numpy as np
import pytest

from backend.cameras import orbit_cameras, project
from backend.errors import InputError
from backend.frame import CanonicalFrame, frame_for_bounds
from backend.gtr.rig import RigConfig, canonical_frame
from backend.normalise import NormaliseConfig, normalise
from backend.views import Bounds, View

BOUNDS = Bounds(centre=np.array([1.5, -2.0, 0.7]), size=np.array([0.8, 1.2, 2.0]))


def _views() -> list[View]:
    cams = orbit_cameras(6, 8.0, 40.0, 32, target=BOUNDS.centre)
    return [
        View(f"v{i}", cam, np.zeros((32, 32, 3), np.float32), np.ones((32, 32), np.float32))
        for i, cam in enumerate(cams)
    ]


@pytest.mark.parametrize("method", ["fit", "gtr"])
def test_both_methods_use_one_frame_with_one_meaning_of_scale(method):
    if method == "fit":
        margin = NormaliseConfig().margin
        _, frame, _ = normalise(_views(), BOUNDS, NormaliseConfig(), "cpu")
        extent = 1.0 / (1.0 + margin)
    else:
        frame = canonical_frame(_views(), BOUNDS, RigConfig(up_axis="z"), "cpu")
        extent = RigConfig().object_extent
    assert isinstance(frame, CanonicalFrame)
    half = float(BOUNDS.size.max()) / 2
    assert frame.scale == pytest.approx(extent / half)  # canonical units per world unit, in both methods
    corners = frame.to_canonical_points(BOUNDS.corners())
    assert np.abs(corners).max() == pytest.approx(extent)
    np.testing.assert_allclose(frame.to_world_points(corners), BOUNDS.corners(), atol=1e-12)
    np.testing.assert_allclose(frame.world_from_canonical @ frame.canonical_from_world, np.eye(4), atol=1e-12)


def test_view_to_canonical_keeps_projections_and_scales_depth():
    frame = frame_for_bounds(BOUNDS, 0.85, np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]))
    cam = orbit_cameras(1, 5.0, 40.0, 32, target=BOUNDS.centre)[0]
    view = View("v", cam, np.zeros((32, 32, 3), np.float32), None, np.full((32, 32), 2.0, np.float32))
    moved = frame.view_to_canonical(view)
    world = BOUNDS.centre + np.array([[0.1, -0.2, 0.3], [0.0, 0.0, 0.0]])
    uv_world, z_world = project(cam, world)
    uv_canon, z_canon = project(moved.camera, frame.to_canonical_points(world))
    np.testing.assert_allclose(uv_canon, uv_world, atol=1e-9)
    np.testing.assert_allclose(z_canon, z_world * frame.scale, rtol=1e-12)
    np.testing.assert_allclose(moved.depth, 2.0 * frame.scale, rtol=1e-6)


def test_bounds_of_zero_size_are_an_input_error():
    with pytest.raises(InputError, match="zero or invalid size"):
        frame_for_bounds(Bounds(centre=np.zeros(3), size=np.zeros(3)), 1.0)
