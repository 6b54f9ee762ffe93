"""Sweeps of a recipe over budgets and method combinations, their report, and picking a variant.

    from optimizer.sweep import parse_vary, run_sweep, sweep_results, write_report, pick_variant

Modules: ``sweep`` (plan and run variants, resumable), ``results`` (one row of measured numbers per
variant, bench files from other machines merged), ``report`` (Markdown + self-contained HTML with
plots), ``pick`` (the best variant under latency / agreement / memory constraints).
Heavy imports (torch, matplotlib) happen inside the functions that need them.
"""
from .sweep import Variant, Vary, parse_vary, plan_variants, read_sweep, recipe_hash, run_sweep

__all__ = ["Variant", "Vary", "parse_vary", "plan_variants", "read_sweep", "recipe_hash", "run_sweep"]
