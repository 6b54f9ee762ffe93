"""``vitopt compress --method slim`` and a ``slim`` step in a ``vitopt run`` recipe (timm's test_vit)."""
from __future__ import annotations

import json

import pytest
import torch

from optimizer.cli.main import main
from optimizer.compress import load_compressed
from optimizer.counting import count_macs
from optimizer.models.loading import create_architecture

FAST = ["--set", "steps=1", "--set", "batch_size=2", "--set", "recovery=none", "--workers", "0"]


def test_compress_cli_writes_a_model_meeting_the_budget(image_folder, tmp_path):
    out = tmp_path / "slim"
    rc = main(["compress", "--method", "slim", "--model", "test_vit", "--calib", str(image_folder),
               "--macs", "0.7", "-o", str(out), *FAST])
    assert rc == 0
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["steps"][0]["method"] == "slim"
    loaded = load_compressed(out).model
    ratio = count_macs(loaded).macs / count_macs(create_architecture("test_vit")).macs
    assert abs(ratio - 0.7) <= 0.02 * 0.7
    with torch.no_grad():
        assert loaded(torch.randn(1, 3, 160, 160)).shape == (1, 1000)


def test_compress_cli_rejects_bad_options(image_folder, tmp_path, capsys):
    rc = main(["compress", "--method", "slim", "--model", "test_vit", "--calib", str(image_folder),
               "--macs", "0.7", "-o", str(tmp_path / "x"), "--set", "ranking=best"])
    assert rc == 2
    assert "ranking must be one of global, per_type" in capsys.readouterr().err


def test_run_recipe_accepts_a_slim_step(image_folder, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
model: test_vit
calib: {image_folder}
workers: 0
steps:
  - slim: {{macs: 0.8, steps: 1, batch_size: 2, recovery: none, importance: magnitude}}
""")
    rc = main(["run", str(recipe), "-o", str(tmp_path / "out")])
    assert rc == 0
    found = list((tmp_path / "out").rglob("recipe.json"))
    assert found, "the run wrote no compressed model"
    steps = json.loads(found[0].read_text())["steps"]
    assert steps[0]["method"] == "slim" and steps[0]["config"]["macs_ratio"] == 0.8
