"""Register and unregister every class, the scene settings and the backend, symmetrically."""

from __future__ import annotations

import bpy

from . import jobs, operators, preferences, properties, ui

classes = (*properties.classes, *preferences.classes, *operators.classes, *ui.classes)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    properties.register_properties()
    preferences.fill_defaults()
    bpy.app.handlers.load_pre.append(jobs.on_load_pre)


def unregister() -> None:
    if jobs.on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(jobs.on_load_pre)
    jobs.shutdown()  # stops the timer, removes a running job's preview object, ends the backend process
    properties.unregister_properties()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
