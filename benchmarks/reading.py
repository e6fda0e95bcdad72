"""3. Reading at scale: ``sweep rank`` and ``sweep status`` on studies of 10,000 and 100,000 finished trials.

The study is written without training: every trial has the nine parameters,
the curves of 3 repeats of about 30 epochs, the stability summary attrs and
repeat 0's intermediate values, as a real sweep stores them (user and system
attrs, :func:`sweep.records.split_attrs`); about one in eight is PRUNED after
a few epochs of repeat 0 (:func:`fake_trials`). The rows go in with bulk
inserts (:func:`insert_trials`: the rows ``study.add_trials`` writes, about
100 times faster: 10,000 trials in about 20 s, 100,000 in about 3 minutes);
the SQLite file is cached under ``benchmarks/out/`` (git-ignored), keyed by
size and :data:`BUILDER_VERSION`, and copied into a fresh folder for each
run. Each PostgreSQL database is created fresh; Optuna creates its tables
there and the rows of the cached SQLite file are copied into them table by
table (:func:`bulk_copy`, with ``COPY``).

Each command is timed as a whole process (start-up included), every size in
the same rotating rounds, the median of several: ``sweep rank`` (the table;
``--top 20``; ``--format json``), ``sweep status``, and ``optuna trials
--study-name ... -f json`` as the reference (in the rounds up to 10,000
trials; once above, where it takes minutes). The CPU seconds of each process
are kept beside its wall time. Then optuna-dashboard, started by ``sweep
dashboard``, is asked once per size for what its study page loads
(``/api/studies/ID?after=0``), and once more after its 10 s cache of the
trials expires, as the open page does when it polls.

Goals: ``sweep rank`` under 2 s on SQLite at 10,000 trials and under 5 s at
100,000, ``sweep status`` under 5 s at 100,000, and the time from 10,000 to
100,000 growing no faster than the trials (the median of the rounds'
t(100,000)/t(10,000) at most 10). ``python -m benchmarks.reading --sizes
10000 100000 --out FILE`` runs it alone.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import resource
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    free_port,
    interrupt,
    median,
    median_ratio,
    postgres_database,
    run_timed,
    sqlite_url,
    sweep_cmd,
    wait_for_port,
    write_study,
)

NAME = "reading"
TITLE = "3. reading at scale"
STUDY = "reading"
BUILDER_VERSION = 3  # 2: the curves and per-repeat lists as system attrs (2026-12); 3: written in bulk (insert_trials)
"""Bump when :func:`build_study` changes what it writes, so that stale cached files are not reused."""
GOAL_RANK_S = Goal("<", 2.0, "< 2 s (SQLite, 10,000 trials)")
GOAL_LARGE_S = Goal("<", 5.0, "< 5 s (SQLite, 100,000 trials)")
GOAL_GROWTH = Goal("<=", 10.0, "<= 10: linear in the trials")
LARGE = 100_000
CHUNK = 250
REFERENCE = "optuna trials -f json"
REFERENCE_MAX = 10_000
"""Above this many trials ``optuna trials`` (minutes, GBs) is timed once, not in every round."""
SIZES = {"quick": (1_000,), "full": (10_000, LARGE)}
ROUNDS = {"quick": 2, "full": 5}


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
    through_optuna: bool = False,
) -> Any:
    """Create ``name`` in ``url`` with ``n_trials`` finished trials (no training); returns the study.

    The study is made by :func:`sweep.runner.prepare_study` from a digits-lstm
    study file, so ``sweep rank``, ``sweep status`` and ``sweep best`` accept it.
    The trials (:func:`fake_trials`) are written by :func:`insert_trials` in
    bulk, or with ``through_optuna`` by ``study.add_trials`` (the same rows,
    about 100 times slower).
    """
    study, spec = _new_study(url, name=name, n_trials=n_trials, repeats=repeats, epochs=epochs, seed=seed)
    trials = fake_trials(spec, n_trials, seed=seed, pruned_every=pruned_every)

    def progress(done: int) -> None:
        if log is not None and (done % (CHUNK * 40) == 0 or done == n_trials):
            log(f"{NAME}: built {done:,} of {n_trials:,} trials")

    if through_optuna:
        batch: list[Any] = []
        for number, trial in enumerate(trials, start=1):
            batch.append(trial)
            if len(batch) >= CHUNK or number == n_trials:
                study.add_trials(batch)
                batch = []
                progress(number)
    else:
        insert_trials(url, name, trials, on_chunk=progress)
    return study


def _new_study(url: str, *, name: str, n_trials: int, repeats: int, epochs: int, seed: int) -> tuple[Any, Any]:
    import tempfile

    from sweep.runner import prepare_study
    from sweep.spec import load_spec

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
    return study, spec


def fake_trials(spec: Any, n_trials: int, *, seed: int = 0, pruned_every: int = 8) -> Iterator[Any]:
    """``n_trials`` finished trials of ``spec`` as a real sweep stores them, without training (``FrozenTrial`` objects).

    Every trial has the search space's parameters, the curves of its repeats,
    the stability summary attrs and repeat 0's intermediate values (user and
    system attrs as :func:`sweep.records.split_attrs` splits them); every
    ``pruned_every``-th is PRUNED after a few epochs of repeat 0. The same
    ``seed`` gives the same trials.
    """
    import numpy as np
    from optuna.trial import TrialState, create_trial

    from sweep import records
    from sweep.objective import curves_attr
    from sweep.space import distributions
    from sweep.stability import summarize
    from sweep.train import Curves, Stop

    dists = distributions(spec.search, family=spec.model.family)
    rng = np.random.default_rng(seed)
    tail, risk = spec.stability.tail, spec.stability.risk
    repeats, epochs = spec.training.repeats, spec.training.max_epochs
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
        if pruned:
            attrs["pruned_at_epoch"] = len(val[0])
        yield create_trial(
            state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
            value=None if pruned or not math.isfinite(summary.score) else summary.score,
            params=params,
            distributions=dists,
            user_attrs=attrs,
            system_attrs=system,
            intermediate_values={i: float(v) for i, v in enumerate(val[0])},
        )


def insert_trials(
    url: str,
    study_name: str,
    trials: Iterable[Any],
    *,
    chunk: int = CHUNK * 8,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Append finished ``trials`` (``FrozenTrial`` objects) to ``study_name`` at ``url`` in bulk; returns how many.

    Writes the rows ``study.add_trials`` writes, table by table, in the
    encodings of Optuna's RDB storage (the state by name, a parameter in its
    internal form with its distribution's JSON, each attr as JSON, the value
    and each intermediate value with its type, the datetimes as naive UTC);
    the trials are numbered after the study's last one. What it skips is
    Optuna's row-by-row ORM work: a few queries per attr and per step.
    """
    import datetime as dt
    import json

    import sqlalchemy as sa
    from optuna.distributions import distribution_to_json

    def utc(moment: dt.datetime | None) -> dt.datetime | None:
        return None if moment is None else moment.astimezone(dt.UTC).replace(tzinfo=None)

    def stored(value: float) -> tuple[float | None, str]:
        if math.isnan(value):
            return None, "NAN"
        if math.isinf(value):
            return None, "INF_POS" if value > 0 else "INF_NEG"
        return value, "FINITE"

    names = ("studies", "trials", "trial_params", "trial_values", "trial_user_attributes",
             "trial_system_attributes", "trial_intermediate_values")  # fmt: skip
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine, only=names)
    t = meta.tables
    dist_json: dict[int, str] = {}
    written = 0
    try:
        with engine.begin() as conn:
            study_id = conn.execute(
                sa.select(t["studies"].c.study_id).where(t["studies"].c.study_name == study_name)
            ).scalar_one()
            mine = t["trials"].c.study_id == study_id
            first = conn.execute(sa.select(sa.func.count()).select_from(t["trials"]).where(mine)).scalar_one()
            iterator = iter(trials)
            while batch := list(itertools.islice(iterator, chunk)):
                start = first + written
                conn.execute(
                    t["trials"].insert(),
                    [
                        {"number": start + i, "study_id": study_id, "state": trial.state.name,
                         "datetime_start": utc(trial.datetime_start), "datetime_complete": utc(trial.datetime_complete)}
                        for i, trial in enumerate(batch)
                    ],
                )  # fmt: skip
                ids = dict(
                    conn.execute(
                        sa.select(t["trials"].c.number, t["trials"].c.trial_id).where(
                            mine, t["trials"].c.number >= start, t["trials"].c.number < start + len(batch)
                        )
                    ).all()
                )
                rows: dict[str, list[dict[str, Any]]] = {name: [] for name in names[2:]}
                for i, trial in enumerate(batch):
                    tid = ids[start + i]
                    for param, value in trial.params.items():
                        dist = trial.distributions[param]
                        text = dist_json.get(id(dist)) or dist_json.setdefault(id(dist), distribution_to_json(dist))
                        rows["trial_params"].append({"trial_id": tid, "param_name": param,
                                                     "param_value": dist.to_internal_repr(value),
                                                     "distribution_json": text})  # fmt: skip
                    for objective, value in enumerate(trial.values or ()):
                        number, kind = stored(value)
                        if kind == "NAN":
                            raise BenchmarkError(f"trial {start + i}: Optuna stores no NaN objective value")
                        rows["trial_values"].append({"trial_id": tid, "objective": objective, "value": number,
                                                     "value_type": kind})  # fmt: skip
                    for table, attrs in (("trial_user_attributes", trial.user_attrs),
                                         ("trial_system_attributes", trial.system_attrs)):  # fmt: skip
                        rows[table].extend({"trial_id": tid, "key": k, "value_json": json.dumps(v)}
                                           for k, v in attrs.items())  # fmt: skip
                    for step, value in trial.intermediate_values.items():
                        number, kind = stored(value)
                        rows["trial_intermediate_values"].append({"trial_id": tid, "step": step,
                                                                  "intermediate_value": number,
                                                                  "intermediate_value_type": kind})  # fmt: skip
                for name, table_rows in rows.items():
                    if table_rows:
                        conn.execute(t[name].insert(), table_rows)
                written += len(batch)
                if on_chunk is not None:
                    on_chunk(written)
    finally:
        engine.dispose()
    return written


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
                if dst_engine.dialect.driver == "psycopg":  # COPY: the fastest way into PostgreSQL
                    names = ", ".join(f'"{c}"' for c in columns)
                    raw = dst.connection.driver_connection
                    assert raw is not None
                    with (
                        raw.cursor() as cursor,
                        cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy,
                    ):
                        while rows := result.fetchmany(chunk):
                            for row in rows:
                                copy.write_row(row)
                    continue
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


def _label(n: int, command: str) -> str:
    return f"{n:,}: {command}"


class _Clock:
    """Runs whole processes one at a time; keeps each one's CPU seconds (user + system) by label."""

    def __init__(self) -> None:
        self.cpu: dict[str, list[float]] = {}

    def __call__(self, label: str, cmd: list[str], *, timeout: float = 1800) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = run_timed(cmd, env=bench_env(), timeout=timeout).seconds
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        self.cpu.setdefault(label, []).append(round(cpu, 3))
        return seconds


def _time_commands(
    ctx: Context, label: str, urls: dict[int, str], rounds: int, clock: _Clock
) -> dict[str, list[float]]:
    """Every command at every size in the same rotating rounds (``optuna trials`` above
    :data:`REFERENCE_MAX` trials once, after them)."""
    variants: dict[str, list[str]] = {}
    once: dict[str, list[str]] = {}
    for n, url in urls.items():
        for command, cmd in _commands(url).items():
            (once if command == REFERENCE and n > REFERENCE_MAX else variants)[_label(n, command)] = cmd
    if not ctx.quick:
        for cmd in variants.values():  # once untimed: the database is in the page cache for every command alike
            run_timed(cmd, env=bench_env())

    def timer(name: str, cmd: list[str]) -> Callable[[], float]:
        return lambda: clock(name, cmd)

    times = alternate(
        {name: timer(name, cmd) for name, cmd in variants.items()},
        rounds=rounds,
        on_round=lambda i, order: ctx.log(f"{NAME}: {label} round {i + 1}/{rounds}"),
    )
    for name, cmd in once.items():
        ctx.log(f"{NAME}: {label} {name}, once")
        times[name] = [clock(name, cmd, timeout=3600)]
    return times


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


def dashboard_times(url: str, *, poll: bool = True, timeout: float = 1800) -> dict[str, Any]:
    """What optuna-dashboard's study page costs: ``sweep dashboard --storage URL`` asked for
    ``/api/studies/ID?after=0`` (the trials the page loads), then, with ``poll``, once more after
    its 10 s cache of the trials has expired, with ``after`` set to the trials it has (as the open
    page polls). Seconds until it listens and to each whole response, the size, and the server's peak memory."""
    import time
    import urllib.request

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        sweep_cmd("dashboard", "--storage", url, "--port", str(port)),
        env=bench_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        wait_for_port(port, proc=proc, timeout=600)
        out["start_seconds"] = round(time.perf_counter() - started, 2)

        def get(path: str) -> tuple[float, bytes]:
            start = time.perf_counter()
            with urllib.request.urlopen(base + path, timeout=timeout) as response:
                body = response.read()
            return time.perf_counter() - start, body

        _, listing = get("/api/studies")
        study_id = next(s["study_id"] for s in json.loads(listing)["study_summaries"] if s["study_name"] == STUDY)
        seconds, body = get(f"/api/studies/{study_id}?after=0")
        n = len(json.loads(body)["trials"])
        out.update(path=f"/api/studies/{study_id}?after=0", seconds=round(seconds, 2), bytes=len(body), trials=n)
        if poll:
            time.sleep(11)  # optuna-dashboard keeps the trials of a study of 500 or more for 10 s
            seconds, body = get(f"/api/studies/{study_id}?after={n}")
            out.update(poll_seconds=round(seconds, 2), poll_bytes=len(body))
        out["peak_rss_mb"] = _peak_rss_mb(proc.pid)
    finally:
        interrupt(proc)
    return out


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def run(ctx: Context) -> Result:
    mode = "quick" if ctx.quick else "full"
    return measure(ctx, sizes=SIZES[mode], rounds=ROUNDS[mode])


def measure(ctx: Context, *, sizes: Sequence[int], rounds: int, dashboard: bool = True) -> Result:
    """Benchmark 3 at each of ``sizes`` (trials), SQLite and (with ``ctx.postgres_base``) PostgreSQL."""
    res = Result(NAME, TITLE)
    sizes = sorted(set(sizes))
    cached = {n: cached_study_file(n, log=ctx.log) for n in sizes}
    raw: dict[str, Any] = {
        "sizes": sizes,
        "rounds": rounds,
        "cached_files": {n: str(p) for n, p in cached.items()},
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    storages: dict[str, dict[int, str]] = {"sqlite": {}}
    folder = ctx.folder(NAME)
    for n in sizes:
        storages["sqlite"][n] = sqlite_url(copy_sqlite(cached[n], folder / f"reading-{n}.db"))
        _check_rank(storages["sqlite"][n], expected_complete(n))
    with contextlib.ExitStack() as stack:
        if ctx.postgres_base:
            storages["postgresql"] = {}
            for n in sizes:
                pg_url = stack.enter_context(postgres_database(ctx.postgres_base))
                ctx.log(f"{NAME}: copying {n:,} trials into a fresh PostgreSQL database")
                raw[f"postgresql_fill_seconds_{n}"] = round(bulk_copy(cached[n], pg_url), 2)
                storages["postgresql"][n] = pg_url
                _check_rank(pg_url, expected_complete(n))
        else:
            res.notes.append("PostgreSQL skipped: $SWEEP_TEST_POSTGRES_URL is not set")
        for label, urls in storages.items():
            clock = _Clock()
            times = _time_commands(ctx, label, urls, rounds, clock)
            raw[label] = {
                "seconds": {k: [round(s, 3) for s in v] for k, v in times.items()},
                "cpu_seconds": clock.cpu,
            }
            _report(res, label, times, sizes)
        for label, urls in storages.items() if dashboard else ():
            raw[label]["dashboard"] = {}
            for n, url in urls.items():
                ctx.log(f"{NAME}: {label} optuna-dashboard's study page, {n:,} trials")
                try:
                    shown = dashboard_times(url, poll=n == sizes[0])
                except (BenchmarkError, OSError) as exc:
                    res.notes.append(f"{label}, {n:,} trials: optuna-dashboard's study page not measured: {exc}")
                    continue
                raw[label]["dashboard"][n] = shown
                res.add(f"{label}: sweep dashboard listening ({n:,} trials)", shown["start_seconds"], unit="s")
                res.add(f"{label}: optuna-dashboard {shown['path']}, first load ({n:,} trials)", shown["seconds"],
                        unit="s", note=f"{shown['bytes'] / 1e6:.0f} MB of JSON, server peak {shown['peak_rss_mb']} MB")
                if "poll_seconds" in shown:
                    res.add(f"{label}: optuna-dashboard, the open page's poll after 10 s ({n:,} trials)",
                            shown["poll_seconds"], unit="s", note=f"{shown['poll_bytes']:,} bytes of JSON")
    raw["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if sizes[-1] < 10_000:
        res.notes.append(
            f"quick run: {sizes[-1]:,} trials, so the goals (at 10,000 and 100,000) are not judged; the full run "
            f"builds 10,000 and 100,000 once and caches them in {OUT.relative_to(OUT.parents[1])}/"
        )
    res.raw = raw
    return res


def _report(res: Result, label: str, times: dict[str, list[float]], sizes: Sequence[int]) -> None:
    for n in sizes:
        rank_s, status_s = median(times[_label(n, "sweep rank")]), median(times[_label(n, "sweep status")])
        goal = None
        if label == "sqlite":
            goal = GOAL_RANK_S if n == 10_000 else GOAL_LARGE_S if n == LARGE else None
        res.add(f"{label}: sweep rank, whole process ({n:,} trials)", rank_s, unit="s", goal=goal)
        res.add(f"{label}: sweep status, whole process ({n:,} trials)", status_s, unit="s",
                goal=GOAL_LARGE_S if label == "sqlite" and n == LARGE else None)  # fmt: skip
        json_s = median(times[_label(n, "sweep rank --format json")])
        res.add(f"{label}: sweep rank --format json ({n:,} trials)", json_s, unit="s")
        res.add(f"{label}: {REFERENCE} ({n:,} trials)", median(times[_label(n, REFERENCE)]), unit="s",
                note="once" if n > REFERENCE_MAX else "")  # fmt: skip
        if n <= REFERENCE_MAX:
            res.add(f"{label}: sweep rank / {REFERENCE} ({n:,} trials)",
                    median_ratio(times[_label(n, "sweep rank")], times[_label(n, REFERENCE)]))  # fmt: skip
    if 10_000 in sizes and LARGE in sizes:
        for command in ("sweep rank", "sweep status", "sweep rank --top 20"):
            growth = median_ratio(times[_label(LARGE, command)], times[_label(10_000, command)])
            res.add(f"{label}: {command} t(100,000) / t(10,000)", growth,
                    goal=GOAL_GROWTH if label == "sqlite" and command == "sweep rank" else None)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys
    import tempfile
    import time

    from benchmarks.harness import now_iso, postgres_base

    parser = argparse.ArgumentParser(prog="python -m benchmarks.reading", description=TITLE)
    parser.add_argument("--quick", action="store_true", help="1,000 trials, 2 rounds")
    parser.add_argument("--sizes", nargs="+", type=int, metavar="N", help="studies of these many trials (cached)")
    parser.add_argument("--rounds", type=int, help="rotating rounds of every command at every size")
    parser.add_argument("--no-dashboard", action="store_true", help="do not time optuna-dashboard's study page")
    parser.add_argument("--out", type=Path, help="write the result (every measurement) as JSON here")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    with tempfile.TemporaryDirectory(prefix="sweep-reading-") as tmp:
        ctx = Context(quick=args.quick, workdir=Path(tmp), postgres_base=postgres_base(), verbose=not args.quiet)
        start = time.perf_counter()
        res = measure(ctx, sizes=args.sizes or SIZES[mode], rounds=args.rounds or ROUNDS[mode],
                      dashboard=not args.no_dashboard)  # fmt: skip
    res.seconds, res.date = time.perf_counter() - start, now_iso()
    for row in res.rows:
        print(f"{row.measure}: {row.value if row.value is None else round(row.value, 3)} {row.unit}"
              + (f"  goal {row.goal}: {'met' if row.met else 'MISSED'}" if row.goal else ""))  # fmt: skip
    for note in res.notes:
        print(f"- {note}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res.as_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    print(f"{res.seconds:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
