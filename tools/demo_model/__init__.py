"""The demo model's tooling (not installed with pgexport): a small PaliGemma trained on generated vision tasks.

- `generator`: seeded, deterministic scenes (shapes, colours, text) and task examples in PaliGemma formats
- `vqvae`: the mask VQ-VAE (decoder laid out like big_vision's PaliGemma mask decoder)
- `build`, `train`, `patch_targets`, `evaluate`, `card`: model directory + init, training recipe, held-out evaluation
  (scored with pgexport.bench.metrics), model card
- `write_heldout`: the held-out set written as files (models/pg-demo-heldout), what pgexport itself runs on
"""
