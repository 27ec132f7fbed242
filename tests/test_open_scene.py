"""Photos without masks: the procedural object on a table in a textured room, reconstructed from its photos alone.

The mesh must be the object (close to its ground truth, nothing of the table or the room), the derived masks must
match the object's true coverage and be written beside the mesh, and a job without bounds must say that they were
estimated. The same photos taken through a distorting lens (written as a transforms.json dataset with OpenCV
coefficients) must give the same object once the loader removes the distortion.
"""

import json
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from backend.cameras import orbit_cameras
from backend.errors import Cancelled
from backend.hull import carve, lattice, pixel_lookup
from backend.inputs import load_job
from backend.metrics import mesh_metrics
from backend.pipeline import MASKS_FOLDER, config_from_options, reconstruct, write_outputs
from backend.progress import Hooks
from backend.segment import (
    SegmentConfig,
    cell_pixels,
    derive_masks,
    grabcut_colours,
    isolate_object,
    per_view,
    run_grabcut,
    trimmed,
)
from backend.synthetic import TABLE_Z, SceneConfig, make_scene, scene_sdf, through_lens, write_scene_as_transforms
from backend.views import Bounds, Job

OPTIONS = {"fit_steps": 400, "geometry_iterations": 20, "refine_iterations": 40, "mesh_resolution": 96}


@pytest.fixture(scope="module")
def scene():
    return make_scene(SceneConfig(size=96, backdrop=True))


def photos(views):
    """The views as photographs: no alpha, no masks, no depth."""
    return [replace(v, mask=None, depth=None) for v in views]


def object_bounds(scene, growth=1.3) -> Bounds:
    """The object's box grown by ``growth`` (it takes in table and room behind the object in every view), with
    its bottom on the table: no photo sees what lies under the object, so the bounds must say where it ends."""
    lo, hi = scene.gt_vertices.min(0), scene.gt_vertices.max(0)
    centre, half = (lo + hi) / 2, growth * (hi - lo) / 2
    lo, hi = centre - half, centre + half
    lo[2] = TABLE_Z
    return Bounds((lo + hi) / 2, hi - lo)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.slow
def test_derived_masks_match_the_objects_coverage_and_warn_when_they_fill_the_bounds(scene):
    derived = derive_masks(photos(scene.train), object_bounds(scene), SegmentConfig())
    ious = [iou(d.mask > 0.5, v.mask > 0.5) for d, v in zip(derived.views, scene.train)]
    assert np.mean(ious) > 0.90 and np.min(ious) > 0.86, ious  # measured 0.905 and 0.866 (0.890, 0.856 untrimmed)
    assert derived.warnings == []
    assert 0.28 < derived.fill < 0.36  # measured 0.320 of the bounds box (the object fills about a third)
    strict = derive_masks(photos(scene.train), object_bounds(scene), SegmentConfig(fills_bounds=0.5 * derived.fill))
    assert len(strict.warnings) == 1 and "could not be separated" in strict.warnings[0]


def test_a_photos_segmentation_depends_on_no_other_photo():
    """GrabCut starts from a random colour model, drawn from the calling thread's OpenCV generator: each photo
    starts from the same one, so a photo's mask is the same whatever ran before it and on whichever thread."""
    import cv2

    rng = np.random.default_rng(2)
    image = np.zeros((64, 64, 3), np.uint8)  # coloured discs: where GrabCut ends depends on where it starts
    for _ in range(40):
        colour, (x, y), radius = rng.integers(0, 256, 3), rng.integers(0, 64, 2), int(rng.integers(3, 10))
        cv2.circle(image, (int(x), int(y)), radius, tuple(int(c) for c in colour), -1)
    image = cv2.add(image, rng.integers(0, 30, image.shape, dtype=np.uint8))
    labels = np.full((64, 64), cv2.GC_BGD, np.uint8)
    labels[12:52, 12:52] = cv2.GC_PR_FGD
    config = SegmentConfig(close_px=0)
    first = run_grabcut(image, labels, config)
    other_start = next(seed for seed in range(1, 20) if not np.array_equal(grabcut_from(image, labels, seed), first))
    # (measured: the first start that ends elsewhere is seed 17's, 499 of 4096 pixels differ)
    cv2.setRNGSeed(other_start)  # where a previous photo could have left this thread's generator
    assert np.array_equal(run_grabcut(image, labels, config), first)
    on_threads = per_view(lambda n: run_grabcut(image, labels, config), 3, Hooks(), "{n}")
    assert all(np.array_equal(mask, first) for mask in on_threads)


def grabcut_from(image: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """OpenCV's GrabCut (5 iterations, as SegmentConfig) on the colours run_grabcut gives it, started from
    generator state ``seed``: its foreground, enclosed holes filled (as run_grabcut)."""
    import cv2
    from scipy import ndimage

    labels = labels.copy()
    cv2.setRNGSeed(seed)
    cv2.grabCut(grabcut_colours(image), labels, None, np.zeros((1, 65)), np.zeros((1, 65)), 5, cv2.GC_INIT_WITH_MASK)
    return ndimage.binary_fill_holes((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD))


def test_segmenting_stops_when_cancelled():
    started = []
    hooks = Hooks(progress=lambda stage, step, total, message: hooks.cancel() if step == 2 else None)

    def work(n: int) -> np.ndarray:
        started.append(n)
        time.sleep(0.05)
        return np.zeros(1)

    with pytest.raises(Cancelled):
        per_view(work, 40, hooks, "view {n}/{count}")
    assert len(started) < 10, started  # the views not yet begun are dropped


def test_a_derived_masks_outline_follows_the_views_own_segmentation():
    """The hull's projection is trimmed to the view's own segmentation in a band inside its outline (a hull of
    cells reaches up to half a cell beyond the segmentations); deeper in, the hull wins, so a part of the object
    that this view lost to its background stays."""
    rows, cols = np.indices((80, 80))
    radius = np.hypot(rows - 40, cols - 40)
    projected = radius < 30
    lost = (np.abs(rows - 40) < 6) & (np.abs(cols - 40) < 6)
    own = (radius < 26) & ~lost
    mask = trimmed(projected, own, band=5)
    assert mask[radius < 26].all()  # the lost part lies deeper than the band: the hull wins
    assert not mask[radius >= 27.5].any()  # beyond the view's own segmentation grown by GROW_PX = 1 px: trimmed
    assert mask[(radius >= 26) & (radius < 27)].mean() > 0.5  # within it: kept (measured 0.84: a 3×3 disc is a cross)
    assert np.array_equal(trimmed(projected, own, band=0), projected)  # no band: nothing trimmed


@pytest.fixture(scope="module")
def real_photos(shared_data) -> dict:
    """``ethiopian_head``'s views by name (real photographs with true masks; skipped where they are absent)."""
    folder = shared_data / "real" / "ethiopian_head"
    if not folder.is_dir():
        pytest.skip(f"no {folder}")
    return {view.name: view for view in load_job(folder).views}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["DSC_0054", "DSC_0057"])
def test_a_dark_rim_against_a_dark_floor_stays_object(real_photos, name, monkeypatch):
    """Real photographs (``ethiopian_head``): a dark bronze sculpture against a dark green floor. GrabCut compares
    colours in CIELAB with the chroma doubled (``grabcut_colours``); in plain RGB it gives dark parts of the object
    to the floor (in DSC_0054 1.45 % of the mask at the sculpture's brown top, 0.15 % now). The second pass is
    started from the true mask grown 6 px, so only the colours decide."""
    from scipy import ndimage

    from backend import segment

    view = real_photos[name]
    truth = view.mask > 0.5
    start = ndimage.binary_dilation(truth, iterations=6)
    ours = iou(segment.grabcut_around(view, start, SegmentConfig()), truth)
    monkeypatch.setattr(segment, "grabcut_colours", lambda image: np.ascontiguousarray(image[..., ::-1]))
    rgb = iou(segment.grabcut_around(view, start, SegmentConfig()), truth)
    assert ours > 0.98 and ours - rgb > 0.008, (ours, rgb)  # measured 0.9840 / 0.9716 (DSC_0054), 0.9885 / 0.9731


def test_a_cells_width_in_pixels():
    camera = orbit_cameras(1, 4.0, 40.0, 64)[0]  # 4 units from the origin, focal 32 / tan 20° = 87.9 px
    box = Bounds(np.zeros(3), np.array([1.6, 0.8, 0.4]))  # cells of 1.6 / 16 = 0.1 units
    assert cell_pixels(camera, box, 16) == pytest.approx(camera.K[0, 0] * 0.1 / 4.0, rel=1e-6)


@pytest.fixture(scope="module")
def result(scene):
    job = Job(views=photos(scene.train), bounds=object_bounds(scene), options=dict(OPTIONS))
    return reconstruct(job, config_from_options(job.options), torch.device("cpu"))


@pytest.mark.slow
def test_the_mesh_is_the_object_without_the_table_or_the_room(scene, result):
    v = result.mesh.vertices.double().numpy()
    assert v[:, 2].min() > TABLE_Z - 0.01  # nothing of the table (measured TABLE_Z − 0.008: the bounds' bottom)
    lo, hi = scene.gt_vertices.min(0), scene.gt_vertices.max(0)
    beyond = np.concatenate([lo[:2] - v[:, :2].min(0), v.max(0) - hi])  # sides and top; the table is below
    assert beyond.max() < 0.055, beyond  # nothing of the room (measured at most 0.042: a visual hull is fat)
    scores = mesh_metrics(result.mesh, scene.gt_vertices, scene.gt_faces)
    assert scores["chamfer_l1"] < 0.011  # measured 0.0097 of the diagonal


@pytest.mark.slow
def test_the_derived_masks_are_written_beside_the_mesh(scene, result, tmp_path):
    assert any("masks were derived" in w for w in result.warnings), result.warnings
    metrics = write_outputs(result, tmp_path, config_from_options(OPTIONS))
    written = sorted(p.name for p in (tmp_path / MASKS_FOLDER).iterdir())
    assert written == sorted(f"{v.name}.png" for v in scene.train)
    assert metrics["files"]["masks"] == MASKS_FOLDER


@pytest.mark.slow
def test_a_job_without_bounds_says_they_were_estimated(scene):
    """Bounds come from where the cameras look (cheap settings: only the warning is checked)."""
    job = Job(views=photos(scene.train), options={"fit_steps": 5, "geometry_iterations": 0, "refine_iterations": 0,
                                                  "mesh_resolution": 32})  # fmt: skip
    out = reconstruct(job, config_from_options(job.options), torch.device("cpu"))
    assert any("where the cameras look" in w for w in out.warnings), out.warnings


def test_a_support_the_bounds_cut_is_removed_with_what_lies_apart():
    """Grid level: a slab crossing the whole box (a table the bounds cut) under a block, a loose speck beside it."""
    occupied = np.zeros((40, 40, 40), dtype=bool)
    occupied[:, :, 5:9] = True  # the slab, on every side face
    occupied[12:28, 12:28, 9:30] = True  # the object standing on it
    occupied[33:35, 33:35, 20:22] = True  # a speck apart from it
    cameras = np.array([[20.0, -60.0, 60.0], [100.0, 20.0, 50.0], [-60.0, 60.0, 70.0]])  # all above the slab
    keep = isolate_object(occupied, cameras, SegmentConfig())
    assert keep[12:28, 12:28, 11:30].all()  # the object, but for the slab's top cells it stood on
    assert not keep[:, :, :11].any()  # the slab and its top two cells
    assert keep.sum() == 16 * 16 * 19
    upside_down = isolate_object(occupied[:, :, ::-1], cameras * [1, 1, -1] + [0, 0, 39], SegmentConfig())
    assert (upside_down[:, :, ::-1] == keep).all()  # the side facing the cameras is kept, whichever it is
    speck = np.zeros_like(occupied)
    speck[33:35, 33:35, 20:22] = True
    kept = isolate_object(occupied, cameras, SegmentConfig(keep_support=True))  # the option keep_support
    assert (kept == occupied & ~speck).all()  # the slab stays with the object; the speck apart still goes


def test_carving_tolerates_a_few_views_that_drop_part_of_the_object():
    """Eight views of a ball; one view's mask loses the ball's top (as GrabCut loses a dark rim against a dark
    background). With no dissent that view carves the top away; with one dissenting view allowed it stays."""
    cameras = orbit_cameras(8, 4.0, 40.0, 64, elevations_degrees=(10.0, 30.0))
    points = lattice(np.full(3, -1.0), np.full(3, 1.0), 32, "cpu")
    ball = points.norm(dim=1) < 0.6
    masks = []
    for camera in cameras:  # each view's mask: the pixels the ball's cells fall in
        index, inside, _ = pixel_lookup(camera, points[ball])
        mask = np.zeros((64, 64), dtype=bool)
        mask.reshape(-1)[index[inside].numpy()] = True
        masks.append(mask)
    first_row = int(masks[3].any(1).argmax())
    masks[3][: first_row + 8] = False  # the top rows of the ball's silhouette in one view
    top = ball & (points[:, 2] > 0.3)
    strict = carve(cameras, masks, points, dilate_px=0)
    tolerant = carve(cameras, masks, points, dilate_px=0, dissent=1)
    assert int((strict & top).sum()) < 0.3 * int(top.sum())  # the one view took the top away (measured 0.22 left)
    assert bool((tolerant & ball).sum() == ball.sum())  # every cell of the ball survives one dissenting view
    assert int((tolerant & ~ball).sum()) < 0.12 * int(ball.sum())  # still carved around it (measured 0.087)


LENS = {"camera_model": "OPENCV", "k1": -4.0, "k2": 8.0, "p1": 0.004, "p2": -0.003}
"""A strong barrel distortion for the scene's 30° views: an object's mask through it has IoU 0.77 with the
pinhole one."""


@pytest.fixture(scope="module")
def lens_folder(scene, tmp_path_factory):
    """The scene's training photos and masks as a transforms.json dataset taken through :data:`LENS`."""
    from PIL import Image

    folder = write_scene_as_transforms(scene, tmp_path_factory.mktemp("lens"))
    doc = json.loads((folder / "transforms_train.json").read_text())
    K = scene.train[0].camera.K
    for frame in doc["frames"]:
        for path in (folder / f"{frame['file_path']}.png", folder / frame["mask_path"]):
            Image.fromarray(through_lens(np.asarray(Image.open(path)), K, LENS)).save(path)
    (folder / "transforms_train.json").write_text(json.dumps({**doc, **LENS}))
    return folder


@pytest.mark.slow
def test_photos_through_a_distorting_lens_give_the_object(scene, lens_folder):
    """No masks, a distorting lens and a backdrop: the mesh is the object, nothing of the table, about as close
    to the truth as from the pinhole photos."""
    box = object_bounds(scene)
    truth = {v.name: v.mask > 0.5 for v in load_job(lens_folder, options_override={"mask_source": "file"}).views}
    job = load_job(lens_folder, options_override={"mask_source": "none",
                                                  "bounds": {"centre": box.centre.tolist(), "size": box.size.tolist()}})
    job.options.update(OPTIONS)
    result = reconstruct(job, config_from_options(job.options), torch.device("cpu"))
    ious = [iou(result.derived_masks[name] > 0.5, mask) for name, mask in truth.items()]
    scores = mesh_metrics(result.mesh, scene.gt_vertices, scene.gt_faces)
    assert np.mean(ious) > 0.89, ious  # derived masks against the true ones (measured 0.911; 0.894 without the lens)
    assert scores["chamfer_l1"] < 0.012  # measured 0.0106 of the diagonal (0.0097 without the lens)
    assert result.mesh.vertices[:, 2].min() > TABLE_Z - 0.02  # nothing of the table (measured TABLE_Z − 0.013)


def test_the_lens_is_removed_so_the_views_agree_on_the_object(scene, lens_folder):
    """Carving the object's true masks (distorted like the photos) keeps all of the object only when the loader
    removes the lens; the same files loaded as pinhole photos carve part of it away."""
    pinhole = lens_folder / "transforms_pinhole.json"
    pinhole.write_text(json.dumps({k: v for k, v in json.loads((lens_folder / "transforms_train.json").read_text(
    )).items() if k not in LENS}))  # fmt: skip
    box = object_bounds(scene)
    points = lattice(box.minimum, box.maximum, 48, "cpu")
    points = points[scene_sdf(points) < -0.02]  # inside the object, a little away from its surface

    def kept(path) -> float:
        views = load_job(path, options_override={"mask_source": "file"}).views
        return float(carve([v.camera for v in views], [v.mask for v in views], points, dilate_px=0).float().mean())

    undistorted, ignored = kept(lens_folder), kept(pinhole)
    assert undistorted > 0.99 and ignored < 0.87, (undistorted, ignored)  # measured 1.0 and 0.821
