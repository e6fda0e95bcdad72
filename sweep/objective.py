"""One trial: draw a configuration, train it up to R times, summarise its stability, record it.

Repeats use the same seeds and the same splits for every trial (repeat r
trains with seed ``base + r`` on split r; for time series split 0 is the
latest window, the one nearest the future the model will forecast), so that
trials differ only by their configuration.

Repeat 0 reports its running stability score (:func:`sweep.stability.repeat_score`
of its curve so far) to Optuna after every epoch: the pruner compares every
trial's repeat 0 at the same epoch, on the same split and seed (like with
like), and a pruned trial's Optuna value is the same kind of number as its
ranked score. After repeat 0, racing (``[racing]``) lets only contenders
train the other R-1 repeats.
"""

from __future__ import annotations

import functools
import math
import signal
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from sweep import records
from sweep.errors import Interrupted, TrialFailed
from sweep.outage import retry
from sweep.stability import HINTS, Diagnosis, repeat_score, split_reference, summarize
from sweep.train import Stop, TrialOutcome

if TYPE_CHECKING:
    import optuna

    from sweep.data import Dataset, Prepared
    from sweep.spec import StudySpec
    from sweep.train import Curves


T = TypeVar("T")


class Objective:
    """The callable handed to ``study.optimize``."""

    def __init__(
        self,
        spec: StudySpec,
        dataset: Dataset,
        *,
        before_trial: Callable[[optuna.Trial], None] | None = None,
        interrupt: Callable[[], int | None] = lambda: None,
        on_recorded: Callable[[optuna.Trial, TrialOutcome], float] | None = None,
    ) -> None:
        """Prepare the R splits of ``dataset`` once, for every trial this objective runs.

        Args:
            before_trial: called (with retries through an outage) as each trial starts, before
                its parameters are drawn; it may raise to end the trial.
            interrupt: the signal number once the process was asked to stop, else None; training
                polls it before every batch.
            on_recorded: called once a trial's results are stored (the dashboard's note and
                figure); returns the seconds it took, recorded as ``dashboard_seconds``.
        """
        from sweep.data import baseline_loss, make_splits, prepare, repeat_seed
        from sweep.model import model_shape

        self.spec = spec
        self.before_trial = before_trial
        self.interrupt = interrupt
        self.on_recorded = on_recorded
        self.shape = model_shape(dataset)
        splits = make_splits(
            dataset,
            n_splits=spec.training.repeats,
            validation_fraction=spec.data.validation_fraction,
            seed=repeat_seed(spec.study.seed, 0),
        )
        self.prepared: list[Prepared] = [prepare(dataset, s) for s in splits]
        self.baselines: tuple[float, ...] = tuple(baseline_loss(p) for p in self.prepared)
        self.last: tuple[int, str, float | tuple[float, float] | None] | None = None
        """(trial number, final state name, value) of the last trial this objective ended."""

    def db(self, action: Callable[[], T], what: str) -> T:
        """``action()`` on the storage, retried while the storage is unreachable (``worker.outage_timeout``)."""
        return retry(action, timeout_s=self.spec.worker.outage_timeout, what=what)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        from sweep.space import suggest

        before = self.before_trial
        if before is not None:
            self.db(lambda: before(trial), f"starting trial {trial.number}")
        params = self.db(
            lambda: suggest(trial, self.spec.search, family=self.spec.model.family), f"drawing trial {trial.number}"
        )
        return self.record(trial, self.train(params, trial=trial))

    def train(self, params: Any, *, trial: optuna.Trial | None = None) -> TrialOutcome:
        """Train ``params`` on repeat 0, then on the other repeats while it is a contender."""
        from sweep.data import repeat_seed
        from sweep.train import fit_repeat, release

        spec = self.spec
        scored = spec.study.objective == "score"
        report = trial is not None and scored
        repeats = len(self.prepared)
        curves: list[Curves] = []
        stopped, raced_out = "", False
        for r, data in enumerate(self.prepared):
            hook = _pruning_hook(trial, spec, self.db) if (report and r == 0 and trial is not None) else None
            c, _ = fit_repeat(
                params,
                family=spec.model.family,
                shape=self.shape,
                data=data,
                max_epochs=spec.training.max_epochs,
                patience=spec.training.patience,
                seed=repeat_seed(spec.study.seed, r),
                momentum=spec.training.momentum,
                clipnorm=spec.training.clipnorm,
                steps_per_execution=spec.training.steps_per_execution,
                on_epoch=hook,
                should_stop=lambda: self.interrupt() is not None,
            )
            release()
            if c.stop is Stop.INTERRUPTED:
                raise Interrupted(self.interrupt() or signal.SIGTERM)
            curves.append(c)
            if c.stop is Stop.DIVERGED:
                stopped = f"diverged in repeat {r} of {repeats}"
                break
            if c.stop is Stop.PRUNED:
                stopped = f"pruned at epoch {c.epochs} of repeat 0 by the {spec.pruner.name} pruner"
                break
            if r == 0 and repeats > 1 and scored and trial is not None and spec.racing.enabled:
                score0 = repeat_score(c.val_loss, tail=spec.stability.tail, risk=spec.stability.risk)
                verdict = self.db(functools.partial(race, trial, score0, spec), f"racing trial {trial.number}")
                if verdict:
                    stopped, raced_out = verdict, True
                    break
        summary = summarize(
            [c.val_loss for c in curves],
            [c.loss for c in curves],
            tail=spec.stability.tail,
            risk=spec.stability.risk,
            baseline=sum(self.baselines[: len(curves)]) / len(curves),
            reference=None
            if trial is None or len(curves) < repeats
            else self.db(lambda: study_reference(trial, repeats), f"reading the study for trial {trial.number}"),
        )
        if stopped and summary.diagnosis is not Diagnosis.DIVERGED:
            summary = replace(summary, diagnosis=Diagnosis.PRUNED, hint=f"{stopped}: {HINTS[Diagnosis.PRUNED]}")
        return TrialOutcome(curves=tuple(curves), summary=summary, stopped=stopped, raced_out=raced_out)

    def record(self, trial: optuna.Trial, outcome: TrialOutcome) -> float | tuple[float, float]:
        """Store curves and summary on the trial (:func:`records.set_attrs`); end it as the outcome says."""
        import optuna

        curves, summary = outcome.curves, outcome.summary
        attrs: dict[str, Any] = {records.CURVES: curves_attr(curves), **records.summary_attrs(summary)}
        attrs[records.STOPPED] = outcome.stopped or f"all {len(self.prepared)} repeats ran"
        if outcome.raced_out:
            attrs[records.RACED_OUT] = True
        attrs["train_seconds"] = round(sum(c.seconds for c in curves), 3)
        last = curves[-1]
        diverged = last.stop is Stop.DIVERGED or not math.isfinite(summary.score)
        if diverged:
            where = f"non-finite loss at epoch {last.epochs} of repeat {len(curves) - 1}"
            attrs[records.FAIL_REASON] = records.FailReason.DIVERGED.reason(where)
        elif last.stop is Stop.PRUNED:
            attrs["pruned_at_epoch"] = last.epochs
        self.db(functools.partial(records.set_attrs, trial, attrs), f"recording trial {trial.number}")
        if self.on_recorded is not None:
            seconds = self.on_recorded(trial, outcome)
            self.db(
                lambda: trial.set_user_attr("dashboard_seconds", round(seconds, 3)), f"recording trial {trial.number}"
            )
        if diverged:
            self.last = (trial.number, "FAIL", None)
            raise TrialFailed(attrs[records.FAIL_REASON])
        if last.stop is Stop.PRUNED or outcome.raced_out:
            self.last = (trial.number, "PRUNED", None)
            raise optuna.TrialPruned(outcome.stopped)
        result: float | tuple[float, float] = (
            (summary.tail_mean, summary.tail_std) if self.spec.study.objective == "pareto" else summary.score
        )
        self.last = (trial.number, "COMPLETE", result)
        return result


def race(trial: optuna.Trial, score0: float, spec: StudySpec) -> str:
    """Why ``trial`` stops after repeat 0, or ``""`` when it is a contender.

    A contender's repeat-0 score is among the best ``racing.keep`` fraction of
    the repeat-0 scores of the study's finished trials that ran repeat 0 to its
    end (complete or raced out), itself included; every repeat 0 ran on the
    same split with the same seed, so the scores compare like with like.
    """
    scores = [s for s in (_repeat0_score(t, spec) for t in _finished(trial)) if s is not None]
    if len(scores) < spec.racing.n_startup_trials:
        return ""
    pool = sorted([*scores, score0])
    cut = pool[max(0, math.ceil(spec.racing.keep * len(pool)) - 1)]
    if score0 <= cut:
        return ""
    return (
        f"raced out after repeat 0 of {spec.training.repeats}: its repeat-0 score {score0:.4g} is not "
        f"among the best {spec.racing.keep:.0%} of {len(pool)} repeat-0 scores (cut {cut:.4g})"
    )


def study_reference(trial: optuna.Trial, repeats: int) -> tuple[float, ...] | None:
    """The per-split reference from the study's complete trials so far (:func:`split_reference`)."""
    means = [
        records.trial_attr(t, "repeat_means") or []
        for t in _finished(trial)
        if t.state.name == "COMPLETE"
    ]
    return split_reference([m for m in means if isinstance(m, list)], n_repeats=repeats)


def _finished(trial: optuna.Trial) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _repeat0_score(t: optuna.trial.FrozenTrial, spec: StudySpec) -> float | None:
    """A finished trial's repeat-0 score, when its repeat 0 ran to its end."""
    if t.state.name == "PRUNED" and not t.user_attrs.get(records.RACED_OUT):
        return None
    means, stds = records.trial_attr(t, "repeat_means"), records.trial_attr(t, "repeat_stds")
    if not (isinstance(means, list) and isinstance(stds, list) and means and stds):
        return None
    if not all(isinstance(x, int | float) for x in (means[0], stds[0])):
        return None
    return float(means[0]) + spec.stability.risk * float(stds[0])


def curves_attr(curves: tuple[Curves, ...] | list[Curves]) -> dict[str, Any]:
    """Every repeat's curves, compact, as one JSON-safe attr (:data:`sweep.records.CURVES`)."""
    return {
        "loss": [records.compact(c.loss) for c in curves],
        "val_loss": [records.compact(c.val_loss) for c in curves],
        "metric_name": curves[0].metric_name if curves else "",
        "metric": [records.compact(c.metric) for c in curves],
        "val_metric": [records.compact(c.val_metric) for c in curves],
        "stop": [c.stop.value for c in curves],
        "seconds": [round(c.seconds, 3) for c in curves],
    }


def _pruning_hook(trial: optuna.Trial, spec: StudySpec, db: Callable[[Callable[[], Any], str], Any]) -> Any:
    """Report repeat 0's running score each epoch: the pruned value is then the ranked score."""
    seen: list[float] = []
    tail, risk = spec.stability.tail, spec.stability.risk

    def hook(epoch: int, val_loss: float) -> bool:
        seen.append(val_loss)
        score = repeat_score(seen, tail=tail, risk=risk)
        what = f"reporting epoch {epoch + 1} of trial {trial.number}"
        db(lambda: trial.report(score, epoch), what)
        return bool(db(trial.should_prune, what))

    return hook
