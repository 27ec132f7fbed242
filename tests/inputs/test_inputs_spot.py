"""The rendered example dataset renders/spot (from the ``shared_data`` fixture; skipped where it is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from backend.cameras import project
from backend.inputs import load_job, load_transforms


@pytest.fixture(scope="module")
def spot_dir(shared_data):
    path = shared_data / "renders" / "spot"
    if not (path / "transforms_train.json").is_file():
        pytest.skip(f"example dataset not present: {path}")
    return path


@pytest.fixture(scope="module")
def spot(spot_dir):
    return load_job(spot_dir / "transforms_train.json")


def test_spot_train_views(spot):
    assert len(spot.views) == 16
    for view in spot.views:
        assert view.rgb.shape == (256, 256, 3)
        assert (view.camera.width, view.camera.height) == (256, 256)
        assert view.mask is not None and view.mask.shape == (256, 256)
        assert 0.02 < float((view.mask > 0.5).mean()) < 0.9  # the object covers part of every image
        assert view.mask.min() == 0.0 and view.mask.max() == 1.0


def test_spot_origin_projects_to_centre(spot):
    for view in spot.views:
        uv, z = project(view.camera, np.zeros((1, 3)))
        assert z[0] > 0
        np.testing.assert_allclose(uv[0], [128.0, 128.0], atol=1.0)


def test_spot_first_test_views(spot_dir):
    if not (spot_dir / "transforms_test.json").is_file():
        pytest.skip("renders/spot has no test split")
    job = load_transforms(spot_dir, split="test", select=range(2))
    assert [v.name for v in job.views] == ["r_0", "r_1"]
