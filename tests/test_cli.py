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


def test_bounds_flag_replaces_the_jobs_bounds(tmp_path):
    """--bounds reaches the job: a box no camera sees is an error naming a view (the job's own box is fine)."""
    job = write_job(tmp_path / "job")
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--quiet", "--bounds", "50", "50", "50", "51", "51", "51")
    assert_input_error(proc, out, "v0", "bounds")
    proc = run_cli("reconstruct", job, "--output", out, "--quiet", "--bounds", "0", "0", "0", "-1", "1", "1")
    assert_input_error(proc, out, None, "positive size")


def test_no_mask_source(tmp_path):
    root = tmp_path / "job"
    job = write_job(root, bounds=False)
    for n in range(3):  # opaque RGB images: no alpha, no mask files, no background colour, no bounds
        Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8)).save(root / f"v{n}.png")
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--quiet")
    # masks are derived from the photos; uniform grey ones show no object anywhere
    assert_input_error(proc, out, None, "could not find the object")


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


# --------------------------------------------------------------- options, masks, cameras, output folder (issue 7)

TINY_RUN = ("--fit-steps", "30", "--mesh-resolution", "32", "--refine-iterations", "0", "--quiet")
"""Flags that keep a run that gets past the checks short (seconds), so a check that is missing fails quickly."""


def write_scene_job(root: Path, size: int = 48, views: int = 8, options: dict | None = None) -> tuple[Path, list]:
    """The procedural object's training views as a job.json (RGBA images, no bounds); returns it and its entries."""
    from backend.synthetic import SceneConfig, make_scene

    root.mkdir(parents=True, exist_ok=True)
    scene = make_scene(SceneConfig(size=size, train_views=views, test_views=1))
    entries = []
    for n, view in enumerate(scene.train):
        rgba = np.dstack([view.rgb, view.mask])
        Image.fromarray((np.clip(rgba, 0, 1) * 255 + 0.5).astype(np.uint8), "RGBA").save(root / f"s{n}.png")
        w2c, K = view.camera.world_to_camera.tolist(), view.camera.K.tolist()
        entries.append({"image": f"s{n}.png", "name": f"s{n}", "world_to_camera": w2c, "K": K})
    path = root / "job.json"
    path.write_text(json.dumps({"version": 1, "views": entries, "options": options or {}}))
    return path, entries


@pytest.mark.parametrize(
    "flags, phrase",
    [
        (("--faces", "-5"), "faces"),
        (("--texture-size", "0"), "texture_size"),
        (("--texture-size", "100000"), "texture_size"),
        (("--fit-seconds", "0"), "fit_seconds"),
        (("--device", "cuda:abc"), "unknown device"),
    ],
)
def test_bad_option_fails_before_any_work(tmp_path, flags, phrase):
    """Each value was accepted and crashed with a traceback after 30-110 s of work; now: exit 2 at once."""
    job = write_job(tmp_path / "job")
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--texture", "uv", *flags, "--quiet", timeout=30.0)
    assert_input_error(proc, out, None, phrase)
    assert not out.exists()
    proc = run_cli("demo", "--output", out, *flags, "--quiet", timeout=30.0)
    assert_input_error(proc, out, None, phrase)


def test_bad_option_is_fast(tmp_path):
    """In-process, so the interpreter's start-up does not count: the check runs before anything is loaded."""
    import time

    from backend.cli import main

    job = write_job(tmp_path / "job")
    start = time.perf_counter()
    code = main(["reconstruct", str(job), "--output", str(tmp_path / "out"), "--faces", "-5", "--quiet"])
    seconds = time.perf_counter() - start
    assert code == 2
    assert seconds < 0.5  # measured 0.0026 s in-process (the run it stops took 30-110 s); margin for a loaded CI
    assert not (tmp_path / "out").exists()


def test_bad_option_in_job_json(tmp_path):
    job = write_job(tmp_path / "job")
    doc = json.loads(job.read_text())
    doc["options"] = {"texture_size": 0}
    job.write_text(json.dumps(doc))
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--quiet", timeout=30.0)
    assert_input_error(proc, out, None, "texture_size", "job.json")


def test_failed_run_leaves_no_output_folder(tmp_path):
    job = write_job(tmp_path / "job", image="missing.png", name="v1")
    out = tmp_path / "deep" / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--quiet")
    assert_input_error(proc, out, "v1", "not found")
    assert not (tmp_path / "deep").exists()


def test_empty_mask_names_the_view(tmp_path):
    job = write_job(tmp_path / "job")
    Image.fromarray(np.zeros((SIZE, SIZE, 4), np.uint8), "RGBA").save(tmp_path / "job" / "v1.png")  # alpha all 0
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, *TINY_RUN)
    assert_input_error(proc, out, "v1", "mask is empty")


def test_camera_looking_away_without_bounds(tmp_path):
    """Without bounds the object's box comes from the masks; a camera facing away must not pass silently."""
    job, entries = write_scene_job(tmp_path / "job")
    w2c = np.asarray(entries[3]["world_to_camera"])
    centre = -w2c[:3, :3].T @ w2c[:3, 3]
    entries[3]["world_to_camera"] = look_at(centre, 2.0 * centre).tolist()  # faces straight away from the object
    job.write_text(json.dumps({"version": 1, "views": entries}))
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, *TINY_RUN)
    assert_input_error(proc, out, "s3", "behind the camera", "visual hull")
    assert "(#3)" in proc.stderr


def typo_and_repeat_job(root: Path) -> tuple[Path, list]:
    """The scene job with a typo in its options (``fit_stepz``) and view s0's image used again as 'again'."""
    job, entries = write_scene_job(root, size=32, views=6, options={"fit_stepz": 5})
    entries.append(dict(entries[0], name="again"))
    doc = json.loads(job.read_text())
    doc["views"] = entries
    job.write_text(json.dumps(doc))
    return job, entries


def check_typo_and_repeat(warnings: list[str], views: int) -> None:
    typo = [w for w in warnings if "fit_stepz" in w]
    repeat = [w for w in warnings if "same image" in w]
    assert len(typo) == 1 and "did you mean 'fit_steps'" in typo[0] and "known options: preset," in typo[0], warnings
    assert len(repeat) == 1 and "'s0' (#0)" in repeat[0] and f"'again' (#{views - 1})" in repeat[0], warnings


def test_unknown_option_and_repeated_image_warn_on_stderr(tmp_path):
    """Both are accepted with a warning printed as soon as the job is loaded (here the run then stops at a camera
    that looks away, so the check stays cheap)."""
    job, entries = typo_and_repeat_job(tmp_path / "job")
    w2c = np.asarray(entries[2]["world_to_camera"])
    centre = -w2c[:3, :3].T @ w2c[:3, 3]
    entries[2]["world_to_camera"] = look_at(centre, 2.0 * centre).tolist()
    doc = json.loads(job.read_text())
    doc["views"] = entries
    job.write_text(json.dumps(doc))
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, *TINY_RUN)
    assert_input_error(proc, out, "s2", "behind the camera")
    printed = [line[len("warning: ") :] for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    check_typo_and_repeat(printed, len(entries))


def test_job_warnings_reach_metrics_json(tmp_path):
    """``pipeline.reconstruct`` carries the loader's warnings into the result, and ``metrics.json`` lists them."""
    from dataclasses import replace

    import torch

    from backend.inputs import load_job
    from backend.pipeline import PRESETS, reconstruct, write_outputs

    path, entries = typo_and_repeat_job(tmp_path / "job")
    job = load_job(path)
    assert job.options == {} and len(job.views) == len(entries)
    check_typo_and_repeat(job.warnings, len(entries))
    draft = PRESETS["draft"]  # shrunk far below draft: only the warnings matter here
    config = replace(
        draft,
        normalise=replace(draft.normalise, hull_resolution=32),
        fit=replace(draft.fit, steps=10, rays_per_step=256, hull_resolution=32,
                    field=replace(draft.fit.field, resolution=32, channels=4)),
        extract=replace(draft.extract, resolution=32),
        refine=replace(draft.refine, iterations=0),
    )
    result = reconstruct(job, config, torch.device("cpu"))
    assert result.warnings[: len(job.warnings)] == job.warnings
    write_outputs(result, tmp_path / "out", config)
    check_typo_and_repeat(json.loads((tmp_path / "out" / "metrics.json").read_text())["warnings"], len(entries))


@pytest.mark.parametrize("device", ["cuda:abc", "gpu", f"cuda:{__import__('torch').cuda.device_count()}"])
def test_device_out_of_range_or_malformed(tmp_path, device):
    """``cuda:N`` with N ≥ the GPU count (any N without CUDA) and malformed names: exit 2 before any work."""
    job = write_job(tmp_path / "job")
    out = tmp_path / "out"
    proc = run_cli("reconstruct", job, "--output", out, "--device", device, "--quiet", timeout=30.0)
    line = assert_input_error(proc, out, None, device)
    assert "cuda:N" in line or "--device cpu" in line or "cuda:0" in line, line


@pytest.mark.slow
def test_time_limit_warns_and_threads_are_recorded(tmp_path):
    """A preset is a step budget: only an explicit ``--fit-seconds`` stops the fit early, and the result then says
    how much was done (stderr, metrics.json); ``--threads`` sets torch's thread count for the run."""
    job, _ = write_scene_job(tmp_path / "job")
    out = tmp_path / "out"
    flags = ("--fit-steps", "100000", "--fit-seconds", "2", "--threads", "1")
    proc = run_cli("reconstruct", job, "--output", out, *TINY_RUN[2:], *flags)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threads"] == 1
    done = metrics["fit_steps"]
    assert 1 <= done < 100000
    [warning] = [w for w in metrics["warnings"] if "time limit" in w]
    assert f"after {done} of 100000 steps" in warning and "fit_seconds 2" in warning, warning
    assert warning in proc.stderr
