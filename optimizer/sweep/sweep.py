"""``vitopt sweep``: one recipe, many variants (budgets, methods on/off), each a full ``run_recipe``.

    OUT/sweep.json                 the recipe's hash, the --vary settings, every planned variant
    OUT/variants/<name>/           a run_recipe output (manifest.json written last: finished)
    OUT/shared/                    work shared by variants: the slim search, low-rank calibration
                                   statistics, the dense model's logits on the evaluation images

A variant is finished only when its manifest exists (run_recipe renames its directory into place
as its last act), so a sweep killed at any point and started again skips finished variants, and
the method steps resume their shared work from OUT/shared (the slim search from its checkpoint).

``--vary STEP.OPTION=V1,V2,...`` sets an option of a recipe step; the value ``off`` removes the step
(so ``--vary lowrank.params=off,0.8`` gives variants with and without lowrank). Variants are every
combination, plus the dense baseline (every compression and distill step removed).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from ..errors import VitoptError
from ..fileio import read_json, write_json
from ..pipeline.order import COMPRESSION, RECOVERY, order_problem
from ..pipeline.recipe import Recipe, Step
from ..pipeline.step_options import STEP_OPTIONS

FORMAT = "vitopt-sweep"
VERSION = 1
SWEEP_JSON = "sweep.json"
VARIANTS = "variants"
SHARED = "shared"
MANIFEST = "manifest.json"
OFF = "off"
DENSE = "dense"


@dataclass(frozen=True)
class Vary:
    """One ``--vary STEP.OPTION=V1,V2`` setting: the values are YAML scalars or ``off``."""
    step: str
    option: str
    values: tuple

    @property
    def key(self) -> str:
        return f"{self.step}.{self.option}"


@dataclass(frozen=True)
class Variant:
    name: str                  # directory name under OUT/variants
    settings: tuple            # ((key, value), ...) in --vary order; value OFF removes the step
    recipe: Recipe

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings if v != OFF) or DENSE


def parse_vary(text: str) -> Vary:
    """``"slim.macs=0.5,0.75"`` -> Vary("slim", "macs", (0.5, 0.75)); one-line errors for malformed text."""
    import yaml
    key, sep, vals = str(text).partition("=")
    step, dot, option = key.strip().partition(".")
    if not sep or not dot or not step or not option:
        raise VitoptError(f"--vary expects STEP.OPTION=V1,V2,... (e.g. slim.macs=0.5,0.75), got {text!r}")
    values = []
    for raw in vals.split(","):
        raw = raw.strip()
        if not raw:
            raise VitoptError(f"--vary {key.strip()}: empty value in {vals!r}")
        if raw.lower() == OFF:
            values.append(OFF)
            continue
        try:
            v = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise VitoptError(f"--vary {key.strip()}: cannot read value {raw!r}") from None
        values.append(v)
    if len(set(map(str, values))) != len(values):
        raise VitoptError(f"--vary {key.strip()}: a value is given twice in {vals!r}")
    return Vary(step.strip(), option.strip().replace("-", "_"), tuple(values))


def recipe_hash(recipe: Recipe) -> str:
    """Hash of what a recipe computes (model, weights, data, steps), not of where its file lies."""
    d = {k: getattr(recipe, k) for k in ("model", "model_kwargs", "checkpoint", "data", "calib", "synsets",
                                         "device", "seed", "workers")}
    d["steps"] = [[s.kind, s.options] for s in recipe.steps]
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _budget_names() -> set:
    from ..compress.runner import BUDGET_FLAGS
    return set(BUDGET_FLAGS) | set(BUDGET_FLAGS.values())


def _set_option(options: dict, option: str, value) -> dict:
    opts = dict(options)
    budgets = _budget_names()
    if option in budgets:
        # a varied budget replaces the step's budget (a slim step has exactly one)
        for b in budgets:
            opts.pop(b, None)
    opts[option] = value
    return opts


def _check_step_options(kind: str, options: dict, what: str) -> None:
    """Type-check a method step's options now (build its config), so no variant fails after hours."""
    from ..compress.runner import build_config
    try:
        if kind in STEP_OPTIONS:
            STEP_OPTIONS[kind].from_dict(options)
        else:
            build_config(kind, options)
    except VitoptError as e:
        raise VitoptError(f"{what}: {kind}: {e}") from None


def _dir_name(settings) -> str:
    parts = [f"{k.replace('.', '-')}{v}" for k, v in settings if v != OFF]
    name = "_".join(parts) or DENSE
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def plan_variants(recipe: Recipe, varies: Sequence[Vary]) -> list:
    """Every combination of ``varies`` applied to ``recipe``, plus the dense baseline; validated, no work done.

    Raises VitoptError (one line) for a step the recipe lacks, an option the step does not take, a value
    of the wrong type, or a combination whose step order is not allowed.
    """
    keys = [v.key for v in varies]
    if len(set(keys)) != len(keys):
        raise VitoptError(f"--vary: a key is given twice ({', '.join(keys)})")
    kinds = [s.kind for s in recipe.steps]
    for v in varies:
        if v.step not in kinds:
            raise VitoptError(f"--vary {v.key}: the recipe has no {v.step} step (its steps: {', '.join(kinds)})")
    methods = set(COMPRESSION) | set(RECOVERY)
    variants, seen = [], set()
    combos = [()] + list(itertools.product(*[[(v, x) for x in v.values] for v in varies])) if varies else [()]
    for combo in combos:
        dense = combo == ()
        steps = []
        for s in recipe.steps:
            if dense and s.kind in methods:
                continue
            opts, drop = dict(s.options), False
            for v, x in combo:
                if v.step == s.kind:
                    if x == OFF:
                        drop = True
                    else:
                        opts = _set_option(opts, v.option, x)
            if not drop:
                steps.append(Step(s.kind, opts, STEP_OPTIONS[s.kind].from_dict(opts) if s.kind in STEP_OPTIONS else None))
        # a distill step recovers compression: with every compression step off, it has nothing to recover
        if not any(s.kind in COMPRESSION for s in steps):
            steps = [s for s in steps if s.kind not in RECOVERY]
        settings = tuple((v.key, x) for v, x in combo)
        what = "--vary " + (", ".join(f"{k}={x}" for k, x in settings) or "(dense baseline)")
        for s in steps:
            if any(v.step == s.kind for v, _ in combo):
                _check_step_options(s.kind, s.options, what)
        problem = order_problem(steps)
        if problem:
            raise VitoptError(f"{what}: {problem}")
        sig = json.dumps([[s.kind, s.options] for s in steps], sort_keys=True, default=str)
        if sig in seen:
            continue   # e.g. every step off = the dense baseline
        seen.add(sig)
        name = DENSE if not any(s.kind in methods for s in steps) else _dir_name(settings)
        variants.append(Variant(name, settings, replace(recipe, steps=steps)))
    return variants


def variant_dir(out, name: str) -> Path:
    return Path(out) / VARIANTS / name


def is_finished(out, name: str) -> bool:
    """A variant is finished when its manifest exists (written last, atomically)."""
    return (variant_dir(out, name) / MANIFEST).is_file()


def _check_out(out, rhash: str, recipe: Recipe) -> dict:
    """The existing sweep.json of ``out`` (checked to be this recipe's), or a new one."""
    if str(out).strip() == "":
        raise VitoptError("-o: the sweep output directory is empty (give a directory, e.g. -o build/sweep)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VitoptError(f"output {out} exists and is not a directory")
    sj = out / SWEEP_JSON
    if sj.is_file():
        prev = read_json(sj, "")
        if prev.get("format") != FORMAT:
            raise VitoptError(f"{sj} is not a vitopt sweep file")
        if prev.get("recipe_sha256") != rhash:
            raise VitoptError(f"{out} holds a sweep of another recipe ({prev.get('recipe')}, hash "
                              f"{str(prev.get('recipe_sha256'))[:12]}; this one {rhash[:12]}): use another -o")
        return prev
    # a lone shared/ is work seeded from a sweep with the same method settings (fingerprinted, so reusable)
    if out.is_dir() and any(p.name != SHARED for p in out.iterdir()):
        raise VitoptError(f"{out} is not empty and holds no {SWEEP_JSON}: use an empty or new directory")
    return {"format": FORMAT, "version": VERSION, "recipe": recipe.source, "recipe_sha256": rhash, "variants": []}


def _clean_stale(out: Path, name: str) -> None:
    """Temporary directories a killed run_recipe left beside a variant (never a finished one)."""
    parent = out / VARIANTS
    if parent.is_dir():
        for p in parent.glob(f".{name}.*"):
            if p.is_dir() and (p.name.endswith(".tmp") or p.name.endswith(".old")):
                shutil.rmtree(p, ignore_errors=True)


def run_sweep(recipe: Recipe, varies: Sequence[Vary], out, only: Optional[Sequence[str]] = None, log=None) -> dict:
    """Run every variant of ``recipe`` x ``varies`` into ``out`` (skipping finished ones); returns sweep.json.

    Example: ``run_sweep(load_recipe("r.yaml"), [parse_vary("slim.macs=0.5,0.75")], "build/sweep")``
    """
    from ..pipeline.run import run_recipe
    from .. import distributed as dist
    from ..progress import progress
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    variants = plan_variants(recipe, varies)
    meta, todo_names = None, None
    # under torchrun rank 0 owns the sweep directory; every rank runs the variants' compression steps
    with dist.agree_on_errors():
        if dist.is_main():
            meta, todo_names = _prepare(recipe, varies, variants, out, log)
    meta, todo_names = dist.broadcast_object((meta, todo_names))
    out = Path(out)
    todo = [v for v in variants if v.name in todo_names]
    overall = progress(None, total=len(variants), initial=len(variants) - len(todo), desc="sweep", unit="variant")
    try:
        for v in todo:
            if dist.is_main():
                _clean_stale(out, v.name)
                log(f"sweep: variant {v.name} ({v.label})")
            bar = progress(None, total=len(v.recipe.steps), desc=v.name, unit="step")

            def on_step(i, n, kind, bar=bar):
                bar.set_postfix_str(kind)
                if i > 1:
                    bar.update(1)
            try:
                run_recipe(v.recipe, variant_dir(out, v.name), work_dir=out / SHARED, on_step=on_step)
                bar.update(1)
            finally:
                bar.close()
            overall.update(1)
    finally:
        overall.close()
    return meta


def _prepare(recipe, varies, variants, out, log) -> tuple:
    """Check or start sweep.json in ``out`` and record the variants; returns (meta, names still to run)."""
    rhash = recipe_hash(recipe)
    meta = _check_out(out, rhash, recipe)
    out = Path(out)
    (out / VARIANTS).mkdir(parents=True, exist_ok=True)
    known = {v["name"]: v for v in meta.get("variants", [])}
    for v in variants:
        steps = [{s.kind: s.options} for s in v.recipe.steps]
        if v.name in known and json.dumps(known[v.name]["steps"], sort_keys=True, default=str) != \
                json.dumps(steps, sort_keys=True, default=str):
            raise VitoptError(f"variant {v.name} in {out} was run with other steps than these --vary settings "
                              f"give it: use another -o")
        known[v.name] = {"name": v.name, "label": v.label, "settings": [list(s) for s in v.settings],
                         "steps": steps}
    meta.update(variants=list(known.values()),
                vary=sorted(set(meta.get("vary", [])) | {f"{v.key}={','.join(map(str, v.values))}" for v in varies}))
    write_json(out / SWEEP_JSON, meta)
    todo = [v for v in variants if not is_finished(out, v.name)]
    log(f"sweep: {len(variants)} variants, {len(variants) - len(todo)} already finished, {len(todo)} to run")
    return meta, [v.name for v in todo]


def read_sweep(out) -> dict:
    """sweep.json of ``out`` with, per variant, ``finished`` and its manifest (None when unfinished)."""
    if str(out).strip() == "":
        raise VitoptError("the sweep directory is empty (give the -o directory of `vitopt sweep`)")
    out = Path(out)
    meta = read_json(out / SWEEP_JSON, f"{out} is not a sweep directory (no {SWEEP_JSON}: run `vitopt sweep` first)")
    if meta.get("format") != FORMAT:
        raise VitoptError(f"{out / SWEEP_JSON} is not a vitopt sweep file")
    for v in meta.get("variants", []):
        p = variant_dir(out, v["name"]) / MANIFEST
        v["finished"] = p.is_file()
        v["manifest"] = read_json(p, "") if v["finished"] else None
    return meta



__all__ = ["Vary", "Variant", "parse_vary", "plan_variants", "run_sweep", "read_sweep", "recipe_hash",
           "variant_dir", "is_finished"]
