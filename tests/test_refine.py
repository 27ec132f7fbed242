"""Texture refinement works on its own copy: the field the mesh came from (and whose volume renders ``evaluate``
reports as "before meshing") is left as the fit or the generator made it; the baked colours come from the copy."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from backend import pipeline as pipeline_module
from backend.evaluate import evaluate
from backend.field import FieldConfig, TriplaneField
from backend.gtr import run as gtr_method
from backend.mesh_render import composite
from backend.metrics import psnr
from backend.pipeline import PRESETS, PipelineConfig, reconstruct
from backend.refine import texture_copy
from backend.views import Job
from backend.volume import RenderConfig, render_image

CPU = torch.device("cpu")


def small_config() -> PipelineConfig:
    """``draft`` shrunk to a few seconds (the values do not matter here, only what changes what)."""
    draft = PRESETS["draft"]
    return replace(
        draft,
        normalise=replace(draft.normalise, hull_resolution=24),
        fit=replace(draft.fit, steps=30, rays_per_step=256, hull_resolution=24,
                    field=replace(draft.fit.field, resolution=24)),
        extract=replace(draft.extract, resolution=24, depth_map_size=32),
        refine=replace(draft.refine, iterations=20, points_per_step=1024),
        gtr=replace(draft.gtr, mesh_resolution=24, target_faces=300, rig=replace(draft.gtr.rig, hull_resolution=24),
                    refine=replace(draft.gtr.refine, iterations=4, raster_size=48)),
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def snapshot(field) -> dict[str, torch.Tensor]:
    state = {"planes": field.planes.detach().clone()}
    state.update({f"color.{k}": v.detach().clone() for k, v in field.mlp_color.state_dict().items()})
    return state


def same(field, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(snapshot(field).values(), state.values()))


def test_texture_copy_is_independent():
    field = TriplaneField(FieldConfig(resolution=4, channels=2))
    before = snapshot(field)
    copy = texture_copy(field)
    with torch.no_grad():
        copy.planes += 1.0
        next(copy.mlp_color.parameters()).add_(1.0)
    assert same(field, before)
    assert copy.planes.is_leaf and copy.planes.requires_grad
    assert copy.mlp_sigma is field.mlp_sigma  # refinement never trains density: shared, not copied


@pytest.mark.slow
def test_fit_refinement_leaves_the_fitted_field_and_volume_psnr_alone(tiny_scene, monkeypatch):
    fitted = []
    real_extract = pipeline_module.extract

    def recording_extract(field, *args, **kwargs):
        fitted.append((field, snapshot(field)))
        return real_extract(field, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "extract", recording_extract)
    torch.manual_seed(0)
    result = reconstruct(Job(views=tiny_scene.train, source="test"), small_config(), CPU)
    assert result.metrics["refine_iterations"] == 20
    (field, state), = fitted
    assert result.field is field and same(result.field, state)  # as the fit left it, after 20 refinements
    assert not same(result.texture_field, state)  # the refined copy is what changed
    with torch.no_grad():
        baked = result.texture_field.color(result.canonical_mesh.vertices).clamp(0, 1)
    assert torch.allclose(result.canonical_mesh.vertex_colors, baked, atol=1e-6)

    view = tiny_scene.test[0]
    evaluation = evaluate(result, [view], volume_views=1)
    camera = result.frame.view_to_canonical(view).camera
    fitted_render = render_image(result.field, result.occupancy, camera, RenderConfig()).cpu()
    refined_render = render_image(result.texture_field, result.occupancy, camera, RenderConfig()).cpu()
    target = composite(view.rgb, view.mask)
    assert evaluation.metrics["volume_psnr"] == pytest.approx(psnr(fitted_render, target), abs=1e-9)
    assert abs(psnr(refined_render, target) - psnr(fitted_render, target)) > 1e-3  # so the test can tell them apart


def test_gtr_refinement_leaves_the_generated_field_alone(tiny_scene, tiny_gtr_checkpoint, monkeypatch):
    generated = []
    real_density_grid = gtr_method.density_grid

    def recording_density_grid(field, *args, **kwargs):
        generated.append((field, snapshot(field)))
        return real_density_grid(field, *args, **kwargs)

    monkeypatch.setattr(gtr_method, "density_grid", recording_density_grid)
    options = {"method": "gtr", "checkpoint": str(tiny_gtr_checkpoint)}
    result = reconstruct(Job(views=tiny_scene.train, options=options, source="test"), small_config(), CPU)
    (field, state), = generated
    assert result.field is field and same(result.field, state)
    assert not same(result.texture_field, state)
    with torch.no_grad():
        baked = result.texture_field.color(result.canonical_mesh.vertices).clamp(0, 1)
    assert torch.allclose(result.canonical_mesh.vertex_colors, baked, atol=1e-6)
