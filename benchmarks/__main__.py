"""``python -m benchmarks [--quick] [--only NAME ...] [--update] [--out benchmarks/results.json]``.

Runs the benchmarks that time something one after another (never two at
once: they would share the cores), then the ones that measure no time
(memory, search quality) side by side, prints the table, and writes ``results.json`` (the machine, the
date, the versions, every raw measurement and every ratio) and
``results.md`` (benchmark, measured, goal, met?) beside it. A benchmark that
breaks is reported as an error row and the others still run; the exit code
is 1 when any broke, 0 otherwise (a missed goal is a finding, not an error).

``--update`` runs the named benchmarks again and replaces only their results in
an existing file of the same mode made on the same machine; every result keeps
the date it was measured, and ``results.md`` names those run later.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks import BENCHMARKS
from benchmarks.harness import (
    ROOT,
    Context,
    Result,
    machine_info,
    now_iso,
    postgres_base,
    read_results,
    text_table,
    write_results,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Side-by-side measurements of sweep against plain Optuna + Keras and Keras Tuner.",
        epilog="Benchmarks: " + ", ".join(BENCHMARKS) + ". PostgreSQL parts use $SWEEP_TEST_POSTGRES_URL "
        "(a database is created and dropped there) and are skipped when it is unset.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few rounds (under 5 minutes on 2 cores)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(BENCHMARKS), help="run these benchmarks only")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results.json",
        help="where to write the JSON results (results.md goes beside it)",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="replace only these benchmarks' results in the existing --out file (same mode, same machine)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or list(BENCHMARKS)
    workdir = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    from sweep.runner import default_workers

    ctx = Context(
        quick=args.quick,
        workdir=workdir,
        postgres_base=postgres_base(),
        verbose=not args.quiet,
        cores=default_workers(),
    )
    meta = {
        "date": now_iso(),
        "mode": "quick" if args.quick else "full",
        "only": names,
        **machine_info(),
        "postgresql": "set" if ctx.postgres_base else "unset ($SWEEP_TEST_POSTGRES_URL): PostgreSQL parts skipped",
    }
    results: dict[str, Result] = {}
    kept: dict[str, Result] = {}
    if args.update:
        untimed_only = all(getattr(importlib.import_module(BENCHMARKS[n]), "UNTIMED", False) for n in names)
        meta, kept = previous_results(args.out, meta, same_machine=not untimed_only)
    order = list(BENCHMARKS)
    started = time.perf_counter()

    def record(name: str, result: Result) -> None:
        results[name] = result
        if not args.update:
            meta["seconds"] = round(time.perf_counter() - started, 1)
        every = {**kept, **results}
        write_results([every[n] for n in order if n in every], json_path=args.out, meta=meta)

    modules = {name: importlib.import_module(BENCHMARKS[name]) for name in names}
    timed = [n for n in names if not getattr(modules[n], "UNTIMED", False)]
    untimed = [n for n in names if getattr(modules[n], "UNTIMED", False)]
    try:
        for name in timed:
            record(name, _run_one(name, modules[name], ctx))
        # What measures no time may share the cores: these run side by side, after every timed benchmark.
        with ThreadPoolExecutor(max_workers=max(1, len(untimed))) as pool:
            futures = {name: pool.submit(_run_one, name, modules[name], ctx) for name in untimed}
            for name, future in futures.items():
                record(name, future.result())
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    ordered = [results[n] for n in names if n in results]
    seconds = time.perf_counter() - started
    if not args.update:
        meta["seconds"] = round(seconds, 1)
    every = {**kept, **results}
    json_path, md_path = write_results([every[n] for n in order if n in every], json_path=args.out, meta=meta)
    sys.stdout.write(text_table(ordered))
    for res in ordered:
        for note in res.notes:
            print(f"- {res.title}: {note}")
    print(f"\n{meta['mode']} run: {seconds:.0f} s; wrote {json_path} and {md_path}")
    return 1 if any(r.error for r in ordered) else 0


def previous_results(
    path: Path, meta: dict[str, Any], *, same_machine: bool = True
) -> tuple[dict[str, Any], dict[str, Result]]:
    """The meta and results of the file that ``--update`` amends; refuses one that does not match.

    Benchmarks that measure no time (losses, memory growth) may be re-run on
    another machine of the same size with the same versions: ``same_machine``
    is False for them, and only the processor model may then differ.
    """
    if not path.exists():
        raise SystemExit(f"error: --update: {path} does not exist; run the suite without --update first")
    old, results = read_results(path)
    then, now = _kind(old), _kind(meta)
    if not same_machine:
        then, now = then[:1] + then[2:], now[:1] + now[2:]
    if then != now:
        raise SystemExit(f"error: --update: {path} holds a run of {then}; this is a run of {now}: run the whole suite")
    old["only"] = [n for n in BENCHMARKS if n in set(old.get("only", [])) | set(meta["only"])]
    return old, {r.name: r for r in results}


def _kind(meta: dict[str, Any]) -> tuple[Any, ...]:
    """What must not change between the results of one file: the mode, the machine, the versions."""
    machine = meta.get("machine", {})
    return (
        meta.get("mode"),
        machine.get("cpu"),
        machine.get("cores"),
        machine.get("memory_gb"),
        tuple(sorted((meta.get("versions") or {}).items())),
    )


def _run_one(name: str, module: ModuleType, ctx: Context) -> Result:
    ctx.log(f"{name}: start")
    date = now_iso()
    t0 = time.perf_counter()
    try:
        result = module.run(ctx)
    except Exception as exc:  # one broken benchmark must not lose the others' results
        result = Result(name, getattr(module, "TITLE", name), error=f"{type(exc).__name__}: {exc}")
        result.raw["traceback"] = traceback.format_exc()
    result.seconds = time.perf_counter() - t0
    result.date = date
    result.raw.setdefault("cpu", machine_info()["machine"].get("cpu"))
    ctx.log(f"{name}: done in {result.seconds:.0f} s" + (f" (error: {result.error})" if result.error else ""))
    return result


if __name__ == "__main__":
    sys.exit(main())
