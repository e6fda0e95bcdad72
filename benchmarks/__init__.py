"""Side-by-side measurements of ``sweep``: ``python -m benchmarks [--quick] [--only NAME ...]``.

Each benchmark is one module with ``run(ctx) -> Result``; the shared pieces
(ratios, medians, alternating rounds, timed processes, storages, the results
files) are in :mod:`benchmarks.harness`.
"""

from __future__ import annotations

BENCHMARKS: dict[str, str] = {
    "driver_overhead": "benchmarks.driver_overhead",
    "throughput": "benchmarks.throughput",
    "reading": "benchmarks.reading",
    "memory": "benchmarks.memory",
    "pruning": "benchmarks.pruning",
    "many_workers": "benchmarks.many_workers",
    "search_quality": "benchmarks.search_quality",
    "gpu": "benchmarks.gpu",
    "allocation": "benchmarks.allocation",
    "storage_calls": "benchmarks.storage_calls",
    "load": "benchmarks.load",
}
"""Benchmark name (for ``--only``) -> module, in the order they run."""
