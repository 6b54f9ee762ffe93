"""Per-shape latency table for latency-aware rank allocation, measured with ONNX Runtime.

Parameter savings do not always become speed: a rank-r layer is two GEMMs through a thin
intermediate, and below some size the extra kernel and the memory traffic of the intermediate
eat the saved MACs. For every distinct Linear shape of the model (tokens × in → out) the table
holds the measured time of the dense layer and of its factor pair at every rank multiple that
saves parameters, on one backend, batch size and thread count. All variants of one shape are
timed round-robin in one run (``optimizer.bench.interleaved_latency``), medians, so drift on a
shared machine hits them alike. Times are smoothed to be non-decreasing in the rank (pool
adjacent violators): a larger rank never runs faster, and the allocator's greedy needs that.

Two uses (``LowRankConfig.latency_table``):
* under a params/MACs budget, a layer's rank is capped at its measured break-even (the largest
  rank whose pair is faster than the dense layer), so no factorised layer is slower than dense;
* the ``latency_ratio`` budget: the model's predicted latency = (whole dense model time − the
  candidate layers' dense times) + Σ per-layer table times, allocated greedily like params.

The table is plain JSON (``to_dict`` / ``load``) so one measured on the deployment machine can be
reused: a compress report holds it under ``latency_table``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ...errors import VitoptError

TABLE_FORMAT = "vitopt.lowrank.latency_table/1"


def shape_key(tokens: int, in_features: int, out_features: int) -> str:
    return f"{int(tokens)}x{int(in_features)}->{int(out_features)}"


def monotone(values: Sequence[float]) -> list:
    """Least-squares non-decreasing fit (pool adjacent violators): 3, 1, 2 -> 2, 2, 2."""
    blocks = []   # [sum, count]
    for v in values:
        blocks.append([float(v), 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    out = []
    for s, c in blocks:
        out.extend([s / c] * c)
    return out


@dataclass
class LatencyTable:
    """Measured milliseconds per Linear shape: ``shapes[key] = {"dense": ms, "ranks": {r: ms}}``.

    ``model``: the whole dense model's time on the same backend/batch (needed by the latency
    budget) with its architecture and parameter count, so a table is not reused for another model.
    """
    backend: str
    batch: int
    threads: int
    shapes: dict
    model: Optional[dict] = None
    environment: dict = field(default_factory=dict)

    def entry(self, tokens: int, in_features: int, out_features: int) -> dict:
        key = shape_key(tokens, in_features, out_features)
        if key not in self.shapes:
            raise VitoptError(f"latency table ({self.backend}, batch {self.batch}) has no entry for the "
                              f"{key} layer; measure one for this model (latency_table=ort)")
        return self.shapes[key]

    def dense_ms(self, tokens: int, in_features: int, out_features: int) -> float:
        return float(self.entry(tokens, in_features, out_features)["dense"])

    def rank_ms(self, tokens: int, in_features: int, out_features: int) -> dict:
        """{rank: smoothed ms} over the measured ranks, non-decreasing in the rank."""
        raw = self.entry(tokens, in_features, out_features)["ranks"]
        ranks = sorted(int(r) for r in raw)
        smooth = monotone([float(raw[str(r)] if str(r) in raw else raw[r]) for r in ranks])
        return dict(zip(ranks, smooth))

    def breakeven(self, tokens: int, in_features: int, out_features: int) -> int:
        """Largest measured rank whose factor pair is faster than the dense layer (0: none is)."""
        dense = self.dense_ms(tokens, in_features, out_features)
        faster = [r for r, ms in self.rank_ms(tokens, in_features, out_features).items() if ms < dense]
        return max(faster) if faster else 0

    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "backend": self.backend, "batch": self.batch, "threads": self.threads,
                "shapes": self.shapes, "model": self.model, "environment": self.environment}

    @classmethod
    def from_dict(cls, d: dict, source: str = "latency table") -> "LatencyTable":
        if not isinstance(d, dict):
            raise VitoptError(f"{source} is not a JSON object")
        # accept a bare table, a compress --json result or a recipe holding one in a step report
        if d.get("format") != TABLE_FORMAT:
            found = _find_table(d)
            if found is None:
                raise VitoptError(f"{source} holds no vitopt latency table (format {TABLE_FORMAT})")
            d = found
        try:
            shapes = {str(k): {"dense": float(v["dense"]), "ranks": {str(r): float(ms) for r, ms in v["ranks"].items()}}
                      for k, v in d["shapes"].items()}
            table = cls(str(d["backend"]), int(d["batch"]), int(d["threads"]), shapes, d.get("model"),
                        dict(d.get("environment") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise VitoptError(f"{source} is not a valid latency table ({type(e).__name__}: {e})") from None
        if not shapes:
            raise VitoptError(f"{source} has no measured shapes")
        return table

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        from ...fileio import read_json
        return cls.from_dict(read_json(path, f"latency table {path} does not exist"), f"latency table {path}")

    def save(self, path: str | os.PathLike) -> None:
        from ...fileio import write_json
        write_json(path, self.to_dict())


def _find_table(d):
    if isinstance(d, dict):
        if d.get("format") == TABLE_FORMAT:
            return d
        for v in d.values():
            t = _find_table(v)
            if t is not None:
                return t
    elif isinstance(d, list):
        for v in d:
            t = _find_table(v)
            if t is not None:
                return t
    return None


def _linear_onnx(path, tokens: int, in_features: int, out_features: int, rank: Optional[int], seed: int) -> None:
    """A one-layer graph X[B, tokens, in] -> MatMul(s) -> Add(bias), the way the exporter emits a Linear."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)

    def init(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)

    inits, nodes = [init("bias", (out_features,))], []
    if rank is None:
        inits.append(init("W", (in_features, out_features)))
        nodes.append(helper.make_node("MatMul", ["X", "W"], ["h"]))
    else:
        inits += [init("D", (in_features, rank)), init("U", (rank, out_features))]
        nodes += [helper.make_node("MatMul", ["X", "D"], ["t"]), helper.make_node("MatMul", ["t", "U"], ["h"])]
    nodes.append(helper.make_node("Add", ["h", "bias"], ["Y"]))
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", tokens, in_features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", tokens, out_features])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8   # readable by every onnxruntime this project supports
    onnx.save(model, str(path))


def measure_ort_table(shapes: Sequence[tuple], multiple: int = 8, batch: int = 8, threads: Optional[int] = None,
                      rounds: int = 5, iters: int = 3, model_onnx: Optional[str] = None,
                      model_info: Optional[dict] = None, log=print) -> LatencyTable:
    """Time every (tokens, in, out, max_rank) shape dense and at ranks multiple..max_rank with ONNX Runtime.

    ``model_onnx``: also time the whole dense model (for the latency budget). CPU provider,
    intra-op ``threads`` (default: physical cores), spinning off, as ``OrtRunner`` does.
    """
    from ...bench import benchmark, interleaved_latency
    from ...runners import OrtRunner
    from ...runners.base import physical_cores
    if batch < 1 or multiple < 1 or rounds < 1 or iters < 1:
        raise VitoptError(f"latency table needs positive batch/multiple/rounds/iters, got "
                          f"{batch}/{multiple}/{rounds}/{iters}")
    threads = threads or physical_cores()
    table, env = {}, {}
    from ...fileio import temp_dir
    with temp_dir("vitopt-lat-") as tmp:
        for i, (tokens, fin, fout, max_rank) in enumerate(dict.fromkeys(tuple(int(v) for v in s) for s in shapes)):
            key = shape_key(tokens, fin, fout)
            ranks = list(range(multiple, max_rank + 1, multiple))
            files = {"dense": os.path.join(tmp, f"{i}_dense.onnx")}
            _linear_onnx(files["dense"], tokens, fin, fout, None, i)
            for r in ranks:
                files[str(r)] = os.path.join(tmp, f"{i}_r{r}.onnx")
                _linear_onnx(files[str(r)], tokens, fin, fout, r, i)
            entry = {"dense": None, "ranks": {}}
            if ranks:
                runners = {k: OrtRunner(v, threads=threads, name=k) for k, v in files.items()}
                res = interleaved_latency(runners, (batch,), rounds=rounds, iters_per_round=iters, warmup=2)
                env = res["environment"]
                for row in res["rows"]:
                    if row["name"] == "dense":
                        entry["dense"] = round(row["p50_ms"], 5)
                    else:
                        entry["ranks"][row["name"]] = round(row["p50_ms"], 5)
            else:   # nothing saves parameters here: the dense time alone (for the latency budget)
                row = benchmark(OrtRunner(files["dense"], threads=threads), (batch,), warmup=2,
                                iters=rounds * iters, min_time_s=0.2)[0]
                entry["dense"] = round(row.p50_ms, 5)
            table[key] = entry
            log(f"lowrank latency: {key} dense {entry['dense']:.3f} ms, {len(ranks)} ranks timed")
        model = None
        if model_onnx is not None:
            row = benchmark(OrtRunner(model_onnx, threads=threads, name="model"), (batch,), warmup=3,
                            iters=max(10, rounds * iters))[0]
            model = dict(model_info or {}, ms=round(row.p50_ms, 4))
    return LatencyTable("onnxruntime CPUExecutionProvider", batch, threads, table, model, env)
