#!/usr/bin/env python3
"""Set up the backend's Python environment and, on request, install the Blender add-on.

Usage: ``python3 install.py [--dev [--no-bpy]] [--venv PATH] [--cpu | --cuda] [--torch-spec SPEC]
[--torch-index-url URL] [--blender [BLENDER]] [--blender-zip DIR]``

Standard library only; runs with any Python >= 3.10. Safe to run again: whatever is already installed and
satisfies the request is left alone, so a second run downloads nothing and takes a few seconds.

What it does, step by step:
1. creates the virtual environment (``.venv`` beside this file unless ``--venv``);
2. picks CUDA when ``nvidia-smi`` lists a GPU, else CPU (``--cpu`` / ``--cuda`` force a choice);
3. installs torch unless an installed build already satisfies the request;
4. with ``--dev`` on Python 3.11, installs ``bpy`` (Blender as a Python module, for the tests marked ``blender``);
5. installs this project in editable mode (``pip install -e .``, with ``--dev`` also pytest, ruff and tensorboard);
6. on CUDA machines installs nvdiffrast (optional, non-commercial licence) unless ``--no-nvdiffrast``;
7. writes the environment's interpreter path to ``<venv>/backend-python.txt`` for the Blender add-on;
8. with ``--blender`` / ``--blender-zip``, builds the add-on (``blender_addon/``, a Blender 4.2+ extension) into a
   zip that carries ``backend-python.txt``, and installs it into a Blender's user extensions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
STAMP_NAME = ".install-stamp"
PYTHON_PATH_FILE = "backend-python.txt"
STAMP_VERSION = 1

DEFAULT_CPU_TORCH = "torch==2.13.0"
DEFAULT_CUDA_TORCH = "torch>=2.1"
# PyPI's Linux torch wheels are CUDA builds; on Windows PyPI only has CPU builds, so CUDA needs PyTorch's index.
DEFAULT_WINDOWS_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
NVDIFFRAST_PACKAGES = ("diffrp-nvdiffrast", "ninja")
# Blender as a Python module, for the tests marked ``blender``. Each bpy release is built for exactly one Python.
BPY_VERSION = "5.0.1"
BPY_SPEC = f"bpy=={BPY_VERSION}"
BPY_PYTHON = (3, 11)

ADDON_SOURCE = ROOT / "blender_addon"
BLENDER_MIN_VERSION = (4, 2)  # the first Blender with extensions (blender_manifest.toml)
EXTENSION_REPO = "user_default"  # the user repository every Blender >= 4.2 has; --blender installs into it


class InstallError(Exception):
    """A failure with a message that says what went wrong and what to do."""


# ---------------------------------------------------------------------------------------------------------- output

_step_number = 0


def step(title: str) -> None:
    global _step_number
    _step_number += 1
    print(f"\n[{_step_number}] {title}", flush=True)


def info(message: str) -> None:
    print(f"    {message}", flush=True)


def run(cmd: list[str], *, what: str, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command, echoing it; raise InstallError with ``what`` when it fails."""
    if not capture:
        info("$ " + " ".join(_quote(c) for c in cmd))
    try:
        result = subprocess.run(cmd, check=False, cwd=ROOT, text=True, capture_output=capture)
    except OSError as exc:
        raise InstallError(f"{what} failed: could not run {cmd[0]!r} ({exc})") from exc
    if check and result.returncode != 0:
        detail = ""
        if capture:
            detail = "\n" + textwrap.indent((result.stdout + result.stderr).strip()[-3000:], "    ")
        raise InstallError(f"{what} failed (exit code {result.returncode}).{detail}")
    return result


def _quote(arg: str) -> str:
    return f'"{arg}"' if (" " in arg or not arg) else arg


# ---------------------------------------------------------------------------------------------------------- venv


def venv_python(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def ensure_venv(venv: Path) -> Path:
    step(f"Virtual environment: {venv}")
    python = venv_python(venv)
    if python.exists():
        probe = subprocess.run(
            [str(python), "-I", "-c", "import sys, pip; print(sys.version.split()[0])"],
            check=False,
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0:
            info(f"already exists (Python {probe.stdout.strip()}), reusing it")
            return python
        raise InstallError(
            f"the virtual environment at {venv} is broken (its Python or pip does not start):\n"
            f"    {(probe.stderr or probe.stdout).strip()[-500:]}\n"
            f"Delete the folder and run install.py again."
        )
    if venv.exists() and any(venv.iterdir()):
        raise InstallError(f"{venv} exists but is not a virtual environment; delete it or pass --venv elsewhere.")
    info(f"creating it with {sys.executable} (Python {platform.python_version()})")
    try:
        import venv as venv_module

        venv_module.EnvBuilder(with_pip=True, clear=False, symlinks=os.name != "nt").create(str(venv))
    except Exception as exc:  # ensurepip missing (Debian/Ubuntu without python3-venv) and similar
        raise InstallError(
            f"could not create the virtual environment at {venv}: {exc}\n"
            "On Debian/Ubuntu install the venv module first: sudo apt install python3-venv"
        ) from exc
    if not python.exists():
        raise InstallError(f"the virtual environment was created but {python} is missing")
    return python


# ---------------------------------------------------------------------------------------------------------- probing

_PROBE = r"""
import importlib.metadata as md, importlib.util, json, sys
spec_text = sys.argv[1]
out = {"python": sys.version.split()[0], "torch_version": None, "torch_cuda": None, "torch_error": None,
       "torch_satisfies": None, "backend_origin": None, "dists": {}}
try:
    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement
    req = Requirement(spec_text)
    name = req.name
except Exception as exc:
    req, name = None, "torch"
    out["spec_error"] = str(exc)
out["name"] = name
try:
    out["torch_version"] = md.version(name)
except md.PackageNotFoundError:
    pass
if out["torch_version"] is not None:
    if req is not None:
        out["torch_satisfies"] = req.specifier.contains(out["torch_version"], prereleases=True)
    try:
        import torch
        out["torch_cuda"] = torch.version.cuda
    except Exception as exc:
        out["torch_error"] = f"{type(exc).__name__}: {exc}"
for dist in sys.argv[2:]:
    try:
        out["dists"][dist] = md.version(dist)
    except md.PackageNotFoundError:
        out["dists"][dist] = None
try:
    spec = importlib.util.find_spec("backend")
    out["backend_origin"] = spec.origin if spec else None
except Exception:
    pass
print(json.dumps(out))
"""


def probe(python: Path, torch_spec: str, dists: list[str]) -> dict:
    """Ask the venv's interpreter what is installed (isolated mode: the current folder is not on sys.path)."""
    result = run([str(python), "-I", "-c", _PROBE, torch_spec, *dists], what="inspecting the environment", capture=True)
    try:
        data = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise InstallError(f"could not read the environment's state: {result.stdout!r} {result.stderr!r}") from exc
    if "spec_error" in data:
        raise InstallError(f"--torch-spec {torch_spec!r} is not a valid requirement: {data['spec_error']}")
    if data["name"].lower() != "torch":
        raise InstallError(f'--torch-spec must be a requirement for torch (like "torch==2.7.1"), got {torch_spec!r}')
    return data


def detect_gpu() -> tuple[bool, str]:
    """(has an NVIDIA GPU, why we think so)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False, "nvidia-smi not found on PATH"
    try:
        out = subprocess.run([smi, "-L"], check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"nvidia-smi failed to run ({exc})"
    gpus = [line.strip() for line in out.stdout.splitlines() if line.strip().startswith("GPU ")]
    if out.returncode != 0 or not gpus:
        return False, "nvidia-smi lists no GPU"
    return True, "; ".join(gpus)


# ---------------------------------------------------------------------------------------------------------- steps


def pip(python: Path, args: list[str], *, what: str) -> None:
    start = time.perf_counter()
    run([str(python), "-m", "pip", "install", *args], what=what)
    info(f"({what}: {time.perf_counter() - start:.0f} s)")


def install_torch(python: Path, mode: str, spec: str, index_url: str | None, state: dict) -> bool:
    """Install torch when what is there does not satisfy the request; True when pip ran."""
    step(f"PyTorch ({mode.upper()}): {spec}" + (f" from {index_url}" if index_url else ""))
    version, cuda = state["torch_version"], state["torch_cuda"]
    reason = None
    if version is None:
        reason = "not installed"
    elif state["torch_error"]:
        reason = f"installed ({version}) but does not import: {state['torch_error']}"
    elif not state["torch_satisfies"]:
        reason = f"installed version {version} does not satisfy {spec}"
    elif mode == "cuda" and not cuda:
        reason = f"installed torch {version} is a CPU-only build"
    if reason is None:
        build = f"CUDA {cuda}" if cuda else "CPU"
        info(f"already satisfied: torch {version} ({build} build); nothing to download")
        return False
    info(f"installing: {reason}")
    if mode == "cuda" and not index_url and "+cpu" in spec:
        raise InstallError(f"--torch-spec {spec!r} is a CPU build but CUDA mode was chosen; use --cpu or fix the spec")
    args = [spec]
    if index_url:
        args += ["--index-url", index_url]
    if reason.startswith("installed torch") or "does not import" in reason:
        args.append("--force-reinstall")
        args.append("--no-deps")  # only swap the torch build; its dependencies are already there
    pip(python, args, what="installing torch")
    return True


def bpy_plan(python_version: str, *, dev: bool, no_bpy: bool) -> tuple[bool, str]:
    """Whether to install bpy into an environment whose Python is ``python_version`` (like "3.11.7"), and why.

    bpy comes with ``--dev`` only (the add-on runs inside Blender, which ships its own Python; the venv needs bpy just
    for the tests marked ``blender``), and only on the one Python its wheels are built for.
    """
    if not dev:
        return False, "not requested (only --dev installs it)"
    if no_bpy:
        return False, "SKIPPED: --no-bpy given; the tests marked `blender` will be skipped"
    wanted = ".".join(str(part) for part in BPY_PYTHON)
    if tuple(int(part) for part in python_version.split(".")[:2]) != BPY_PYTHON:
        return False, (
            f"SKIPPED: {BPY_SPEC} is built for Python {wanted} only and this environment has Python "
            f"{python_version}, so the tests marked `blender` will be skipped. To run them, make the environment "
            f"with Python {wanted}: delete the venv, then run `python{wanted} install.py --dev`."
        )
    return True, f"for the tests marked `blender` (this environment has Python {python_version})"


def install_bpy(python: Path, plan: tuple[bool, str], state: dict) -> None:
    """Install bpy when :func:`bpy_plan` says so and the installed version differs; a failure only warns."""
    step(f"bpy {BPY_VERSION} (Blender as a Python module, for the tests marked `blender`)")
    wanted, why = plan
    if not wanted:
        info(why)
        return
    installed = state["dists"].get("bpy")
    if installed == BPY_VERSION:
        info(f"already installed: bpy {installed}; nothing to download")
        return
    reason = "not installed" if installed is None else f"installed version {installed} is not {BPY_VERSION}"
    info(f"installing ({reason}) {why}: a ~375 MB wheel, ~820 MB on disk; it pins numpy<2")
    try:
        pip(python, [BPY_SPEC], what="installing bpy")
    except InstallError as exc:
        info(f"WARNING: {exc}")
        info(
            f"bpy only matters for the tests marked `blender`: they will be skipped. (PyPI has {BPY_SPEC} wheels "
            "for a few platforms only; --no-bpy skips this step.)"
        )


def stamp_value(options: dict) -> str:
    digest = hashlib.sha256()
    digest.update((ROOT / "pyproject.toml").read_bytes())
    digest.update(json.dumps({"stamp": STAMP_VERSION, **options}, sort_keys=True).encode())
    return digest.hexdigest()


def install_backend(python: Path, venv: Path, dev: bool, bpy_spec: str | None, state: dict) -> None:
    """The editable install; skipped when the stamp (pyproject.toml + options + the bpy decision) is unchanged."""
    step("Backend package (editable install of this folder)" + (" with the dev extra" if dev else ""))
    stamp = venv / STAMP_NAME
    options = {"root": str(ROOT), "python": state["python"]}
    value = stamp_value({**options, "dev": dev, "bpy": bpy_spec})
    accepted = {value}
    if not dev:  # a --dev install holds everything a plain one needs: switching to a plain run reinstalls nothing
        accepted |= {stamp_value({**options, "dev": True, "bpy": spec}) for spec in (None, BPY_SPEC)}
    origin = state["backend_origin"]
    in_place = origin is not None and Path(origin).resolve().parent == (ROOT / "backend").resolve()
    dev_ok = not dev or all(state["dists"].get(d) for d in ("pytest", "ruff", "tensorboard"))
    if stamp.exists() and stamp.read_text().strip() in accepted and in_place and dev_ok:
        info("unchanged since the last run (pyproject.toml and options match the stamp); skipping pip")
        return
    stamp.unlink(missing_ok=True)
    target = ".[dev]" if dev else "."
    # setuptools already in the venv (Python <= 3.11 venvs ship it): build without an isolated env, no download.
    check = "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 64)"
    has_setuptools = subprocess.run([str(python), "-I", "-c", check], check=False, capture_output=True).returncode == 0
    args = ["-e", target] + (["--no-build-isolation"] if has_setuptools else [])
    pip(python, args, what="installing the backend package")
    stamp.write_text(value + "\n")


def install_nvdiffrast(python: Path, mode: str, skip_flag: bool, gpu_reason: str, state: dict) -> None:
    step("nvdiffrast (optional GPU rasteriser; NVIDIA Source Code Licence, non-commercial)")
    if mode != "cuda":
        info(f"SKIPPED: no CUDA GPU ({gpu_reason}); the pure-torch rasteriser is used instead")
        return
    if skip_flag:
        info("SKIPPED: --no-nvdiffrast given; the pure-torch rasteriser is used instead")
        return
    missing = [d for d in NVDIFFRAST_PACKAGES if not state["dists"].get(d)]
    if not missing:
        info("already installed: " + ", ".join(f"{d} {state['dists'][d]}" for d in NVDIFFRAST_PACKAGES))
    else:
        try:
            pip(python, missing, what="installing nvdiffrast")
        except InstallError as exc:
            info(f"WARNING: {exc}")
            info("nvdiffrast is optional: the backend falls back to its pure-torch rasteriser.")
            return
    info("its CUDA kernels are compiled on first use (needs the CUDA toolkit's nvcc and a C++ compiler).")
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        info(
            "note: nvcc not found on PATH and CUDA_HOME unset; if the build fails the backend falls back to "
            "the pure-torch rasteriser."
        )


def write_python_path(python: Path, venv: Path) -> Path:
    step("Interpreter for the Blender add-on")
    target = venv / PYTHON_PATH_FILE
    text = str(python.absolute()) + "\n"
    if not target.exists() or target.read_text(encoding="utf-8") != text:
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    info(f"backend interpreter: {python.absolute()}")
    info(f"(written to {target}; paste it into the add-on preferences if it does not find it)")
    return target


# ---------------------------------------------------------------------------------------------------------- add-on


def blender_candidates() -> list[Path]:
    """Where ``--blender`` without a path looks, in this order: ``blender`` on PATH, then the default install place of
    the OS: macOS ``/Applications/Blender.app`` (and ``~/Applications``); Windows ``%ProgramFiles%\\Blender
    Foundation\\Blender X.Y\\blender.exe``, newest first; Linux ``/snap/bin/blender``. Existing files only."""
    found: list[Path] = []
    on_path = shutil.which("blender")
    if on_path:
        found.append(Path(on_path))
    if sys.platform == "darwin":
        for apps in (Path("/Applications"), Path.home() / "Applications"):
            found.append(apps / "Blender.app" / "Contents" / "MacOS" / "Blender")
    elif os.name == "nt":
        base = Path(os.environ.get("ProgramFiles", r"C:\Program Files")) / "Blender Foundation"
        found.extend(
            sorted(base.glob("Blender */blender.exe"), key=lambda p: _version_key(p.parent.name), reverse=True)
        )
    else:
        found.append(Path("/snap/bin/blender"))
    unique: list[Path] = []
    for path in found:
        if path.is_file() and path not in unique:
            unique.append(path)
    return unique


def _version_key(text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g or 0) for g in match.groups()) if match else (0,)


def blender_version(blender: Path) -> tuple[int, int, int]:
    """The version ``blender --version`` prints (its first ``Blender X.Y.Z``)."""
    try:
        result = subprocess.run(
            [str(blender), "--version"], check=False, capture_output=True, text=True, timeout=120, cwd=ROOT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"could not run {blender} --version ({exc}); is it a Blender executable?") from exc
    match = re.search(r"^Blender (\d+)\.(\d+)\.(\d+)", result.stdout, re.MULTILINE)
    if match is None:
        tail = (result.stdout + result.stderr).strip()[-500:]
        raise InstallError(f"{blender} --version did not print a Blender version; is it a Blender executable?\n{tail}")
    return int(match[1]), int(match[2]), int(match[3])


def find_blender(given: str) -> tuple[Path, tuple[int, int, int]]:
    """The Blender executable to use (``given``, else the first of :func:`blender_candidates`) and its version;
    InstallError when there is none or it is older than 4.2."""
    if given:
        blender = Path(given).expanduser()
        if blender.is_dir() and (blender / "Contents" / "MacOS" / "Blender").is_file():  # a macOS .app bundle
            blender = blender / "Contents" / "MacOS" / "Blender"
        if not blender.is_file():
            raise InstallError(f"--blender {given}: no such file; pass the Blender executable (blender, blender.exe)")
    else:
        candidates = blender_candidates()
        if not candidates:
            raise InstallError(
                "no Blender found (looked for `blender` on PATH and in the default install folder); pass its "
                "executable: --blender /path/to/blender. Without a Blender, --blender-zip DIR builds the zip to "
                "install from Blender's Preferences."
            )
        blender = candidates[0]
    version = blender_version(blender)
    if version[:2] < BLENDER_MIN_VERSION:
        minimum = ".".join(str(v) for v in BLENDER_MIN_VERSION)
        raise InstallError(
            f"{blender} is Blender {'.'.join(map(str, version))}; the add-on is an extension and needs "
            f"Blender {minimum} or newer."
        )
    return blender, version


def extension_id() -> str:
    """The ``id`` of ``blender_addon/blender_manifest.toml`` (read with a regex: tomllib needs Python 3.11)."""
    manifest = ADDON_SOURCE / "blender_manifest.toml"
    match = re.search(r'^id\s*=\s*"([^"]+)"', manifest.read_text(encoding="utf-8"), re.MULTILINE)
    if match is None:
        raise InstallError(f"no id in {manifest}")
    return match[1]


def bundled_builder(python: Path) -> Path | None:
    """Blender's extension builder script inside the venv's bpy (``bpy/<X.Y>/scripts/addons_core/bl_pkg/cli/
    blender_ext.py``, the code behind ``blender --command extension build``), or None without bpy."""
    find = "import importlib.util as u; s = u.find_spec('bpy'); print(s.origin if s and s.origin else '')"
    result = subprocess.run([str(python), "-I", "-c", find], check=False, capture_output=True, text=True)
    origin = result.stdout.strip()
    if result.returncode != 0 or not origin:
        return None
    scripts = sorted(Path(origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    return scripts[-1] if scripts else None


def stage_addon(folder: Path, backend_python: Path) -> Path:
    """Copy ``blender_addon/`` into ``folder`` and write ``backend-python.txt`` (the backend interpreter) into the
    copy, so the built extension carries it; returns the copy."""
    source = folder / extension_id()
    shutil.copytree(ADDON_SOURCE, source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", PYTHON_PATH_FILE))
    (source / PYTHON_PATH_FILE).write_text(str(backend_python) + "\n", encoding="utf-8")
    return source


def build_extension(source: Path, out_dir: Path, builder: list[str]) -> Path:
    """Run an extension builder (``[blender, "--command", "extension"]`` or ``[python, blender_ext.py]``) on
    ``source``; returns the zip it wrote into the empty folder ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [*builder, "build", "--source-dir", str(source), "--output-dir", str(out_dir)]
    run(cmd, what="building the extension zip", capture=True)
    zips = sorted(out_dir.glob("*.zip"))
    if len(zips) != 1:
        raise InstallError(f"the extension builder left {len(zips)} zip files in {out_dir}, expected one")
    return zips[0]


# Run by Blender after the install: is the extension enabled, which interpreter did the zip bring, and which one do
# its preferences hold (the add-on fills that field from backend-python.txt only while it is empty)?
_CHECK_EXPR = """
import addon_utils, bpy, json, os, sys
name = "bl_ext.{repo}.{id}"
module = sys.modules.get(name)
folder = os.path.dirname(module.__file__) if module else None
path_file = os.path.join(folder, "{path_file}") if folder else None
python = open(path_file, encoding="utf-8").read().strip() if path_file and os.path.isfile(path_file) else None
addon = bpy.context.preferences.addons.get(name)
preference = getattr(addon.preferences, "backend_python", None) if addon and addon.preferences else None
answer = {{"enabled": addon_utils.check(name)[1], "folder": folder, "python": python, "preference": preference}}
print("GTR-INSTALL-CHECK " + json.dumps(answer))
"""


def install_extension(blender: Path, zip_path: Path) -> dict:
    """Install ``zip_path`` into the Blender's user repository, enabled, then ask that Blender whether the add-on is
    enabled; returns its answer (``enabled``, ``folder``, ``python`` from the zip, ``preference`` as stored)."""
    install_file = [str(blender), "--command", "extension", "install-file", "--repo", EXTENSION_REPO, "--enable"]
    try:
        run([*install_file, str(zip_path)], what="installing the extension")
    except InstallError as exc:
        raise InstallError(f"{exc} Blender's messages above say why.") from exc
    expr = _CHECK_EXPR.format(repo=EXTENSION_REPO, id=extension_id(), path_file=PYTHON_PATH_FILE)
    result = run([str(blender), "--background", "--python-expr", expr], what="checking the install", capture=True)
    for line in result.stdout.splitlines():
        if line.startswith("GTR-INSTALL-CHECK "):
            answer = json.loads(line.split(" ", 1)[1])
            if answer["enabled"]:
                return answer
            break
    tail = textwrap.indent((result.stdout + result.stderr).strip()[-3000:], "    ")
    raise InstallError(
        f"the extension was installed but Blender does not enable it. Blender's output:\n{tail}\n"
        "Open Blender → Edit → Preferences → Add-ons, enable GTR Reconstruct and read the error it shows."
    )


def blender_for_building() -> tuple[Path, tuple[int, int, int]] | None:
    """The first Blender :func:`blender_candidates` finds, when it is 4.2 or newer; else None (with a note)."""
    candidates = blender_candidates()
    if not candidates:
        return None
    try:
        return find_blender(str(candidates[0]))
    except InstallError as exc:
        info(f"not building with the Blender found: {exc}")
        return None


def install_addon(python: Path, blender: tuple[Path, tuple[int, int, int]] | None, zip_dir: Path | None) -> None:
    """Build the extension (a copy of ``blender_addon/`` carrying ``backend-python.txt``); install it into
    ``blender`` (an executable and its version, from :func:`find_blender`) when given; keep the zip in ``zip_dir``
    when given. The builder is that Blender's, else a Blender found, else the one inside the venv's bpy."""
    step("Blender add-on (extension)")
    backend_python = python.absolute()
    build_with = blender or blender_for_building()
    if build_with is not None:
        info(f"Blender {'.'.join(map(str, build_with[1]))}: {build_with[0]}")
        builder = [str(build_with[0]), "--command", "extension"]
    else:
        script = bundled_builder(python)
        if script is None:
            raise InstallError(
                "no extension builder: no Blender 4.2+ was found and the venv has no bpy. Pass a Blender with "
                "--blender /path/to/blender, or run `install.py --dev --blender-zip DIR` with Python 3.11 (bpy "
                "carries Blender's builder)."
            )
        info(f"builder: {script} (Blender's own, from the bpy wheel)")
        builder = [str(python), str(script)]
    with tempfile.TemporaryDirectory(prefix="gtr-addon-") as tmp:
        zip_path = build_extension(stage_addon(Path(tmp), backend_python), Path(tmp) / "out", builder)
        info(f"built {zip_path.name} (backend interpreter inside: {backend_python})")
        if zip_dir is not None:
            zip_dir.mkdir(parents=True, exist_ok=True)
            kept = zip_dir / zip_path.name
            shutil.copyfile(zip_path, kept)
            info(f"zip: {kept}")
            info("to install it, drag it onto Blender's window, or in Blender: Edit → Preferences → Get Extensions")
            info("→ the ⌄ menu at the top right → Install from Disk…")
        if blender is not None:
            answer = install_extension(blender[0], zip_path)
            info(f"installed and enabled in {answer['folder']}")
            if answer["preference"] and answer["preference"] != answer["python"]:
                info(f"NOTE: its preferences still hold the backend interpreter {answer['preference']} (set before);")
                info(f"clear the Backend Python field to use {answer['python']}, or paste that path into it")
            else:
                info(f"its preferences offer the backend interpreter {answer['python']}")
            info("next, in Blender: Edit → Preferences → Add-ons → GTR Reconstruct → Test Backend")


# ---------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="install.py",
        description="Create the backend's virtual environment and install torch and the backend into it. "
        "Safe to re-run: finished steps are skipped.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(f"""\
            defaults:
              CPU machines:  --torch-spec "{DEFAULT_CPU_TORCH}" (PyPI; for a small CPU-only build add
                             --torch-index-url https://download.pytorch.org/whl/cpu)
              CUDA machines: --torch-spec "{DEFAULT_CUDA_TORCH}" (PyPI's Linux wheels are CUDA builds;
                             on Windows the index {DEFAULT_WINDOWS_CUDA_INDEX} is used)
            examples:
              python3 install.py --dev
              python3 install.py --blender /path/to/blender      (then the add-on, into that Blender)
              python3 install.py --blender-zip out               (or only its zip, for Install from Disk)
              python3 install.py --cuda --torch-spec "torch==2.7.1" \\
                  --torch-index-url https://download.pytorch.org/whl/cu126
            """),
    )
    parser.add_argument(
        "--venv",
        type=Path,
        default=ROOT / ".venv",
        help="where to create the virtual environment (default: .venv beside install.py)",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help=f"also install the test tools (pytest, ruff, tensorboard) and, on Python 3.11, {BPY_SPEC} for the "
        "tests marked blender",
    )
    parser.add_argument("--no-bpy", action="store_true", help="with --dev, do not install bpy")
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--cpu", action="store_true", help="install for CPU even if an NVIDIA GPU is present")
    device.add_argument("--cuda", action="store_true", help="install for CUDA even if no GPU is detected")
    parser.add_argument("--torch-spec", help='pip requirement for torch, e.g. "torch==2.7.1"')
    parser.add_argument("--torch-index-url", help="pip index to take torch from (e.g. a PyTorch CUDA wheel index)")
    parser.add_argument("--no-nvdiffrast", action="store_true", help="do not install nvdiffrast on CUDA machines")
    parser.add_argument("--force", action="store_true", help="rerun the editable install even if the stamp matches")
    addon = parser.add_argument_group("Blender add-on (after the steps above)")
    addon.add_argument(
        "--blender",
        nargs="?",
        const="",
        metavar="BLENDER",
        help="install the add-on into this Blender (4.2+) executable's user extensions, enabled; without a path, "
        "use `blender` on PATH or the OS's default install folder",
    )
    addon.add_argument(
        "--blender-zip",
        type=Path,
        metavar="DIR",
        help="write the add-on's extension zip into DIR, for Blender's Install from Disk (built with the Blender "
        "found, else with the builder inside the venv's bpy)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if sys.version_info < (3, 10):  # noqa: UP036  (this script may be started by an older Python)
        raise InstallError(f"Python >= 3.10 is needed, this is {platform.python_version()} ({sys.executable})")
    venv = args.venv.expanduser().absolute()
    zip_dir = args.blender_zip.expanduser().absolute() if args.blender_zip else None
    blender = find_blender(args.blender) if args.blender is not None else None  # a wrong path fails before pip
    print(f"Installing the backend from {ROOT}")

    python = ensure_venv(venv)

    step("Device")
    has_gpu, gpu_reason = detect_gpu()
    if args.cpu:
        mode = "cpu"
        info(f"CPU (forced by --cpu; detection said: {gpu_reason})")
    elif args.cuda:
        mode = "cuda"
        info(f"CUDA (forced by --cuda; detection said: {gpu_reason})")
    else:
        mode = "cuda" if has_gpu else "cpu"
        info(f"{mode.upper()} ({gpu_reason})")

    torch_spec = args.torch_spec or (DEFAULT_CUDA_TORCH if mode == "cuda" else DEFAULT_CPU_TORCH)
    index_url = args.torch_index_url
    if index_url is None and mode == "cuda" and os.name == "nt" and args.torch_spec is None:
        index_url = DEFAULT_WINDOWS_CUDA_INDEX

    dists = ["pytest", "ruff", "tensorboard", "bpy", *NVDIFFRAST_PACKAGES]
    state = probe(python, torch_spec, dists)
    if install_torch(python, mode, torch_spec, index_url, state):
        state = probe(python, torch_spec, dists)
        if state["torch_error"]:
            raise InstallError(f"torch was installed but does not import: {state['torch_error']}")
        build = "CUDA " + state["torch_cuda"] if state["torch_cuda"] else "CPU"
        info(f"installed torch {state['torch_version']} ({build} build)")
        if mode == "cuda" and not state["torch_cuda"]:
            info(
                "WARNING: CUDA was requested but pip picked a CPU-only torch build; pass the CUDA wheel index, e.g. "
                "--torch-index-url https://download.pytorch.org/whl/cu126"
            )
    plan = bpy_plan(state["python"], dev=args.dev, no_bpy=args.no_bpy)
    if args.dev:
        install_bpy(python, plan, state)
    if args.force:
        (venv / STAMP_NAME).unlink(missing_ok=True)
    install_backend(python, venv, args.dev, BPY_SPEC if plan[0] else None, state)
    install_nvdiffrast(python, mode, args.no_nvdiffrast, gpu_reason, state)
    write_python_path(python, venv)
    if blender is not None or zip_dir is not None:
        install_addon(python, blender, zip_dir)
    print(f"\nDone in {time.perf_counter() - start:.1f} s. Backend interpreter: {python.absolute()}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InstallError as exc:
        print(f"\ninstall.py: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ninstall.py: interrupted", file=sys.stderr)
        sys.exit(130)
