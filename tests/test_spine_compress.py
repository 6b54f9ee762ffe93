"""compress() / save / restore with a test-only method: the recipe alone rebuilds the architecture."""
import dataclasses
import json
from typing import Optional

import pytest
import torch

from optimizer.compress import compress, load_compressed, register_method, save_compressed
from optimizer.compress.config import MethodConfig, check_ratio
from optimizer.compress.registry import METHOD_MODULES, StepResult
from optimizer.compress.runner import build_config, parse_set_options
from optimizer.errors import VitoptError
from optimizer.models.blocks import make_prunable


@dataclasses.dataclass(frozen=True)
class HalveMlpConfig(MethodConfig):
    macs_ratio: Optional[float] = None
    keep: int = 128
    note: str = ""

    def __post_init__(self):
        check_ratio("macs_ratio", self.macs_ratio)
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")


def _rebuild(model, structure):
    make_prunable(model)
    for i, keep in enumerate(structure["mlp_hidden"]):
        mlp = model.blocks[i].mlp
        mlp.fc1 = torch.nn.Linear(mlp.fc1.in_features, keep)
        mlp.fc2 = torch.nn.Linear(keep, mlp.fc2.out_features)
    return model


def _apply(model, cfg, ctx):
    make_prunable(model)
    for blk in model.blocks:
        fc1, fc2 = blk.mlp.fc1, blk.mlp.fc2
        new1, new2 = torch.nn.Linear(fc1.in_features, cfg.keep), torch.nn.Linear(cfg.keep, fc2.out_features)
        with torch.no_grad():
            new1.weight.copy_(fc1.weight[:cfg.keep]); new1.bias.copy_(fc1.bias[:cfg.keep])
            new2.weight.copy_(fc2.weight[:, :cfg.keep]); new2.bias.copy_(fc2.bias)
        blk.mlp.fc1, blk.mlp.fc2 = new1, new2
    return StepResult(model, {"mlp_hidden": [cfg.keep] * len(model.blocks)}, {"kept": cfg.keep})


@pytest.fixture(autouse=True)
def halve_method():
    METHOD_MODULES["halve"] = __name__
    register_method("halve", HalveMlpConfig, _apply, _rebuild)
    yield
    METHOD_MODULES.pop("halve", None)


def test_roundtrip_rebuilds_from_name(tmp_path):
    import timm
    model = timm.create_model("vit_tiny_patch16_224", depth=2, embed_dim=64, num_heads=4, img_size=32,
                              patch_size=8, num_classes=10).eval()
    kwargs = dict(depth=2, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=10)
    cm = compress(model, [HalveMlpConfig(keep=96)], arch="vit_tiny_patch16_224", model_kwargs=kwargs)
    save_compressed(tmp_path / "out", cm)
    recipe = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert recipe["steps"][0]["config"] == {"method": "halve", "version": 1, "macs_ratio": None, "keep": 96, "note": ""}
    assert not list(tmp_path.glob(".*"))  # no temporary directory left behind
    loaded = load_compressed(tmp_path / "out")
    x = torch.randn(3, 3, 32, 32)
    assert loaded.weights == "compressed" and loaded.model.blocks[0].mlp.fc1.out_features == 96
    torch.testing.assert_close(loaded.model(x), cm.model(x), rtol=0, atol=0)


def test_config_strictness():
    assert build_config("halve", {"macs": "0.5", "keep": "64"}) == HalveMlpConfig(macs_ratio=0.5, keep=64)
    with pytest.raises(VitoptError, match="unknown halve option\\(s\\): kep"):
        build_config("halve", {"kep": 3})
    with pytest.raises(VitoptError, match="macs_ratio must be in \\(0, 1\\]"):
        build_config("halve", {"macs": 1.5})
    with pytest.raises(VitoptError, match="halve.keep: cannot read 'x' as int"):
        build_config("halve", {"keep": "x"})
    with pytest.raises(VitoptError, match="takes no --params budget"):
        build_config("halve", {"params": 0.5})
    with pytest.raises(VitoptError, match="unknown compression method 'nope'"):
        build_config("nope", {})
    with pytest.raises(VitoptError, match="--set expects key=value"):
        parse_set_options(["novalue"])


def test_not_a_compressed_dir(tmp_path):
    with pytest.raises(VitoptError, match="not a compressed model directory"):
        load_compressed(tmp_path)


def test_recovery_is_one_block_in_every_method():
    """slim, lowrank and gates spell their fine-tune the same way: a nested RecoveryConfig whose keys
    given in a recipe or with --set replace only those keys of the method's default."""
    from optimizer.compress.runner import build_config, parse_set_options
    for method, default_lr in (("slim", 1e-4), ("lowrank", None), ("gates", 1e-5)):
        budget = {"params": 0.5} if method == "lowrank" else {"macs": 0.6}
        cfg = build_config(method, {**budget, **parse_set_options(["recovery.epochs=2"])})
        assert cfg.recovery.epochs == 2.0 and cfg.recovery.lr == default_lr and cfg.recovery.enabled
        assert type(cfg).from_dict(cfg.to_dict()) == cfg
    assert build_config("slim", {"macs": 0.6, "recovery": {"loss": "none"}}).recovery.enabled is False
    with pytest.raises(VitoptError, match="unknown recovery option\\(s\\): epoch"):
        build_config("slim", {"macs": 0.6, "recovery": {"epoch": 1}})
    with pytest.raises(VitoptError, match="loss must be one of none, logit, manifold, got 'auto'"):
        build_config("lowrank", {"params": 0.5, "recovery": {"loss": "auto"}})
    with pytest.raises(VitoptError, match="unknown gates option\\(s\\): finetune_steps"):
        build_config("gates", {"macs": 0.6, "finetune_steps": 4})


def test_recovery_shorthand_sets_the_loss_alone():
    """``recovery: none`` in a recipe / ``--set recovery=none`` keep working: a plain value is the loss."""
    from optimizer.compress.runner import build_config, parse_set_options
    cfg = build_config("slim", {"macs": 0.6, **parse_set_options(["recovery=logit"])})
    assert (cfg.recovery.loss, cfg.recovery.epochs, cfg.recovery.holdout) == ("logit", 1.0, 0.1)
    assert build_config("slim", {"macs": 0.6, "recovery": "none"}).recovery.enabled is False
    with pytest.raises(VitoptError, match="set both as a value and as a block"):
        parse_set_options(["recovery=none", "recovery.epochs=1"])
