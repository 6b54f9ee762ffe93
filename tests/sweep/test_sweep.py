"""vitopt sweep: planning, bad input (one line, exit 2, nothing half-written), shared work, SIGKILL resume."""
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optimizer.cli.main import main
from optimizer.errors import VitoptError
from optimizer.pipeline.recipe import load_recipe
from optimizer.sweep import parse_vary, plan_variants

ROOT = Path(__file__).resolve().parents[2]


def test_plan_is_every_combination_plus_dense(tiny_recipe):
    r = load_recipe(tiny_recipe())
    vs = plan_variants(r, [parse_vary("slim.macs=off,0.5,0.8"), parse_vary("lowrank.params=off,0.7")])
    names = [v.name for v in vs]
    # (off, off) is the dense baseline, planned once
    assert names == ["dense", "lowrank-params0.7", "slim-macs0.5", "slim-macs0.5_lowrank-params0.7",
                     "slim-macs0.8", "slim-macs0.8_lowrank-params0.7"]
    kinds = {v.name: [s.kind for s in v.recipe.steps] for v in vs}
    assert kinds["dense"] == ["eval", "export", "bench"]
    assert kinds["lowrank-params0.7"] == ["lowrank", "eval", "export", "bench"]
    assert kinds["slim-macs0.5_lowrank-params0.7"] == ["slim", "lowrank", "eval", "export", "bench"]
    slim = next(s for s in vs[2].recipe.steps if s.kind == "slim")
    assert slim.options["macs"] == 0.5 and slim.options["steps"] == 3      # other options kept


def test_varying_a_budget_replaces_the_steps_budget(tiny_recipe):
    r = load_recipe(tiny_recipe())
    (v,) = [v for v in plan_variants(r, [parse_vary("lowrank.macs=0.6")]) if v.name != "dense"]
    low = next(s for s in v.recipe.steps if s.kind == "lowrank")
    assert low.options.get("macs") == 0.6 and "params" not in low.options


@pytest.mark.parametrize("vary,msg", [
    ("slim.macs", "--vary expects STEP.OPTION=V1,V2"),
    ("gates.macs=0.5", "--vary gates.macs: the recipe has no gates step"),
    ("slim.bogus=1", "unknown slim option\\(s\\): bogus"),
    ("slim.macs=0.5,abc", "slim.macs_ratio: cannot read 'abc' as float"),
    ("slim.macs=0.5,1.5", "macs_ratio must be in \\(0, 1\\]"),
    ("export.opsett=17", "unknown export option\\(s\\): opsett"),
    ("slim.macs=0.5,0.5", "a value is given twice"),
])
def test_bad_vary_is_one_line_exit_2_and_writes_nothing(tiny_recipe, tmp_path, capsys, vary, msg):
    out = tmp_path / "sweep"
    assert main(["sweep", str(tiny_recipe()), "--vary", vary, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(msg, err), err
    assert not out.exists()


def test_empty_output_and_foreign_directories_are_refused(tiny_recipe, tmp_path, capsys):
    r = tiny_recipe()
    assert main(["sweep", str(r), "--vary", "slim.macs=0.5", "-o", ""]) == 2
    assert "output directory is empty" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("mine")
    assert main(["sweep", str(r), "--vary", "slim.macs=0.5", "-o", str(busy)]) == 2
    assert "is not empty and holds no sweep.json" in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == ["x.txt"]


def test_a_sweep_directory_of_another_recipe_is_refused(tiny_recipe, tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text('{"format": "vitopt-sweep", "version": 1, "recipe": "other.yaml", '
                                    '"recipe_sha256": "0123456789abcdef", "variants": []}')
    assert main(["sweep", str(tiny_recipe()), "--vary", "slim.macs=0.5", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a sweep of another recipe (other.yaml" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json"]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_sigkill_mid_sweep_then_rerun_skips_finished_and_reuses_the_search(tiny_recipe, tmp_path, image_folder):
    """3 variants (dense, slim 0.5, slim 0.8) share one slim search; kill -9 once the search has a
    checkpoint, rerun: dense untouched, the search resumed (not restarted), every variant finished."""
    # slim + eval only: what is tested is the sweep's bookkeeping, not the deployment steps
    # the fixture's unreadable image is dropped: a search epoch whose last batch holds only unreadable
    # images never advances its step (a slim search issue of its own, not the sweep's)
    (image_folder / "n00000003" / "broken.jpg").unlink()
    recipe = tmp_path / "kill.yaml"
    recipe.write_text("\n".join(l for l in tiny_recipe(search_steps=60).read_text().splitlines()
                                if not any(k in l for k in ("lowrank:", "export:", "bench:"))) + "\n")
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "optimizer.cli.main", "sweep", str(recipe), "--vary", "slim.macs=0.5,0.8",
           "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = None
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        found = list((out / "shared").glob("slim-*/slim_search.pt")) if (out / "shared").is_dir() else []
        if found and (out / "variants" / "dense" / "manifest.json").is_file():
            ckpt = found[0]
            break
        time.sleep(0.05)
    assert ckpt is not None, "the sweep never reached the slim search"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    dense_manifest = out / "variants" / "dense" / "manifest.json"
    before = {p: (_sha(p), p.stat().st_mtime_ns) for p in (out / "variants" / "dense").rglob("*") if p.is_file()}
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    err = rerun.stderr
    finished_before = int(re.search(r"sweep: 3 variants, (\d) already finished", err).group(1))
    assert finished_before >= 1
    # dense was not rerun: every file byte- and mtime-identical
    assert {p: (_sha(p), p.stat().st_mtime_ns) for p in before} == before
    assert dense_manifest.is_file()
    # the search resumed from its checkpoint (a step > 0), and the second budget reused the finished one
    resumed = [(int(a), int(b)) for a, b in re.findall(r"resuming the mask search at step (\d+)/(\d+)", err)]
    assert resumed and all(a > 0 for a, _ in resumed)
    if finished_before == 1:     # killed before slim 0.5 finished: both budgets ran now, the second from 120/120
        assert resumed[-1] == (60, 60) and len(resumed) == 2
    assert "mask search" not in re.sub(r"resuming the mask search", "", err)   # never started afresh
    for name in ("dense", "slim-macs0.5", "slim-macs0.8"):
        assert (out / "variants" / name / "manifest.json").is_file()
    assert not [p for p in (out / "variants").iterdir() if p.name.startswith(".")]   # no stale temp dirs


def test_a_new_sweep_seeded_with_another_sweeps_shared_work_reuses_its_search(tiny_recipe, tmp_path, capsys):
    """An output directory holding only shared/ (copied from a sweep of the same method settings) is accepted
    and its finished slim search is reused, not run again; anything else beside it is still refused."""
    recipe = tmp_path / "seed.yaml"
    recipe.write_text("\n".join(l for l in tiny_recipe(search_steps=4).read_text().splitlines()
                                if not any(k in l for k in ("lowrank:", "export:", "bench:"))) + "\n")
    assert main(["sweep", str(recipe), "--vary", "slim.macs=0.5", "-o", str(tmp_path / "a")]) == 0
    assert "resuming the mask search" not in capsys.readouterr().err     # a's own search, from step 0
    shutil.copytree(tmp_path / "a" / "shared", tmp_path / "b" / "shared")
    assert main(["sweep", str(recipe), "--vary", "slim.macs=0.8", "-o", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert re.findall(r"resuming the mask search at step (\d+)/(\d+)", err) == [("4", "4")]   # a's, finished
    assert (tmp_path / "b" / "variants" / "slim-macs0.8" / "manifest.json").is_file()
    shutil.copytree(tmp_path / "a" / "shared", tmp_path / "c" / "shared")
    (tmp_path / "c" / "notes.txt").write_text("mine")
    assert main(["sweep", str(recipe), "--vary", "slim.macs=0.8", "-o", str(tmp_path / "c")]) == 2
    assert "is not empty and holds no sweep.json" in capsys.readouterr().err
