"""3. Reading at scale: ``sweep rank`` and ``sweep status`` on a study of 10,000 finished trials.

The study is written directly through Optuna's storage API (``create_trial``
and ``study.add_trials``, no training): every trial has the nine parameters,
the curves of 3 repeats of about 30 epochs, the stability summary attrs and
repeat 0's intermediate values, as a real sweep stores them (user and system
attrs, :func:`sweep.records.split_attrs`); about
one in eight is PRUNED after a few epochs of repeat 0. Building 10,000 takes
minutes, so the SQLite file is cached under ``benchmarks/out/`` (git-ignored),
keyed by size, and copied into a fresh folder for each run. The PostgreSQL
database is created fresh; Optuna creates its tables there and the rows of
the cached SQLite file are copied into them table by table (one bulk insert
per table: the same rows the storage API wrote, in seconds rather than the
minutes ``sweep copy`` takes trial by trial).

Each command is timed as a whole process (start-up included), in rotating
order, the median of several rounds: ``sweep rank`` (the table, all rows;
``--top 20``; ``--format json``), ``sweep status``, and ``optuna trials --study-name ... -f json`` as the
reference. The goal is absolute: ``sweep rank`` under 2 s on SQLite at
10,000 trials; the ratio to ``optuna trials`` is reported beside it.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    OUT,
    BenchmarkError,
    Context,
    Goal,
    Result,
    alternate,
    bench_env,
    checkpoint_sqlite,
    copy_sqlite,
    digits_study,
    draw_param,
    median,
    median_ratio,
    postgres_database,
    run_timed,
    sqlite_url,
    sweep_cmd,
    write_study,
)

NAME = "reading"
TITLE = "3. reading at scale"
STUDY = "reading"
BUILDER_VERSION = 2  # 2: the curves and per-repeat lists as system attrs, as sweep writes them since 2026-12
"""Bump when :func:`build_study` changes what it writes, so that stale cached files are not reused."""
GOAL_RANK_S = Goal("<", 2.0, "< 2 s (SQLite, 10,000 trials)")
CHUNK = 250
REFERENCE = "optuna trials -f json"


def cached_study_file(n_trials: int, *, folder: Path = OUT, log: Any = None) -> Path:
    """The SQLite file of the ``n_trials`` reading study, built once and kept in ``folder``."""
    path = folder / f"reading-{n_trials}-v{BUILDER_VERSION}.db"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    for leftover in folder.glob(partial.name + "*"):
        leftover.unlink()
    build_study(sqlite_url(partial), n_trials, log=log)
    checkpoint_sqlite(partial)
    for side in (partial.with_name(partial.name + "-wal"), partial.with_name(partial.name + "-shm")):
        side.unlink(missing_ok=True)
    partial.rename(path)
    return path


def build_study(
    url: str,
    n_trials: int,
    *,
    name: str = STUDY,
    repeats: int = 3,
    epochs: int = 30,
    seed: int = 0,
    pruned_every: int = 8,
    log: Any = None,
) -> Any:
    """Create ``name`` in ``url`` with ``n_trials`` finished trials (no training); returns the study.

    The study is made by :func:`sweep.runner.prepare_study` from a digits-lstm
    study file, so ``sweep rank``, ``sweep status`` and ``sweep best`` accept it.
    """
    import tempfile

    import numpy as np
    from optuna.trial import TrialState, create_trial

    from sweep import records
    from sweep.objective import curves_attr
    from sweep.runner import prepare_study
    from sweep.space import distributions
    from sweep.spec import load_spec
    from sweep.stability import summarize
    from sweep.train import Curves, Stop

    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec(
            write_study(
                Path(tmp),
                digits_study(name=name, n_trials=n_trials, max_epochs=epochs, patience=5, repeats=repeats, seed=seed),
            )
        )
    study, created = prepare_study(spec, url=url)
    if not created:
        raise BenchmarkError(f"study {name!r} already exists in the storage being built")
    dists = distributions(spec.search, family=spec.model.family)
    rng = np.random.default_rng(seed)
    tail, risk = spec.stability.tail, spec.stability.risk
    batch: list[Any] = []
    for number in range(n_trials):
        params = {key: draw_param(rng, dist) for key, dist in dists.items()}
        pruned = pruned_every > 0 and number % pruned_every == pruned_every - 1
        curves = _fake_curves(rng, repeats=1 if pruned else repeats, epochs=epochs, pruned=pruned)
        val = [c[0] for c in curves]
        train = [c[1] for c in curves]
        summary = summarize(val, train, tail=tail, risk=risk)
        stop = Stop.PRUNED if pruned else Stop.COMPLETED
        kept = [
            Curves(loss=tuple(u), val_loss=tuple(v), metric=(), val_metric=(), metric_name="accuracy", stop=stop,
                   seconds=float(len(v)) * 0.2)
            for v, u in zip(val, train, strict=True)
        ]  # fmt: skip
        attrs, system = records.split_attrs({records.CURVES: curves_attr(kept), **records.summary_attrs(summary)})
        attrs["train_seconds"] = round(sum(c.seconds for c in kept), 3)
        state = TrialState.PRUNED if pruned else TrialState.COMPLETE
        if pruned:
            attrs["pruned_at_epoch"] = len(val[0])
        batch.append(
            create_trial(
                state=state,
                value=None if pruned or not math.isfinite(summary.score) else summary.score,
                params=params,
                distributions=dists,
                user_attrs=attrs,
                system_attrs=system,
                intermediate_values={i: float(v) for i, v in enumerate(val[0])},
            )
        )
        if len(batch) >= CHUNK or number == n_trials - 1:
            study.add_trials(batch)
            batch = []
            if log is not None and ((number + 1) % (CHUNK * 8) == 0 or number == n_trials - 1):
                log(f"{NAME}: built {number + 1} of {n_trials} trials")
    return study


def _fake_curves(rng: Any, *, repeats: int, epochs: int, pruned: bool) -> list[tuple[list[float], list[float]]]:
    """Plausible loss curves: a decay to a floor, noise, and for some a rise (overfitting)."""
    import numpy as np

    floor, start, rate = rng.uniform(0.05, 1.0), rng.uniform(1.8, 2.4), rng.uniform(0.1, 0.6)
    rise = rng.uniform(0.0, 0.03) if rng.random() < 0.3 else 0.0
    noise = rng.uniform(0.002, 0.08)
    out = []
    for _ in range(repeats):
        length = int(rng.integers(4, 12)) if pruned else int(rng.integers(max(6, epochs - 12), epochs + 1))
        t = np.arange(length, dtype=float)
        train = floor * 0.8 + (start - floor) * np.exp(-rate * t) * rng.uniform(0.9, 1.1)
        val = floor + (start - floor) * np.exp(-rate * 0.8 * t) + rise * t + rng.normal(0, noise, length)
        out.append((np.abs(val).tolist(), np.abs(train).tolist()))
    return out


def bulk_copy(sqlite_file: Path, url: str, *, chunk: int = 5_000) -> float:
    """Copy every row of an Optuna SQLite file into the (empty) Optuna storage at ``url``; returns seconds.

    Optuna creates the tables at ``url`` (same version, same schema); the rows go
    in table by table, parents first, and PostgreSQL's id sequences are moved
    past the copied ids so that new trials can still be created.
    """
    import time

    import sqlalchemy as sa

    from sweep.storage import open_storage

    start = time.perf_counter()
    open_storage(url)  # creates the schema
    src_engine = sa.create_engine(sqlite_url(sqlite_file))
    dst_engine = sa.create_engine(url)
    src_meta, dst_meta = sa.MetaData(), sa.MetaData()
    src_meta.reflect(src_engine)
    dst_meta.reflect(dst_engine)
    skip = {"alembic_version", "version_info"}
    try:
        with src_engine.connect() as src, dst_engine.begin() as dst:
            for table in dst_meta.sorted_tables:
                if table.name in skip or table.name not in src_meta.tables:
                    continue
                result = src.execute(sa.select(src_meta.tables[table.name]))
                columns = list(result.keys())
                while rows := result.fetchmany(chunk):
                    dst.execute(table.insert(), [dict(zip(columns, row, strict=True)) for row in rows])
            if dst_engine.dialect.name == "postgresql":
                for table in dst_meta.sorted_tables:
                    if table.name in skip:
                        continue
                    for column in table.primary_key.columns:
                        if column.autoincrement is not False and isinstance(column.type, sa.Integer):
                            dst.execute(
                                sa.text(
                                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                                    f"COALESCE((SELECT MAX({column.name}) FROM {table.name}), 0) + 1, false)"
                                )
                            )
    finally:
        src_engine.dispose()
        dst_engine.dispose()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- timing


def _commands(url: str) -> dict[str, list[str]]:
    return {
        "sweep rank": sweep_cmd("rank", STUDY, "--storage", url),
        "sweep rank --format json": sweep_cmd("rank", STUDY, "--storage", url, "--format", "json"),
        "sweep rank --top 20": sweep_cmd("rank", STUDY, "--storage", url, "--top", "20"),
        "sweep status": sweep_cmd("status", STUDY, "--storage", url),
        REFERENCE: [
            shutil.which("optuna") or "optuna",
            "trials",
            "--study-name",
            STUDY,
            "--storage",
            url,
            "-f",
            "json",
        ],
    }


def _time_commands(ctx: Context, label: str, url: str, rounds: int) -> dict[str, list[float]]:
    commands = _commands(url)
    env = bench_env()
    if not ctx.quick:
        for cmd in commands.values():  # once untimed: the database is in the page cache for every command alike
            run_timed(cmd, env=env)
    return alternate(
        {name: (lambda cmd=cmd: run_timed(cmd, env=env).seconds) for name, cmd in commands.items()},
        rounds=rounds,
        on_round=lambda i, order: ctx.log(f"{NAME}: {label} round {i + 1}/{rounds}"),
    )


def _check_rank(url: str, expected_complete: int) -> None:
    done = subprocess.run(
        sweep_cmd("rank", STUDY, "--storage", url, "--format", "json"),
        env=bench_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchmarkError(f"sweep rank failed: {done.stderr.strip()[-300:]}")
    rows = json.loads(done.stdout)
    if len(rows) != expected_complete:
        raise BenchmarkError(f"sweep rank listed {len(rows)} trials, expected {expected_complete} complete ones")


def expected_complete(n_trials: int, pruned_every: int = 8) -> int:
    return n_trials - n_trials // pruned_every


def run(ctx: Context) -> Result:
    res = Result(NAME, TITLE)
    n, rounds = ctx.pick(quick=(1_000, 2), full=(10_000, 5))
    cached = cached_study_file(n, log=ctx.log)
    raw: dict[str, Any] = {"n_trials": n, "rounds": rounds, "cached_file": str(cached)}
    storages: dict[str, str] = {}
    folder = ctx.folder(NAME)
    storages["sqlite"] = sqlite_url(copy_sqlite(cached, folder / "reading.db"))
    _check_rank(storages["sqlite"], expected_complete(n))
    with contextlib.ExitStack() as stack:
        if ctx.postgres_base:
            pg_url = stack.enter_context(postgres_database(ctx.postgres_base))
            ctx.log(f"{NAME}: copying {n} trials into a fresh PostgreSQL database")
            raw["postgresql_fill_seconds"] = round(bulk_copy(cached, pg_url), 2)
            storages["postgresql"] = pg_url
            _check_rank(pg_url, expected_complete(n))
        else:
            res.notes.append("PostgreSQL skipped: $SWEEP_TEST_POSTGRES_URL is not set")
        for label, url in storages.items():
            times = _time_commands(ctx, label, url, rounds)
            raw[label] = {"seconds": {k: [round(s, 3) for s in v] for k, v in times.items()}}
            table_s, json_s = median(times["sweep rank"]), median(times["sweep rank --format json"])
            goal = GOAL_RANK_S if (label == "sqlite" and n >= 10_000) else None
            res.add(f"{label}: sweep rank, whole process ({n:,} trials)", table_s, unit="s", goal=goal)
            res.add(f"{label}: sweep rank --format json, whole process", json_s, unit="s")
            for other in ("sweep rank", "sweep rank --format json", "sweep rank --top 20", "sweep status"):
                res.add(f"{label}: {other} / optuna trials -f json", median_ratio(times[other], times[REFERENCE]))
            raw[label]["ratios"] = {k: median_ratio(times[k], times[REFERENCE]) for k in times if k != REFERENCE}
            if label == "sqlite":
                res.notes.append(
                    f"every command reads and scores all {n:,} trials; the table prints the best 25 by default: "
                    f"{table_s:.2f} s, against {json_s:.2f} s for every ranked row as JSON and "
                    f"{median(times['sweep rank --top 20']):.2f} s with --top 20 (SQLite)"
                )
        if n < 10_000:
            res.notes.append(
                f"quick run: {n:,} trials, so the 2 s goal (at 10,000) is not judged; the full run builds 10,000 once "
                f"and caches it in {OUT.relative_to(OUT.parents[1])}/"
            )
    res.raw = raw
    return res
