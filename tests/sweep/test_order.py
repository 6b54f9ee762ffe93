"""Step-order rules: each rejected at load with its one-line reason; the supported combined orders load and run."""
import pytest

from optimizer.errors import VitoptError
from optimizer.pipeline.order import AT_MOST_ONCE, NEEDS_BEFORE, NOT_AFTER, NOT_TWICE_IN_A_ROW
from optimizer.pipeline.recipe import load_recipe

HEAD = "model: m\nsteps:\n"

# one recipe per rule: (steps, the reason it must give)
BAD = [
    ("[slim: {macs: 0.7}, export, lowrank: {params: 0.8}]", "step 3 \\(lowrank\\): a compression step after export"),
    ("[slim: {macs: 0.7}, export, distill]", "step 3 \\(distill\\): distill after export"),
    ("[export, build, export]", "step 3 \\(export\\): export after build"),
    ("[lowrank: {params: 0.8}, slim: {macs: 0.7}]", "step 2 \\(slim\\): slim after lowrank is not supported"),
    ("[gates: {macs: 0.7}, slim: {macs: 0.7}]", "step 2 \\(slim\\): slim after gates"),
    ("[gates: {macs: 0.7}, distill]", "step 2 \\(distill\\): distill after gates is not supported"),
    ("[gates: {macs: 0.7}, lowrank: {params: 0.8}]", "step 2 \\(lowrank\\): lowrank after gates"),
    ("[eval, build]", "step 2 \\(build\\): build step needs an export step before it"),
    ("[{bench: {backends: [onnxruntime]}}]", "step 1 \\(bench\\): bench on onnxruntime needs an export step"),
    ("[export, {bench: {backends: [tensorrt]}}]", "step 2 \\(bench\\): bench on tensorrt needs a build step"),
    ("[distill, slim: {macs: 0.7}]", "step 1 \\(distill\\): distill recovers what a compression step changed"),
    ("[slim: {params: 0.7}, slim: {params: 0.5}]", "step 2 \\(slim\\): two slim steps"),   # macs would merge: "slim after merge"
    ("[lowrank: {params: 0.8}, lowrank: {params: 0.8}]", "step 2 \\(lowrank\\): two lowrank steps"),
    ("[gates: {macs: 0.7}, gates: {macs: 0.6}]", "step 2 \\(gates\\): two gates steps"),
    ("[export, export]", "step 2 \\(export\\): two export steps"),
    ("[export, build, build]", "step 3 \\(build\\): two build steps"),
    ("[slim: {macs: 0.7}, distill, distill]", "step 3 \\(distill\\): two distill steps in a row"),
    ("[merge: {r: 8}, slim: {macs: 0.7}]", "step 2 \\(slim\\): slim after merge is not supported"),
    ("[lowrank: {params: 0.8}, merge: {r: 8}]", "step 2 \\(merge\\): merge after lowrank"),
    ("[gates: {macs: 0.7}, merge: {r: 8}]", "step 2 \\(merge\\): merge after gates"),
    ("[merge: {r: 8}, merge: {r: 4}]", "step 2 \\(merge\\): two merge steps"),
]
# slim's token_mode merge is held to the merge rules (the BAD rows above count each rule once)
MERGE_MODE = [
    ("[slim: {macs: 0.7, token_mode: merge}, slim: {params: 0.5}]", "step 2 \\(slim\\): slim after merge"),
    # merge is slim's default token mode: a MACs budget merges unless told otherwise
    ("[slim: {macs: 0.7}, slim: {params: 0.5}]", "step 2 \\(slim\\): slim after merge"),
]


def test_recipe_default_token_mode_is_slim_configs():
    from optimizer.methods.slim import SlimConfig
    from optimizer.pipeline.order import SLIM_TOKEN_MODE
    assert SlimConfig(macs_ratio=0.7).token_mode == SLIM_TOKEN_MODE


def test_every_rule_has_a_rejected_recipe():
    assert len(BAD) == len(NOT_AFTER) + len(NEEDS_BEFORE) + len(AT_MOST_ONCE) + len(NOT_TWICE_IN_A_ROW)


@pytest.mark.parametrize("steps,msg", BAD + MERGE_MODE)
def test_nonsensical_order_is_rejected_at_load(tmp_path, steps, msg):
    p = tmp_path / "r.yaml"
    p.write_text(f"model: m\nsteps: {steps}\n")
    with pytest.raises(VitoptError, match=msg) as e:
        load_recipe(p)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("steps", [
    "[slim: {macs: 0.7, token_mode: drop}, lowrank: {params: 0.8}, gates: {macs: 0.6}, eval, export, build, bench]",
    "[slim: {params: 0.7}, lowrank: {params: 0.8}, gates: {macs: 0.6}, export]",     # a params budget never merges
    "[slim: {macs: 0.7}, distill, lowrank: {params: 0.8}, distill, export]",
    "[slim: {macs: 0.7, token_mode: merge}, gates: {macs: 0.6}, export]",   # gates wrap merging blocks
    "[slim: {macs: 0.7}, gates: {macs: 0.6}, export]",                      # (merge is slim's default)
    "[merge: {r: 8}, gates: {macs: 0.6}, export]",
    "[merge: {r: 8}, distill, export]",     # the manifold loss compares merged tokens with their patches' mean
    "[eval, lowrank: {params: 0.8}, eval, export, {bench: {backends: [torch, onnxruntime]}}]",
    "[{bench: {backends: [torch]}}, export, build, {bench: {backends: [onnxruntime, tensorrt]}}]",
])
def test_sensible_orders_load(tmp_path, steps):
    p = tmp_path / "r.yaml"
    p.write_text(f"model: m\nsteps: {steps}\n")
    assert load_recipe(p).steps


def test_cli_rejects_bad_order_before_any_work(tmp_path, capsys):
    from optimizer.cli.main import main
    p = tmp_path / "r.yaml"
    p.write_text("model: deit_tiny_patch16_224\nsteps: [slim: {macs: 0.7}, export, lowrank: {params: 0.8}]\n")
    assert main(["run", str(p), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "a compression step after export" in err
    assert not (tmp_path / "out").exists()


def test_slim_lowrank_distill_export_runs_on_a_tiny_vit(tmp_path, image_folder):
    """The combined order runs end to end; distill keeps the structure and the saved model replays it."""
    import torch
    from optimizer.compress import load_compressed
    from optimizer.pipeline.run import run_recipe
    p = tmp_path / "r.yaml"
    p.write_text(f"""
model: vit_tiny_patch16_224
model_kwargs: {{depth: 2, embed_dim: 64, num_heads: 4, img_size: 32, patch_size: 8, num_classes: 5}}
calib: {image_folder}
workers: 0
steps:
  - slim: {{macs: 0.8, importance: magnitude, prune_tokens: false, recovery: none}}
  - lowrank: {{params: 0.8, calib_images: 6, batch_size: 3, heldout_every: 0, probe_images: 2}}
  - distill: {{steps: 2, batch_size: 2, augment: false, eval_at_start: false}}
  - export: {{opset: 18, parity_images: 2}}
""")
    m = run_recipe(load_recipe(p), tmp_path / "out")
    kinds = [s["step"] for s in m["steps"]]
    assert kinds == ["slim", "lowrank", "distill", "export"]
    dist = m["steps"][2]["result"]
    assert dist["report"]["steps"] == 2
    assert dist["before"]["params"] == dist["after"]["params"]          # weights only
    assert m["steps"][3]["result"]["parity"]["passed"]
    loaded = load_compressed(tmp_path / "out" / "compressed")
    assert [s["method"] for s in loaded.recipe["steps"]] == ["slim", "lowrank", "distill"]
    assert sum(p.numel() for p in loaded.model.parameters()) == dist["after"]["params"]
    x = torch.randn(1, 3, 32, 32)
    assert loaded.model(x).shape == (1, 5)
