"""GTR Reconstruct: a Blender extension that turns posed views of an object into a textured mesh in the scene.

The heavy work runs in a separate process (``python -m backend serve``, the project's own Python environment);
this package never imports torch. Importing it does nothing: :func:`register` loads the Blender-side modules.
"""


def register() -> None:
    from . import registration

    registration.register()


def unregister() -> None:
    from . import registration

    registration.unregister()
