"""Built-in and user datasets, train/validation splits, and scaling.

Everything here is numpy (and scikit-learn, imported lazily); nothing imports
TensorFlow or Keras, and nothing downloads. Every problem with the user's data
raises :class:`sweep.errors.DataError` with one line that names the field or
file, the value, and what is allowed.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import math
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sweep.errors import DataError

if TYPE_CHECKING:
    from sweep.spec import DataSection

__all__ = [
    "PAD_VALUE",
    "SOURCES",
    "Dataset",
    "Prepared",
    "Split",
    "Task",
    "baseline_loss",
    "check_fingerprint",
    "data_kwargs",
    "describe",
    "fingerprint",
    "load_dataset",
    "make_splits",
    "prepare",
    "repeat_seed",
]


class Task(str, enum.Enum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    FORECAST = "forecast"


class Source(str, enum.Enum):
    DIGITS = "digits"
    MACKEY_GLASS = "mackey_glass"
    BREAST_CANCER = "breast_cancer"
    DIABETES = "diabetes"
    CSV = "csv"
    NPZ = "npz"


SOURCES: tuple[str, ...] = tuple(source.value for source in Source)
TASKS: tuple[str, ...] = tuple(task.value for task in Task)

PAD_VALUE: float = 0.0
"""Value of padded time steps; the model masks steps whose features all equal it."""

MIN_WINDOWS: int = 4
"""Fewest windows a ``lookback``/``horizon`` pair may leave (2 training + 2 validation)."""

MACKEY_GLASS_LENGTH: int = 1500
MACKEY_GLASS_MAX_LENGTH: int = 100_000
DEFAULT_LOOKBACK: int = 24

_BUILTIN_TASKS: dict[Source, Task] = {
    Source.DIGITS: Task.CLASSIFICATION,
    Source.MACKEY_GLASS: Task.FORECAST,
    Source.BREAST_CANCER: Task.CLASSIFICATION,
    Source.DIABETES: Task.REGRESSION,
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset, ready to split.

    ``X`` is float32, 2-D ``(n, f)`` or 3-D ``(n, t, f)``; sequences shorter
    than ``t`` are post-padded with :data:`PAD_VALUE` and ``lengths`` holds
    their valid steps. ``y`` is int64 class ids ``0..k-1`` for classification
    (``classes`` holds the original labels), float32 ``(n,)`` or ``(n, k)``
    otherwise. ``time_ordered`` rows are in time order and split chronologically.
    """

    name: str
    task: Task
    X: np.ndarray
    y: np.ndarray
    lengths: np.ndarray | None
    classes: tuple[str, ...] | None
    time_ordered: bool
    target_feature: int | None = None
    """In windows of a series whose target is also an input: the feature that holds the target's
    past values, so that the last value is a forecast to beat (:func:`baseline_loss`)."""

    def __post_init__(self) -> None:
        if not isinstance(self.task, Task):
            raise TypeError(f"Dataset.task must be a Task, got {self.task!r}")
        if self.X.dtype != np.float32 or self.X.ndim not in (2, 3):
            raise ValueError(f"Dataset.X must be 2-D or 3-D float32, got {self.X.ndim}-D {self.X.dtype}")
        if self.y.shape[:1] != self.X.shape[:1]:
            raise ValueError(f"Dataset.y has {self.y.shape[:1]} rows but X has {self.X.shape[:1]}")
        if self.task is Task.CLASSIFICATION:
            if self.y.dtype != np.int64 or self.y.ndim != 1 or self.classes is None:
                raise ValueError("a classification Dataset needs 1-D int64 y and classes")
            if self.y.size and (self.y.min() < 0 or self.y.max() >= len(self.classes)):
                raise ValueError("Dataset.y has class ids outside 0..len(classes)-1")
        elif self.y.dtype != np.float32 or self.y.ndim not in (1, 2) or self.classes is not None:
            raise ValueError("a regression/forecast Dataset needs float32 1-D or 2-D y and no classes")
        if self.lengths is not None and (
            self.X.ndim != 3 or self.lengths.dtype != np.int64 or self.lengths.shape != self.X.shape[:1]
        ):
            raise ValueError("Dataset.lengths must be int64 (n,) and only with 3-D X")
        if self.target_feature is not None and not (
            self.X.ndim == 3 and self.y.ndim == 1 and 0 <= self.target_feature < self.X.shape[-1]
        ):
            raise ValueError("Dataset.target_feature must name a feature of 3-D X, with one target")

    @property
    def n_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    @property
    def is_sequence(self) -> bool:
        return self.X.ndim == 3

    @property
    def padded(self) -> bool:
        return self.lengths is not None


@dataclass(frozen=True, eq=False)
class Split:
    """Row indices of one train/validation split: int64, sorted, disjoint."""

    train: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True, eq=False)
class Prepared:
    """One split, scaled with statistics fitted on its training rows only.

    ``x_*`` are float32 (padded steps stay exactly :data:`PAD_VALUE`); ``y_*``
    are int64 class ids for classification, else standardised float32 targets.
    ``x_mean``/``x_scale`` have shape ``(f,)``; ``y_mean``/``y_scale`` have
    shape ``y.shape[1:]`` (so ``y * y_scale + y_mean`` undoes the scaling) and
    are None for classification.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: np.ndarray | None
    y_scale: np.ndarray | None
    target_feature: int | None = None
    """As :attr:`Dataset.target_feature`."""


# --------------------------------------------------------------------------- loading


def load_dataset(
    *,
    source: str,
    path: str | Path | None = None,
    features: Sequence[str] | None = None,
    target: str | Sequence[str] | None = None,
    task: str | None = None,
    lookback: int | None = None,
    horizon: int = 1,
    group: str | None = None,
    length: int | None = None,
    base_dir: Path | str = ".",
    order_by: str | None = None,
) -> Dataset:
    """Load the dataset a study's ``[data]`` section names.

    Args:
        source: one of :data:`SOURCES`.
        path: the file for ``csv``/``npz``, relative to ``base_dir``.
        features, target, group: column names (``csv`` only).
        order_by: a column (dates or numbers) that puts the rows of a series, or of each
            group, in order (``csv`` with ``lookback`` or ``group``); the file's order otherwise.
        task: required for ``csv``/``npz``; for built-ins it may only repeat
            the built-in's own task.
        lookback, horizon: window length and how many steps ahead the target
            lies (``csv`` and ``mackey_glass``).
        length: number of points of the ``mackey_glass`` series.

    Raises:
        DataError: for anything wrong with the arguments or the data.
    """
    try:
        kind = Source(source)
    except ValueError:
        raise DataError(f"data.source: {source!r} is not a source; allowed: {', '.join(SOURCES)}") from None

    if isinstance(path, Path):
        path = str(path)
    if kind in (Source.CSV, Source.NPZ):
        if path is None or (isinstance(path, str) and not path.strip()):
            raise DataError(f"data.path: required for source '{kind.value}' (the file to read)")
        the_task = _parse_task(task, kind)
    else:
        the_task = _BUILTIN_TASKS[kind]
        if task is not None and _parse_task(task, kind) is not the_task:
            raise DataError(f"data.task: {task!r} does not fit source '{kind.value}', which is '{the_task.value}'")
        named = (("path", path), ("features", features), ("target", target), ("group", group), ("order_by", order_by))
        for field, value in named:
            if value is not None:
                users = "csv and npz" if field == "path" else "csv"
                raise DataError(f"data.{field}: not used by source '{kind.value}'; only by {users}")

    if kind is not Source.MACKEY_GLASS and length is not None:
        raise DataError(f"data.length: not used by source '{kind.value}'; only by mackey_glass")
    if kind not in (Source.CSV, Source.MACKEY_GLASS):
        if lookback is not None:
            raise DataError(f"data.lookback: not used by source '{kind.value}'; only by csv and mackey_glass")
        if _check_int("data.horizon", horizon, minimum=1) != 1:
            raise DataError(f"data.horizon: not used by source '{kind.value}'; only by csv and mackey_glass")

    if kind is Source.DIGITS:
        return _load_digits()
    if kind is Source.BREAST_CANCER:
        return _load_breast_cancer()
    if kind is Source.DIABETES:
        return _load_diabetes()
    if kind is Source.MACKEY_GLASS:
        return _load_mackey_glass(length=length, lookback=lookback, horizon=horizon)
    assert path is not None
    file = _resolve(path, base_dir)
    if kind is Source.CSV:
        return _load_csv(
            path=path, file=file, features=features, target=target, task=the_task,
            lookback=lookback, horizon=horizon, group=group, order_by=order_by,
        )
    unused: tuple[tuple[str, object], ...] = (
        ("features", features), ("target", target), ("group", group), ("lookback", lookback),
        ("order_by", order_by),
    )
    for field, unused_value in unused:
        if unused_value is not None:
            raise DataError(f"data.{field}: not used by source 'npz'; the file holds the arrays 'X' and 'y'")
    if _check_int("data.horizon", horizon, minimum=1) != 1:
        raise DataError("data.horizon: not used by source 'npz'; the file holds the arrays 'X' and 'y'")
    return _load_npz(path=path, file=file, task=the_task)


def _parse_task(task: str | None, kind: Source) -> Task:
    if task is None:
        raise DataError(f"data.task: required for source '{kind.value}'; allowed: {', '.join(TASKS)}")
    try:
        return Task(task)
    except ValueError:
        raise DataError(f"data.task: {task!r} is not a task; allowed: {', '.join(TASKS)}") from None


def _check_int(field: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DataError(f"{field}: {value!r} is not an integer; it must be an integer >= {minimum}")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise DataError(f"{field}: {value!r} is not allowed; it must be an integer {allowed}")
    return int(value)


def _resolve(path: str, base_dir: Path | str) -> Path:
    file = Path(base_dir) / Path(path).expanduser()
    if not file.exists():
        raise DataError(f"data.path: file {path!r} not found")
    if not file.is_file():
        raise DataError(f"data.path: {path!r} is not a file")
    return file


def _n_windows(rows: int, lookback: int, horizon: int) -> int:
    return rows - lookback - horizon + 1


def _windows(values: np.ndarray, *, lookback: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``values[i:i+lookback]`` and the row ``horizon`` after each window's last row."""
    n = _n_windows(len(values), lookback, horizon)
    starts = np.arange(n)[:, None] + np.arange(lookback)[None, :]
    return values[starts], np.arange(n) + lookback - 1 + horizon


# --------------------------------------------------------------------------- built-ins


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return Dataset(
        name="digits",
        task=Task.CLASSIFICATION,
        X=np.ascontiguousarray(bunch.images, dtype=np.float32),
        y=np.asarray(bunch.target, dtype=np.int64),
        lengths=None,
        classes=tuple(str(name) for name in bunch.target_names),
        time_ordered=False,
    )


def _load_breast_cancer() -> Dataset:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return Dataset(
        name="breast_cancer",
        task=Task.CLASSIFICATION,
        X=np.ascontiguousarray(bunch.data, dtype=np.float32),
        y=np.asarray(bunch.target, dtype=np.int64),
        lengths=None,
        classes=tuple(str(name) for name in bunch.target_names),
        time_ordered=False,
    )


def _load_diabetes() -> Dataset:
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    return Dataset(
        name="diabetes",
        task=Task.REGRESSION,
        X=np.ascontiguousarray(bunch.data, dtype=np.float32),
        y=np.asarray(bunch.target, dtype=np.float32),
        lengths=None,
        classes=None,
        time_ordered=False,
    )


def mackey_glass_series(length: int) -> np.ndarray:
    """``length`` points of the Mackey–Glass series, one per time unit (float64).

    dx/dt = 0.2 x(t-17) / (1 + x(t-17)^10) - 0.1 x(t), constant history 1.2,
    integrated by RK4 with dt = 0.1 (delayed values at half steps linearly
    interpolated), after a burn-in of 300 time units. Only IEEE additions,
    multiplications and divisions are used, so the result is bit-identical in
    every process and on every platform.
    """
    beta, gamma, dt = 0.2, 0.1, 0.1
    delay = 170  # tau / dt
    per_sample = 10  # 1.0 / dt
    burn = 300 * per_sample
    steps = burn + (length - 1) * per_sample
    history = 1.2

    def rate(x: float, lagged: float) -> float:
        p2 = lagged * lagged
        p8 = (p2 * p2) * (p2 * p2)
        return beta * lagged / (1.0 + p8 * p2) - gamma * x

    xs = [history]
    x = history
    for i in range(steps):
        a = xs[i - delay] if i >= delay else history
        b = xs[i - delay + 1] if i + 1 >= delay else history
        mid = 0.5 * (a + b)
        k1 = rate(x, a)
        k2 = rate(x + 0.5 * dt * k1, mid)
        k3 = rate(x + 0.5 * dt * k2, mid)
        k4 = rate(x + dt * k3, b)
        x = x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        xs.append(x)
    return np.asarray(xs[burn::per_sample], dtype=np.float64)


def _load_mackey_glass(*, length: int | None, lookback: int | None, horizon: int) -> Dataset:
    points = MACKEY_GLASS_LENGTH if length is None else _check_int(
        "data.length", length, minimum=1, maximum=MACKEY_GLASS_MAX_LENGTH
    )
    window = DEFAULT_LOOKBACK if lookback is None else _check_int("data.lookback", lookback, minimum=1)
    ahead = _check_int("data.horizon", horizon, minimum=1)
    n = _n_windows(points, window, ahead)
    if n < MIN_WINDOWS:
        raise DataError(
            f"data.length: {points} points with lookback {window} and horizon {ahead} leave "
            f"{max(n, 0)} windows; need at least {MIN_WINDOWS} (length >= {window + ahead + MIN_WINDOWS - 1})"
        )
    series = mackey_glass_series(points).astype(np.float32)
    x, target_rows = _windows(series[:, None], lookback=window, horizon=ahead)
    return Dataset(
        name="mackey_glass",
        task=Task.FORECAST,
        X=np.ascontiguousarray(x, dtype=np.float32),
        y=series[target_rows],
        lengths=None,
        classes=None,
        time_ordered=True,
        target_feature=0,
    )


# --------------------------------------------------------------------------- csv


@dataclass(frozen=True)
class _Table:
    display: str
    columns: tuple[str, ...]
    rows: list[list[str]]
    lines: list[int]  # the file line of each row, the header being line 1

    def column(self, name: str) -> list[str]:
        index = self.columns.index(name)
        return [row[index] for row in self.rows]


def _ordered(table: _Table, column: str) -> _Table:
    """``table`` with its rows sorted by ``column`` (numbers, or ISO dates and times; stable for ties).

    Raises:
        DataError: a value of ``column`` is neither (one line naming it).
    """
    from datetime import UTC, datetime

    keys: list[tuple[int, float]] = []
    for row, cell in enumerate(table.column(column)):
        try:
            keys.append((0, float(cell)))
            continue
        except ValueError:
            pass
        try:
            when = datetime.fromisoformat(cell)
        except ValueError:
            raise DataError(
                f"data.order_by: {table.display!r} column {column!r} row {table.lines[row]} is {cell!r}; "
                "allowed: numbers or ISO dates and times (2024-01-31, 2024-01-31T12:00)"
            ) from None
        keys.append((1, (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()))  # naive: as UTC
    if len({kind for kind, _ in keys}) > 1:
        raise DataError(f"data.order_by: {table.display!r} column {column!r} mixes numbers and dates; use one kind")
    order = sorted(range(len(keys)), key=lambda i: keys[i][1])
    return _Table(display=table.display, columns=table.columns, rows=[table.rows[i] for i in order],
                  lines=[table.lines[i] for i in order])  # fmt: skip


def read_csv_rows(file: Path) -> tuple[tuple[str, ...], list[list[str]]]:
    """A CSV's header and rows (cells stripped, blank lines skipped), read as ``source = "csv"`` reads it.

    Raises:
        DataError: one line naming the file: not UTF-8, not CSV, unreadable, no header, a row of
            another length, a nameless or repeated column, or no data rows.
    """
    table = _read_csv(str(file), file)
    return table.columns, table.rows


def _read_csv(display: str, file: Path) -> _Table:
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header: list[str] | None = None
            rows: list[list[str]] = []
            lines: list[int] = []
            for record in reader:
                if not record or all(not cell.strip() for cell in record):
                    continue
                cells = [cell.strip() for cell in record]
                if header is None:
                    header = cells
                    continue
                if len(cells) != len(header):
                    raise DataError(
                        f"data.path: {display!r} line {reader.line_num} has {len(cells)} fields "
                        f"but the header has {len(header)}; every row must have one value per column"
                    )
                rows.append(cells)
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(f"data.path: {display!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"data.path: {display!r} is not valid CSV: {exc}") from None
    except OSError as exc:
        raise DataError(f"data.path: {display!r} cannot be read: {exc.strerror or exc}") from None
    if header is None:
        raise DataError(f"data.path: {display!r} is empty; it needs a header row naming the columns")
    for position, name in enumerate(header, start=1):
        if not name:
            raise DataError(f"data.path: {display!r} header column {position} has no name; every column needs one")
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"data.path: {display!r} header names column {name!r} twice; column names must be unique")
        seen.add(name)
    if not rows:
        raise DataError(f"data.path: {display!r} has a header but no data rows")
    return _Table(display=display, columns=tuple(header), rows=rows, lines=lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _require_column(table: _Table, field: str, name: Any) -> str:
    if not isinstance(name, str):
        raise DataError(f"{field}: {name!r} is not a column name; it must be a string")
    if name not in table.columns:
        hint = ""
        if all(_is_number(column) for column in table.columns):
            hint = " (the first line looks like data: the file needs a header row)"
        raise DataError(
            f"{field}: column {name!r} is not in {table.display!r}; "
            f"its columns are: {', '.join(table.columns)}{hint}"
        )
    return name


def _names(field: str, value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence) or not value:
        raise DataError(f"{field}: {value!r} is not allowed; give a column name or a non-empty list of names")
    names = list(value)
    for name in names:
        if names.count(name) > 1:
            raise DataError(f"{field}: column {name!r} is listed twice; list each column once")
    return names


def _numbers(table: _Table, column: str, rows: Sequence[int], *, what: str) -> np.ndarray:
    """The float64 values of ``column`` at ``rows``; every one must be a finite number."""
    cells = table.column(column)
    values = np.empty(len(rows), dtype=np.float64)
    for out, row in enumerate(rows):
        text = cells[row]
        try:
            value = float(text)
        except ValueError:
            where = f"data.path: {table.display!r} column {column!r} row {table.lines[row]}"
            if not text:
                raise DataError(f"{where} is empty; the data must be finite numbers (clean or impute it)") from None
            raise DataError(f"{where} is {text!r}, not a number; {what}") from None
        if not math.isfinite(value):
            shown = "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
            raise DataError(
                f"data.path: {table.display!r} column {column!r} row {table.lines[row]} is {shown}; "
                "the data must be finite numbers (clean or impute it)"
            )
        values[out] = value
    return values


def _label_classes(labels: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class ids 0..k-1 for ``labels`` in sorted order (numeric order when all are integers)."""
    as_ints: list[int] | None = []
    for label in labels:
        try:
            number = float(label)
        except ValueError:
            as_ints = None
            break
        if not math.isfinite(number) or not number.is_integer():
            as_ints = None
            break
        assert as_ints is not None
        as_ints.append(int(number))
    if as_ints is not None:
        keys: list[Any] = as_ints
        unique: list[Any] = sorted(set(as_ints))
    else:
        keys = list(labels)
        unique = sorted(set(labels))
    index = {value: position for position, value in enumerate(unique)}
    ids = np.fromiter((index[key] for key in keys), dtype=np.int64, count=len(keys))
    return ids, tuple(str(value) for value in unique)


def _check_classes(where: str, classes: tuple[str, ...]) -> None:
    if len(classes) < 2:
        only = f" ({classes[0]!r})" if classes else ""
        raise DataError(f"{where} has only {len(classes)} class{only}; classification needs at least 2")


def _load_csv(
    *,
    path: str,
    file: Path,
    features: Sequence[str] | None,
    target: str | Sequence[str] | None,
    task: Task,
    lookback: int | None,
    horizon: int,
    group: str | None,
    order_by: str | None = None,
) -> Dataset:
    ahead = _check_int("data.horizon", horizon, minimum=1)
    window = None if lookback is None else _check_int("data.lookback", lookback, minimum=1)
    if window is None and ahead != 1:
        raise DataError(f"data.horizon: {ahead} is only used with data.lookback (windows of a time series)")
    if window is not None and group is not None:
        raise DataError("data.group: cannot be combined with data.lookback; use one or the other")
    if window is not None and task is Task.CLASSIFICATION:
        raise DataError("data.task: 'classification' cannot be used with data.lookback; allowed: regression, forecast")
    if target is None:
        raise DataError(f"data.target: required for source 'csv'; name the column of {path!r} to predict")

    table = _read_csv(path, file)
    if order_by is not None:
        if window is None and group is None:
            raise DataError("data.order_by: orders a series; use it with data.lookback or data.group")
        table = _ordered(table, _require_column(table, "data.order_by", order_by))
    targets = [_require_column(table, "data.target", name) for name in _names("data.target", target)]
    if task is Task.CLASSIFICATION and len(targets) != 1:
        raise DataError(f"data.target: {target!r} is not allowed for classification; give one column name")
    group_column = None if group is None else _require_column(table, "data.group", group)
    if group_column is not None and group_column in targets:
        raise DataError(f"data.group: column {group_column!r} is the target; the group must be another column")

    if features is None:
        excluded = {group_column, order_by} if window is not None else {group_column, order_by, *targets}
        inputs = [name for name in table.columns if name not in excluded]
        if not inputs:
            raise DataError(f"data.features: {path!r} has no columns left to use as features")
    else:
        inputs = [_require_column(table, "data.features", name) for name in _names("data.features", features)]
        for name in inputs:
            if name == group_column:
                raise DataError(f"data.features: column {name!r} is the group column; it cannot be a feature")
            if name in targets and window is None:
                raise DataError(
                    f"data.features: column {name!r} is the target; it cannot also be a feature "
                    "(only with data.lookback, where past values are inputs)"
                )

    n_rows = len(table.rows)
    feature_hint = "feature values must be numbers (encode the column as numbers or leave it out of data.features)"
    if window is not None:
        n = _n_windows(n_rows, window, ahead)
        if n < MIN_WINDOWS:
            raise DataError(
                f"data.lookback: {window} with horizon {ahead} leaves {max(n, 0)} windows from the {n_rows} rows "
                f"of {path!r}; need at least {MIN_WINDOWS} (a shorter lookback or horizon, or more rows)"
            )
        every = range(n_rows)
        matrix = np.stack([_numbers(table, name, every, what=feature_hint) for name in inputs], axis=1)
        x, window_ends = _windows(matrix, lookback=window, horizon=ahead)
        y = _regression_targets(table, targets, window_ends.tolist(), single=isinstance(target, str))
        own = inputs.index(targets[0]) if isinstance(target, str) and targets[0] in inputs else None
        return Dataset(
            name=Path(path).name, task=task, X=np.ascontiguousarray(x, dtype=np.float32), y=y,
            lengths=None, classes=None, time_ordered=True, target_feature=own,
        )

    matrix = np.stack([_numbers(table, name, range(n_rows), what=feature_hint) for name in inputs], axis=1)
    if group_column is None:
        x = matrix
        target_rows = list(range(n_rows))
        lengths = None
    else:
        members: dict[str, list[int]] = {}
        for row, value in enumerate(table.column(group_column)):
            if not value:
                raise DataError(
                    f"data.path: {path!r} column {group_column!r} row {table.lines[row]} is empty; "
                    "every row needs a group value"
                )
            members.setdefault(value, []).append(row)
        sequences = list(members.values())
        steps = max(len(rows) for rows in sequences)
        x = np.full((len(sequences), steps, len(inputs)), PAD_VALUE, dtype=np.float64)
        for position, rows in enumerate(sequences):
            x[position, : len(rows)] = matrix[rows]
        lengths = np.asarray([len(rows) for rows in sequences], dtype=np.int64)
        target_rows = [rows[-1] for rows in sequences]

    if task is Task.CLASSIFICATION:
        cells = table.column(targets[0])
        labels: list[str] = []
        for row in target_rows:
            if not cells[row]:
                raise DataError(
                    f"data.path: {path!r} column {targets[0]!r} row {table.lines[row]} is empty; "
                    "every row needs a label"
                )
            labels.append(cells[row])
        y, classes = _label_classes(labels)
        _check_classes(f"data.target: column {targets[0]!r} of {path!r}", classes)
        return Dataset(
            name=Path(path).name, task=task, X=np.ascontiguousarray(x, dtype=np.float32), y=y,
            lengths=lengths, classes=classes, time_ordered=False,
        )
    y = _regression_targets(table, targets, target_rows, single=isinstance(target, str))
    return Dataset(
        name=Path(path).name, task=task, X=np.ascontiguousarray(x, dtype=np.float32), y=y,
        lengths=lengths, classes=None, time_ordered=task is Task.FORECAST,
    )


def _regression_targets(table: _Table, targets: list[str], rows: Sequence[int], *, single: bool) -> np.ndarray:
    what = "regression and forecast targets must be numbers"
    columns = [_numbers(table, name, rows, what=what) for name in targets]
    y = columns[0] if single else np.stack(columns, axis=1)
    return np.ascontiguousarray(y, dtype=np.float32)


# --------------------------------------------------------------------------- npz


_NUMERIC_KINDS = "biuf"


def _npz_array(display: str, archive: Any, key: str) -> np.ndarray:
    try:
        return np.asarray(archive[key])
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataError(
                f"data.path: {display!r} array {key!r} holds Python objects (dtype object), which are not "
                "loaded for safety; save it as a numeric array"
            ) from None
        raise DataError(f"data.path: {display!r} array {key!r} cannot be read: {exc}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"data.path: {display!r} array {key!r} cannot be read: {exc}") from None


def _check_numeric(display: str, key: str, array: np.ndarray) -> None:
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise DataError(
            f"data.path: {display!r} array {key!r} has dtype {array.dtype}; it must be numeric (integers or floats)"
        )


def _first_bad(display: str, key: str, array: np.ndarray, bad: np.ndarray) -> None:
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        value = array[where]
        shown = "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")
        index = where[0] if len(where) == 1 else where
        raise DataError(
            f"data.path: {display!r} array {key!r} is {shown} at index {index}; "
            "the data must be finite numbers (clean or impute it)"
        )


def read_npz_arrays(file: Path, *, path: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A ``.npz``'s arrays ``X``, ``y`` and ``lengths`` (``None`` if absent), read as ``source = "npz"`` reads it.

    ``path`` is the file as the user wrote it (default: ``file``), named in every error.

    Raises:
        DataError: one line naming the file: unreadable, a single ``.npy``, not a zip of
            arrays, no ``X`` or ``y``, or an array of Python objects.
    """
    path = str(file) if path is None else path
    not_npz = f"data.path: {path!r} is not a .npz file (a zip of arrays 'X' and 'y', as numpy.savez writes)"
    try:
        with file.open("rb") as handle:
            magic = handle.read(6)
    except OSError as exc:
        raise DataError(f"data.path: {path!r} cannot be read: {exc.strerror or exc}") from None
    if magic == b"\x93NUMPY":
        raise DataError(f"data.path: {path!r} is a single .npy array; it must be a .npz with arrays 'X' and 'y'")
    if not magic.startswith(b"PK"):
        raise DataError(not_npz)
    try:
        archive = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{not_npz}: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(not_npz)
    with archive:
        keys = tuple(archive.files)
        for key in ("X", "y"):
            if key not in keys:
                raise DataError(
                    f"data.path: {path!r} has no array {key!r}; it has: {', '.join(keys) or 'nothing'} "
                    "(it needs 'X', 'y' and optionally 'lengths')"
                )
        x = _npz_array(path, archive, "X")
        y = _npz_array(path, archive, "y")
        lengths = _npz_array(path, archive, "lengths") if "lengths" in keys else None
    return x, y, lengths


def _load_npz(*, path: str, file: Path, task: Task) -> Dataset:
    x, y, lengths = read_npz_arrays(file, path=path)

    _check_numeric(path, "X", x)
    if x.ndim not in (2, 3):
        raise DataError(f"data.path: {path!r} array 'X' has shape {x.shape}; it must be 2-D (rows, features) "
                        "or 3-D (sequences, steps, features)")
    if 0 in x.shape:
        raise DataError(f"data.path: {path!r} array 'X' has shape {x.shape}; it must not be empty")
    if y.ndim not in (1, 2):
        raise DataError(f"data.path: {path!r} array 'y' has shape {y.shape}; it must be 1-D or 2-D")
    if y.shape[0] != x.shape[0]:
        raise DataError(f"data.path: {path!r} has {x.shape[0]} rows in 'X' but {y.shape[0]} in 'y'; they must match")

    x = np.array(x, dtype=np.float64)
    if lengths is not None:
        if x.ndim != 3:
            raise DataError(f"data.path: {path!r} has 'lengths' but 'X' is 2-D; lengths are for 3-D sequences")
        if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
            raise DataError(f"data.path: {path!r} array 'lengths' has shape {lengths.shape} and dtype "
                            f"{lengths.dtype}; it must be 1-D integers")
        if lengths.shape[0] != x.shape[0]:
            raise DataError(
                f"data.path: {path!r} has {x.shape[0]} rows in 'X' but {lengths.shape[0]} in 'lengths'; they must match"
            )
        steps = x.shape[1]
        outside = (lengths < 1) | (lengths > steps)
        if outside.any():
            row = int(np.argmax(outside))
            raise DataError(
                f"data.path: {path!r} array 'lengths' is {int(lengths[row])} at index {row}; "
                f"each length must be from 1 to {steps} (the steps of 'X')"
            )
        lengths = lengths.astype(np.int64)
        valid = np.arange(steps)[None, :] < lengths[:, None]
        _first_bad(path, "X", x, ~np.isfinite(x) & valid[:, :, None])
        x[~valid] = PAD_VALUE
    else:
        _first_bad(path, "X", x, ~np.isfinite(x))

    name = Path(path).name
    if task is Task.CLASSIFICATION:
        ids, classes = _npz_classes(path, y)
        return Dataset(
            name=name, task=task, X=x.astype(np.float32), y=ids, lengths=lengths,
            classes=classes, time_ordered=False,
        )
    _check_numeric(path, "y", y)
    targets = y.astype(np.float64)
    _first_bad(path, "y", targets, ~np.isfinite(targets))
    return Dataset(
        name=name, task=task, X=x.astype(np.float32), y=targets.astype(np.float32), lengths=lengths,
        classes=None, time_ordered=task is Task.FORECAST,
    )


def _npz_classes(path: str, y: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    if y.ndim != 1:
        raise DataError(f"data.path: {path!r} array 'y' has shape {y.shape}; classification labels must be 1-D")
    if y.dtype.kind in "US":
        try:
            labels = [str(label) for label in y.astype(str).tolist()]
        except UnicodeDecodeError:
            raise DataError(
                f"data.path: {path!r} array 'y' holds bytes that are not text; labels must be text or integers"
            ) from None
        ids, classes = _label_classes(labels)
    elif y.dtype.kind in _NUMERIC_KINDS:
        values = y.astype(np.float64)
        _first_bad(path, "y", values, ~np.isfinite(values))
        fractional = values != np.round(values)
        if fractional.any():
            row = int(np.argmax(fractional))
            raise DataError(
                f"data.path: {path!r} array 'y' is {float(values[row])!r} at index {row}; "
                "classification labels must be integers or strings"
            )
        unique, ids = np.unique(values.astype(np.int64), return_inverse=True)
        ids = ids.astype(np.int64).reshape(-1)
        classes = tuple(str(int(value)) for value in unique)
    else:
        raise DataError(f"data.path: {path!r} array 'y' has dtype {y.dtype}; labels must be integers or strings")
    _check_classes(f"data.path: {path!r} array 'y'", classes)
    return ids, classes


# --------------------------------------------------------------------------- identity


def fingerprint(ds: Dataset) -> str:
    """SHA-256 (hex) of the task, shapes, dtypes and bytes of ``X``, ``y`` and ``lengths``.

    Row order matters; the name and class labels do not. The same data give
    the same fingerprint in every process.
    """
    digest = hashlib.sha256()
    digest.update(f"sweep.data/1;task={ds.task.value};".encode())
    arrays: tuple[tuple[str, np.ndarray | None], ...] = (("X", ds.X), ("y", ds.y), ("lengths", ds.lengths))
    for key, array in arrays:
        if array is None:
            digest.update(f"{key}=None;".encode())
            continue
        canonical = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        digest.update(f"{key}={canonical.dtype.str}{list(canonical.shape)};".encode())
        digest.update(canonical.tobytes())
    return digest.hexdigest()


def describe(ds: Dataset) -> str:
    """One line, e.g. ``digits: 1797 sequences of 8 steps x 8 features, classification, 10 classes``."""
    n = ds.X.shape[0]
    f = ds.X.shape[-1]
    feature_word = "feature" if f == 1 else "features"
    if ds.is_sequence:
        up_to = "up to " if ds.padded else ""
        shape = f"{n} sequences of {up_to}{ds.X.shape[1]} steps x {f} {feature_word}"
    else:
        shape = f"{n} rows x {f} {feature_word}"
    parts = [shape, ds.task.value]
    if ds.n_classes is not None:
        parts.append(f"{ds.n_classes} classes")
    elif ds.y.ndim == 2:
        parts.append(f"{ds.y.shape[1]} targets")
    if ds.time_ordered and ds.task is not Task.FORECAST:
        parts.append("time-ordered")
    return f"{ds.name}: {', '.join(parts)}"


# --------------------------------------------------------------------------- splits


def _too_few(n: int, fraction: float) -> DataError:
    return DataError(
        f"data: {n} rows are too few for a {fraction:g} validation split; need at least 2 training "
        "and 2 validation rows (per class for classification)"
    )


def repeat_seed(base: int | None, repeat: int) -> int:
    """The seed of repeat ``repeat``: its split and its training both use it (``base + repeat``)."""
    return (0 if base is None else base) + repeat


def make_splits(ds: Dataset, *, n_splits: int, validation_fraction: float = 0.2, seed: int = 0) -> list[Split]:
    """Train/validation splits: one holdout, or ``n_splits`` repeats on different rows.

    ``n_splits == 1``: a holdout of ``ceil(validation_fraction * n)`` rows,
    stratified for classification, shuffled for regression, the last rows for
    time-ordered data. ``n_splits >= 2``: the first ``n_splits`` folds of a
    (stratified) K-fold with ``k = max(2, round(1 / validation_fraction))``,
    reshuffled with ``seed + 1``, ``seed + 2``... past ``k``; for time-ordered
    data, expanding windows whose validation blocks of
    ``round(validation_fraction * n)`` rows end at the end of the series, the
    latest first (split 0 validates on the last block: the one nearest the
    future a forecast is for, and the one the pruner and racing look at).
    Any integer ``seed`` works (scikit-learn gets it modulo 2**32); the same
    seed gives the same splits in every process.

    Raises:
        DataError: a bad ``validation_fraction``, ``n_splits`` or ``seed``, or
            too few rows (or rows of a class) for the splits.
    """
    splits = _check_int("n_splits", n_splits, minimum=1)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise DataError(f"seed: {seed!r} is not allowed; it must be an integer")
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, int | float | np.floating) or not (
        0.0 < float(validation_fraction) < 1.0
    ):
        raise DataError(
            f"data.validation_fraction: {validation_fraction!r} is not allowed; it must be a number between 0 and 1"
        )
    fraction = float(validation_fraction)
    n = int(ds.X.shape[0])

    if ds.time_ordered:
        return _time_splits(n, splits, fraction)
    if ds.task is Task.CLASSIFICATION:
        _check_class_counts(ds)
    if splits == 1:
        return [_holdout(ds, n, fraction, seed)]
    return _kfold_splits(ds, n, splits, fraction, seed)


def _split(train: np.ndarray, valid: np.ndarray) -> Split:
    return Split(train=np.sort(train).astype(np.int64), valid=np.sort(valid).astype(np.int64))


def _n_valid(n: int, fraction: float) -> int:
    return math.ceil(fraction * n - 1e-9)


def _check_class_counts(ds: Dataset) -> None:
    assert ds.classes is not None
    counts = np.bincount(ds.y, minlength=len(ds.classes))
    for label, count in zip(ds.classes, counts.tolist(), strict=True):
        if count < 2:
            raise DataError(
                f"data: class {label!r} has {count} row{'s' if count != 1 else ''}; every class needs "
                "at least 2 so that a stratified split can put it in training and validation"
            )


def _time_splits(n: int, splits: int, fraction: float) -> list[Split]:
    indices = np.arange(n, dtype=np.int64)
    if splits == 1:
        valid = _n_valid(n, fraction)
        if valid < 2 or n - valid < 2:
            raise _too_few(n, fraction)
        return [_split(indices[: n - valid], indices[n - valid :])]
    block = round(fraction * n)
    if block < 2 or n - splits * block < 2:
        need = splits * max(block, 2) + 2
        raise DataError(
            f"data: {n} rows are too few for {splits} time-ordered splits with validation blocks of "
            f"{max(block, 2)} rows ({fraction:g} of the rows) and at least 2 training rows; need at least "
            f"{need} rows, or fewer repeats or a smaller validation_fraction"
        )
    result = []
    for position in range(splits):
        start = n - (position + 1) * block
        result.append(_split(indices[:start], indices[start : start + block]))
    return result


def _holdout(ds: Dataset, n: int, fraction: float, seed: int) -> Split:
    from sklearn.model_selection import train_test_split

    valid = _n_valid(n, fraction)
    if valid < 2 or n - valid < 2:
        raise _too_few(n, fraction)
    stratify = None
    if ds.task is Task.CLASSIFICATION:
        k = ds.n_classes or 0
        if valid < k or n - valid < k:
            raise DataError(
                f"data: {n} rows are too few for a {fraction:g} validation split of {k} classes; it gives "
                f"{n - valid} training and {valid} validation rows, and each part needs at least one row per class"
            )
        stratify = ds.y
    train, test = train_test_split(
        np.arange(n), test_size=valid, random_state=int(seed) % 2**32, shuffle=True, stratify=stratify
    )
    return _split(train, test)


def _kfold_splits(ds: Dataset, n: int, splits: int, fraction: float, seed: int) -> list[Split]:
    from sklearn.model_selection import KFold, StratifiedKFold

    k = max(2, round(1.0 / fraction))
    if n // k < 2:
        raise DataError(
            f"data: {n} rows are too few for {k}-fold splits (validation_fraction {fraction:g}); "
            f"need at least {2 * k} rows so that each fold has 2 validation rows"
        )
    stratified = ds.task is Task.CLASSIFICATION
    if stratified:
        largest = int(np.bincount(ds.y).max())
        if largest < k:
            raise DataError(
                f"data: no class has {k} rows, which {k}-fold stratified splits need "
                f"(validation_fraction {fraction:g}); use a larger validation_fraction or more data"
            )
    result: list[Split] = []
    rounds = math.ceil(splits / k)
    rows = np.arange(n)
    for repeat in range(rounds):
        state = (int(seed) + repeat) % 2**32
        folder = (StratifiedKFold if stratified else KFold)(n_splits=k, shuffle=True, random_state=state)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            folds = list(folder.split(rows, ds.y if stratified else None))
        for train, valid in folds:
            if len(result) < splits:
                result.append(_split(train, valid))
    return result


# --------------------------------------------------------------------------- scaling


def _safe_scale(std: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``std``, with 1 where a column is constant (up to rounding of its mean)."""
    constant = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
    return np.where(constant, 1.0, std)


def _valid_steps(ds: Dataset, rows: np.ndarray) -> np.ndarray | None:
    if ds.lengths is None:
        return None
    mask: np.ndarray = np.arange(ds.X.shape[1])[None, :] < ds.lengths[rows][:, None]
    return mask


def prepare(ds: Dataset, split: Split) -> Prepared:
    """Scale ``split``'s rows with statistics fitted on its training rows only.

    Features are standardised per feature (over every valid time step of the
    training sequences; padded steps are ignored and stay exactly
    :data:`PAD_VALUE`); a feature without variance gets scale 1. Regression and
    forecast targets are standardised the same way; class ids are copied.
    """
    n = ds.X.shape[0]
    for part, rows in (("train", split.train), ("valid", split.valid)):
        if rows.ndim != 1 or rows.size == 0 or rows.min() < 0 or rows.max() >= n:
            raise ValueError(f"Split.{part} must be a non-empty 1-D array of row indices below {n}")

    features = ds.X.shape[-1]
    x_train = ds.X[split.train].astype(np.float64)
    train_mask = _valid_steps(ds, split.train)
    fit = x_train[train_mask] if train_mask is not None else x_train.reshape(-1, features)
    x_mean = fit.mean(axis=0)
    x_scale = _safe_scale(fit.std(axis=0), x_mean)

    def scaled(rows: np.ndarray) -> np.ndarray:
        x = (ds.X[rows].astype(np.float64) - x_mean) / x_scale
        mask = _valid_steps(ds, rows)
        if mask is not None:
            x[~mask] = PAD_VALUE
        out: np.ndarray = x.astype(np.float32)
        return out

    if ds.task is Task.CLASSIFICATION:
        y_train = ds.y[split.train].astype(np.int64)
        y_valid = ds.y[split.valid].astype(np.int64)
        y_mean = y_scale = None
    else:
        targets = ds.y[split.train].astype(np.float64)
        mean = targets.mean(axis=0)
        scale = _safe_scale(np.asarray(targets.std(axis=0)), np.asarray(mean))
        y_train = ((targets - mean) / scale).astype(np.float32)
        y_valid = ((ds.y[split.valid].astype(np.float64) - mean) / scale).astype(np.float32)
        y_mean = np.asarray(mean, dtype=np.float32)
        y_scale = np.asarray(scale, dtype=np.float32)

    return Prepared(
        x_train=scaled(split.train),
        y_train=y_train,
        x_valid=scaled(split.valid),
        y_valid=y_valid,
        x_mean=x_mean.astype(np.float32),
        x_scale=x_scale.astype(np.float32),
        y_mean=y_mean,
        y_scale=y_scale,
        target_feature=ds.target_feature,
    )


def baseline_loss(data: Prepared) -> float:
    """The validation loss of a model that learned nothing, on the loss's own scale.

    Classification: the cross-entropy of predicting the training rows' class
    frequencies for every validation row (a class absent from training gets
    probability 1e-7, Keras' epsilon). Regression and forecasting: the mean
    squared error of predicting the training mean, in the standardised units
    the model is trained in (about 1.0 when the validation targets look like
    the training targets). A forecast whose window holds the target's past
    values (:attr:`Prepared.target_feature`) must also beat the last value
    (persistence, what every forecaster compares against): the baseline is
    the lower of the two errors.
    """
    if data.y_mean is None:
        k = int(max(data.y_train.max(), data.y_valid.max())) + 1
        prior = np.bincount(data.y_train, minlength=k) / data.y_train.size
        prior = np.clip(prior, 1e-7, 1.0)
        return float(-np.log(prior[data.y_valid]).mean())
    train = data.y_train.astype(np.float64)
    valid = data.y_valid.astype(np.float64)
    mean = float(((valid - train.mean(axis=0)) ** 2).mean())
    f = data.target_feature
    if f is None or data.y_scale is None or valid.ndim != 1:
        return mean
    last = data.x_valid[:, -1, f].astype(np.float64) * float(data.x_scale[f]) + float(data.x_mean[f])
    persistence = (last - float(data.y_mean)) / float(data.y_scale)  # in the targets' standardised units
    return min(mean, float(((valid - persistence) ** 2).mean()))


def data_kwargs(section: DataSection) -> dict[str, Any]:
    """The arguments of :func:`load_dataset` that a study file's ``[data]`` section gives."""
    return {
        "source": section.source,
        "path": section.path,
        "features": section.features,
        "target": section.target,
        "task": section.task,
        "lookback": section.lookback,
        "horizon": section.horizon,
        "group": section.group,
        "order_by": section.order_by,
        "length": section.length,
    }


def check_fingerprint(dataset: Dataset, expected: str | None, *, section: DataSection, study_name: str) -> None:
    """Refuse to train on data other than the data the study was created on.

    Raises:
        DataError: ``dataset``'s fingerprint differs from ``expected`` (None: nothing recorded, no check).
    """
    actual = fingerprint(dataset)
    if expected is not None and actual != expected:
        raise DataError(
            f"data: the data this worker loaded ({section.source}"
            f"{' ' + section.path if section.path else ''}) has fingerprint {actual[:12]}, "
            f"but study {study_name!r} was created on {str(expected)[:12]}; "
            "refusing to train on different data"
        )
