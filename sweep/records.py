"""What a sweep keeps in the Optuna storage, and how to read it back.

Study user attrs (prefix ``sweep:``): the resolved spec, the data fingerprint,
the target number of trials, the versions used.

Trial user attrs: the stability summary (numbers as numbers), the diagnosis
and what to change, ``stopped``, and ``fail_reason`` on failed trials; each
fits on one line. optuna-dashboard prints every user attr on a trial's page on
a line that does not wrap, so anything longer goes into a trial *system* attr
named ``sweep:<key>`` (:func:`split_attrs`): the per-repeat data (the curves
and the per-repeat lists), and the whole of any text over
:data:`USER_TEXT_MAX` characters (a ``hint`` with its evidence, a raced-out
trial's ``stopped``, a long ``fail_reason``), whose user attr keeps a short
form: a hint's remedy, else the text cut with "…". Read any of them with
:func:`attr`, which also reads studies written before 2026-12, when they all
were user attrs. Non-finite numbers are stored as ``null`` so every reader of
the JSON (optuna-dashboard included) can parse it.

How they reach the storage: a worker holds the writes of the trial it runs and
writes them in a few transactions (:mod:`sweep.batch`): the parameters once
drawn, the progress after each repeat (with the allocation's read of the
study), the records at the end, the rest before the trial's final state.
Each attr is the row it always was, in the table it always was, so the layout
above and every reader of it are unchanged. On a storage that cannot hold
writes (the gRPC proxy of ``sweep proxy``) each attr is one call.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweep.stability import HINTS, Summary

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

SPEC = "sweep:spec"
FINGERPRINT = "sweep:data_fingerprint"
TRACEBACK = "sweep:traceback"
"""Trial system attr: the traceback of a builder that raised (the terminal gets one line)."""
BUILDER_FINGERPRINT = "sweep:builder_fingerprint"
"""Study user attr: the hash of the ``model.builder`` module's file (absent for a built-in family)."""
DATA = "sweep:data"
TARGET = "sweep:n_trials"
VERSIONS = "sweep:versions"
SPEC_CHANGES = "sweep:spec_changes"
REQUEUED = "sweep:requeued"

CURVES = "curves"
"""Every repeat's per-epoch curves (a system attr, ``sweep:curves``)."""
FIXES = "fixes"
"""Trial user attr: the number of the trial whose diagnosis this trial's configuration remedies (``sweep fix``)."""
REMEDY = "remedy"
"""Trial user attr of a fix: what was changed (``learning_rate 0.003 -> 0.001, batch_size 32 -> 64``)."""
STOPPED = "stopped"
"""Why the trial ran fewer than R repeats (pruned, raced out, diverged), or ``all R repeats ran``."""
RACED_OUT = "raced_out"
"""``True`` on a trial that racing stopped after repeat 0 (it ends PRUNED)."""
FAIL_REASON = "fail_reason"
DEVICE = "device"
"""Where the trial trained: ``cpu``, ``gpu:ID``, or a GPU that was assigned but not usable."""
WORKER = "worker"
"""``host:pid`` of the worker process that ran the trial."""


class FailReason(str, enum.Enum):
    """Why a trial failed: the first word of its ``fail_reason`` attr (``"<kind>"`` or ``"<kind>: <detail>"``)."""

    DIVERGED = "diverged"  # a loss became NaN or infinite: a result, it counts toward the target
    INTERRUPTED = "interrupted"  # SIGINT/SIGTERM mid-trial: queued again on resume
    SURPLUS = "surplus"  # started when the study already had enough trials under way
    ERROR = "error"  # an unexpected error in the objective

    def reason(self, detail: str = "") -> str:
        """The ``fail_reason`` text: the kind, then the detail."""
        return f"{self.value}: {detail}" if detail else self.value

    @classmethod
    def of(cls, fail_reason: Any) -> FailReason | None:
        """The kind of a stored ``fail_reason`` (None for anything else: a worker that died, no reason)."""
        if not isinstance(fail_reason, str):
            return None
        try:
            return cls(fail_reason.split(":", 1)[0].strip())
        except ValueError:
            return None


SUMMARY_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Summary))
"""The stability summary's fields, each stored as a trial user attr of the same name."""


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def compact(values: Iterable[float]) -> list[float | None]:
    """A curve as JSON-safe floats with 6 significant digits (``None`` for NaN/inf)."""
    return [float(f"{v:.6g}") if math.isfinite(v) else None for v in values]


def expand(values: Sequence[float | None]) -> list[float]:
    """Inverse of :func:`compact`: ``None`` becomes NaN (a diverged epoch)."""
    return [math.nan if v is None else float(v) for v in values]


@dataclass(frozen=True)
class StoredCurves:
    """The curves of one trial as read back from the storage (:data:`CURVES`)."""

    val_loss: list[list[float]]
    loss: list[list[float]]
    metric_name: str
    val_metric: list[list[float]]

    @classmethod
    def from_attr(cls, raw: dict[str, Any]) -> StoredCurves:
        return cls(
            val_loss=[expand(c) for c in raw.get("val_loss", [])],
            loss=[expand(c) for c in raw.get("loss", [])],
            metric_name=raw.get("metric_name", ""),
            val_metric=[expand(c) for c in raw.get("val_metric", [])],
        )


PER_REPEAT: tuple[str, ...] = (CURVES, "epochs", "repeat_means", "repeat_stds", "repeat_scores", "evidence")
"""Attrs with a value per repeat (up to 50), and the rules' evidence: always system attrs (``sweep:<key>``)."""
USER_TEXT_MAX = 100
"""The longest text a user attr holds: about 800 px on optuna-dashboard's trial page, which fits at 1400 px."""


def system_key(key: str) -> str:
    """The trial system attr that holds ``key`` when it is not a user attr."""
    return f"sweep:{key}"


def split_attrs(attrs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``attrs`` as (user attrs, system attrs): per-repeat data and whole long texts go to the system attrs."""
    user: dict[str, Any] = {}
    system: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in PER_REPEAT:
            system[system_key(key)] = value
        elif isinstance(value, str) and len(value) > USER_TEXT_MAX:
            system[system_key(key)] = value
            user[key] = short_text(key, value)
        else:
            user[key] = value
    return user, system


def short_text(key: str, text: str) -> str:
    """A long text's user-attr form: a hint's remedy (what to change), else the text cut to fit."""
    if key == "hint":
        for remedy in HINTS.values():
            if text.endswith(remedy) and len(remedy) <= USER_TEXT_MAX:
                return remedy
    return text[: USER_TEXT_MAX - 1].rstrip() + "…"


def set_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Write ``attrs`` on a running trial as :func:`split_attrs` places them (system attrs first).

    Inside :func:`sweep.batch.held` (the objective's trial) they are held and written in one
    transaction with the trial's other writes; elsewhere each is one storage call.
    """
    user, system = split_attrs(attrs)
    for key, value in system.items():
        trial.storage.set_trial_system_attr(trial._trial_id, key, value)
    for key, value in user.items():
        trial.set_user_attr(key, value)


def attr(key: str, user_attrs: Mapping[str, Any], system_attrs: Mapping[str, Any], default: Any = None) -> Any:
    """A trial's attr whole: from its system attrs where :func:`split_attrs` put it, else its user attrs."""
    return system_attrs.get(system_key(key), user_attrs.get(key, default))


def trial_attr(trial: FrozenTrial, key: str, default: Any = None) -> Any:
    """:func:`attr` of a trial read through Optuna."""
    return attr(key, trial.user_attrs, trial.system_attrs, default)


def counts_toward_target(trial: FrozenTrial) -> bool:
    """Whether a finished trial used up one of the study's ``n_trials``.

    Complete and pruned trials do, and so does a trial that failed because its
    configuration diverged (that is a result). A trial that failed for an
    outside reason (interrupted, its worker died, a surplus trial) does not:
    the sweep runs another in its place.
    """
    return counts(trial.state.name, trial.user_attrs.get(FAIL_REASON))


def counts(state: str, fail_reason: Any) -> bool:
    """:func:`counts_toward_target` from a trial's state name and ``fail_reason``."""
    if state in ("COMPLETE", "PRUNED"):
        return True
    return state == "FAIL" and FailReason.of(fail_reason) is FailReason.DIVERGED


@dataclass(frozen=True)
class Tally:
    """A study's trials counted once, the same way everywhere."""

    done: int
    """Trials that used up one of the study's ``n_trials`` (see :func:`counts_toward_target`)."""
    running: int
    failed: int


def tally(trials: Iterable[FrozenTrial]) -> Tally:
    done = running = failed = 0
    for t in trials:
        done += counts_toward_target(t)
        running += t.state.name == "RUNNING"
        failed += t.state.name == "FAIL"
    return Tally(done=done, running=running, failed=failed)


def best_trial(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """The complete trial with the lowest finite stability score (also for Pareto studies), if any."""
    scored = [
        t
        for t in trials
        if t.state.name == "COMPLETE"
        and isinstance(t.user_attrs.get("score"), int | float)
        and math.isfinite(t.user_attrs["score"])
    ]
    return min(scored, key=lambda t: (t.user_attrs["score"], t.number)) if scored else None


def summary_attrs(summary: Summary) -> dict[str, Any]:
    """The stability summary as user attrs: numbers as numbers, ``None`` for non-finite."""
    out: dict[str, Any] = {}
    for key, value in summary.to_attrs().items():
        if isinstance(value, float):
            out[key] = finite_or_none(value)
        elif isinstance(value, list):
            out[key] = [finite_or_none(v) if isinstance(v, float) else v for v in value]
        else:
            out[key] = value
    return out


def rescore(curves: StoredCurves, *, risk: float, tail: int, baseline: float | None = None) -> dict[str, Any]:
    """Summary attrs recomputed from stored curves with another ``risk`` or ``tail``.

    No per-split reference is applied here: ``sweep rank`` judges the spread
    for the whole study afterwards (:func:`sweep.stability.judge_spread`).
    """
    from sweep.stability import summarize

    train = curves.loss if len(curves.loss) == len(curves.val_loss) else None
    return summary_attrs(summarize(curves.val_loss, train, tail=tail, risk=risk, baseline=baseline))
