"""Camera convention, stated once.

A :class:`Camera` is OpenCV-style: camera axes x right, y down, z forward; ``world_to_camera`` maps world
points (in the scene's units) into that frame. ``K`` is in pixels with the image's top-left *corner* at
(0, 0), so pixel (i, j) (column i, row j) has its centre at (i + 0.5, j + 0.5) and a centred camera has
cx = W / 2. Orthographic cameras use ``K[0, 0]`` / ``K[1, 1]`` as pixels per world unit.

Everything here is pure maths on numpy / torch arrays, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
"""Flips camera y and z: OpenGL (x right, y up, z backward) ↔ OpenCV (x right, y down, z forward)."""


@dataclass(frozen=True)
class Camera:
    """One view's camera. ``world_to_camera``: (4, 4) float64, OpenCV axes. ``K``: (3, 3) float64 pixels."""

    world_to_camera: np.ndarray
    K: np.ndarray
    width: int
    height: int
    orthographic: bool = False

    @property
    def camera_to_world(self) -> np.ndarray:
        """(4, 4) float64 inverse of ``world_to_camera`` (OpenCV camera axes)."""
        return np.linalg.inv(self.world_to_camera)

    @property
    def centre(self) -> np.ndarray:
        """(3,) camera centre in world coordinates (for orthographic cameras: the image plane's centre)."""
        return self.camera_to_world[:3, 3]

    @property
    def forward(self) -> np.ndarray:
        """(3,) unit viewing direction (camera +z) in world coordinates."""
        return self.world_to_camera[2, :3] / np.linalg.norm(self.world_to_camera[2, :3])

    def scaled(self, width: int, height: int) -> Camera:
        """The same camera for an image resized to ``width`` × ``height`` (pixel-corner convention)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0] *= sx
        K[1] *= sy
        return Camera(self.world_to_camera.copy(), K, width, height, self.orthographic)

    def transformed(self, world_from_new: np.ndarray, scale: float = 1.0) -> Camera:
        """This camera expressed in a new world frame.

        ``world_from_new`` (4, 4) is a rigid transform (rotation + translation) taking new-frame points to the
        old world; ``scale`` multiplies distances (new = scale · old, after the rigid part). Used to move
        cameras into the canonical [-1, 1]³ frame.
        """
        w2c = self.world_to_camera @ world_from_new
        w2c = w2c.copy()
        K = self.K.copy()
        if self.orthographic:
            K[0, 0] /= scale
            K[1, 1] /= scale
        w2c[:3, 3] *= scale
        return Camera(w2c, K, self.width, self.height, self.orthographic)


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """(3, 3) pinhole matrix."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def focal_from_fov(fov_radians: float, size: int) -> float:
    """Focal length in pixels for a field of view spanning ``size`` pixels."""
    return 0.5 * size / np.tan(0.5 * fov_radians)


def opengl_c2w_to_w2c(c2w: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world (nerf_synthetic / instant-ngp / Blender) → OpenCV world-to-camera."""
    c2w = np.asarray(c2w, dtype=np.float64)
    return np.linalg.inv(c2w @ OPENGL_TO_OPENCV)


def w2c_to_opengl_c2w(w2c: np.ndarray) -> np.ndarray:
    """Inverse of :func:`opengl_c2w_to_w2c`."""
    return np.linalg.inv(np.asarray(w2c, dtype=np.float64)) @ OPENGL_TO_OPENCV


def look_at(centre, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV world-to-camera (4, 4) for a camera at ``centre`` looking at ``target`` with ``up`` roughly up."""
    centre = np.asarray(centre, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - centre
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-8:  # looking straight along up: pick any right
        right = np.cross(forward, np.array([1.0, 0.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, centre
    return np.linalg.inv(c2w)


def project(camera: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (N, 3) → pixel coordinates (N, 2) (corner convention) and camera depth z (N,)."""
    points = np.asarray(points, dtype=np.float64)
    cam = points @ camera.world_to_camera[:3, :3].T + camera.world_to_camera[:3, 3]
    z = cam[:, 2]
    if camera.orthographic:
        uv = cam[:, :2] * np.diag(camera.K)[:2] + camera.K[:2, 2]
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (cam[:, :2] / z[:, None]) @ camera.K[:2, :2].T + camera.K[:2, 2]
    return uv, z


def rays_through_pixels(
    c2w: torch.Tensor, intrinsics: torch.Tensor, orthographic: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through the pixel centres (cols + 0.5, rows + 0.5), each with its own camera.

    ``c2w`` (N, 3, 4) float64 OpenCV camera → world; ``intrinsics`` (N, 4) float64 [fx, fy, cx, cy];
    ``orthographic`` (N,) bool; ``cols``, ``rows`` (N,) integer pixel indices. Returns origins and unit directions,
    each (N, 3) float32 in world space (computed in float64). An orthographic ray starts on the image plane and runs
    along the camera's +z.
    """
    x = (cols.to(torch.float64) + 0.5 - intrinsics[:, 2]) / intrinsics[:, 0]
    y = (rows.to(torch.float64) + 0.5 - intrinsics[:, 3]) / intrinsics[:, 1]
    camera_point = torch.stack([x, y, (~orthographic).to(torch.float64)], dim=-1)  # z = 1 (pinhole) or 0 (ortho)
    rotated = torch.einsum("nij,nj->ni", c2w[:, :, :3], camera_point)
    ortho = orthographic[:, None]
    origins = torch.where(ortho, rotated + c2w[:, :, 3], c2w[:, :, 3])
    dirs = torch.where(ortho, c2w[:, :, 2], rotated / rotated.norm(dim=-1, keepdim=True))
    return origins.to(torch.float32), dirs.to(torch.float32)


def ray_bundle(camera: Camera, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through every pixel centre: origins and unit directions, each (H, W, 3) float32 in world space.

    Row-major: ``[j, i]`` is the ray through pixel centre (i + 0.5, j + 0.5). See :func:`rays_through_pixels`.
    """
    H, W = camera.height, camera.width
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    n = H * W
    K = camera.K
    intrinsics = torch.tensor([[K[0, 0], K[1, 1], K[0, 2], K[1, 2]]], dtype=torch.float64).expand(n, 4)
    c2w = torch.from_numpy(camera.camera_to_world[:3]).to(torch.float64).expand(n, 3, 4)
    ortho = torch.full((n,), bool(camera.orthographic))
    origins, dirs = rays_through_pixels(c2w, intrinsics, ortho, cols.reshape(-1), rows.reshape(-1))
    return origins.view(H, W, 3).to(device), dirs.view(H, W, 3).to(device)


def orbit_cameras(
    count: int,
    radius: float,
    fov_degrees: float,
    size: int,
    elevations_degrees=(20.0,),
    azimuth_offset_degrees: float = 0.0,
    target=(0.0, 0.0, 0.0),
    up=(0.0, 0.0, 1.0),
) -> list[Camera]:
    """``count`` cameras on a ring (Z-up world) looking at ``target``; elevations cycle through the list."""
    f = focal_from_fov(np.radians(fov_degrees), size)
    K = intrinsics(f, f, size / 2, size / 2)
    cams = []
    for n in range(count):
        az = np.radians(azimuth_offset_degrees + 360.0 * n / count)
        el = np.radians(elevations_degrees[n % len(elevations_degrees)])
        centre = np.asarray(target) + radius * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        cams.append(Camera(look_at(centre, target, up), K.copy(), size, size))
    return cams
