"""Run ``render-dataset`` inside a Blender executable:

    blender -b --factory-startup --python blender_addon/dataset/launch.py -- --meshes DIR --output DATASET

Blender runs this file as a plain script: it puts the repository root on ``sys.path``, passes the arguments after
``--`` to the command line and exits Blender with its status.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from blender_addon.dataset.cli import main  # noqa: E402

arguments = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
sys.exit(main(arguments))
