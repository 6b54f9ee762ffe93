"""Shared by every ``benchmarks/*.py``: the provenance each result records, and path scrubbing.

Every result JSON gets a ``provenance`` block (the command that regenerates it, the git commit and
whether the tree was dirty, the date, ``optimizer.bench.environment()``) and every Markdown report
ends with a "Reproduce" section saying the same. Paths are written relative to the repository
root (``../shared/...`` for the shared weights and data), never as this machine's absolute paths.

    from _harness import write_result, deploy_to_file
    write_result("benchmarks/results/x", data, md_lines)     # x.json + x.md
"""
from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def relative(text: str) -> str:
    """``text`` with absolute paths under the repository (and its parent, where ../shared lives)
    rewritten relative to the repository root."""
    root, parent = str(ROOT), str(ROOT.parent)
    text = text.replace(root + os.sep, "").replace(root, ".")
    text = text.replace(parent + os.sep, ".." + os.sep)
    shared = str(SHARED.resolve())   # ../shared may be a link; paths read through it name its target
    return text.replace(shared + os.sep, f"..{os.sep}shared{os.sep}").replace(shared, f"..{os.sep}shared")


def scrub(obj):
    """``relative`` applied to every string of a JSON-like object."""
    if isinstance(obj, str):
        return relative(obj)
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    return obj


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(argv=None) -> dict:
    """Command (run from the repository root), commit, dirty flag, date and environment of this run."""
    from optimizer.bench import environment
    argv = list(sys.argv if argv is None else argv)
    script = relative(str(Path(argv[0]).resolve())) if argv else "?"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {"command": relative(shlex.join(["python", script, *argv[1:]])),
            "git_commit": _git("rev-parse", "HEAD") or None, "git_dirty": bool(dirty),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "environment": scrub(environment())}


def commit_label(prov: dict) -> str:
    """The commit of ``prov`` as reports print it: 12 hex digits, plus " (uncommitted changes)" when
    the tree was dirty ("unknown" outside git)."""
    return (prov["git_commit"] or "unknown")[:12] + (" (uncommitted changes)" if prov["git_dirty"] else "")


def reproduce_section(prov: dict) -> list:
    """Markdown lines saying how the result was made and how to make it again."""
    env = prov["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    commit = commit_label(prov)
    return ["", "## Reproduce", "", "```", prov["command"], "```", "",
            f"- commit {commit}, {prov['date']}",
            f"- {env.get('cpu', '?')}, {env.get('physical_cores', '?')} physical cores, GPU: {env.get('gpu') or 'none'}; "
            f"{env.get('os', '')}, Python {env.get('python', '?')}; {versions}"]


def write_result(out_base, data: dict, md_lines: list, argv=None, prov=None) -> dict:
    """Write ``out_base``.json (``data`` + provenance) and ``out_base``.md (``md_lines`` + the
    Reproduce section), paths scrubbed, atomically; returns the provenance. ``prov``: one already
    taken with ``provenance()`` (when ``data`` quotes it), else it is taken now."""
    from optimizer.fileio import write_json, write_text
    prov = prov if prov is not None else provenance(argv)
    write_json(f"{out_base}.json", scrub({**data, "provenance": prov}))
    write_text(f"{out_base}.md", relative("\n".join(list(md_lines) + reproduce_section(prov))) + "\n")
    return prov


def deploy_to_file(model, path, *, data_dir=None, description=None, **options):
    """``model`` through the product's deployment chain (what ``vitopt export`` ships) into ``path``;
    ``options`` are ``DeployOptions`` keys. Returns the chain's report (JSON-ready, paths scrubbed)."""
    from optimizer.deploy import DeployOptions, deploy_model, parity_inputs, write_onnx
    opts = DeployOptions.from_dict(options)
    result = deploy_model(model, opts, parity_inputs(model, data_dir, opts.parity_images), description=description)
    write_onnx(result, path)
    return scrub({**result.report, "options": opts.to_dict()})
