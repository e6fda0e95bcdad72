"""A commented study file guessed from a data file (CSV or NPZ), so that a first sweep needs no docs.

:func:`propose` reads the file and guesses the target, the task, the features, the column
that orders a series, the window of a forecast and the model family, each with the reason
in words (:class:`Proposal`). :func:`render` writes the study file text, a comment above
each guess saying what was guessed, why, and how to change it; the text loads with
:func:`sweep.spec.load_spec` as it is. :func:`write_study` does both and writes the file,
never over an existing one.

The guesses, in order:

- CSV target: the first column named (case aside) ``target``, ``label``, ``labels``,
  ``class`` or ``y``, in that order of preference; else the last column that does not hold
  dates.
- Task: ``classification`` when the target holds text, or a few whole numbers (2 to
  :data:`MAX_CLASSES` distinct values, fewer than half the rows); else ``forecast`` when a
  column orders the rows in time (a column of ISO dates or times, or a strictly increasing
  numeric column named ``t``, ``time``, ``timestamp``, ``step``, ``year`` or ``period``), or
  when the target is the only complete numeric column (one series in the file's order);
  else ``regression``. An NPZ is ``classification`` by the same rule on ``y``, else
  ``regression``.
- Features: the numeric columns without empty or non-finite cells, except the target and
  the ordering column (a forecast reads the target's own past too). Text columns and dates
  are never features; the ordering column becomes ``data.order_by`` of a forecast.
- Lookback (forecast only): two seasonal cycles of the dates' step (hourly 48, daily 14,
  weekly 52, monthly 24, quarterly 8); otherwise a tenth of the rows, from 2 to 48; never
  more than a quarter of the rows.
- Family: ``lstm`` for a forecast or 3-D sequences, ``dense`` for a table.

Nothing here imports TensorFlow, Keras or scikit-learn: numpy, the standard library, and
the enums of :mod:`sweep.data` and :mod:`sweep.model` (numpy-only modules).
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import math
import os
import re
import shlex
import statistics
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from sweep.data import Task
from sweep.errors import DataError, UserError
from sweep.model import Family

__all__ = ["MAX_CLASSES", "Proposal", "propose", "render", "write_study"]

MAX_CLASSES: int = 20
"""Most distinct values a numeric target may have to be guessed a class label."""

TARGET_NAMES: tuple[str, ...] = ("target", "label", "labels", "class", "y")
"""Column names (case aside) taken for the target, in this order of preference."""

TIME_NAMES: tuple[str, ...] = ("t", "time", "timestamp", "step", "year", "period")
"""Names of numeric columns that order a series when their values strictly increase."""

_ALLOWED_FILES = "allowed: a .csv file (a header row, then one row per sample) or a .npz file (arrays X and y)"

_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,255}")

_DAY = 86400.0
_PERIODS: tuple[tuple[str, float, float, int, str], ...] = (
    # (name, shortest step, longest step in seconds, lookback, what the lookback spans)
    ("hourly", 3300.0, 3900.0, 48, "two days"),
    ("daily", 0.9 * _DAY, 1.1 * _DAY, 14, "two weeks"),
    ("weekly", 6.5 * _DAY, 7.5 * _DAY, 52, "a year"),
    ("monthly", 28 * _DAY, 31 * _DAY, 24, "two years"),
    ("quarterly", 89 * _DAY, 92 * _DAY, 8, "two years"),
)


@dataclass(frozen=True)
class Proposal:
    """What :func:`propose` guessed about a data file, each guess with its reason in words.

    Each ``*_reason`` is a clause that reads after "because" (``"it is the last column, ..."``).
    ``target``, ``features``, ``order_by`` and ``lookback`` are None where the study file
    leaves them out (an NPZ names its arrays; a table has no window and no order); their
    reasons then say why.
    """

    data_file: Path
    """The data file, absolute."""
    source: str
    """``csv`` or ``npz``: ``data.source``."""
    summary: str
    """One line on the file's shape, e.g. ``480 rows x 3 columns (date, station, temperature)``."""
    n_rows: int
    """Rows of the CSV, or samples (the first axis of ``X``) of the NPZ."""
    target: str | None
    target_reason: str
    task: Task
    task_reason: str
    features: tuple[str, ...] | None
    features_reason: str
    order_by: str | None
    order_reason: str
    lookback: int | None
    lookback_reason: str
    family: Family
    family_reason: str


# --------------------------------------------------------------------------- guessing


def propose(data_file: Path) -> Proposal:
    """Read ``data_file`` and guess a study for it (the rules are in this module's docstring).

    Raises:
        DataError: the file is missing, unreadable, of another type than ``.csv`` or
            ``.npz``, or holds nothing a study can use (one line naming the file).
    """
    file = Path(data_file).expanduser()
    if not file.exists():
        raise DataError(f"{file}: file not found; {_ALLOWED_FILES}")
    if not file.is_file():
        raise DataError(f"{file}: not a file; {_ALLOWED_FILES}")
    suffix = file.suffix.lower()
    if suffix == ".csv":
        return _propose_csv(file)
    if suffix == ".npz":
        return _propose_npz(file)
    shown = f"type {file.suffix!r}" if file.suffix else "type (no extension)"
    raise DataError(f"{file}: unsupported file {shown}; {_ALLOWED_FILES}")


class _Kind(str, enum.Enum):
    NUMBER = "number"
    DATE = "date"
    TEXT = "text"


@dataclass(frozen=True)
class _Column:
    name: str
    kind: _Kind
    cells: tuple[str, ...]
    missing: int
    """Empty cells, and numbers that are NaN or infinite (the loader refuses both)."""
    distinct: int
    integer_like: bool
    increasing: bool

    @property
    def complete_number(self) -> bool:
        return self.kind is _Kind.NUMBER and self.missing == 0


def _read_csv(file: Path) -> tuple[tuple[str, ...], list[list[str]]]:
    """The header and rows, read exactly as ``source = "csv"`` reads them (:func:`sweep.data.read_csv_rows`)."""
    from sweep.data import read_csv_rows

    with _as_data_file(file):
        header, rows = read_csv_rows(file)
    if all(_number(name) is not None for name in header):
        raise DataError(f"{file}: the first line looks like data; a CSV needs a header row naming the columns")
    if not rows:
        raise DataError(f"{file}: has a header but no data rows")
    return tuple(header), rows


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _timestamp(cell: str) -> float | None:
    """Seconds since the epoch of an ISO date or time (naive ones as UTC, as ``data.order_by`` reads them)."""
    try:
        when = datetime.fromisoformat(cell)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _column(name: str, cells: Sequence[str]) -> _Column:
    numbers: list[float] = []
    missing = 0
    dates = 0
    for cell in cells:
        value = _number(cell) if cell else None
        if not cell or (value is not None and not math.isfinite(value)):
            missing += 1
        elif value is not None:
            numbers.append(value)
        elif _timestamp(cell) is not None:
            dates += 1
    present = len(cells) - missing
    if present and len(numbers) == present:
        kind = _Kind.NUMBER
    elif present and dates == present:
        kind = _Kind.DATE
    else:
        kind = _Kind.TEXT
    integer_like = kind is _Kind.NUMBER and all(value.is_integer() for value in numbers)
    increasing = kind is _Kind.NUMBER and missing == 0 and all(b > a for a, b in itertools.pairwise(numbers))
    distinct = len({cell for cell in cells if cell}) if kind is not _Kind.NUMBER else len(set(numbers))
    return _Column(name, kind, tuple(cells), missing, distinct, integer_like, increasing)


def _few_values(distinct: int, rows: int) -> bool:
    return 2 <= distinct <= MAX_CLASSES and distinct < rows / 2


def _guess_target(file: Path, columns: Sequence[_Column]) -> tuple[_Column, str]:
    wanted = {name: rank for rank, name in enumerate(TARGET_NAMES)}
    named = [c for c in columns if c.name.strip().lower() in wanted and c.kind is not _Kind.DATE]
    if named:
        column = min(named, key=lambda c: wanted[c.name.strip().lower()])
        return column, f"it is named like a target ({', '.join(TARGET_NAMES[:-1])} or {TARGET_NAMES[-1]})"
    candidates = [c for c in columns if c.kind is not _Kind.DATE]
    if not candidates:
        raise DataError(f"{file}: every column holds dates; a study needs a column to predict")
    last = "the last column" if candidates[-1] is columns[-1] else "the last column that does not hold dates"
    return candidates[-1], f"it is {last}, and no column is named {', '.join(TARGET_NAMES[:-1])} or y"


def _guess_order(columns: Sequence[_Column], target: _Column) -> tuple[_Column | None, str]:
    dates = [c for c in columns if c.kind is _Kind.DATE and c is not target]
    if dates:
        return dates[0], f"{dates[0].name!r} holds dates"
    times = [c for c in columns if c.name.strip().lower() in TIME_NAMES and c.increasing and c is not target]
    if times:
        return times[0], f"{times[0].name!r} is named like a time and its numbers strictly increase"
    return None, "no column holds dates or times"


def _guess_lookback(order: _Column | None, n_rows: int) -> tuple[int, str]:
    lookback = min(max(n_rows // 10, 2), 48)
    reason = f"it is a tenth of the {n_rows} rows, kept from 2 to 48"
    if order is not None and order.kind is _Kind.DATE:
        stamps = sorted({stamp for stamp in (_timestamp(cell) for cell in order.cells if cell) if stamp is not None})
        step = statistics.median([b - a for a, b in itertools.pairwise(stamps)]) if len(stamps) > 1 else 0.0
        for period, low, high, window, span in _PERIODS:
            if low <= step <= high:
                lookback, reason = window, f"the dates in {order.name!r} are {period}, and {window} steps span {span}"
                break
    cap = max(1, n_rows // 4)
    if lookback > cap:
        lookback, reason = cap, f"{reason}, but no more than a quarter of the {n_rows} rows"
    return lookback, reason


def _propose_csv(file: Path) -> Proposal:
    header, rows = _read_csv(file)
    n_rows = len(rows)
    columns = [_column(name, [row[i] for row in rows]) for i, name in enumerate(header)]
    target, target_reason = _guess_target(file, columns)
    if target.missing:
        target_reason += f" (but {target.missing} of its cells are empty or not finite: remove those rows)"
    order, order_reason = _guess_order(columns, target)
    numeric = [c for c in columns if c.complete_number and c is not order]
    inputs = [c for c in numeric if c is not target]

    if target.kind is not _Kind.NUMBER:
        task = Task.CLASSIFICATION
        task_reason = f"{target.name!r} holds text ({target.distinct} distinct values): class labels"
        if not _few_values(target.distinct, n_rows):
            task_reason += ", though many for the rows; check that it is the column to predict"
    elif target.integer_like and _few_values(target.distinct, n_rows):
        task = Task.CLASSIFICATION
        task_reason = (
            f"{target.name!r} holds {target.distinct} distinct whole numbers "
            f"(at most {MAX_CLASSES}, and fewer than half the {n_rows} rows): class labels"
        )
    elif order is not None:
        task = Task.FORECAST
        task_reason = f"{order_reason}, so the rows are a series in time, and past rows predict the next"
    elif not inputs:
        task = Task.FORECAST
        task_reason = (
            f"{target.name!r} is the only complete numeric column: one series in the order of the rows, "
            "whose past values predict the next"
        )
    else:
        task = Task.REGRESSION
        task_reason = f"{target.name!r} holds numbers ({target.distinct} distinct values) and {order_reason}"

    unread = [
        f"{c.name!r} ({'it orders the rows' if c is order else _unread_kind(c)})"
        for c in columns if c is not target and not (c.complete_number and c is not order)
    ]  # fmt: skip
    forecast = task is Task.FORECAST
    features = numeric if forecast else inputs
    if not features:
        raise DataError(
            f"{file}: no complete numeric column {'' if forecast else f'besides the target {target.name!r} '}"
            "to learn from; features must be numbers, without empty or non-finite cells"
        )
    if forecast:
        features_reason = "a window holds the past values of the complete numeric columns, the target's own included"
        lookback, lookback_reason = _guess_lookback(order, n_rows)
        family_reason = "a forecast reads windows of past rows, which are sequences"
    else:
        features_reason = "they are the complete numeric columns besides the target"
        lookback, lookback_reason = None, "a table has no window: each row is one sample"
        family_reason = "the rows are a table, with no time axis"
    if unread:
        features_reason += f"; not read: {', '.join(unread)}"
    shown = ", ".join(header[:8]) + (f" and {len(header) - 8} more" if len(header) > 8 else "")
    if order is None and forecast:
        order_reason += ", so the rows are read in the file's order"
    elif order is not None and not forecast:
        order_reason += f", but a {task.value} reads each row on its own"
    return Proposal(
        data_file=file.resolve(),
        source="csv",
        summary=f"{n_rows} row{'s' * (n_rows != 1)} x {len(header)} column{'s' * (len(header) != 1)} ({shown})",
        n_rows=n_rows,
        target=target.name,
        target_reason=target_reason,
        task=task,
        task_reason=task_reason,
        features=tuple(c.name for c in features),
        features_reason=features_reason,
        order_by=order.name if forecast and order is not None else None,
        order_reason=order_reason,
        lookback=lookback,
        lookback_reason=lookback_reason,
        family=Family.LSTM if forecast else Family.DENSE,
        family_reason=family_reason,
    )


def _unread_kind(column: _Column) -> str:
    if column.kind is not _Kind.NUMBER:
        return "dates" if column.kind is _Kind.DATE else "text"
    return f"{column.missing} empty or non-finite cells: clean or impute them to read it"


def _npz_arrays(file: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """``X``, ``y`` and whether ``lengths`` is there, read exactly as ``source = "npz"`` reads them."""
    from sweep.data import read_npz_arrays

    with _as_data_file(file):
        x, y, lengths = read_npz_arrays(file)
    return x, y, lengths is not None


@contextlib.contextmanager
def _as_data_file(file: Path) -> Iterator[None]:
    """The reader's errors name ``data.path``; ``sweep init`` was given the file itself: name it."""
    try:
        yield
    except DataError as exc:
        prefix = f"data.path: {str(file)!r} "
        text = str(exc)
        raise DataError(f"{file}: {text[len(prefix):]}" if text.startswith(prefix) else text) from None


def _propose_npz(file: Path) -> Proposal:
    x, y, padded = _npz_arrays(file)
    if x.ndim not in (2, 3) or 0 in x.shape or x.dtype.kind not in "biuf":
        raise DataError(f"{file}: array X has shape {x.shape} and dtype {x.dtype}; it must be numbers, "
                        "2-D (rows, features) or 3-D (sequences, steps, features), not empty")  # fmt: skip
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0] or y.dtype.kind not in "biufUS":
        raise DataError(f"{file}: array y has shape {y.shape} and dtype {y.dtype}; it must be numbers or "
                        f"text, 1-D or 2-D, with the {x.shape[0]} rows of X")  # fmt: skip
    n = int(x.shape[0])
    distinct = len(np.unique(y))
    whole = y.dtype.kind in "biu" or (y.dtype.kind == "f" and bool(np.all(y == np.round(y))))
    if y.ndim == 2:
        task, task_reason = Task.REGRESSION, f"y holds {y.shape[1]} numbers per row: several targets"
    elif y.dtype.kind in "US":
        task, task_reason = Task.CLASSIFICATION, f"y holds text ({distinct} distinct values): class labels"
    elif whole and _few_values(distinct, n):
        task, task_reason = Task.CLASSIFICATION, (
            f"y holds {distinct} distinct whole numbers (at most {MAX_CLASSES}, and fewer than half the "
            f"{n} rows): class labels"
        )  # fmt: skip
    else:
        task, task_reason = Task.REGRESSION, f"y holds numbers ({distinct} distinct values)"
    if x.ndim == 3:
        shape = f"{n} sequences of {'up to ' if padded else ''}{x.shape[1]} steps x {x.shape[2]} features"
        family, family_reason = Family.LSTM, "X is 3-D: sequences of steps"
    else:
        shape = f"{n} rows x {x.shape[1]} features"
        family, family_reason = Family.DENSE, "X is 2-D: a table, with no time axis"
    arrays = "an npz names them: X holds the inputs and y the targets"
    return Proposal(
        data_file=file.resolve(),
        source="npz",
        summary=f"{shape}, y of shape {y.shape}",
        n_rows=n,
        target=None,
        target_reason=arrays,
        task=task,
        task_reason=task_reason,
        features=None,
        features_reason=arrays,
        order_by=None,
        order_reason="an npz is read in the order of its rows",
        lookback=None,
        lookback_reason="an npz holds its sequences already",
        family=family,
        family_reason=family_reason,
    )


# --------------------------------------------------------------------------- writing


def _toml_string(text: str) -> str:
    """A TOML basic string (control characters and DEL escaped, which TOML requires)."""
    out = ['"']
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _comment(text: str) -> list[str]:
    """``text`` as comment lines of at most 100 characters (control characters, which TOML refuses, as '?')."""
    shown = "".join(char if char.isprintable() else "?" for char in " ".join(text.split()))
    return ["# " + line for line in textwrap.wrap(shown, width=98, break_on_hyphens=False)]


def _relative(file: Path, folder: Path) -> str:
    """``file`` from ``folder``; absolute when the two share no folder but the root (or lie on other drives)."""
    try:
        if Path(os.path.commonpath([file, folder])) == Path(file.anchor):
            return file.as_posix()
        return Path(os.path.relpath(file, folder)).as_posix()
    except ValueError:
        return file.as_posix()


_TASK_WORDS = {
    Task.CLASSIFICATION: "predict a label per row",
    Task.REGRESSION: "predict a number per row, the rows independent",
    Task.FORECAST: "predict the next value of a series from a window of past rows",
}
_OTHER_FAMILIES = {
    Family.DENSE: '"lstm" and "gru" read sequences (a forecast\'s windows, or a 3-D X)',
    Family.LSTM: '"gru" (a lighter recurrent network), "dense" (flattens each sequence)',
    Family.GRU: '"lstm" (the other recurrent network), "dense" (flattens each sequence)',
}
_HELD_OUT = {
    Task.CLASSIFICATION: "stratified by class",
    Task.REGRESSION: "chosen at random",
    Task.FORECAST: "the last windows of the series",
}


def _search(proposal: Proposal) -> list[str]:
    if proposal.n_rows < 500:
        batches = "[16, 32]"
    elif proposal.n_rows < 5000:
        batches = "[32, 64, 128]"
    else:
        batches = "[64, 128, 256]"
    dense = proposal.family is Family.DENSE
    return [
        "[search]",
        "# What the trials try. Each parameter is a constant (l2 = 0.0), a list of choices",
        '# (optimizer = ["adam", "nadam"]) or a range ({ low = 1e-4, high = 1e-2, log = true }).',
        "# A small space to start: widen a range when the best trials sit at its edge, and search l2",
        "# with a range such as { low = 1e-6, high = 1e-2, log = true } when they overfit.",
        f"n_layers = {{ low = 1, high = {3 if dense else 2} }}",
        "units = { low = 16, high = 128, log = true }" if dense else "units = { low = 8, high = 64, log = true }",
        'activation = ["relu", "elu"]' if dense else 'activation = "tanh"',
        "learning_rate = { low = 1e-4, high = 1e-2, log = true }",
        'optimizer = ["adam", "nadam"]' if dense else 'optimizer = ["adam", "rmsprop"]',
        f"batch_size = {batches}",
        f"dropout = {{ low = 0.0, high = {0.4 if dense else 0.3} }}",
        "l2 = 0.0",
    ]


def render(proposal: Proposal, *, name: str, study_file: Path | None = None) -> str:
    """The study file text for ``proposal``: TOML, with a comment above each guess.

    The text loads with :func:`sweep.spec.load_spec` as it is, once written to ``study_file``.

    Args:
        proposal: what :func:`propose` guessed.
        name: the study's name (``study.name``).
        study_file: where the text will be written (default: ``<name>.toml`` in the current
            directory); ``data.path`` is written relative to its folder, or absolute when the
            two share no folder but the root.

    Raises:
        UserError: ``name`` is not a study name (one line with what is allowed).
    """
    if not _STUDY_NAME.fullmatch(name):
        raise UserError(
            f"study name {name!r}: allowed: 1-256 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    file = Path(f"{name}.toml") if study_file is None else study_file
    p = proposal
    others = "; ".join(f'"{t.value}" ({words})' for t, words in _TASK_WORDS.items() if t is not p.task)
    run = f"sweep run {shlex.quote(str(file))}"
    lines = [
        *_comment(f"A study guessed from {p.data_file.name}: {p.summary}."),
        "# Each guess has a comment above it: what was guessed, why, and how to change it.",
        f"# Run it:              {run}",
        f"# A quick first look:  {run} --n-trials 3 --set training.max_epochs=3",
        "",
        "[study]",
        "# The study's name in the storage: sweep status, rank and best take it.",
        f"name = {_toml_string(name)}",
        '# storage = "sqlite:///sweep.db"  # the default; or --storage, or $SWEEP_STORAGE',
        "# A fixed seed: the same splits and the same first trials on every run.",
        "seed = 1",
        '# When to stop: after 20 trials. Or budget = 500 (epochs to train in all) or timeout = "1h";',
        "# --n-trials, --budget and --timeout override them.",
        "n_trials = 20",
        "",
        "[data]",
        f'source = "{p.source}"',
        "# The data file (a relative path is read from this file's folder).",
        f"path = {_toml_string(_relative(p.data_file, file.resolve().parent))}",
    ]
    if p.target is not None:
        lines += _comment(f"Guessed target: {p.target!r}, because {p.target_reason}. To predict another column, "
                          "write its name here.")  # fmt: skip
        lines.append(f"target = {_toml_string(p.target)}")
    lines += _comment(f"Guessed task: {p.task.value} ({_TASK_WORDS[p.task]}), because {p.task_reason}. "
                      f"The others: {others}.")  # fmt: skip
    lines.append(f'task = "{p.task.value}"')
    if p.features is not None:
        lines += _comment(f"Guessed features, because {p.features_reason}. Only the columns listed here are "
                          "read, and they must hold numbers.")  # fmt: skip
        listed = f"features = [{', '.join(_toml_string(f) for f in p.features)}]"
        if len(listed) > 100:
            listed = "\n".join(["features = [", *(f"    {_toml_string(f)}," for f in p.features), "]"])
        lines.append(listed)
    if p.order_by is not None:
        lines += _comment(f"Guessed order: {p.order_reason}. The rows are sorted by this column (numbers or ISO "
                          "dates) before windows are cut; without the line, the file's order is kept.")  # fmt: skip
        lines.append(f"order_by = {_toml_string(p.order_by)}")
    if p.lookback is not None:
        lines += _comment(f"Guessed lookback: {p.lookback} rows per window, because {p.lookback_reason}. A "
                          "longer window sees slower patterns but leaves fewer windows to learn from.")  # fmt: skip
        lines += [f"lookback = {p.lookback}", "# The row predicted: how many rows after a window's last row.",
                  "horizon = 1"]  # fmt: skip
    lines += [
        f"# The share of rows held out to validate each trial ({_HELD_OUT[p.task]}).",
        "validation_fraction = 0.2",
        "",
        "[model]",
        *_comment(f"Guessed family: {p.family.value}, because {p.family_reason}. The others: "
                  f"{_OTHER_FAMILIES[p.family]}; or builder = \"module:function\", your own Keras model."),
        f'family = "{p.family.value}"',
        "",
        *_search(p),
        "",
        "[training]",
        "# Each configuration trains up to `repeats` times, on other splits and seeds, so that its score",
        "# tells how stable it is as well as how good. Training stops after max_epochs, or after",
        "# `patience` epochs without a better validation loss.",
        "max_epochs = 30",
        "patience = 5",
        "repeats = 3",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _study_name(stem: str) -> str:
    """``stem`` made into a study name: other characters become '-', and it starts with a letter or digit."""
    cleaned = re.sub(r"[^A-Za-z0-9._\-]", "-", stem)
    cleaned = re.sub(r"^[^A-Za-z0-9]+", "", cleaned)[:256]
    return cleaned or "study"


def write_study(data_file: Path, *, out: Path | None = None) -> Path:
    """Guess a study for ``data_file`` and write its file, never over an existing one.

    Args:
        data_file: the CSV or NPZ file.
        out: the study file to write. Default: ``<data file stem>.toml`` in the current
            directory (where ``sweep run`` is typed next); ``data.path`` in it is relative
            to the study file's folder, so either may be anywhere. The study's name is
            the file's stem (other characters than letters, digits, '.', '_' and '-'
            become '-').

    Returns:
        The path written (``out``, or the default, relative to the current directory).

    Raises:
        UserError: ``out`` exists already, or its folder does not, or it cannot be
            written; DataError (a UserError) for the data file (see :func:`propose`).
            Each is one line naming the file.
    """
    target = Path(f"{Path(data_file).stem}.toml") if out is None else Path(out).expanduser()
    exists = f"{target}: already exists; not overwritten (write to another path, or remove it first)"
    if target.exists() or target.is_symlink():
        raise UserError(exists)
    if not target.parent.is_dir():
        raise UserError(f"{target}: folder {str(target.parent)!r} does not exist; create it first")
    proposal = propose(Path(data_file))
    text = render(proposal, name=_study_name(target.stem), study_file=target)
    try:
        with target.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise UserError(exists) from None
    except OSError as exc:
        raise UserError(f"{target}: cannot be written: {exc.strerror or exc}") from None
    return target
