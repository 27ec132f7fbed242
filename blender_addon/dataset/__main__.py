"""``python -m blender_addon.dataset ARGS`` (from the repository root, with the bpy module installed)."""

import sys

from .cli import main

sys.exit(main())
