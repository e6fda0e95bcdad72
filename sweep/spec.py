"""Study files: TOML -> a frozen, validated :class:`StudySpec`.

A study file has the sections ``[study]``, ``[data]``, ``[model]``, ``[search]``,
``[training]``, ``[stability]``, ``[sampler]``, ``[pruner]``, ``[racing]``, ``[allocation]``, ``[worker]`` and
``[dashboard]``.
Every later step reads the frozen spec, never the raw TOML. Every mistake is
reported as one line naming the field, the value and what is allowed
(:class:`sweep.errors.SpecError`), before anything is written anywhere.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from sweep.errors import SpecError

PARAM_NAMES: tuple[str, ...] = (
    "n_layers",
    "units",
    "activation",
    "learning_rate",
    "optimizer",
    "batch_size",
    "dropout",
    "l2",
)
"""The eight searched hyperparameters; each trial records all of them in ``trial.params``."""

ACTIVATIONS: tuple[str, ...] = ("tanh", "relu", "elu", "selu", "gelu", "swish", "sigmoid", "softsign")
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "nadam", "rmsprop", "sgd")
FAMILIES: tuple[str, ...] = ("lstm", "gru", "dense")
SOURCES: tuple[str, ...] = ("digits", "mackey_glass", "breast_cancer", "diabetes", "csv", "npz")
TASKS: tuple[str, ...] = ("classification", "regression", "forecast")

BUILDER_REF = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
"""The form of ``model.builder``: a module (dotted) and a function in it."""

DEFAULT_STORAGE = "sqlite:///sweep.db"
"""Where a study lives when neither ``--storage``, ``SWEEP_STORAGE`` nor the study file says."""

DRIFT_SECTIONS: tuple[str, ...] = ("data", "model", "search", "training", "stability")
"""Sections whose change makes old and new trials incomparable (checked on resume)."""


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Fixed:
    """A hyperparameter held constant (still recorded in ``trial.params``)."""

    value: Any

    def to_raw(self) -> Any:
        return self.value


@dataclass(frozen=True)
class Choice:
    """A categorical search over ``values``."""

    values: tuple[Any, ...]

    def to_raw(self) -> Any:
        return list(self.values)


@dataclass(frozen=True)
class Range:
    """An int or float range, inclusive, optionally on a log scale or with a step."""

    low: float
    high: float
    integer: bool
    log: bool = False
    step: float | None = None

    def to_raw(self) -> Any:
        raw: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            raw["step"] = self.step
        return raw


Param = Fixed | Choice | Range


@dataclass(frozen=True)
class _Rule:
    kind: Literal["int", "float", "str", "bool"]
    minimum: float | None = None
    maximum: float | None = None
    exclusive_min: bool = False
    exclusive_max: bool = False
    allowed: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "str":
            return "one of " + ", ".join(self.allowed)
        if self.kind == "bool":
            return "true or false"
        parts = []
        if self.minimum is not None:
            parts.append(f"{'>' if self.exclusive_min else '>='} {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"{'<' if self.exclusive_max else '<='} {self.maximum:g}")
        noun = "an integer" if self.kind == "int" else "a number"
        return noun + (" " + " and ".join(parts) if parts else "")


_RULES: dict[str, _Rule] = {
    "n_layers": _Rule("int", 1, 16),
    "units": _Rule("int", 1, 4096),
    "activation": _Rule("str", allowed=ACTIVATIONS),
    "learning_rate": _Rule("float", 0, 10, exclusive_min=True),
    "optimizer": _Rule("str", allowed=OPTIMIZERS),
    "batch_size": _Rule("int", 1, 1 << 16),
    "dropout": _Rule("float", 0, 1, exclusive_max=True),
    "l2": _Rule("float", 0, 1),
    "layer_norm": _Rule("bool"),
}

_ALLOWED_FORMS = "a constant, a list of choices, or a range {low, high, log, step}"


def _scalar(name: str, value: Any, rule: _Rule | None = None) -> Any:
    """Check one value against the parameter's rule and return it normalised."""
    rule = rule or _RULES[name]
    if rule.kind == "str":
        if not isinstance(value, str) or value not in rule.allowed:
            raise ValueError(f"got {value!r}; allowed: {rule.describe()}")
        return value
    if rule.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"got {value!r}; allowed: {rule.describe()}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"got {value!r}; allowed: {rule.describe()}")
    if rule.kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"got {value!r}; allowed: {rule.describe()}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"got {value!r}; allowed: {rule.describe()}")
    too_low = rule.minimum is not None and (
        value <= rule.minimum if rule.exclusive_min else value < rule.minimum
    )
    too_high = rule.maximum is not None and (
        value >= rule.maximum if rule.exclusive_max else value > rule.maximum
    )
    if too_low or too_high:
        raise ValueError(f"got {value!r}; allowed: {rule.describe()}")
    return value


def _extra_scalar(value: Any) -> Any:
    if isinstance(value, bool | str) or (isinstance(value, int | float) and math.isfinite(value)):
        return value
    raise ValueError(f"got {_show(value)}; allowed: a number, a string or true/false ({_ALLOWED_FORMS})")


def parse_extra(name: str, raw: Any) -> Param:
    """One ``[search.extra]`` entry: a constant, a list of choices, or an int/float range.

    A range is of integers when ``low`` and ``high`` are both integers.

    Raises:
        ValueError: with a message naming the value and what is allowed.
    """
    if isinstance(raw, list | tuple):
        if not raw:
            raise ValueError("got an empty list; give at least one choice")
        values = tuple(_extra_scalar(v) for v in raw)
        if len({(type(v), v) for v in values}) != len(values):
            raise ValueError(f"got {_show(list(raw))}; choices must be distinct")
        return Fixed(values[0]) if len(values) == 1 else Choice(values)
    if isinstance(raw, dict):
        bounds = [raw.get("low"), raw.get("high")]
        if any(isinstance(b, bool) or not isinstance(b, int | float) for b in bounds if b is not None):
            raise ValueError(f"got {_show(raw)}; a range's low and high are numbers")
        integer = all(isinstance(b, int) for b in bounds) and not isinstance(raw.get("step", 1), float)
        return parse_param(name, raw, _Rule("int" if integer else "float"))
    return Fixed(_extra_scalar(raw))


def parse_param(name: str, raw: Any, rule: _Rule | None = None) -> Param:
    """Turn one ``[search]`` entry into a :class:`Fixed`, :class:`Choice` or :class:`Range`.

    Raises:
        ValueError: with a message naming the value and what is allowed.
    """
    rule = rule or _RULES[name]
    if isinstance(raw, Fixed | Choice | Range):
        return raw
    if isinstance(raw, list | tuple):
        if not raw:
            raise ValueError(f"got an empty list; give at least one choice ({rule.describe()})")
        values = tuple(_scalar(name, v, rule) for v in raw)
        if len(set(values)) != len(values):
            raise ValueError(f"got {list(raw)!r}; choices must be distinct")
        return Fixed(values[0]) if len(values) == 1 else Choice(values)
    if isinstance(raw, dict):
        if rule.kind not in ("int", "float"):
            raise ValueError(f"got a range {raw!r}; {name} takes a constant or a list of choices")
        unknown = set(raw) - {"low", "high", "log", "step"}
        if unknown:
            raise ValueError(
                f"unknown range key {sorted(unknown)[0]!r}; allowed keys: low, high, log, step"
            )
        if "low" not in raw or "high" not in raw:
            raise ValueError(f"got {raw!r}; a range needs both 'low' and 'high'")
        low, high = _scalar(name, raw["low"], rule), _scalar(name, raw["high"], rule)
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise ValueError(f"got log={log!r}; allowed: true or false")
        step = raw.get("step")
        if low > high:
            raise ValueError(f"got low={low!r}, high={high!r}; low must be <= high")
        if low == high:
            raise ValueError(
                f"got low={low!r}, high={high!r}; the range is empty (write the constant {low!r} instead)"
            )
        if log and low <= 0:
            raise ValueError(f"got low={low!r} with log=true; a log range needs low > 0")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, int | float) or step <= 0:
                raise ValueError(f"got step={step!r}; allowed: a number > 0")
            if log:
                raise ValueError("got both log=true and a step; use one or the other")
            if rule.kind == "int" and not float(step).is_integer():
                raise ValueError(f"got step={step!r}; {name} takes an integer step")
            step = int(step) if rule.kind == "int" else float(step)
        return Range(low=low, high=high, integer=rule.kind == "int", log=log, step=step)
    try:
        return Fixed(_scalar(name, raw, rule))
    except ValueError as exc:
        raise ValueError(f"{exc} (as {_ALLOWED_FORMS})") from None


# --------------------------------------------------------------------------- sections


def _expected(annotation: Any) -> str:
    text = str(annotation)
    if "int" in text:
        return "an integer"
    if "float" in text:
        return "a number"
    return "a string"


class _Section(BaseModel):
    # strict: a wrong type is refused, never converted ("2" is not an int, "yes" not a bool)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: Any) -> Any:
        """TOML ``true`` is not the number 1 (pydantic would accept it as such)."""
        if isinstance(value, bool):
            annotation = cls.model_fields[info.field_name].annotation
            if annotation is not Any and "bool" not in str(annotation):
                raise ValueError(f"got {value!r}; allowed: {_expected(annotation)}")
        return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float | None:
    """Seconds from ``3600``, ``"90m"``, ``"2h"``, ``"1.5d"``; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"got {value!r}; allowed: seconds or a duration like '90m', '2h', '1d'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"got {value!r}; allowed: seconds or a duration like '90m', '2h', '1d'")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"got {value!r}; a time limit must be > 0")
    return seconds


class StudySection(_Section):
    name: str
    storage: str | None = None
    seed: int | None = None
    n_trials: int | None = Field(default=None, ge=1)
    timeout: float | None = None
    budget: int | None = Field(default=None, ge=1)
    """Epochs to train in all (every repeat of every trial); the allocation plans against it."""
    objective: Literal["score", "pareto"] = "score"

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,255}", value):
            raise ValueError(
                f"got {value!r}; allowed: 1-256 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float | None:
        return parse_duration(value)

    @model_validator(mode="after")
    def _budget(self) -> StudySection:
        if self.n_trials is None and self.timeout is None and self.budget is None:
            raise ValueError(
                "set budget, n_trials or timeout (any of them) so the sweep knows when to stop "
                "(in the file, or with --budget / --n-trials / --timeout)"
            )
        return self


class DataSection(_Section):
    source: Literal["digits", "mackey_glass", "breast_cancer", "diabetes", "csv", "npz"]
    path: str | None = None
    features: tuple[str, ...] | None = None
    target: Any = None
    task: Literal["classification", "regression", "forecast"] | None = None
    lookback: int | None = Field(default=None, ge=1)
    horizon: int = Field(default=1, ge=1)
    group: str | None = None
    order_by: str | None = None
    """A column (dates or numbers) that orders a series, or each group's rows (CSV)."""
    length: int | None = Field(default=None, ge=50)
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)

    @field_validator("features", mode="before")
    @classmethod
    def _features(cls, value: Any) -> tuple[str, ...] | None:
        """TOML has arrays, not tuples: a list of distinct column names is the form a study file gives."""
        if value is None:
            return None
        if isinstance(value, list | tuple) and value and all(isinstance(v, str) and v for v in value):
            if len(set(value)) != len(value):
                raise ValueError(f"got {_show(list(value))}; the column names must be distinct")
            return tuple(value)
        raise ValueError(f"got {_show(value)}; allowed: a non-empty list of column names")

    @field_validator("target")
    @classmethod
    def _target(cls, value: Any) -> str | tuple[str, ...] | None:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError(f"got {value!r}; allowed: a column name or a list of column names")

    @model_validator(mode="after")
    def _files(self) -> DataSection:
        if self.source in ("csv", "npz"):
            if self.path is None:
                raise ValueError(f"source '{self.source}' needs data.path (the file to read)")
            if self.task is None:
                raise ValueError(
                    f"source '{self.source}' needs data.task; allowed: {', '.join(TASKS)}"
                )
        return self


class ModelSection(_Section):
    """A built-in ``family``, or the user's own ``builder`` (``module:function``, see :mod:`sweep.builder`)."""

    family: Literal["lstm", "gru", "dense"] | None = None
    builder: str | None = None
    path: str | None = None
    """The folder the builder's module is looked for in first (default: the study file's folder)."""

    @field_validator("builder")
    @classmethod
    def _builder(cls, value: str | None) -> str | None:
        if value is not None and not BUILDER_REF.fullmatch(value):
            raise ValueError(f"got {value!r}; allowed: 'module:function', a Python module and a function in it")
        return value

    @model_validator(mode="after")
    def _one(self) -> ModelSection:
        if (self.family is None) == (self.builder is None):
            raise _FieldError(
                ("model", "family" if self.family is None else "builder"),
                "give either family (lstm, gru, dense) or builder ('module:function'), not "
                + ("neither" if self.family is None else "both"),
            )
        return self


class SearchSection(_Section):
    n_layers: Any = Field(default_factory=lambda: Range(1, 2, integer=True))
    units: Any = Field(default_factory=lambda: Range(16, 128, integer=True, log=True))
    activation: Any = Field(default_factory=lambda: Fixed("tanh"))
    learning_rate: Any = Field(default_factory=lambda: Range(1e-4, 1e-2, integer=False, log=True))
    optimizer: Any = Field(default_factory=lambda: Fixed("adam"))
    batch_size: Any = Field(default_factory=lambda: Choice((32, 64, 128)))
    dropout: Any = Field(default_factory=lambda: Range(0.0, 0.5, integer=False))
    l2: Any = Field(default_factory=lambda: Fixed(0.0))
    layer_norm: Any = Field(default_factory=lambda: Fixed(False))
    extra: Any = Field(default_factory=dict)
    """``[search.extra]``: the builder's own parameters, by name (same forms as the eight)."""

    @field_validator(*PARAM_NAMES, "layer_norm", mode="before")
    @classmethod
    def _parse(cls, raw: Any, info: Any) -> Param:
        return parse_param(info.field_name, raw)

    @field_validator("extra", mode="before")
    @classmethod
    def _extra(cls, raw: Any) -> dict[str, Param]:
        if not isinstance(raw, dict):
            raise ValueError(f"got {_show(raw)}; allowed: a table of parameter names and their forms")
        out: dict[str, Param] = {}
        for name, value in raw.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_]\w{0,63}", name):
                raise _FieldError(("search", "extra"), f"got the name {name!r}; allowed: a Python identifier")
            if name in PARAM_NAMES or name == "layer_norm":
                raise _FieldError(
                    ("search", "extra", name), f"{name!r} is one of the eight: set it in [search], not [search.extra]"
                )
            try:
                out[name] = parse_extra(name, value)
            except ValueError as exc:
                raise _FieldError(("search", "extra", name), str(exc)) from None
        return out

    @field_serializer(*PARAM_NAMES, "layer_norm")
    def _dump(self, value: Param) -> Any:
        return value.to_raw()

    @field_serializer("extra")
    def _dump_extra(self, value: dict[str, Param]) -> Any:
        return {name: p.to_raw() for name, p in value.items()}

    def params(self) -> dict[str, Param]:
        """Every built-in searchable parameter (the eight names plus ``layer_norm``) by name."""
        return {name: getattr(self, name) for name in (*PARAM_NAMES, "layer_norm")}

    def extras(self) -> dict[str, Param]:
        """The ``[search.extra]`` parameters by name."""
        return dict(self.extra)


class TrainingSection(_Section):
    max_epochs: int = Field(default=30, ge=1, le=100_000)
    patience: int = Field(default=5, ge=0)
    repeats: int = Field(default=3, ge=1, le=50)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    clipnorm: float | None = Field(default=None, gt=0.0)
    steps_per_execution: int = Field(default=1, ge=1, le=1024)
    mixed_precision: bool = False
    """float16 compute with float32 variables on a GPU (ignored, with one line, on a CPU)."""


class StabilitySection(_Section):
    tail: int = Field(default=5, ge=1)
    risk: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)


class SamplerSection(_Section):
    name: Literal["tpe", "random", "qmc", "nsga2"] = "tpe"
    n_startup_trials: int = Field(default=10, ge=0)
    multivariate: bool = True
    constant_liar: bool = True


class PrunerSection(_Section):
    name: Literal["median", "percentile", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(default=5, ge=0)
    n_warmup_steps: int = Field(default=5, ge=0)
    percentile: float = Field(default=25.0, gt=0.0, lt=100.0)
    min_resource: int = Field(default=1, ge=1)
    reduction_factor: int = Field(default=3, ge=2)


class RacingSection(_Section):
    """Which trials get every repeat: repeat 0 runs for every trial, the others only for contenders.

    After its repeat 0, a trial goes on only while its repeat-0 score is among
    the best ``keep`` fraction of the repeat-0 scores of the study's trials
    (same split, same seed: like with like); the first ``n_startup_trials``
    trials that finish repeat 0 always go on. A trial stopped here ends as
    PRUNED, its value its repeat-0 score.
    """

    enabled: bool = True
    keep: float = Field(default=0.25, gt=0.0, le=1.0)
    n_startup_trials: int = Field(default=3, ge=0)


class AllocationSection(_Section):
    """How repeats are spent (:mod:`sweep.allocation`): which configurations get more than repeat 0.

    ``auto`` (default) is ``single`` on a budget of fewer than 20 configurations'
    worth of all repeats and ``racing`` otherwise (or without a budget);
    ``single`` trains repeat 0 only; ``racing`` gives all repeats to the best
    ``racing.keep`` of repeat-0 scores; ``intensify`` races each new configuration
    against the incumbent on the same repeats; ``full`` gives every configuration
    every repeat. With ``study.budget``, the ``verify`` best configurations get
    their missing repeats before the budget runs out.
    """

    policy: Literal["auto", "single", "racing", "intensify", "full"] = "auto"
    verify: int = Field(default=2, ge=0)


class WorkerSection(_Section):
    """How a worker process runs; none of it changes results, so it is not drift-checked."""

    max_trials: int = Field(default=50, ge=1)
    max_memory_growth_mb: float = Field(default=96.0, gt=0.0)
    threads: Any = "auto"
    heartbeat_interval: int = Field(default=30, ge=1)
    grace_period: int = Field(default=120, ge=2)
    max_retries: int = Field(default=2, ge=0)
    outage_timeout: float = 600.0
    """Seconds (or ``"10m"``) the storage may stay unreachable before the sweep gives up."""
    crash_limit: int = Field(default=3, ge=1)
    """Crashes of one worker slot within ``crash_window`` that stop the sweep."""
    crash_window: float = 600.0
    gpus: Any = "auto"
    """``auto`` (one worker per GPU found), ``none``, or the GPU ids to use (``[0, 1]`` or ``"0,1"``)."""
    fork: bool = True
    """Start CPU workers as forks of one process that has imported TensorFlow once (Linux), so a
    replaced worker costs a fork instead of an import (about 4 s); false: each imports it itself."""

    @field_validator("outage_timeout", "crash_window", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> float | None:
        return parse_duration(value)

    @model_validator(mode="after")
    def _grace(self) -> WorkerSection:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"got grace_period={self.grace_period} with heartbeat_interval={self.heartbeat_interval}; "
                "grace_period must be longer than heartbeat_interval"
            )
        return self

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: Any) -> str:
        if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                      for v in value):  # fmt: skip
            return ",".join(str(v) for v in value)
        if isinstance(value, str) and value.strip():
            return value.strip()
        raise ValueError(f"got {value!r}; allowed: 'auto', 'none', or GPU ids such as [0, 1] or \"0,1\"")

    @field_validator("threads")
    @classmethod
    def _threads(cls, value: Any) -> int | str:
        if value == "auto":
            return "auto"
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        raise ValueError(f"got {value!r}; allowed: 'auto' or an integer >= 1")


class DashboardSection(_Section):
    """What the workers write for optuna-dashboard; changes nothing in the results."""

    notes: bool = True
    artifacts: str | None = None  # a folder every worker can write, or s3://bucket/prefix


class StudySpec(_Section):
    """A whole study file, validated and frozen."""

    study: StudySection
    data: DataSection
    model: ModelSection
    search: SearchSection = Field(default_factory=SearchSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    stability: StabilitySection = Field(default_factory=StabilitySection)
    sampler: SamplerSection = Field(default_factory=SamplerSection)
    pruner: PrunerSection = Field(default_factory=PrunerSection)
    racing: RacingSection = Field(default_factory=RacingSection)
    allocation: AllocationSection = Field(default_factory=AllocationSection)
    worker: WorkerSection = Field(default_factory=WorkerSection)
    dashboard: DashboardSection = Field(default_factory=DashboardSection)

    @model_validator(mode="before")
    @classmethod
    def _racing_files(cls, raw: Any) -> Any:
        """Study files written before ``[allocation]`` keep their meaning.

        Without ``allocation.policy``, ``racing.enabled = false`` means every
        repeat for every trial (``full``), and a ``[racing]`` section that
        leaves racing on means ``racing``.
        """
        if not isinstance(raw, dict) or not isinstance(racing := raw.get("racing"), dict) or not racing:
            return raw
        allocation = raw.get("allocation")
        if isinstance(allocation, dict) and "policy" in allocation:
            return raw
        if allocation is not None and not isinstance(allocation, dict):
            return raw
        policy = "full" if racing.get("enabled") is False else "racing"
        return {**raw, "allocation": {**(allocation or {}), "policy": policy}}

    @model_validator(mode="before")
    @classmethod
    def _pareto_defaults(cls, raw: Any) -> Any:
        study, pruner = (raw.get("study"), raw.get("pruner")) if isinstance(raw, dict) else (None, None)
        if isinstance(study, dict) and study.get("objective") == "pareto":
            if pruner is None:
                raw = {**raw, "pruner": {"name": "none"}}
            elif isinstance(pruner, dict) and "name" not in pruner:
                raw = {**raw, "pruner": {**pruner, "name": "none"}}
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        if self.study.objective == "pareto" and self.pruner.name != "none":
            raise _FieldError(
                ("pruner", "name"),
                f"got {self.pruner.name!r} with study.objective = 'pareto'; "
                "Optuna cannot prune multi-objective studies, so use 'none'",
            )
        if self.study.objective == "score" and self.sampler.name == "nsga2":
            raise _FieldError(
                ("sampler", "name"),
                "got 'nsga2' with study.objective = 'score'; nsga2 is for 'pareto', "
                "use tpe, random or qmc",
            )
        if self.data.source == "mackey_glass" and self.data.task not in (None, "forecast"):
            raise _FieldError(("data", "task"), f"got {self.data.task!r}; mackey_glass is 'forecast'")
        return self

    def with_artifacts(self, location: str | None) -> StudySpec:
        """This spec with ``dashboard.artifacts`` set (when the file left it empty)."""
        if self.dashboard.artifacts is not None or location is None:
            return self
        return self.model_copy(update={"dashboard": self.dashboard.model_copy(update={"artifacts": location})})

    def drift_view(self) -> dict[str, Any]:
        """The parts of the spec that must not change when a study is resumed."""
        dumped = self.to_json_dict()
        view = {section: dumped[section] for section in DRIFT_SECTIONS}
        view["data"].pop("path")  # where the file lies may differ; its content is fingerprinted
        view["model"].pop("path")  # the same for the builder's module
        view["study.objective"] = dumped["study"]["objective"]
        return view

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that :func:`spec_from_dict` turns back into an equal spec.

        The storage URL is left out: it may carry a password, and the storage
        that holds the spec is where the study lives anyway.
        """
        dumped = self.model_dump(mode="json")
        dumped["study"].pop("storage", None)
        return dumped


class _FieldError(Exception):
    """A cross-field error that belongs to a specific field (pydantic lets it through)."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


# --------------------------------------------------------------------------- loading


def spec_from_dict(raw: Mapping[str, Any], *, source: str = "study spec") -> StudySpec:
    """Validate a raw (TOML-shaped) dict.

    Raises:
        SpecError: one line naming the field, the value and what is allowed.
    """
    try:
        return StudySpec.model_validate(dict(raw))
    except ValidationError as exc:
        raise SpecError(f"{source}: {_one_line(exc, raw)}") from None
    except _FieldError as exc:
        raise SpecError(f"{source}: {'.'.join(exc.loc)}: {exc}") from None


def load_spec(
    path: str | Path,
    *,
    overrides: Iterable[str] = (),
    updates: Mapping[str, Any] | None = None,
) -> StudySpec:
    """Read a study file, apply ``--set`` overrides and typed updates, validate.

    Args:
        path: the TOML study file. Relative data paths in it are resolved
            against the file's folder.
        overrides: ``SECTION.KEY=VALUE`` strings; VALUE is read as TOML when it
            parses (``3``, ``[16, 32]``, ``{low = 1, high = 3}``, ``true``) and as
            a plain string otherwise.
        updates: ``{"study.n_trials": 5}``-style typed values from CLI flags.

    Raises:
        SpecError: the file is missing or malformed, or a field is invalid.
    """
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"{file}: study file not found")
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{file}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{file}: not a UTF-8 text file") from None
    for item in overrides:
        key, value = parse_override(item)
        _set_path(raw, key, value, origin=f"--set {item}")
    for key, value in (updates or {}).items():
        if value is not None:
            _set_path(raw, key, value, origin=f"--{key.split('.')[-1].replace('_', '-')}")
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("builder"), str) and "path" not in model:
        model["path"] = str(file.parent.resolve())  # the builder's module lies beside the study file
    for section, key in (("data", "path"), ("dashboard", "artifacts"), ("model", "path")):
        table = raw.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str) and "://" not in table[key]:
            given = Path(table[key]).expanduser()
            if not given.is_absolute():
                table[key] = str((file.parent / given).resolve())
    return spec_from_dict(raw, source=str(file))


def parse_override(item: str) -> tuple[str, Any]:
    """``"training.max_epochs=3"`` -> ``("training.max_epochs", 3)``."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+", key):
        raise SpecError(
            f"--set {item!r}: expected SECTION.KEY=VALUE, for example training.max_epochs=10"
        )
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word is a string; the strict spec refuses it where a number is due
    return key, value


def _set_path(raw: dict[str, Any], dotted: str, value: Any, *, origin: str) -> None:
    node: Any = raw
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise SpecError(f"{origin}: {where} is {child!r}, not a table, so it has no key {parts[i + 1]!r}")
        node = child
    node[parts[-1]] = value


def _one_line(exc: ValidationError, raw: Mapping[str, Any]) -> str:
    errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = tuple(str(p) for p in first["loc"])
    if first["type"] != "extra_forbidden":
        loc = _field_path(loc)
    where = ".".join(loc) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        message = _unknown_key(loc)
    elif kind == "missing":
        message = "required but missing"
    else:
        message = first["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if message.startswith(prefix):
                message = message[len(prefix) :]
        if not message.startswith("got ") and "input" in first and kind not in ("value_error",):
            message = f"got {_show(first['input'])}; {_allowed(message)}"
    more = len(errors) - 1
    return f"{where}: {message}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def _field_path(loc: tuple[str, ...]) -> tuple[str, ...]:
    """Drop pydantic's union-branch tags (``worker.threads.int``) from an error location."""
    model: type[BaseModel] | None = StudySpec
    out: list[str] = []
    for part in loc:
        if model is not None and part not in model.model_fields and out and model is not StudySpec:
            break
        out.append(part)
        field = model.model_fields.get(part) if model else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return tuple(out)


_PLAIN = {"a valid integer": "an integer", "a valid boolean": "true or false", "a valid number": "a number",
          "a valid string": "a string"}  # fmt: skip


def _allowed(message: str) -> str:
    message = message[0].lower() + message[1:]
    if not message.startswith("input should be "):
        return message
    wanted = message.removeprefix("input should be ")
    return "allowed: " + _PLAIN.get(wanted, wanted)


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, dict | list) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _unknown_key(loc: tuple[str, ...]) -> str:
    model: type[BaseModel] | None = StudySpec
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    key = loc[-1]
    if model is None:
        return f"unknown key {key!r}"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    section = f"[{'.'.join(loc[:-1])}]" if len(loc) > 1 else "the top level"
    return f"unknown key {key!r}{hint} (allowed in {section}: {', '.join(allowed)})"
