"""Benchmarking as a library: scripts and ``vitopt bench`` only wrap these calls.

``benchmark(runner, batch_sizes)`` -> ``list[BenchRow]`` (p50/p90/p99/mean ms, throughput,
peak memory, iteration count, environment); ``interleaved_latency({name: runner}, batch_sizes)``
-> dense-vs-compressed ratios measured in one run; ``served_benchmark`` -> served latency and
throughput per concurrency against a Triton server; ``to_markdown`` / ``rows_to_json`` report them.
"""
from .environment import environment
from .latency import BenchRow, benchmark, interleaved_latency
from .memory import PeakMemory
from .served import served_benchmark
from .report import interleaved_to_markdown, rows_from_json, rows_to_dict, rows_to_json, to_markdown

__all__ = ["BenchRow", "benchmark", "interleaved_latency", "to_markdown", "rows_to_json", "rows_to_dict",
           "rows_from_json", "interleaved_to_markdown", "environment", "PeakMemory", "served_benchmark"]
