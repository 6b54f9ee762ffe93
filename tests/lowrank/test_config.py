"""LowRankConfig validation and dict round trip (the CLI's --params / --macs / --set path)."""
import pytest

from optimizer.compress import config_from_dict
from optimizer.errors import VitoptError
from optimizer.methods.lowrank import LowRankConfig


def test_exactly_one_ratio():
    with pytest.raises(ValueError, match="exactly one"):
        LowRankConfig()
    with pytest.raises(ValueError, match="exactly one"):
        LowRankConfig(params_ratio=0.5, macs_ratio=0.5)
    with pytest.raises(ValueError, match="params_ratio"):
        LowRankConfig(params_ratio=1.5)


def test_round_trip_and_string_values():
    cfg = config_from_dict({"method": "lowrank", "params_ratio": "0.5", "layers": "qkv,fc1", "whiten": "false",
                            "comp_steps": "0"})
    assert isinstance(cfg, LowRankConfig)
    assert cfg.params_ratio == 0.5 and cfg.layers == ("qkv", "fc1") and cfg.whiten is False
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("bad", [{"layers": "qkv,attn"}, {"comp_solver": "lbfgs"}, {"multiple": 0},
                                 {"heldout_every": 1}, {"comp_fraction": 1.0}, {"nope": 1}])
def test_bad_values_are_user_errors(bad):
    with pytest.raises(VitoptError):
        config_from_dict({"method": "lowrank", "params_ratio": 0.5, **bad})
