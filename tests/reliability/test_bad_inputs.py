"""Every subcommand fed broken or hostile input: exit 2, one stderr line naming the problem, no
traceback, nothing left behind, the user's files untouched.

The table is the contract; a new subcommand adds its rows here. Placeholders in ``argv``:
``{name}`` = a path from the ``broken`` fixture, ``{user_dir}`` = a directory of the user's own
files, ``{out}`` = a fresh path in the sandbox, ``{cwd}`` = the working directory.
"""
from __future__ import annotations

import pytest

from .conftest import ARCH, assert_one_error, cli, snapshot

FAST_SLIM = ["--set", "steps=1", "--set", "batch_size=2", "--set", "recovery=none", "--workers", "0"]

# (id, argv, needle in the error line)
CASES = [
    # eval
    ("eval-garbage-pth", ["eval", "--model", ARCH, "--checkpoint", "{garbage_pth}"], "cannot read checkpoint"),
    ("eval-empty-pth", ["eval", "--model", ARCH, "--checkpoint", "{empty_pth}"], "is empty (0 bytes)"),
    ("eval-truncated-pth", ["eval", "--model", ARCH, "--checkpoint", "{truncated_pth}"], "cannot read checkpoint"),
    ("eval-not-a-state-dict", ["eval", "--model", ARCH, "--checkpoint", "{notstate_pth}"], "is not a state_dict"),
    ("eval-garbage-safetensors", ["eval", "--model", ARCH, "--checkpoint", "{garbage_safetensors}"],
     "cannot read safetensors checkpoint"),
    ("eval-workers-abc", ["eval", "--model", ARCH, "--workers", "abc"], "--workers must be an integer >= 0"),
    ("eval-json-dir", ["eval", "--model", ARCH, "--json", "{user_dir}"], "is a directory"),
    ("eval-json-is-input", ["eval", "--model", ARCH, "--checkpoint", "{good_pth}", "--json", "{good_pth}"],
     "is one of the inputs"),
    ("eval-synset-folders-no-list", ["eval", "--model", ARCH, "--data", "{synset_no_list}", "--workers", "0"],
     "pass --synsets FILE"),
    ("eval-3-folders-1000-classes", ["eval", "--model", ARCH, "--data", "{three_plain_classes}", "--workers", "0"],
     "pass --synsets FILE"),
    ("eval-only-corrupt-images", ["eval", "--model", ARCH, "--checkpoint", "{good_pth}", "--data", "{corrupt_images}",
                                  "--workers", "0"], "no readable image in"),
    ("eval-not-a-model-dir", ["eval", "--model", "{not_a_model_dir}"], "is not a compressed model directory"),
    # export
    ("export-o-dir", ["export", "--model", ARCH, "-o", "{user_dir}"], "is a directory"),
    ("export-o-cwd", ["export", "--model", ARCH, "-o", "."], "is a directory"),
    ("export-o-is-checkpoint", ["export", "--model", ARCH, "--checkpoint", "{good_pth}", "-o", "{good_pth}"],
     "is one of the inputs"),
    ("export-garbage-pth", ["export", "--model", ARCH, "--checkpoint", "{garbage_pth}", "-o", "{out}.onnx"],
     "cannot read checkpoint"),
    ("export-json-dir", ["export", "--model", ARCH, "-o", "{out}.onnx", "--json", "{user_dir}"], "is a directory"),
    # build
    ("build-garbage-onnx", ["build", "{garbage_onnx}", "-o", "{out}.engine"], "not a readable ONNX model"),
    ("build-empty-onnx", ["build", "{empty_onnx}", "-o", "{out}.engine"], "empty.onnx"),
    ("build-o-dir", ["build", "{garbage_onnx}", "-o", "{user_dir}"], "is a directory"),
    ("build-o-is-input", ["build", "{garbage_onnx}", "-o", "{garbage_onnx}"], "is one of the inputs"),
    # bench
    ("bench-garbage-onnx", ["bench", "{garbage_onnx}", "--iters", "1", "--warmup", "0", "--min-time", "0"],
     "cannot load ONNX model"),
    ("bench-huge-batch", ["bench", ARCH, "--batch", "100000"], "GiB"),
    ("bench-json-dir", ["bench", ARCH, "--json", "{user_dir}"], "is a directory"),
    ("bench-markdown-dir", ["bench", ARCH, "--markdown", "{cwd}"], "is a directory"),
    # compress
    ("compress-o-cwd", ["compress", "--method", "slim", "--model", ARCH, "--calib", "{data}", "-o", ".", *FAST_SLIM],
     "is the current directory"),
    ("compress-o-user-dir", ["compress", "--method", "slim", "--model", ARCH, "--calib", "{data}", "-o", "{user_dir}",
                             *FAST_SLIM], "pass --force to replace it"),
    ("compress-o-contains-calib", ["compress", "--method", "slim", "--model", ARCH, "--calib", "{data}",
                                   "-o", "{data_parent}", *FAST_SLIM], "contains the input"),
    ("compress-workers-abc", ["compress", "--method", "slim", "--model", ARCH, "--calib", "{data}", "-o", "{out}",
                              "--macs", "0.9", "--workers", "abc"], "--workers must be an integer >= 0"),
    ("compress-garbage-pth", ["compress", "--method", "slim", "--model", ARCH, "--checkpoint", "{garbage_pth}",
                              "--calib", "{data}", "-o", "{out}", "--macs", "0.9", *FAST_SLIM], "cannot read checkpoint"),
    ("compress-json-dir", ["compress", "--method", "slim", "--model", ARCH, "--calib", "{data}", "-o", "{out}",
                           "--json", "{user_dir}", *FAST_SLIM], "is a directory"),
    # distill
    ("distill-o-user-dir", ["distill", "--student", "{not_a_model_dir}", "--teacher", ARCH, "--data", "{data}",
                            "-o", "{user_dir}"], "pass --force to replace it"),
    ("distill-workers-abc", ["distill", "--student", ARCH, "--teacher", ARCH, "--data", "{data}",
                             "--workers", "abc"], "--workers must be an integer >= 0"),
    ("distill-student-not-a-model", ["distill", "--student", "{not_a_model_dir}", "--teacher", ARCH,
                                     "--data", "{data}", "--workers", "0"], "is not a compressed model directory"),
    # run
    ("run-o-user-dir", ["run", "{eval_recipe}", "-o", "{user_dir}"], "pass --force to replace it"),
    ("run-o-cwd", ["run", "{eval_recipe}", "-o", "."], "is the current directory"),
    ("run-garbage-recipe", ["run", "{bad_recipe}", "-o", "{out}"], "bad.yaml"),
    ("run-missing-checkpoint", ["run", "{missing_ckpt_recipe}", "-o", "{out}"], "checkpoint not found"),
    ("run-bench-huge-batch", ["run", "{huge_bench_recipe}", "-o", "{out}"], "batch 100000 needs about"),
    ("run-json-dir", ["run", "{eval_recipe}", "-o", "{out}", "--json", "{user_dir}"], "is a directory"),
    # compare
    ("compare-garbage-onnx", ["compare", "{garbage_onnx}", "--data", "{data}"], "is not a readable ONNX model"),
    ("compare-missing-data", ["compare", "{garbage_onnx}", "--data", "{out}"], "--data directory not found"),
    # surgery
    ("surgery-garbage-onnx", ["surgery", "{garbage_onnx}", "-o", "{out}.onnx"], "is not a valid ONNX model"),
    ("surgery-o-dir", ["surgery", "{garbage_onnx}", "-o", "{user_dir}"], "is a directory"),
    # quantize
    ("quantize-garbage-onnx", ["quantize", "{garbage_onnx}", "-o", "{out}.onnx", "--calib", "{data}"], "as ONNX"),
    ("quantize-o-is-input", ["quantize", "{garbage_onnx}", "-o", "{garbage_onnx}", "--calib", "{data}"],
     "is one of the inputs"),
    # sweep / report / pick
    ("sweep-unknown-vary", ["sweep", "{eval_recipe}", "--vary", "nosuch.macs=0.5", "-o", "{out}"], "the recipe has no nosuch step"),
    ("sweep-o-user-dir", ["sweep", "{eval_recipe}", "--vary", "eval.batch_size=2", "-o", "{user_dir}"], "is not empty and holds no sweep.json"),
    ("report-not-a-sweep", ["report", "{user_dir}"], "is not a sweep directory"),
    ("pick-not-a-sweep", ["pick", "{user_dir}", "--batch", "8"], "is not a sweep directory"),
    # serve
    ("serve-prepare-garbage-onnx", ["serve-prepare", "{garbage_onnx}", "-o", "{out}"], "cannot read ONNX model"),
    ("serve-check-not-a-repo", ["serve-check", "{user_dir}"], "holds no model"),
]


def _fill(argv, broken, user_dir, sandbox) -> list:
    from pathlib import Path
    names = {**broken, "user_dir": str(user_dir), "out": str(sandbox.root / "out"), "cwd": str(sandbox.root),
             "data_parent": str(Path(broken["data"]).parent)}
    return [a.format(**names) for a in argv]


@pytest.mark.parametrize("argv,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(argv, needle, broken, user_dir, sandbox, capsys):
    before = {**snapshot(user_dir), **{k: v for p in broken.values() for k, v in snapshot(p).items()}}
    argv = _fill(argv, broken, user_dir, sandbox)
    rc, out, err = cli(capsys, *argv)
    assert_one_error(rc, err, argv[0], needle)
    after = {**snapshot(user_dir), **{k: v for p in broken.values() for k, v in snapshot(p).items()}}
    assert after == before
    assert not (sandbox.root / "out").exists()


def test_device_cuda_without_a_gpu_is_refused_before_work(broken, sandbox, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU; the refusal is for machines without one")
    for argv, cmd in ((["run", broken["cuda_recipe"], "-o", "out"], "run"),
                      (["compress", "--method", "slim", "--model", ARCH, "--calib", broken["data"], "-o", "out",
                        "--macs", "0.9", "--device", "cuda"], "compress")):
        rc, out, err = cli(capsys, *argv)
        assert_one_error(rc, err, cmd, "cuda")
        assert not (sandbox.root / "out").exists()


def test_garbage_engine(broken, sandbox, capsys):
    """On a GPU machine the engine is opened and refused; without one nothing can run it, and that is said."""
    from optimizer.runners import gpu_available
    rc, out, err = cli(capsys, "bench", broken["garbage_engine"], "--iters", "1", "--warmup", "0", "--min-time", "0")
    assert_one_error(rc, err, "bench", "engine" if gpu_available() else "every requested backend was skipped")


def test_every_subcommand_has_rows():
    import argparse
    from optimizer.cli.main import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    covered = {c[1][0] for c in CASES}
    assert set(sub.choices) <= covered, f"add rows for: {set(sub.choices) - covered}"
