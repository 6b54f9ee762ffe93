"""Params / MACs counted from execution match the published timm figures and analytic formulas."""
import pytest
import torch

from optimizer.counting import count_macs
from optimizer.models.blocks import make_prunable


@pytest.mark.parametrize("name,params_m,gmacs", [("deit_tiny_patch16_224", 5.72, 1.26),
                                                 ("deit_small_patch16_224", 22.05, 4.61),
                                                 ("deit_base_patch16_224", 86.57, 17.58)])
def test_deit_reference_sizes(name, params_m, gmacs):
    import timm
    c = count_macs(timm.create_model(name).eval())
    assert round(c.mparams, 2) == params_m
    assert round(c.gmacs, 2) == gmacs


def _analytic(dim, depth, heads, hidden, tokens, patch_macs, head_macs, ln_count):
    per_block = tokens * (dim * 3 * dim + dim * dim + 2 * dim * hidden) + 2 * tokens * tokens * dim
    return depth * per_block + patch_macs + head_macs + ln_count * tokens * dim * 5


def test_tiny_vit_matches_formula(tiny_model):
    # 32px / patch 8 -> 16 patches + cls = 17 tokens; dim 64, depth 2, mlp 256
    c = count_macs(tiny_model)
    expect = _analytic(64, 2, 4, 256, 17, 16 * 64 * 3 * 64, 64 * 10, 2 * 2 + 1)
    assert c.macs == expect


def test_prunable_blocks_count_same_and_token_gather_counts_fewer(tiny_model):
    before = count_macs(tiny_model).macs
    make_prunable(tiny_model)
    assert count_macs(tiny_model).macs == before
    blk = tiny_model.blocks[1]
    blk.token_index = torch.arange(9)  # keep cls + 8 patches in the last block
    c = count_macs(tiny_model)
    n0, n1, d, h = 17, 9, 64, 256
    saved = (n0 - n1) * (4 * d * d + 2 * d * h) + 2 * (n0 * n0 - n1 * n1) * d + 2 * (n0 - n1) * d * 5
    # the final norm and head also see fewer tokens (final norm: (n0-n1)*d*5)
    assert before - c.macs == saved + (n0 - n1) * d * 5


def test_dynamic_count_is_mean_per_image(tiny_model):
    x = torch.randn(4, 3, 32, 32)
    assert count_macs(tiny_model, x).macs == count_macs(tiny_model).macs


def test_model_input_size_is_the_one_input_size(tiny_model):
    """The exporter, the parity inputs and the memory check share one input size: the patch embed's, else
    the pretrained config's; the exporter (default=None) refuses to guess where neither exists."""
    from optimizer.counting import model_input_size
    from optimizer.deploy import parity_inputs
    from optimizer.errors import VitoptError
    pe = tiny_model.patch_embed
    want = (pe.proj.in_channels, *pe.img_size)
    assert model_input_size(tiny_model) == model_input_size(tiny_model, default=None) == want
    assert tuple(parity_inputs(tiny_model, None, 3).images.shape) == (3, *want)
    bare = torch.nn.Linear(4, 2)
    assert model_input_size(bare) == (3, 224, 224)
    bare.pretrained_cfg = {"input_size": (1, 28, 28)}
    assert model_input_size(bare, default=None) == (1, 28, 28)
    with pytest.raises(VitoptError, match="cannot tell the input size of Linear"):
        model_input_size(torch.nn.Linear(4, 2), default=None)
