"""``vitopt report OUT/``: report.md + a self-contained report.html (plots embedded) for a sweep.

Plots (matplotlib, Agg backend, no display needed):
  accuracy   top-1 and agreement with the dense model vs MACs, the Pareto frontier marked
  latency    p50 latency vs batch, one panel per backend / precision / machine, a line per variant
  throughput images/s vs batch, the same panels
  engine     engine activation memory vs the engine's largest batch, per variant and precision
  size       parameters and engine memory (weights + activations) per variant
The table lists every variant with its steps; top-1 differences to the dense model carry their
paired standard error (same images, per-image correctness), and differences within two standard
errors are marked as noise.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Optional, Sequence

from ..fileio import write_bytes, write_text
from .results import VariantResult, pareto, sweep_results

PLOTS = ("accuracy", "latency", "throughput", "engine", "size")
PLOT_TITLES = {"accuracy": "Accuracy vs MACs (Pareto frontier marked)", "latency": "Latency vs batch",
               "throughput": "Throughput vs batch", "engine": "Engine activation memory vs max batch",
               "size": "Parameters and engine memory per variant"}
TABLE_BATCHES = (1, 8, 32)


def _fmt(v, nd=2, none="–"):
    return none if v is None else f"{v:.{nd}f}"


def _steps_text(r: VariantResult) -> str:
    parts = []
    for s in r.steps:
        (kind, opts), = s.items()
        if kind in ("eval", "export", "build", "bench"):
            continue
        budget = {k: v for k, v in (opts or {}).items() if k in ("macs", "params", "latency", "macs_ratio",
                                                                "params_ratio", "latency_ratio")}
        parts.append(kind + ("(" + ", ".join(f"{k}={v}" for k, v in budget.items()) + ")" if budget else ""))
    if r.quantized:
        parts.append(r.precision)
    return " → ".join(parts) or "dense"


def frontier_names(results: Sequence[VariantResult]) -> list:
    """Variants on the agreement-vs-MACs frontier (lower MACs, higher agreement); all when no agreement."""
    if not any(r.agreement is not None for r in results):
        return [r.name for r in results]
    return [results[i].name for i in pareto([(r.macs, r.agreement) for r in results])]


def paired_vs_dense(results: Sequence[VariantResult]) -> dict:
    """name -> (Δ top-1 vs dense, paired SE) in points, where both have per-image correctness."""
    from ..evaluation import paired_difference
    dense = next((r for r in results if r.is_dense), None)
    out = {}
    if dense is None:
        return out
    for r in results:
        if not r.is_dense and r.top1 is not None and dense.top1 is not None:   # no accuracy, no difference
            d = paired_difference(r.per_image, dense.per_image)
            if d is not None:
                out[r.name] = d
    return out


def table_rows(results: Sequence[VariantResult], backend: str = "onnxruntime", precision: Optional[str] = None) -> list:
    """One dict per variant with the table's columns (used by the Markdown/HTML table and the frontier print).
    ``precision``: of the unquantized rows' latency / engine columns (None: fp32); quantized rows show their own."""
    front = set(frontier_names(results))
    paired = paired_vs_dense(results)
    rows = []
    for r in results:
        d = paired.get(r.name)
        delta = None
        if d is not None:
            delta = f"{d[0]:+.2f} ± {d[1]:.2f}" + (" (noise)" if abs(d[0]) < 2 * d[1] else "")
        prec = r.precision if r.quantized else (precision or "fp32")
        eng = r.engines.get(prec) or {}
        row = {"variant": r.name, "steps": _steps_text(r), "precision": prec, "GMACs": _fmt(r.macs / 1e9 if r.macs else None, 3),
               "params M": _fmt(r.params / 1e6 if r.params else None),
               "top-1 %": _fmt(r.top1), "Δ top-1 ± SE": delta or "–", "agreement %": _fmt(r.agreement)}
        for b in TABLE_BATCHES:
            row[f"{backend} b{b} ms"] = _fmt(r.latency_ms(backend, b, prec, _local_device(r)))
        row["engine MB"] = _fmt(eng.get("size_mb"), 1)
        row["act. MB"] = _fmt(eng.get("activation_mb"), 1)
        row["frontier"] = "yes" if r.name in front else ""
        rows.append(row)
    return rows


def _local_device(r: VariantResult) -> Optional[str]:
    """The machine whose numbers the table shows: the sweep's own bench rows, else the first merged file's
    (rows from further machines are plotted, not tabled)."""
    local = [b["device_label"] for b in r.bench if b.get("source") == "sweep"] or [b["device_label"] for b in r.bench]
    return local[0] if local else None


def markdown_table(rows: list) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ---- plots -------------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_accuracy(results) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, attr, title in ((axes[0], "top1", "top-1 %"), (axes[1], "agreement", "agreement with dense %")):
        pts = [(r.macs / 1e9 if r.macs else None, getattr(r, attr)) for r in results]
        if not any(v is not None for _, v in pts):
            _empty(ax, f"{title}: not measured (no evaluation images, or random weights)")
            continue
        for r, (x, y) in zip(results, pts):
            if x is not None and y is not None:
                ax.scatter([x], [y], s=30)
                ax.annotate(r.name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted(pts[i] for i in pareto(pts))
        if front:
            ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1.2, label="Pareto frontier")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel("GMACs per image")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    return _png(fig)


def _panels(results) -> list:
    keys = []
    for r in results:
        for b in r.bench:
            k = (b["backend"], b.get("precision", "?"), b["device_label"])
            if k not in keys:
                keys.append(k)
    return keys


def plot_vs_batch(results, metric: str) -> bytes:
    """``metric``: "p50_ms" (latency) or "throughput_ips"."""
    plt = _plt()
    keys = _panels(results)
    n = max(1, len(keys))
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4), squeeze=False)
    if not keys:
        _empty(axes[0][0], "no bench rows (add a bench step to the recipe)")
    for ax, (backend, prec, dev) in zip(axes[0], keys):
        for r in results:
            pts = sorted((int(b["batch"]), b[metric]) for b in r.bench
                         if (b["backend"], b.get("precision", "?"), b["device_label"]) == (backend, prec, dev))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=r.name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch")
        ax.set_ylabel("p50 ms per batch" if metric == "p50_ms" else "images / s")
        ax.set_title(f"{backend} {prec}\n{dev}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def plot_engine(results) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    any_pt = False
    for r in results:
        for prec, e in sorted(r.engines.items()):
            if e.get("activation_mb") is not None and e.get("max_batch"):
                ax.scatter([e["max_batch"]], [e["activation_mb"]], marker="o" if prec == "fp32" else "s")
                ax.annotate(f"{r.name} {prec}", (e["max_batch"], e["activation_mb"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
                any_pt = True
    if not any_pt:
        _empty(ax, "no engines built (add a build step; TensorRT for RTX builds without a GPU)")
    else:
        ax.set_xlabel("engine max batch (optimisation profile)")
        ax.set_ylabel("activation memory MB")
        ax.grid(alpha=0.3)
    return _png(fig)


def plot_size(results) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(results) + 2), 4))
    names = [r.name for r in results]
    x = list(range(len(results)))
    params = [(r.params or 0) / 1e6 for r in results]
    ax.bar([i - 0.2 for i in x], params, width=0.4, label="params M")
    mem = [r.memory_mb() for r in results]
    if any(m is not None for m in mem):
        ax.bar([i + 0.2 for i in x], [m or 0 for m in mem], width=0.4,
               label="engine memory MB (weights + activations, own precision)")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def render_plots(results) -> dict:
    return {"accuracy": plot_accuracy(results), "latency": plot_vs_batch(results, "p50_ms"),
            "throughput": plot_vs_batch(results, "throughput_ips"), "engine": plot_engine(results),
            "size": plot_size(results)}


# ---- documents ---------------------------------------------------------------------------------

_CHECK_JS = """
// Self-check (used by the tests, harmless when opened): mark each plot with the share of pixels
// that differ from its corner colour, so a blank image is visible in the DOM.
window.addEventListener('load', function () {
  document.querySelectorAll('img.plot').forEach(function (img) {
    var c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
    var g = c.getContext('2d'); g.drawImage(img, 0, 0);
    var d = g.getImageData(0, 0, c.width, c.height).data, n = 0;
    for (var i = 0; i < d.length; i += 4) {
      if (Math.abs(d[i] - d[0]) + Math.abs(d[i + 1] - d[1]) + Math.abs(d[i + 2] - d[2]) > 30) n++;
    }
    img.setAttribute('data-nonblank', (n / Math.max(1, c.width * c.height)).toFixed(4));
    img.setAttribute('data-size', c.width + 'x' + c.height);
  });
  document.body.setAttribute('data-checked', '1');
});
"""


def _notes(results, bench: Sequence[str]) -> list:
    notes = []
    if not any(r.top1 is not None for r in results):
        notes.append("No accuracy: no evaluation images were given, or the weights are random.")
    if bench:
        notes.append("Merged bench files from other machines: " + ", ".join(Path(b.partition('=')[2] or b).name
                                                                         for b in bench) + ".")
    devs = sorted({b["device_label"] for r in results for b in r.bench})
    if devs:
        notes.append("Bench machines: " + "; ".join(devs) + ".")
    notes.append("Δ top-1 ± SE: difference to the dense model on the same images, with its paired standard error; "
                 "'(noise)' = within two standard errors.")
    return notes


def build_report(out, bench: Sequence[str] = (), backend: str = "onnxruntime", precision: Optional[str] = None) -> dict:
    """Write ``out``/report.md (+ report_files/*.png) and the self-contained ``out``/report.html.

    Returns {"md", "html", "rows", "frontier"}. Example: ``build_report("build/demo")["html"]``
    """
    out = Path(out)
    results = sweep_results(out, bench)
    rows = table_rows(results, backend, precision)
    front = frontier_names(results)
    pngs = render_plots(results)
    title = f"vitopt sweep report: {out.name}"
    md = [f"# {title}", "", f"{len(results)} finished variants.", ""]
    md += [f"- {n}" for n in _notes(results, bench)] + ["", "## Variants", "", markdown_table(rows)]
    for k in PLOTS:
        write_bytes(out / "report_files" / f"{k}.png", pngs[k])
        md += [f"## {PLOT_TITLES[k]}", "", f"![{k}](report_files/{k}.png)", ""]
    write_text(out / "report.md", "\n".join(md) + "\n")

    cols = list(rows[0]) if rows else []
    th = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    trs = "".join("<tr class='variant'>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols) + "</tr>"
                  for r in rows)
    figs = "".join(f"<h2>{html.escape(PLOT_TITLES[k])}</h2><img class='plot' id='plot-{k}' alt='{k}' "
                   f"src='data:image/png;base64,{base64.b64encode(pngs[k]).decode()}'>" for k in PLOTS)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in _notes(results, bench))
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
           "td,th{border:1px solid #ccc;padding:3px 6px}img.plot{max-width:100%;display:block}</style></head><body>"
           f"<h1>{html.escape(title)}</h1><ul>{notes}</ul><h2>Variants</h2>"
           f"<table id='variants'><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>{figs}"
           f"<script>{_CHECK_JS}</script></body></html>\n")
    write_text(out / "report.html", doc)
    return {"md": str(out / "report.md"), "html": str(out / "report.html"), "rows": rows, "frontier": front}
