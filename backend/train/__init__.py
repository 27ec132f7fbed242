"""Training GTR-style models on datasets rendered by Blender (docs/DATASET.md, docs/TRAINING.md).

``python -m backend train DATASET --output RUN`` (or under ``torchrun``): stage 1 supervises NeRF volume renders,
stage 2 supervises mesh renders through differentiable marching cubes. The result, ``RUN/model.safetensors``, is a
``gtr`` checkpoint: ``python -m backend reconstruct … --method gtr --checkpoint RUN/model.safetensors``.
"""
