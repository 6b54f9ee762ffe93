"""Benchmark results as Markdown tables and JSON."""
from __future__ import annotations

import json
from typing import List, Sequence

from .latency import BenchRow

FORMAT = "vitopt-bench"
VERSION = 1


def _f(v, nd=2) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def _env_line(env: dict) -> str:
    v = env.get("versions", {})
    parts = [f"CPU {env.get('cpu', '?')} ({env.get('physical_cores', '?')} physical cores)"]
    if env.get("gpu"):
        parts.append(f"GPU {env['gpu']}")
    if env.get("threads") is not None:
        parts.append(f"threads {env['threads']}")
    if env.get("server"):
        parts.append(f"served by {env['server']} over {env.get('protocol', '?')}")
    if env.get("ort_allow_spinning") is not None:
        parts.append(f"ORT spinning {'on' if env['ort_allow_spinning'] else 'off'}")
    parts.append(", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "tensorrt", "tensorrt_rtx") if v.get(k)))
    if env.get("load_avg_1m") is not None:
        parts.append(f"load avg {env['load_avg_1m']}")
    return "; ".join(p for p in parts if p)


def to_markdown(rows: Sequence[BenchRow], title: str = "") -> str:
    """A Markdown table (one line per row) followed by each runner's environment line.

    Example: ``print(to_markdown(benchmark(runner)))``
    """
    served = any(r.concurrency is not None for r in rows)   # served rows add a concurrency column
    head = ("| runner | backend | precision | batch | " + ("concurrency | " if served else "")
            + "p50 ms | p90 ms | p99 ms | mean ms | img/s | peak mem MB | iters |")
    lines = ([f"### {title}", ""] if title else []) + [head, "|" + "---|" * (12 if served else 11)]
    for r in rows:
        conc = (f"{r.concurrency if r.concurrency is not None else '–'} | " if served else "")
        lines.append(f"| {r.name} | {r.backend} | {r.precision} | {r.batch} | {conc}{_f(r.p50_ms)} | {_f(r.p90_ms)} | "
                     f"{_f(r.p99_ms)} | {_f(r.mean_ms)} | {_f(r.throughput_ips, 1)} | {_f(r.peak_mem_mb, 1)} | "
                     f"{r.iters} |")
    seen = []
    for r in rows:
        key = (r.name, _env_line(r.env))
        if key not in seen:
            seen.append(key)
    lines.append("")
    for name, env in seen:
        lines.append(f"- {name}: {env}")
    sources = sorted({r.mem_source for r in rows if r.mem_source})
    if sources:
        lines.append("- peak memory: " + "; ".join(sources))
    return "\n".join(lines) + "\n"


def rows_to_dict(rows: Sequence[BenchRow]) -> dict:
    """JSON-ready ``{"format", "version", "rows": [...]}`` (each row carries its environment)."""
    return {"format": FORMAT, "version": VERSION, "rows": [r.to_dict() for r in rows]}


def rows_to_json(rows: Sequence[BenchRow]) -> str:
    """``rows_to_dict`` as indented JSON text."""
    return json.dumps(rows_to_dict(rows), indent=2) + "\n"


def rows_from_json(text: str) -> List[BenchRow]:
    """Inverse of ``rows_to_json``."""
    obj = json.loads(text)
    return [BenchRow.from_dict(r) for r in obj["rows"]]


def interleaved_to_markdown(result: dict, title: str = "") -> str:
    """Table of an ``interleaved_latency`` result: medians and speedups vs the reference runner."""
    ref = result["reference"]
    lines = ([f"### {title}", ""] if title else []) + [
        f"Interleaved: {result['rounds']} rounds x {result['iters_per_round']} iterations per runner; "
        f"speedup = {ref} p50 / runner p50.", "",
        "| runner | batch | p50 ms | p90 ms | img/s | speedup vs " + ref + " | per-round speedup (IQR) | iters |",
        "|" + "---|" * 8]
    for r in result["rows"]:
        q25, q75 = r["speedup_rounds_iqr"]
        lines.append(f"| {r['name']} | {r['batch']} | {_f(r['p50_ms'])} | {_f(r['p90_ms'])} | "
                     f"{_f(r['throughput_ips'], 1)} | {r['speedup']:.3f} | {r['speedup_rounds']:.3f} "
                     f"({q25:.3f}–{q75:.3f}) | {r['iters']} |")
    lines += ["", f"- {_env_line(result.get('environment', {}))}"]
    return "\n".join(lines) + "\n"
