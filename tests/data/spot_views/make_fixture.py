"""Rebuild this fixture from the shared renders (run from the repository root with the project's Python).

    .venv/bin/python tests/data/spot_views/make_fixture.py [SHARED_DATA]

Copies four training views of ``renders/spot`` (Blender 5.0.1 Cycles renders of Keenan Crane's "Spot", CC0),
box-downscaled from 256² to 128² (the alpha is averaged over each 2×2 block, so a 128² pixel centre sits where
four 256² pixels meet), their Blender camera-to-world matrices and ``camera_angle_x`` unchanged (a field of
view does not change with the image size), and ``gt.ply`` decimated to about 2000 faces.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fast_simplification
import numpy as np
import trimesh
from PIL import Image

FRAMES = ("r_0", "r_3", "r_7", "r_12")
SIZE = 128
TARGET_FACES = 2000


def main(shared: Path) -> None:
    source = shared / "renders" / "spot"
    here = Path(__file__).resolve().parent
    data = json.loads((source / "transforms_train.json").read_text())
    frames = []
    for frame in data["frames"]:
        stem = Path(frame["file_path"]).name
        if stem not in FRAMES:
            continue
        image = Image.open(source / "train" / f"{stem}.png").convert("RGBA")
        image.resize((SIZE, SIZE), Image.Resampling.BOX).save(here / f"{stem}.png", optimize=True)
        frames.append({"file_path": f"./{stem}", "transform_matrix": frame["transform_matrix"]})
    out = {"camera_angle_x": data["camera_angle_x"], "frames": frames}
    (here / "transforms.json").write_text(json.dumps(out, indent=1) + "\n")
    mesh = trimesh.load(source / "gt.ply", force="mesh")
    vertices, faces = fast_simplification.simplify(
        np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32), 1.0 - TARGET_FACES / len(mesh.faces)
    )
    trimesh.Trimesh(vertices, faces, process=False).export(here / "gt.ply")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3].parent / "shared" / "data")
