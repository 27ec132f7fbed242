#!/usr/bin/env python3
"""Set up the backend's Python environment: a virtual environment with torch and the ``backend`` package.

Usage: ``python3 install.py [--dev] [--venv PATH] [--cpu | --cuda] [--torch-spec SPEC] [--torch-index-url URL]``

Standard library only; runs with any Python >= 3.10. Safe to run again: whatever is already installed and
satisfies the request is left alone, so a second run downloads nothing and takes a few seconds.

What it does, step by step:
1. creates the virtual environment (``.venv`` beside this file unless ``--venv``);
2. picks CUDA when ``nvidia-smi`` lists a GPU, else CPU (``--cpu`` / ``--cuda`` force a choice);
3. installs torch unless an installed build already satisfies the request;
4. installs this project in editable mode (``pip install -e .``, with ``--dev`` also pytest and ruff);
5. on CUDA machines installs nvdiffrast (optional, non-commercial licence) unless ``--no-nvdiffrast``;
6. writes the environment's interpreter path to ``<venv>/backend-python.txt`` for the Blender add-on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
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
    run([str(python), "-m", "pip", "install", *args], what=what)


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


def stamp_value(options: dict) -> str:
    digest = hashlib.sha256()
    digest.update((ROOT / "pyproject.toml").read_bytes())
    digest.update(json.dumps({"stamp": STAMP_VERSION, **options}, sort_keys=True).encode())
    return digest.hexdigest()


def install_backend(python: Path, venv: Path, dev: bool, state: dict) -> None:
    step("Backend package (editable install of this folder)" + (" with the dev extra (pytest, ruff)" if dev else ""))
    stamp = venv / STAMP_NAME
    value = stamp_value({"dev": dev, "root": str(ROOT), "python": state["python"]})
    origin = state["backend_origin"]
    in_place = origin is not None and Path(origin).resolve().parent == (ROOT / "backend").resolve()
    dev_ok = not dev or all(state["dists"].get(d) for d in ("pytest", "ruff"))
    if stamp.exists() and stamp.read_text().strip() == value and in_place and dev_ok:
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
    if not target.exists() or target.read_text() != text:
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
    info(f"backend interpreter: {python.absolute()}")
    info(f"(written to {target}; paste it into the add-on preferences if it does not find it)")
    return target


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
    parser.add_argument("--dev", action="store_true", help="also install the test tools (pytest, ruff)")
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--cpu", action="store_true", help="install for CPU even if an NVIDIA GPU is present")
    device.add_argument("--cuda", action="store_true", help="install for CUDA even if no GPU is detected")
    parser.add_argument("--torch-spec", help='pip requirement for torch, e.g. "torch==2.7.1"')
    parser.add_argument("--torch-index-url", help="pip index to take torch from (e.g. a PyTorch CUDA wheel index)")
    parser.add_argument("--no-nvdiffrast", action="store_true", help="do not install nvdiffrast on CUDA machines")
    parser.add_argument("--force", action="store_true", help="rerun the editable install even if the stamp matches")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if sys.version_info < (3, 10):  # noqa: UP036  (this script may be started by an older Python)
        raise InstallError(f"Python >= 3.10 is needed, this is {platform.python_version()} ({sys.executable})")
    venv = args.venv.expanduser().absolute()
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

    dists = ["pytest", "ruff", *NVDIFFRAST_PACKAGES]
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
    if args.force:
        (venv / STAMP_NAME).unlink(missing_ok=True)
    install_backend(python, venv, args.dev, state)
    install_nvdiffrast(python, mode, args.no_nvdiffrast, gpu_reason, state)
    write_python_path(python, venv)
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
