"""The generator's 10-channel input: RGB on white, unit ray direction, moment d × o, alpha (official ``rgba``).

Cameras are OpenCV camera→world matrices (V, 4, 4) and pixel intrinsics (V, 4) = [fx, fy, cx, cy] with the image's
top-left corner at 0; rays go through pixel centres.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import Camera


def pixel_rays(
    c2w: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins and unit directions (V, H, W, 3) through every pixel centre, row-major."""
    dev, dt = c2w.device, c2w.dtype
    u = torch.linspace(0.5, width - 0.5, width, device=dev, dtype=dt)
    v = torch.linspace(0.5, height - 0.5, height, device=dev, dtype=dt)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    fx, fy, cx, cy = (intrinsics[:, k, None, None] for k in range(4))
    local = torch.stack([(uu - cx) / fx, (vv - cy) / fy, torch.ones_like(uu).expand_as(uu - cx)], dim=-1)
    dirs = torch.einsum("vij,vhwj->vhwi", c2w[:, :3, :3], local)
    dirs = F.normalize(dirs, dim=-1)
    origins = c2w[:, None, None, :3, 3].expand_as(dirs)
    return origins, dirs


def generator_input(
    rgb: torch.Tensor, mask: torch.Tensor, c2w: torch.Tensor, intrinsics: torch.Tensor
) -> torch.Tensor:
    """(V, H, W, 3) RGB on white in [0, 1], (V, H, W) alpha, cameras → (1, V, 10, H, W)."""
    V, H, W = rgb.shape[:3]
    origins, dirs = pixel_rays(c2w, intrinsics, H, W)
    moment = torch.cross(dirs, origins, dim=-1)  # d × o: the official order (the negative of o × d)
    x = torch.cat([rgb, dirs, moment, mask[..., None]], dim=-1)
    return x.permute(0, 3, 1, 2).unsqueeze(0).contiguous()


def image_input(
    rgb: np.ndarray, alpha: np.ndarray, cameras: list[Camera]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Square views as the generator sees them: RGB on white (V, H, W, 3) in [0, 1], truncated to 8 bits like the
    official loader; alpha (V, H, W); their cameras → (RGB, alpha, generator input (1, V, 10, H, W)) tensors."""
    rgb_t = torch.from_numpy(np.stack([truncate_8bit(image) for image in rgb]).astype(np.float32) / 255.0)
    alpha_t = torch.from_numpy(np.asarray(alpha, dtype=np.float32))
    c2w, intrinsics = camera_tensors(cameras)
    return rgb_t, alpha_t, generator_input(rgb_t, alpha_t, c2w, intrinsics)


def camera_tensors(cameras: list[Camera]) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera→world (V, 4, 4) (float64 inverse, then float32, as the official loader) and [fx, fy, cx, cy] (V, 4)."""
    c2w = torch.from_numpy(np.stack([c.camera_to_world for c in cameras])).float()
    k = torch.tensor([[c.K[0, 0], c.K[1, 1], c.K[0, 2], c.K[1, 2]] for c in cameras], dtype=torch.float32)
    return c2w, k


def composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGB · a + (1 − a) in float32 (the generator's image convention): (H, W, 3), (H, W) → (H, W, 3)."""
    a = np.clip(np.asarray(alpha, dtype=np.float32), 0.0, 1.0)[..., None]
    return (np.asarray(rgb, dtype=np.float32) * a + (1.0 - a)).astype(np.float32)


def truncate_8bit(image: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → uint8 by truncation (×255, floor), as the official loader stores the composite."""
    return (np.asarray(image, dtype=np.float32) * 255.0).astype(np.uint8)
