"""Add-on preferences: the backend's interpreter, and a button that checks it answers."""

from __future__ import annotations

import bpy
from bpy.props import StringProperty

from . import backend_client


def addon_preferences(context=None):
    """This add-on's preferences, or None when it runs without them (plain ``register()`` outside an extension)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return None if addon is None else addon.preferences


def backend_python(context=None) -> str:
    """The interpreter to start the backend with: the preference, else what ``install.py`` recorded."""
    prefs = addon_preferences(context)
    return (prefs.backend_python if prefs else "") or backend_client.default_python()


class GTR_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_python: StringProperty(
        name="Backend Python",
        subtype="FILE_PATH",
        description="The Python of the environment install.py made (it writes the path to <venv>/backend-python.txt)",
    )
    test_result: StringProperty(name="Test Result")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "backend_python")
        if not self.backend_python:
            found = backend_client.default_python()
            layout.label(text=f"Using {found} (from install.py)" if found else "Not set: run install.py first")
        row = layout.row()
        row.operator("gtr.test_backend", icon="PLUGIN")
        row.operator("gtr.release_backend", icon="X")
        for line in self.test_result.splitlines():
            layout.label(text=line)


classes = (GTR_AddonPreferences,)


def fill_defaults() -> None:
    """Pre-fill the interpreter path from ``install.py``'s record when the preference is still empty."""
    prefs = addon_preferences()
    if prefs is not None and not prefs.backend_python:
        prefs.backend_python = backend_client.default_python()
