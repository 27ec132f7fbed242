"""Register / unregister the extension twice: nothing of it is left behind (classes, scene settings, timers,
handlers, the backend process)."""

from __future__ import annotations

import sys

import pytest

pytestmark = pytest.mark.blender


def _leftovers(bpy, module_name: str) -> list[str]:
    found = [name for name in dir(bpy.types) if name.startswith(("GTR_",))]
    if hasattr(bpy.types.Scene, "gtr"):
        found.append("Scene.gtr")
    for name in dir(bpy.app.handlers):
        handlers = getattr(bpy.app.handlers, name)
        if isinstance(handlers, list):
            found += [f"handler {name}" for h in handlers if getattr(h, "__module__", "").startswith(module_name)]
    return found


def test_register_unregister_twice_leaves_nothing(addon):
    import addon_utils
    import bpy

    assert hasattr(bpy.types.Scene, "gtr") and hasattr(bpy.types, "GTR_OT_reconstruct")
    for _ in range(2):
        jobs = addon.part("jobs")
        assert jobs.on_load_pre in bpy.app.handlers.load_pre
        # a running backend and a registered timer, as in the app while a job runs
        backend = jobs.BackendProcess(sys.executable).start()
        jobs.session.backend = backend
        bpy.app.timers.register(jobs.drain, first_interval=60.0)
        addon_utils.disable(addon.name, default_set=True)
        assert _leftovers(bpy, addon.name) == []
        assert not bpy.app.timers.is_registered(jobs.drain)
        assert backend.returncode is not None, "the backend process outlived unregister"
        module = addon_utils.enable(addon.name, default_set=True)
        assert module is not None
        assert hasattr(bpy.types.Scene, "gtr") and hasattr(bpy.types, "GTR_PT_main")
    bpy.context.preferences.addons[addon.name].preferences.backend_python = sys.executable
