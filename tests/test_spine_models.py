"""Model loading: checkpoint formats, strict-load errors, random-weight flagging."""
import pytest
import torch

from optimizer.errors import VitoptError
from optimizer.models.loading import load_model, read_state_dict


def _save_tiny(tmp_path, kind):
    import timm
    m = timm.create_model("deit_tiny_patch16_224")
    sd = m.state_dict()
    p = tmp_path / f"w.{kind}"
    if kind == "pth":
        torch.save(sd, p)
    elif kind == "wrapped":
        torch.save({"model": sd, "epoch": 3}, p)
    elif kind == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    return m, p


@pytest.mark.parametrize("kind", ["pth", "wrapped", "safetensors"])
def test_checkpoint_formats_load_exactly(tmp_path, kind):
    ref, p = _save_tiny(tmp_path, kind)
    loaded = load_model("deit_tiny_patch16_224", str(p))
    assert loaded.weights == "checkpoint" and not loaded.is_random
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(loaded.model(x), ref.eval()(x))


def test_mismatched_checkpoint_lists_keys(tmp_path):
    _, p = _save_tiny(tmp_path, "pth")
    with pytest.raises(VitoptError, match=r"shape mismatch \d+: cls_token \(1, 1, 192\) vs model \(1, 1, 384\)"):
        load_model("deit_small_patch16_224", str(p))
    sd = torch.load(p)
    sd["extra.weight"] = torch.zeros(1)
    del sd["head.bias"]
    torch.save(sd, p)
    with pytest.raises(VitoptError, match=r"missing 1: head.bias; unexpected 1: extra.weight"):
        load_model("deit_tiny_patch16_224", str(p))


def test_random_weights_are_flagged():
    loaded = load_model("deit_tiny_patch16_224")
    assert loaded.is_random and "RANDOM" in loaded.describe()


@pytest.mark.parametrize("spec,msg", [("not_a_model", "unknown model 'not_a_model'"),
                                      ("resnet18", "not a Vision Transformer"),
                                      ("/no/such/w.pth", "model not found")])
def test_bad_model_names(spec, msg):
    with pytest.raises(VitoptError, match=msg):
        load_model(spec)


def test_not_a_state_dict(tmp_path):
    p = tmp_path / "x.pth"
    torch.save([1, 2, 3], p)
    with pytest.raises(VitoptError, match="is not a state_dict"):
        read_state_dict(p)
    p.write_bytes(b"garbage")
    with pytest.raises(VitoptError, match="cannot read checkpoint"):
        read_state_dict(p)


def test_shared_checkpoint_loads(shared_weights):
    loaded = load_model("deit_tiny_patch16_224", shared_weights)
    assert loaded.weights == "checkpoint"
