"""``render-dataset``: training datasets (docs/DATASET.md) rendered with Blender's Cycles, from mesh files and
procedural objects.

Runs inside Blender's Python — the ``bpy`` module (``python -m blender_addon.dataset``) or ``blender -b --python
blender_addon/dataset/launch.py -- ARGS`` — and never imports torch or the backend. Modules:

- :mod:`.cli` — the command line; :mod:`.render` — the per-object loop (resume, skip, progress);
- :mod:`.rig` — view settings and random cameras, :mod:`.layout` — the dataset's files, :mod:`.png` — 16-bit PNGs
  (these three need no bpy);
- :mod:`.scene` — scene, lighting, import, normalisation, Cycles; :mod:`.surface` — depth and normals by ray
  casting; :mod:`.procedural` — procedural objects.

Importing the package does nothing.
"""
