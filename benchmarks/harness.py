"""What every benchmark shares: results, ratios and medians, timed processes, storages, study files.

The machine these run on is small and shared, so no absolute time is trusted
on its own: a figure is the ratio of two things measured in the same run,
taken in alternating order (A then B, then B then A, ...), and the median of
the per-round ratios is what is reported. The raw measurements are kept
beside every ratio in ``results.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
"""Git-ignored cache (the large prebuilt studies) and scratch space."""
POSTGRES_ENV = "SWEEP_TEST_POSTGRES_URL"


class BenchmarkError(Exception):
    """A benchmark could not measure what it set out to (a command failed, a tool is missing)."""


# --------------------------------------------------------------------------- numbers


def median(values: Iterable[float]) -> float:
    """The median of the finite values (NaN when there is none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when either is missing or the denominator is 0."""
    if numerator is None or denominator is None:
        return math.nan
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator == 0:
        return math.nan
    return numerator / denominator


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two series measured in the same rounds."""
    if len(numerators) != len(denominators):
        raise ValueError(f"got {len(numerators)} numerators and {len(denominators)} denominators; need as many")
    return [ratio(a, b) for a, b in zip(numerators, denominators, strict=True)]


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median of the round-by-round ratios (robust to load that drifts between rounds)."""
    return median(paired_ratios(numerators, denominators))


def rotation(names: Sequence[str], round_index: int) -> list[str]:
    """The order of ``names`` in round ``round_index``: each round starts one further along."""
    k = len(names)
    if k == 0:
        return []
    start = round_index % k
    return [*names[start:], *names[:start]]


def alternate(
    variants: Mapping[str, Callable[[], float]],
    *,
    rounds: int,
    on_round: Callable[[int, list[str]], None] | None = None,
) -> dict[str, list[float]]:
    """Run every variant once per round, rotating which goes first; return each one's measurements.

    Each callable runs one measurement and returns it (seconds, or any number).
    """
    names = list(variants)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        order = rotation(names, i)
        if on_round is not None:
            on_round(i, order)
        for name in order:
            out[name].append(float(variants[name]()))
    return out


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Goal:
    """A target for one measured figure: ``value OP threshold``."""

    op: str
    threshold: float
    text: str = ""

    def __post_init__(self) -> None:
        if self.op not in ("<", "<=", ">", ">="):
            raise ValueError(f"Goal.op: got {self.op!r}; allowed: <, <=, >, >=")

    def met(self, value: float | None) -> bool | None:
        """Whether ``value`` meets the goal; None when there is no value to judge."""
        if value is None or not math.isfinite(value):
            return None
        match self.op:
            case "<":
                return value < self.threshold
            case "<=":
                return value <= self.threshold
            case ">":
                return value > self.threshold
        return value >= self.threshold

    def describe(self) -> str:
        return self.text or f"{self.op} {self.threshold:g}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Goal:
        """The goal of a row read back from ``results.json`` (``op`` and ``threshold``, or its text)."""
        text = str(data.get("goal") or "")
        if data.get("goal_op") is not None and data.get("goal_threshold") is not None:
            return cls(str(data["goal_op"]), float(data["goal_threshold"]), text)
        op, threshold = text.split()[:2]  # files written before op and threshold were stored: "<= 1.05 ..."
        return cls(op, float(threshold), text)


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    measure: str
    value: float | None
    unit: str = "x"
    goal: Goal | None = None
    note: str = ""

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.goal.met(self.value)

    def as_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "value": _json_number(self.value),
            "unit": self.unit,
            "goal": self.goal.describe() if self.goal else None,
            "goal_op": self.goal.op if self.goal else None,
            "goal_threshold": self.goal.threshold if self.goal else None,
            "met": self.met,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Row:
        value = data.get("value")
        return cls(
            measure=str(data["measure"]),
            value=None if value is None else float(value),
            unit=str(data.get("unit", "x")),
            goal=Goal.from_dict(data) if data.get("goal") else None,
            note=str(data.get("note", "")),
        )


@dataclass
class Result:
    """What one benchmark found: table rows, every raw measurement, notes."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    date: str = ""  # when it ran (ISO 8601); rows of one file may come from runs made with --update

    def add(self, measure: str, value: float | None, unit: str = "x", goal: Goal | None = None, note: str = "") -> Row:
        row = Row(measure, None if value is None else float(value), unit, goal, note)
        self.rows.append(row)
        return row

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "date": self.date,
            "seconds": round(self.seconds, 2),
            "error": self.error,
            "rows": [r.as_dict() for r in self.rows],
            "notes": list(self.notes),
            "raw": _jsonable(self.raw),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, date: str = "") -> Result:
        """A result read back from ``results.json``; ``date`` for files whose results carry none."""
        return cls(
            name=str(data["name"]),
            title=str(data["title"]),
            rows=[Row.from_dict(r) for r in data.get("rows", [])],
            raw=dict(data.get("raw") or {}),
            notes=[str(n) for n in data.get("notes", [])],
            seconds=float(data.get("seconds") or 0.0),
            error=data.get("error"),
            date=str(data.get("date") or date),
        )


def read_results(json_path: Path) -> tuple[dict[str, Any], list[Result]]:
    """The meta and the results of a ``results.json`` written by :func:`write_results`."""
    document = json.loads(Path(json_path).read_text(encoding="utf-8"))
    results = [Result.from_dict(r, date=str(document.get("date", ""))) for r in document.pop("benchmarks", [])]
    return document, results


def format_value(value: float | None, unit: str) -> str:
    """A measured value for the table: ratios as ``1.03x``, times in s, memory in MB."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if unit == "x":
        return f"{value:.3g}x"
    if unit == "%":
        return f"{value:.1f}%"
    magnitude = abs(value)
    text = f"{value:.3g}" if magnitude < 1000 else f"{value:,.0f}"
    return f"{text} {unit}".strip()


def _met_text(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[met]


def table_rows(results: Sequence[Result]) -> list[tuple[str, str, str, str]]:
    """(benchmark, measured, goal, met?) for every row of every result; errors get a row of their own."""
    out: list[tuple[str, str, str, str]] = []
    for res in results:
        if res.error:
            out.append((res.title, f"error: {res.error}", "-", "-"))
        for row in res.rows:
            measured = f"{row.measure}: {format_value(row.value, row.unit)}"
            if row.note:
                measured += f" ({row.note})"
            out.append((res.title, measured, row.goal.describe() if row.goal else "-", _met_text(row.met)))
    return out


def markdown_table(results: Sequence[Result]) -> str:
    """The results as a markdown table: benchmark, measured, goal, met?"""
    lines = ["| benchmark | measured | goal | met? |", "|---|---|---|---|"]
    for cells in table_rows(results):
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def text_table(results: Sequence[Result]) -> str:
    """The same table for a terminal, columns padded."""
    header = ("benchmark", "measured", "goal", "met?")
    rows = [header, *table_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def write_results(
    results: Sequence[Result], *, json_path: Path, meta: Mapping[str, Any], md_path: Path | None = None
) -> tuple[Path, Path]:
    """Write ``results.json`` (meta, every row, raw measurement and note) and ``results.md`` beside it."""
    json_path = Path(json_path)
    md_path = Path(md_path) if md_path is not None else json_path.with_suffix(".md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    document = {**_jsonable(dict(meta)), "benchmarks": [r.as_dict() for r in results]}
    json_path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    lines = [
        "# sweep benchmarks",
        "",
        f"{meta.get('date', '')}, {meta.get('mode', '')} run on {_machine_line(meta.get('machine', {}))}.",
        *_updated_lines(results, meta),
        "Every time is a ratio of two things measured in the same run, in rotating order, median over rounds "
        "(the one absolute time is `sweep rank`'s, which its goal names; raw numbers in results.json).",
        "",
        markdown_table(results).rstrip("\n"),
    ]
    notes = [(r.title, n) for r in results for n in r.notes]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- **{title}**: {note}" for title, note in notes]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path


def _updated_lines(results: Sequence[Result], meta: Mapping[str, Any]) -> list[str]:
    """Which benchmarks were run again later (``--update``), and when."""
    first = str(meta.get("date", ""))
    later = [r for r in results if r.date and r.date != first]
    if not later:
        return []
    return [
        "Run again later with `--update`, with the same versions on a machine of the same size (the same "
        "processor for benchmarks that time something; each result's `raw.cpu` names its own): "
        + "; ".join(f"{r.title} ({r.date})" for r in later)
        + "."
    ]


def _machine_line(machine: Mapping[str, Any]) -> str:
    cpu = machine.get("cpu") or "an unknown CPU"
    return f"{machine.get('cores', '?')} cores ({cpu}), {machine.get('memory_gb', '?')} GB"


def _json_number(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value


def _jsonable(value: Any) -> Any:
    """Plain JSON: NaN and inf become null, tuples lists, dataclasses dicts, paths strings."""
    if isinstance(value, float):
        return _json_number(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(asdict(value))
    if isinstance(value, bool | int | str) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return str(value)


# --------------------------------------------------------------------------- the machine


def machine_info() -> dict[str, Any]:
    """The machine and the versions of what was measured (TensorFlow is not imported for this)."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory_gb = round(kb / 1024 / 1024, 1)
    from sweep.runner import default_workers

    versions = {"python": platform.python_version()}
    for package in ("sweep", "optuna", "tensorflow", "keras", "numpy", "scikit-learn", "sqlalchemy", "keras-tuner"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "machine": {
            "hostname": platform.node(),
            "platform": platform.platform(),
            "cpu": cpu,
            "cores": default_workers(),
            "cpu_count": os.cpu_count(),
            "memory_gb": memory_gb,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "versions": versions,
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the run


@dataclass
class Context:
    """Settings shared by the benchmarks of one run."""

    quick: bool
    workdir: Path
    postgres_base: str | None = None
    verbose: bool = True
    cores: int = 1
    shared: dict[str, Any] = field(default_factory=dict)
    """Measurements one benchmark makes for another in the same run (see :mod:`benchmarks.fixed_trials`)."""

    def log(self, message: str) -> None:
        if self.verbose:
            stamp = time.strftime("%H:%M:%S")
            print(f"[{stamp}] {message}", file=sys.stderr, flush=True)

    def folder(self, name: str) -> Path:
        """A fresh folder for one benchmark (or one round of it) under this run's temporary folder."""
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        return path

    def pick(self, *, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of every measured process: no inherited storage, TensorFlow quiet, wide output."""
    env = {**os.environ, "COLUMNS": "200", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    env.pop("SWEEP_STORAGE", None)
    pythonpath = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(pythonpath))
    env.update(extra)
    return env


def sweep_cmd(*args: str) -> list[str]:
    """The real ``sweep`` command line (the console script is ``sweep.cli:main``, as is ``python -m sweep``)."""
    return [sys.executable, "-m", "sweep", *args]


@dataclass(frozen=True)
class Timed:
    seconds: float
    stdout: str
    stderr: str


def run_timed(
    cmd: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 1800,
    keep_stdout: bool = False,
) -> Timed:
    """Run one whole process and time it, from start to exit.

    Raises:
        BenchmarkError: the process exited non-zero or timed out (with the end of its stderr).
    """
    start = time.perf_counter()
    try:
        done = subprocess.run(
            list(cmd),
            cwd=cwd or ROOT,
            env=dict(env) if env is not None else bench_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{_show_cmd(cmd)} ran past {timeout:.0f} s") from None
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-4:])
        raise BenchmarkError(f"{_show_cmd(cmd)} exited {done.returncode}: {tail}")
    return Timed(seconds, done.stdout or "", done.stderr)


def _show_cmd(cmd: Sequence[str]) -> str:
    shown = [Path(c).name if i == 0 else c for i, c in enumerate(cmd)]
    text = " ".join(shown)
    return text if len(text) < 160 else text[:157] + "..."


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def interrupt(proc: subprocess.Popen[Any], *, timeout: float = 30.0) -> None:
    """Stop ``proc`` as Ctrl-C would (SIGINT), killing it if it has not exited ``timeout`` seconds later."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for_port(port: int, *, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchmarkError(f"the server meant for port {port} exited with code {proc.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise BenchmarkError(f"nothing listened on port {port} within {timeout:.0f} s")


# --------------------------------------------------------------------------- storages



@contextlib.contextmanager
def sweep_proxy(url: str, *, args: Sequence[str] = ()) -> Iterator[str]:
    """``sweep proxy`` on ``url`` (and ``args``) for the block; its ``grpc://`` URL. Stopped with SIGINT, killed
    after 15 s."""
    with sweep_proxy_process(url, args=args) as (grpc_url, _):
        yield grpc_url


@contextlib.contextmanager
def sweep_proxy_process(url: str, *, args: Sequence[str] = ()) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """:func:`sweep_proxy`, with the process (for its CPU time).

    Its stderr goes to a file, never to a pipe nobody reads (a full pipe would stop the proxy
    mid-run); the end of it is in the error raised when the proxy does not start.
    """

    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(sweep_cmd("proxy", "--storage", url, "--port", str(port), *args), env=bench_env(),
                                stdout=subprocess.DEVNULL, stderr=log, text=True)  # fmt: skip
        try:
            try:
                wait_for_port(port, proc=proc)
            except BenchmarkError as exc:
                log.seek(0)
                raise BenchmarkError(f"{exc}: {' | '.join(log.read().strip().splitlines()[-4:])}") from None
            yield f"grpc://127.0.0.1:{port}", proc
        finally:
            interrupt(proc, timeout=15)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


@contextlib.contextmanager
def postgres_database(base_url: str, *, prefix: str = "sweep_bench") -> Iterator[str]:
    """A fresh PostgreSQL database on the server of ``base_url``, dropped afterwards."""
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.engine.make_url(base_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


def postgres_base() -> str | None:
    """The PostgreSQL server to benchmark against (``SWEEP_TEST_POSTGRES_URL``), or None."""
    url = os.environ.get(POSTGRES_ENV, "").strip()
    if not url:
        return None
    from sweep.storage import resolve_url

    return resolve_url(url)


def checkpoint_sqlite(path: Path) -> None:
    """Fold a write-ahead log back into the SQLite file so that the file alone is the database."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def copy_sqlite(source: Path, destination: Path) -> Path:
    wal = source.with_name(source.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        checkpoint_sqlite(source)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    return destination


# --------------------------------------------------------------------------- study files


def toml_value(value: Any) -> str:
    """One value in TOML (strings, numbers, booleans, lists and inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"TOML cannot hold {value!r} here")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def study_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


DIGITS_SEARCH: dict[str, Any] = {
    "n_layers": {"low": 1, "high": 2},
    "units": {"low": 8, "high": 64, "log": True},
    "activation": ["tanh", "relu"],
    "learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
    "optimizer": ["adam", "rmsprop", "nadam", "sgd"],
    "batch_size": [32, 64, 128],
    "dropout": {"low": 0.0, "high": 0.4},
    "l2": {"low": 1e-6, "high": 1e-2, "log": True},
    "layer_norm": [False, True],
}
"""The search space of ``studies/digits-lstm.toml``."""


def digits_study(
    *,
    name: str,
    n_trials: int,
    seed: int = 42,
    max_epochs: int = 5,
    patience: int = 0,
    repeats: int = 1,
    pruner: Mapping[str, Any] | None = None,
    sampler: Mapping[str, Any] | None = None,
    worker: Mapping[str, Any] | None = None,
    search: Mapping[str, Any] | None = None,
    stability: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """The sections of a digits-lstm study file with the given budget."""
    sections: dict[str, dict[str, Any]] = {
        "study": {"name": name, "seed": seed, "n_trials": n_trials},
        "data": {"source": "digits", "validation_fraction": 0.2},
        "model": {"family": "lstm"},
        "search": dict(search if search is not None else DIGITS_SEARCH),
        "training": {"max_epochs": max_epochs, "patience": patience, "repeats": repeats},
        "stability": dict(stability or {"tail": 5, "risk": 1.0}),
        "sampler": dict(sampler or {"name": "tpe", "n_startup_trials": 6}),
        "pruner": dict(pruner or {"name": "none"}),
    }
    if worker:
        sections["worker"] = dict(worker)
    return sections


def write_study(folder: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    path = Path(folder) / f"{sections['study']['name']}.toml"
    path.write_text(study_toml(sections), encoding="utf-8")
    return path


def fixed_configs(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` varied, small digits-lstm configurations (all nine parameters), the same for every ``seed``."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append(
            {
                "n_layers": rng.choice([1, 1, 2]),
                "units": rng.choice([8, 12, 16, 24, 32]),
                "activation": rng.choice(["tanh", "relu"]),
                "learning_rate": round(10 ** rng.uniform(-3, -2), 6),
                "optimizer": rng.choice(["adam", "rmsprop", "nadam"]),
                "batch_size": rng.choice([64, 128]),
                "dropout": round(rng.uniform(0.0, 0.3), 4),
                "l2": round(10 ** rng.uniform(-6, -3), 8),
                "layer_norm": rng.choice([False, True]),
            }
        )
    return out


def enqueue(study: Any, configs: Sequence[Mapping[str, Any]]) -> None:
    """Queue the configurations in order; the workers take WAITING trials before sampling new ones."""
    for params in configs:
        study.enqueue_trial(dict(params), skip_if_exists=False)


def finished_trials(url: str, study_name: str) -> list[Any]:
    import optuna

    from sweep.storage import open_storage

    study = optuna.load_study(study_name=study_name, storage=open_storage(url, create=False))
    return [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]


def epochs_of(trial: Any) -> int:
    """Epochs a trial trained itself: ``epochs_trained`` (repeats a verifying trial copied left out), else
    every repeat of its stored ``curves`` attr (trials written before the allocation)."""
    from sweep import ledger, records

    if isinstance(trained := trial.user_attrs.get(ledger.EPOCHS_TRAINED), int):
        return trained
    curves = records.trial_attr(trial, records.CURVES) or {}
    return sum(len(c) for c in curves.get("val_loss", []))


def space_json(spec: Any) -> dict[str, str]:
    """The spec's search space as Optuna distribution JSON (what :mod:`benchmarks.plain_loop` reads)."""
    from optuna.distributions import distribution_to_json

    from sweep.space import distributions

    return {name: distribution_to_json(d) for name, d in distributions(spec.search, family=spec.model.family).items()}


def draw_param(rng: Any, dist: Any) -> Any:
    """One value drawn uniformly (log-uniformly for log ranges) from an Optuna distribution, with a numpy ``rng``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return dist.choices[int(rng.integers(len(dist.choices)))]
    if isinstance(dist, IntDistribution):
        if dist.log:
            value = round(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
            return int(min(dist.high, max(dist.low, value)))
        return int(rng.integers(dist.low, dist.high + 1))
    assert isinstance(dist, FloatDistribution)
    if dist.log:
        return float(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
    return float(rng.uniform(dist.low, dist.high))


def random_configs(spec: Any, n: int, *, seed: int) -> list[dict[str, Any]]:
    """``n`` configurations drawn at random from the spec's search space, the same for every ``seed``."""
    import numpy as np

    from sweep.space import distributions

    rng = np.random.default_rng(seed)
    dists = distributions(spec.search, family=spec.model.family)
    return [{name: draw_param(rng, d) for name, d in dists.items()} for _ in range(n)]
