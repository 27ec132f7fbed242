"""GTR (arXiv 2406.05649): the feed-forward network, compatible with the official checkpoint.

Written from ``gtr_reference/ARCHITECTURE.md`` (a fact sheet of the official release) and checked against numbers
from the official modules (``tests/data/parity_small.safetensors``).

- :mod:`.config` — model and inference settings (full model, the fixture's small model).
- :mod:`.generator` — images + rays → triplanes (patch encoder, learned triplane tokens, transformer, upsampler).
- :mod:`.decoder` — the triplane decoder's density and colour MLPs with the official parameter names.
- :mod:`.rays` — the 10-channel generator input from images and cameras.
- :mod:`.geometry` — density grid and marching-cubes mesh as the official extraction does it.
- :mod:`.checkpoint` — reading, checking and converting checkpoints.
- :mod:`.rig` — the canonical frame of the training rig: moving user cameras into it and back.
- :mod:`.run` — the ``gtr`` pipeline method.
"""
