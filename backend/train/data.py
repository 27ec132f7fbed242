"""What each training step sees: which objects (a pure function of the step), which views, which patches.

The order of objects is a fresh permutation per epoch, seeded by (seed, epoch). Step ``t`` of a run with ``P``
processes of ``b`` objects each takes the global slots ``t·P·b … (t+1)·P·b − 1`` of that endless stream; process
``r`` takes slots ``r·b …`` of them. Every random choice for a slot (input and supervision views, patch corners)
comes from a generator seeded by (seed, step, slot), so one process with batch ``2b`` sees exactly what two
processes with ``b`` see together, and a resumed run sees exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..dataset import ObjectEntry, ObjectViews, load_object
from ..errors import InputError
from ..gtr.rays import camera_tensors, image_input, pixel_rays
from .config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """One process's share of a step, ``B`` objects.

    ``inputs`` (B, Vi, 10, S, S) generator input. For stage 1: ``origins``/``dirs`` (B, N, 3) the rays of the
    supervision patches, ``rgb`` (B, N, 3) on white and ``mask`` (B, N) their targets, ``patches`` (Vs, P) the
    patch layout (N = Vs · P²). For stage 2: ``cameras`` per object (Vs canonical cameras at ``render_size``),
    ``rgb`` (B, Vs, R, R, 3), ``mask`` (B, Vs, R, R), ``depth`` (B, Vs, R, R) or None, ``normals``
    (B, Vs, R, R, 3) or None.
    """

    inputs: torch.Tensor
    rgb: torch.Tensor
    mask: torch.Tensor
    origins: torch.Tensor | None = None
    dirs: torch.Tensor | None = None
    patches: tuple[int, int] | None = None
    cameras: list | None = None
    depth: torch.Tensor | None = None
    normals: torch.Tensor | None = None
    names: list[str] | None = None

    def to(self, device: torch.device) -> Batch:
        moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return Batch(**moved)


@lru_cache(maxsize=4)
def object_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``count`` objects used in ``epoch`` (cached: every slot of an epoch asks for it)."""
    return np.random.default_rng([seed, epoch]).permutation(count)


def slot_object(slot: int, count: int, seed: int) -> int:
    """Index of the object in global ``slot`` of the endless epoch stream."""
    epoch, position = divmod(slot, count)
    return int(object_order(count, seed, epoch)[position])


class TrainingSet:
    """The dataset's objects, decoded on demand (an LRU cache), and the batches built from them."""

    def __init__(self, entries: list[ObjectEntry], config: TrainConfig):
        if not entries:
            raise InputError("the dataset has no objects", fix="render some with render-dataset first.")
        self.entries = entries
        self.config = config
        self.broken: dict[str, str] = {}
        self._cache: OrderedDict[tuple[int, int], ObjectViews] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def views(self, index: int, size: int) -> ObjectViews:
        """Object ``index`` at ``size``²; a broken object is logged once and replaced by the next good one."""
        for k in range(len(self.entries)):
            i = (index + k) % len(self.entries)
            entry = self.entries[i]
            if entry.name in self.broken:
                continue
            key = (i, size)
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            try:
                views = load_object(entry, size)
                if len(views.cameras) < 2:
                    raise InputError(f"{len(views.cameras)} view(s); training needs at least 2",
                                     fix="re-render the object with more views.")
            except (InputError, OSError, ValueError, KeyError) as exc:
                self.broken[entry.name] = str(exc)
                log.warning("skipping broken object %s: %s", entry.name, exc)
                continue
            self._cache[key] = views
            while len(self._cache) > 2 * self.config.cache_objects:
                self._cache.popitem(last=False)
            return views
        raise InputError("every object of the dataset is broken", fix="run python -m backend dataset check DIR.")

    def batch(self, step: int, rank: int, world: int) -> Batch:
        """Process ``rank``'s share of ``step``."""
        c = self.config
        first = (step * world + rank) * c.batch_size
        items = [self._item(step, slot) for slot in range(first, first + c.batch_size)]
        inputs = torch.stack([it["inputs"] for it in items])
        stack = lambda key: torch.stack([it[key] for it in items]) if items[0][key] is not None else None
        if c.stage == 1:
            return Batch(inputs=inputs, rgb=stack("rgb"), mask=stack("mask"), origins=stack("origins"),
                         dirs=stack("dirs"), patches=(c.supervision_views, c.patch_size),
                         names=[it["name"] for it in items])
        depth = stack("depth") if all(it["depth"] is not None for it in items) else None
        normals = stack("normals") if all(it["normals"] is not None for it in items) else None
        return Batch(inputs=inputs, rgb=stack("rgb"), mask=stack("mask"), cameras=[it["cameras"] for it in items],
                     depth=depth, normals=normals, names=[it["name"] for it in items])

    def _item(self, step: int, slot: int) -> dict:
        c = self.config
        rng = np.random.default_rng([c.seed, step, slot, 1])
        index = slot_object(slot, len(self.entries), c.seed)
        source = self.views(index, c.model.input_size)
        target = self.views(index, c.render_size)
        chosen_in, chosen_sup = choose_views(len(source.cameras), c.input_views, c.supervision_views, rng)
        inputs = model_input(source, chosen_in)
        item = {"name": source.name, "inputs": inputs[0], "depth": None, "normals": None}
        rgb = torch.from_numpy(target.rgb[chosen_sup])
        mask = torch.from_numpy(target.mask[chosen_sup])
        if c.stage == 2:
            item.update(rgb=rgb, mask=mask, cameras=[target.cameras[k] for k in chosen_sup])
            if target.depth is not None:
                item["depth"] = torch.from_numpy(target.depth[chosen_sup])
            if target.normals is not None:
                item["normals"] = torch.from_numpy(target.normals[chosen_sup])
            return item
        c2w, K = camera_tensors([target.cameras[k] for k in chosen_sup])
        origins, dirs = pixel_rays(c2w, K, c.render_size, c.render_size)
        P = c.patch_size
        corners = rng.integers(0, c.render_size - P + 1, size=(len(chosen_sup), 2))
        crop = lambda t: torch.stack([t[v, y:y + P, x:x + P] for v, (y, x) in enumerate(corners)]).flatten(0, 2)
        item.update(rgb=crop(rgb), mask=crop(mask), origins=crop(origins), dirs=crop(dirs))
        return item


def choose_views(count: int, inputs: int, supervision: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Input and supervision view indices: disjoint when ``count`` allows, else the supervision reuses views."""
    order = rng.permutation(count).tolist()
    chosen_in = [order[k % count] for k in range(inputs)]
    rest = order[inputs:]
    if len(rest) < supervision:
        rest = rest + rng.choice(count, supervision - len(rest), replace=True).tolist()
    return chosen_in, rest[:supervision]


def model_input(views: ObjectViews, chosen: list[int]) -> torch.Tensor:
    """(1, V, 10, S, S) generator input of the chosen views, 8-bit like the inference loader (``gtr.run``)."""
    return image_input(views.rgb[chosen], views.mask[chosen], [views.cameras[k] for k in chosen])[2]
