"""Token merging: matching by hand, exactness at r=0, proportional attention, MACs, recipes, errors."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from optimizer.counting import count_macs
from optimizer.errors import VitoptError
from optimizer.methods.merge import MergeConfig, match_tokens, merge_schedule, merge_tokens, merge_weighted
from optimizer.methods.merge.block import MergeAttention
from optimizer.methods.merge.schedule import MacsModel, block_shapes, merged_block_macs
from optimizer.models.blocks import PrunedAttention
from tests.conftest import tiny_vit

KW = dict(depth=3, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=10)


# ---- matching -------------------------------------------------------------------------------

def _hand_keys():
    # tokens 0..4: A = {0, 2, 4}, B = {1, 3}; token 0 is the class token
    return torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.9]]])


def _lists(*ts):
    return [t.tolist() for t in ts]


def test_bipartite_matching_by_hand():
    k = _hand_keys()
    # cosines: token 2 -> B{1: 0, 3: 1} best 3 (1.0); token 4 -> B{1: 0.743, 3: 0.669} best 1 (0.743)
    # A indices: token 0 -> 0, 2 -> 1, 4 -> 2; B indices: token 1 -> 0, 3 -> 1
    # r=1: token 2 (the best score) merges into token 3; tokens 0 and 4 stay
    assert _lists(*match_tokens(k, 1)) == [[[0, 2]], [[1]], [[1]]]
    # r=2: then token 4 into token 1; only the class token stays in A
    assert _lists(*match_tokens(k, 2)) == [[[0]], [[1, 2]], [[1, 0]]]


def test_class_token_is_never_merged():
    k = _hand_keys().clone()
    k[0, 0] = torch.tensor([0.0, 1.0])          # the class token now matches token 3 perfectly (as token 2 does)
    assert 0 in match_tokens(k, 2)[0][0].tolist()
    assert 0 in match_tokens(k, 2, protect_first=False)[1][0].tolist()


def test_ties_are_broken_by_position():
    k = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    # tokens 2 and 4 both match token 1 at cosine 1: the earlier one (2) merges first
    assert _lists(*match_tokens(k, 1)) == [[[0, 2]], [[1]], [[0]]]


def test_size_weighted_merge_by_hand():
    x = torch.arange(5, dtype=torch.float).reshape(1, 5, 1) * torch.tensor([1.0, 10.0])
    size = torch.tensor([1.0, 1.0, 2.0, 1.0, 1.0]).reshape(1, 5, 1)
    out, new = merge_weighted(x, size, *match_tokens(_hand_keys(), 1))
    # outputs: unmerged A (tokens 0, 4), then B (token 1, token 3 + token 2 of size 2)
    expect = torch.stack([x[0, 0], x[0, 4], x[0, 1], (2 * x[0, 2] + x[0, 3]) / 3])[None]
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-6)
    assert new.flatten().tolist() == [1.0, 1.0, 1.0, 3.0]


# ---- blocks ---------------------------------------------------------------------------------

def test_r_zero_is_the_dense_model_exactly():
    model = tiny_vit(**KW)
    x = torch.randn(4, 3, 32, 32)
    ref = model(x)
    merged = merge_tokens(copy.deepcopy(model), [0, 0, 0])
    assert merge_schedule(merged) == [0, 0, 0]
    torch.testing.assert_close(merged(x), ref, rtol=0, atol=0)


def test_merge_later_leaves_earlier_blocks_exact():
    model = tiny_vit(**KW)
    x = torch.randn(2, 3, 32, 32)
    dense_feats, merged_feats = [], []
    merged = merge_tokens(copy.deepcopy(model), [0, 0, 4])
    model.blocks[1].register_forward_hook(lambda m, i, o: dense_feats.append(o))
    merged.blocks[1].register_forward_hook(lambda m, i, o: merged_feats.append(o[0]))
    model(x), merged(x)
    torch.testing.assert_close(merged_feats[0], dense_feats[0], rtol=0, atol=0)


def _attn_pair():
    torch.manual_seed(0)
    plain = PrunedAttention(32, 4, 8, 8 ** -0.5)
    prop = MergeAttention(32, 4, 8, 8 ** -0.5)
    prop.load_state_dict(plain.state_dict())
    return plain, prop


def test_proportional_attention_with_unit_sizes_is_plain_attention():
    plain, prop = _attn_pair()
    x = torch.randn(2, 7, 32)
    out, keys = prop(x, torch.ones(2, 7, 1))
    torch.testing.assert_close(out, plain(x), rtol=0, atol=1e-6)
    assert keys.shape == (2, 7, 8)


def test_proportional_attention_equals_duplicated_tokens():
    # a token of size 2 attracts attention as two identical tokens would
    plain, prop = _attn_pair()
    x = torch.randn(1, 5, 32)
    size = torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0]).reshape(1, 5, 1)
    dup = torch.cat([x[:, :2], x[:, 1:2], x[:, 2:]], dim=1)
    out, _ = prop(x, size)
    ref = plain(dup)
    torch.testing.assert_close(out, torch.cat([ref[:, :2], ref[:, 3:]], dim=1), rtol=0, atol=1e-5)


# ---- MACs -----------------------------------------------------------------------------------

def _closed_form(kw, schedule) -> float:
    """DeiT-style ViT MACs by hand (fvcore convention) with ToMe's extra matmuls."""
    d, heads, depth, p, img, classes = kw["embed_dim"], kw["num_heads"], kw["depth"], kw["patch_size"], \
        kw["img_size"], kw["num_classes"]
    hd, f = d // heads, 4 * d
    n = (img // p) ** 2 + 1
    macs = (n - 1) * 3 * p * p * d + d * classes         # patch conv, head on the class token
    for r in schedule:
        m = n - r
        macs += 5 * n * d + 3 * n * d * d + 2 * n * n * d + n * d * d          # norm1, qkv, attention, proj
        if r:
            macs += ((n + 1) // 2) * (n // 2) * hd + (n // 2) * r * (d + 1)   # similarity, assignment MatMul
        macs += 5 * m * d + 2 * m * d * f                                     # norm2, MLP
        n = m
    return macs + 5 * n * d                                                   # final norm


@pytest.mark.parametrize("schedule", [[0, 0, 0], [4, 3, 2], [8, 0, 1]])
def test_macs_equal_closed_form(schedule):
    model = merge_tokens(tiny_vit(**KW), schedule)
    assert count_macs(model).macs == _closed_form(KW, schedule)
    assert count_macs(model, torch.randn(3, 3, 32, 32)).macs == _closed_form(KW, schedule)
    mm = MacsModel.of(tiny_vit(**KW))
    assert mm.macs(schedule) == _closed_form(KW, schedule)
    assert merged_block_macs(block_shapes(model)[0], 17, 0) == _closed_form({**KW, "depth": 1}, [0]) - \
        _closed_form({**KW, "depth": 0}, [])


def test_macs_budget_meets_target():
    from optimizer.compress import compress
    model = tiny_vit(**KW)
    dense = count_macs(model).macs
    cm = compress(model, [MergeConfig(macs_ratio=0.8, tolerance=0.03)])
    sched = cm.steps[0]["structure"]["schedule"]
    assert sched == sorted(sched, reverse=True) and sum(sched) > 0     # extra merges go to the earliest blocks
    assert abs(count_macs(cm.model).macs / dense - 0.8) <= 0.03 * 0.8


# ---- recipe round trip ------------------------------------------------------------------------

def test_rebuild_from_recipe(tmp_path):
    import json
    from optimizer.compress import compress, load_compressed, save_compressed
    model = tiny_vit(**KW)
    cm = compress(model, [MergeConfig(schedule=[5, 3, 0])], arch="vit_tiny_patch16_224", model_kwargs=KW)
    save_compressed(tmp_path / "out", cm)
    recipe = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert recipe["steps"][0]["structure"] == {"format": "merge-structure", "version": 1, "schedule": [5, 3, 0]}
    loaded = load_compressed(tmp_path / "out")
    assert merge_schedule(loaded.model) == [5, 3, 0]
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), cm.model(x), rtol=0, atol=0)


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(r=-1), "r must be a non-negative integer, got -1"),
    (dict(schedule=[2, -3]), r"schedule must be a list of non-negative integers, got \[2, -3\]"),
    (dict(), "give exactly one of r"),
    (dict(r=2, macs_ratio=0.5), "give exactly one of r"),
    (dict(macs_ratio=1.5), r"macs_ratio must be in \(0, 1\], got 1.5"),
])
def test_bad_config_is_one_line(kwargs, message):
    with pytest.raises(VitoptError, match=message) as e:
        MergeConfig.from_dict(kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("schedule, message", [
    ([9, 0, 0], "block 0 merges 9 tokens but only 8 can be merged there \\(17 tokens left"),
    ([8, 5, 0], "block 1 merges 5 tokens but only 4 can be merged there \\(9 tokens left"),
    ([1, 1], "merge schedule has 2 entries, the model 3 blocks"),
])
def test_schedule_the_tokens_cannot_run_is_refused(schedule, message):
    from optimizer.compress import compress
    with pytest.raises(VitoptError, match=message) as e:
        compress(tiny_vit(**KW), [MergeConfig(schedule=schedule)])
    assert "\n" not in str(e.value)


def test_cli_bad_r_is_one_stderr_line(tmp_path, capsys):
    from optimizer.cli.main import main
    rc = main(["compress", "--method", "merge", "--model", "deit_tiny_patch16_224", "--set", "r=200",
               "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    # the lines before are the random-weights warnings; the error is one line, no traceback
    assert rc == 2 and "block 0 merges 200 tokens but only 98 can be merged" in err[-1]
    assert not any("Traceback" in line for line in err)
