"""The command line as a user runs it: ``python -m backend ...`` in a real subprocess.

Bad inputs must end with exit status 2, one ``error:`` line on stderr that names the view at fault (where there
is one) and says how to fix it, no traceback, and no mesh files in the output folder. Every job here fails at
validation, so the tests are cheap (one interpreter start each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cameras import look_at, orbit_cameras, w2c_to_opengl_c2w

REPO_ROOT = Path(__file__).resolve().parent.parent
SIZE = 16
MESH_SUFFIXES = (".npz", ".glb", ".obj", ".ply")


def run_cli(*args, timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "backend", *map(str, args)],
        check=False,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rgba_image(path: Path, size: int = SIZE) -> None:
    """A grey square on a transparent background (so the alpha channel is a usable mask)."""
    pixels = np.zeros((size, size, 4), np.uint8)
    pixels[..., :3] = 128
    pixels[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4, 3] = 255
    Image.fromarray(pixels, "RGBA").save(path)


def write_job(root: Path, count: int = 3, bounds: bool = True, **overrides) -> Path:
    """A valid job.json with ``count`` orbit views named v0, v1, ...; ``overrides`` replace fields of view v1."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for n, cam in enumerate(orbit_cameras(count, radius=3.0, fov_degrees=40.0, size=SIZE)):
        rgba_image(root / f"v{n}.png")
        w2c, K = cam.world_to_camera.tolist(), cam.K.tolist()
        entries.append({"image": f"v{n}.png", "name": f"v{n}", "world_to_camera": w2c, "K": K})
    if count > 1:
        entries[1].update(overrides)
    doc: dict = {"version": 1, "views": entries}
    if bounds:
        doc["bounds"] = {"centre": [0.0, 0.0, 0.0], "size": [1.0, 1.0, 1.0]}
    path = root / "job.json"
    path.write_text(json.dumps(doc))  # NaN is written as the (Python-readable) token NaN
    return path


def mesh_files(out: Path) -> list[Path]:
    if not out.exists():
        return []
    return [p for p in out.rglob("*") if p.suffix.lower() in MESH_SUFFIXES]


def assert_input_error(proc: subprocess.CompletedProcess, out: Path, view: str | None, *phrases: str) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    line = errors[0]
    assert "Fix:" in line, line
    if view is not None:
        assert f"view '{view}'" in line, line
    for phrase in phrases:
        assert phrase.lower() in line.lower(), line
    assert mesh_files(out) == [], mesh_files(out)
    return line


# ----------------------------------------------------------------------------------------------------- --help


@pytest.mark.parametrize(
    "command, flags",
    [
        (None, ["reconstruct", "demo", "eval"]),
        (
            "reconstruct",
            ["--output", "--formats", "--preset", "--texture", "--texture-size", "--faces", "--device", "--quiet"],
        ),
        ("demo", ["--output", "--size", "--preset", "--texture", "--faces", "--device", "--quiet"]),
        (
            "eval",
            [
                "--output",
                "--train-views",
                "--test-views",
                "--volume-views",
                "--gt-mesh",
                "--preset",
                "--device",
                "--quiet",
            ],
        ),
    ],
)
def test_help(command, flags):
    proc = run_cli(*([command] if command else []), "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    for flag in flags:
        assert flag in proc.stdout, f"{flag} missing from --help:\n{proc.stdout}"


# ------------------------------------------------------------------------------------------------- bad inputs


def test_valid_job_passes_validation(tmp_path):
    """The unmodified fixture job loads and validates, so each case below fails for its own reason."""
    from backend.inputs import load_job

    job = load_job(write_job(tmp_path / "job"))
    assert [v.name for v in job.views] == ["v0", "v1", "v2"]


def test_missing_image(tmp_path):
    job = write_job(tmp_path / "job", image="missing.png", name="v1")
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--quiet")
    assert_input_error(proc, out, "v1", "not found")


def test_corrupt_image(tmp_path):
    job = write_job(tmp_path / "job")
    (tmp_path / "job" / "v1.png").write_bytes(b"this is not a png \x00\x01\x02" * 20)
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--quiet")
    assert_input_error(proc, out, "v1", "cannot read")


def test_image_size_differs_from_camera(tmp_path):
    job = write_job(tmp_path / "job", width=2 * SIZE, height=2 * SIZE)
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--quiet")
    assert_input_error(proc, out, "v1", "does not match")


def test_fewer_than_two_views(tmp_path):
    job = write_job(tmp_path / "job", count=1)
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--quiet")
    assert_input_error(proc, out, None, "at least 2 views")


def test_nan_in_camera(tmp_path):
    w2c = orbit_cameras(3, radius=3.0, fov_degrees=40.0, size=SIZE)[1].world_to_camera.copy()
    w2c[0, 3] = float("nan")
    job = write_job(tmp_path / "job", world_to_camera=w2c.tolist())
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--quiet")
    assert_input_error(proc, out, "v1", "non-finite")


def test_singular_camera(tmp_path):
    w2c = np.eye(4)
    w2c[:3, :3] = 0.0
    w2c[2, 3] = 3.0
    job = write_job(tmp_path / "job", world_to_camera=w2c.tolist())
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--quiet")
    assert_input_error(proc, out, "v1", "not a rigid transform")


def test_camera_does_not_see_bounds(tmp_path):
    centre = orbit_cameras(3, radius=3.0, fov_degrees=40.0, size=SIZE)[1].centre
    away = look_at(centre, 2.0 * centre)  # looks straight away from the object
    job = write_job(tmp_path / "job", world_to_camera=away.tolist())
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--quiet")
    assert_input_error(proc, out, "v1", "bounds")


def test_no_mask_source(tmp_path):
    root = tmp_path / "job"
    job = write_job(root, bounds=False)
    for n in range(3):  # opaque RGB images: no alpha, no mask files, no background colour, no bounds
        Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8)).save(root / f"v{n}.png")
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--quiet")
    assert_input_error(proc, out, "v0", "no mask")


def test_panoramic_job_json(tmp_path):
    job = write_job(tmp_path / "job", camera_type="panoramic")
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--quiet")
    assert_input_error(proc, out, "v1", "panoramic")


def test_panoramic_transforms(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    frames = []
    for n, cam in enumerate(orbit_cameras(3, radius=3.0, fov_degrees=40.0, size=SIZE)):
        rgba_image(root / f"r_{n}.png")
        frames.append({"file_path": f"./r_{n}", "transform_matrix": w2c_to_opengl_c2w(cam.world_to_camera).tolist()})
    doc = {"camera_model": "EQUIRECTANGULAR", "fl_x": 20.0, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    proc = run_cli("reconstruct", root, "--output", out, "--quiet")
    assert_input_error(proc, out, "r_0", "EQUIRECTANGULAR")


def test_unwritable_output(tmp_path):
    job = write_job(tmp_path / "job")
    blocker = tmp_path / "not_a_folder.txt"
    blocker.write_text("a regular file")
    out = blocker / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--quiet")
    assert_input_error(proc, out, None, "not writable")
    assert blocker.read_text() == "a regular file"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is present: --device cuda is valid here")
def test_device_cuda_without_cuda(tmp_path):
    job = write_job(tmp_path / "job")
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--device", "cuda", "--quiet")
    line = assert_input_error(proc, out, None, "cuda")
    assert "--device cpu" in line, line
