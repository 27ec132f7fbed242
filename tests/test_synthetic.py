"""The procedural demo scene: rendered views agree with the ground-truth mesh and reload as a dataset."""

import numpy as np
import pytest

from backend.cameras import project
from backend.inputs import load_transforms
from backend.metrics import sample_surface
from backend.synthetic import SceneConfig, make_scene, write_scene_as_transforms


@pytest.fixture(scope="module")
def scene():
    return make_scene(SceneConfig(size=48, train_views=4, test_views=2, grid=64))


def test_views_have_the_declared_shapes(scene):
    assert len(scene.train) == 4 and len(scene.test) == 2
    for view in scene.train + scene.test:
        assert view.rgb.shape == (48, 48, 3) and view.rgb.dtype == np.float32
        assert view.mask.shape == (48, 48)
        assert 0 <= view.rgb.min() and view.rgb.max() <= 1
        soft = (view.mask > 0.05) & (view.mask < 0.95)
        assert (view.mask > 0.95).sum() > 100 and (view.mask < 0.05).sum() > 100 and soft.any()


def test_silhouettes_match_the_ground_truth_mesh(scene):
    points, _ = sample_surface(scene.gt_vertices, scene.gt_faces, 5000, seed=0)
    for view in scene.train:
        uv, z = project(view.camera, points)
        assert (z > 0).all()
        cols = np.clip(uv[:, 0].astype(int), 0, 47)
        rows = np.clip(uv[:, 1].astype(int), 0, 47)
        padded = np.pad(view.mask, 1)
        near = np.max([padded[rows + dr, cols + dc] for dr in range(3) for dc in range(3)], axis=0)
        assert (near > 0.5).mean() > 0.99


def test_scene_reloads_as_a_transforms_dataset(scene, tmp_path):
    folder = write_scene_as_transforms(scene, tmp_path / "scene")
    job = load_transforms(folder / "transforms_train.json")
    assert len(job.views) == 4
    for loaded, original in zip(job.views, scene.train):
        assert np.allclose(loaded.camera.world_to_camera, original.camera.world_to_camera, atol=1e-5)
        assert np.abs(loaded.mask - original.mask).max() <= 1 / 255 + 1e-6
    assert (folder / "gt.ply").exists()
