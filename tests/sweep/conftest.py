"""A tiny-ViT sweep recipe on the image_folder fixture: seconds per variant on a CPU."""
import pytest

TINY_RECIPE = """
model: vit_tiny_patch16_224
model_kwargs: {{depth: 2, embed_dim: 64, num_heads: 4, img_size: 32, patch_size: 8, num_classes: 5}}
calib: {images}
data: {images}
workers: 0
steps:
  - slim: {{macs: 0.8, steps: {search_steps}, batch_size: 2, recovery: none, checkpoint_every: 1}}
  - lowrank: {{params: 0.8, calib_images: 6, batch_size: 3, heldout_every: 0, probe_images: 2}}
  - eval: {{batch_size: 4}}
  - export: {{opset: 18, parity_images: 2}}
  - bench: {{backends: [onnxruntime], batch: [1, 2], iters: 3, warmup: 1}}
"""


@pytest.fixture
def tiny_recipe(tmp_path, image_folder):
    def make(search_steps: int = 3, name: str = "r.yaml"):
        p = tmp_path / name
        p.write_text(TINY_RECIPE.format(images=image_folder, search_steps=search_steps))
        return p
    return make
