"""The embedded demo model: a small PaliGemma trained on procedurally generated vision tasks.

- `generator`: seeded, deterministic scenes (shapes, colours, text) and task examples in PaliGemma formats
- `metrics`: torch-free parsing of loc/seg outputs and per-task metrics
- `vqvae`: the mask VQ-VAE (decoder laid out like big_vision's PaliGemma mask decoder)
- `build`, `train`, `evaluate`, `card`: model directory + init, training recipe, held-out evaluation, model card
"""
