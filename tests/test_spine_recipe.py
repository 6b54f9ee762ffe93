"""Recipe parsing: env expansion, strict keys, one-line errors."""
import pytest

from optimizer.errors import VitoptError
from optimizer.pipeline.recipe import load_recipe


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_expansion_and_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT", "/w.pth")
    monkeypatch.delenv("NODATA", raising=False)
    r = load_recipe(write(tmp_path, "model: deit_tiny_patch16_224\ncheckpoint: ${CKPT}\ndata: ${NODATA:-}\n"
                                    "steps:\n  - eval\n  - slim: {macs: 0.7}\n  - export\n  - build: {batch: [1, 8]}\n"))
    assert r.checkpoint == "/w.pth" and r.data is None
    assert [(s.kind, s.options) for s in r.steps] == [("eval", {}), ("slim", {"macs": 0.7}), ("export", {}),
                                                     ("build", {"batch": [1, 8]})]


@pytest.mark.parametrize("text,msg", [
    ("model: m\nsteps: [eval]\nbogus: 1\n", "unknown key\\(s\\) bogus"),
    ("model: m\nsteps: [{export: {opsett: 18}}]\n", "step 1 \\(export\\): unknown export option\\(s\\): opsett"),
    # eval used to accept `reference` and never read it
    ("model: m\nsteps: [{eval: {reference: x}}]\n", "step 1 \\(eval\\): unknown eval option\\(s\\): reference"),
    # the last step's mistake is found before the first step could run
    ("model: m\nsteps: [eval, {bench: {backends: [onnxruntime, tvm]}}]\n",
     "step 2 \\(bench\\): invalid bench options: backends must be among onnxruntime, torch, tensorrt"),
    ("model: m\nsteps: [{build: {batch: 0}}]\n", "step 1 \\(build\\): invalid build options: batch must be positive"),
    ("model: m\nsteps: [{export: {precision: [fp32, int3]}}]\n", "step 1 \\(export\\): invalid export options: precision"),
    ("model: m\nsteps: [frobnicate]\n", "unknown step 'frobnicate'"),
    ("steps: [eval]\n", "'model' is required"),
    ("model: m\nsteps: []\n", "'steps' must be a non-empty list"),
    ("model: m\ncheckpoint: ${SURELY_UNSET_VAR}\nsteps: [eval]\n", "SURELY_UNSET_VAR.* is not set"),
    ("model: [unclosed\n", "is not valid YAML"),
])
def test_recipe_errors(tmp_path, text, msg):
    with pytest.raises(VitoptError, match=msg):
        load_recipe(write(tmp_path, text))


def test_step_options_are_typed(tmp_path):
    r = load_recipe(write(tmp_path, "model: m\nsteps:\n  - eval: {limit: 8}\n  - export: {opset: 17, gates_k: fixed}\n"
                                    "  - build: {batch: 4, precision: fp16}\n  - bench: {backends: torch}\n"))
    ev, ex, bu, be = (s.config for s in r.steps)
    assert (ev.batch_size, ev.limit) == (64, 8)
    assert ex.precisions == ("fp32", "fp16") and ex.deploy.opset == 17 and ex.deploy.method_options == {"gates_k": "fixed"}
    assert (bu.batch, bu.precision, be.backends) == ((4,), ("fp16",), ("torch",))


def test_method_step_options_are_checked_before_the_first_step_runs(tmp_path):
    """A bad option of a compression step fails the run before the model is even loaded."""
    from optimizer.pipeline.run import run_recipe
    r = load_recipe(write(tmp_path, "model: no_such_model_at_all\nsteps:\n  - eval\n  - slim: {macs: 0.7, bogus: 1}\n"))
    with pytest.raises(VitoptError, match="step 2 \\(slim\\): unknown slim option\\(s\\): bogus"):
        run_recipe(r, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_bench_batch_that_cannot_fit_is_refused_before_the_first_step_runs(tmp_path, monkeypatch):
    """Oracle: the run stops at the memory check (step 3 named) and the eval step before it never ran."""
    from optimizer.pipeline import run as run_mod
    ran = []
    monkeypatch.setitem(run_mod._STEPS, "eval", lambda st, opts: ran.append("eval") or {})
    text = ("model: vit_tiny_patch16_224\nmodel_kwargs: {depth: 1, embed_dim: 32, num_heads: 2, img_size: 32, "
            "patch_size: 8, num_classes: 10}\nsteps:\n  - eval\n  - export\n  - bench: {batch: [1, 100000000]}\n")
    r = load_recipe(write(tmp_path, text))
    with pytest.raises(VitoptError, match="recipe step 3 \\(bench\\): batch 100000000 needs about"):
        run_mod.run_recipe(r, tmp_path / "out")
    assert ran == [] and not (tmp_path / "out").exists()


def test_missing_recipe(tmp_path):
    with pytest.raises(VitoptError, match="recipe not found"):
        load_recipe(tmp_path / "none.yaml")


def test_readme_gives_exactly_the_two_commands():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    setup = text.split("## Set-up")[1].split("```")[1]
    cmds = [l.split("#")[0].strip() for l in setup.strip().splitlines()]
    assert cmds == ["make demo", "make test"]
    ci = (root / ".ci" / "run").read_text()
    lines = [l.strip() for l in ci.splitlines() if l.strip() and not l.strip().startswith(("#", "set ", "cd "))]
    # besides the test command, only the guarded install of headless Chromium (the report test renders HTML)
    assert lines[-1] == "make test" and all("chromium" in l or l == "fi" for l in lines[:-1])
    mk = (root / "Makefile").read_text()
    assert "\ndemo:" in mk and "\ntest:" in mk and "benchmarks/recipes/demo.yaml" in mk
