"""One trial: draw a configuration, train it up to R times, summarise its stability, record it.

Repeats use the same seeds and the same splits for every trial (repeat r
trains with seed ``base + r`` on split r; for time series split 0 is the
latest window, the one nearest the future the model will forecast), so that
trials differ only by their configuration.

Repeat 0 reports its running stability score (:func:`sweep.stability.repeat_score`
of its curve so far) to Optuna after every epoch: the pruner compares every
trial's repeat 0 at the same epoch, on the same split and seed (like with
like), and a pruned trial's Optuna value is the same kind of number as its
ranked score. A median or percentile pruner judges each epoch against the
study's complete trials as read at most one heartbeat interval
(``worker.heartbeat_interval``) before (:class:`sweep.search.PrunerView`).

The trial's writes are held and written in a few transactions
(:mod:`sweep.batch`): its parameters once drawn, its reports at the first epoch
and then at least once a heartbeat interval, its progress after each repeat
with the allocation's read, its records before the dashboard's note, the rest
when the trial ends. After each repeat, the allocation (:mod:`sweep.allocation`,
``[allocation]``) decides whether the trial trains the next one; a trial it
stops ends PRUNED, its value its score over the repeats it has. A trial with
a ``verifies`` attr trains more repeats of an earlier configuration: it copies
the repeats that configuration has and trains on from there.
"""

from __future__ import annotations

import functools
import math
import signal
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from sweep import batch, ledger, records
from sweep.allocation import Action, Config, Decision, go_on
from sweep.calibration import Calibration, calibrate
from sweep.errors import Interrupted, TrialFailed
from sweep.liveness import TakenOver
from sweep.outage import retry
from sweep.stability import HINTS, Diagnosis, repeat_score, split_reference, summarize
from sweep.train import Curves, Stop, TrialOutcome

if TYPE_CHECKING:
    import optuna

    from sweep.data import Dataset, Prepared
    from sweep.spec import StudySpec


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
        abandoned: Callable[[], bool] = lambda: False,
        on_recorded: Callable[[optuna.Trial, TrialOutcome], float] | None = None,
    ) -> None:
        """Prepare the R splits of ``dataset`` once, for every trial this objective runs.

        Args:
            before_trial: called (with retries through an outage) as each trial starts, before
                its parameters are drawn; it may raise to end the trial.
            interrupt: the signal number once the process was asked to stop, else None; training
                polls it before every batch.
            abandoned: whether the running trial was found taken over by another worker
                (:mod:`sweep.liveness`); training polls it too, and the trial ends at once.
            on_recorded: called once a trial's results are stored (the dashboard's note and
                figure); returns the seconds it took, recorded as ``dashboard_seconds``.
        """
        from sweep.builder import builder_of
        from sweep.data import baseline_loss, make_splits, prepare, repeat_seed
        from sweep.model import model_shape

        self.spec = spec
        self.builder = builder_of(spec.model)
        self.before_trial = before_trial
        self.interrupt = interrupt
        self.abandoned = abandoned
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
        self.current: int | None = None
        """The number of the trial this objective runs or ran last."""

    def db(self, action: Callable[[], T], what: str) -> T:
        """``action()`` on the storage, retried while the storage is unreachable (``worker.outage_timeout``)."""
        return retry(action, timeout_s=self.spec.worker.outage_timeout, what=what)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        from sweep.space import suggest

        self.current = trial.number
        with batch.held(trial, retry=self.db):
            before = self.before_trial
            if before is not None:
                self.db(lambda: before(trial), f"starting trial {trial.number}")
            params = self.db(
                lambda: suggest(trial, self.spec.search, family=self.spec.model.family), f"drawing trial {trial.number}"
            )
            # Other workers' samplers see a running trial's parameters (constant liar) before it trains.
            self.db(lambda: batch.flush(trial), f"drawing trial {trial.number}")
            copied = self.db(lambda: self.copied_repeats(trial), f"reading the study for trial {trial.number}")
            return self.record(trial, self.train(params, trial=trial, copied=copied), copied=len(copied))

    def copied_repeats(self, trial: optuna.Trial) -> tuple[Curves, ...]:
        """The repeats a verifying trial (``verifies`` attr) takes from its configuration's record."""
        key = trial.user_attrs.get(ledger.VERIFIES)
        if key is None:
            return ()
        trials = trial.study.get_trials(deepcopy=False)
        held = ledger.observe(trials, spec=self.spec).records.get(key)
        raw = records.trial_attr(held, records.CURVES) if held is not None else None
        if not isinstance(raw, dict):
            return ()
        n = len(raw.get("val_loss", []))
        out = []
        for r in range(min(n, len(self.prepared))):
            def part(name: str, r: int = r) -> tuple[float, ...]:
                values = raw.get(name, [])
                return tuple(records.expand(values[r])) if r < len(values) else ()

            stops = raw.get("stop", [])
            seconds = raw.get("seconds", [])
            out.append(
                Curves(
                    loss=part("loss"),
                    val_loss=part("val_loss"),
                    metric=part("metric"),
                    val_metric=part("val_metric"),
                    metric_name=str(raw.get("metric_name", "")),
                    stop=Stop(stops[r]) if r < len(stops) else Stop.COMPLETED,
                    seconds=float(seconds[r]) if r < len(seconds) else 0.0,
                )
            )
        return tuple(out)

    def train(
        self, params: Any, *, trial: optuna.Trial | None = None, copied: tuple[Curves, ...] = ()
    ) -> TrialOutcome:
        """Train ``params`` on repeat 0, then on the next repeats while the allocation says so.

        ``copied`` are repeats already trained for this configuration (a
        verifying trial): training starts at the next one. Without a trial,
        every repeat runs.
        """
        from sweep.data import repeat_seed
        from sweep.train import fit_repeat, release

        spec = self.spec
        scored = spec.study.objective == "score"
        report = trial is not None and scored
        repeats = len(self.prepared)
        curves: list[Curves] = list(copied)
        stopped, raced_out = "", False
        for r in range(len(curves), repeats):
            data = self.prepared[r]
            hook = _pruning_hook(trial, spec, self.db) if (report and r == 0 and trial is not None) else None
            c, _ = fit_repeat(
                params,
                family=spec.model.family,
                builder=self.builder,
                shape=self.shape,
                data=data,
                max_epochs=spec.training.max_epochs,
                patience=spec.training.patience,
                seed=repeat_seed(spec.study.seed, r),
                momentum=spec.training.momentum,
                clipnorm=spec.training.clipnorm,
                steps_per_execution=spec.training.steps_per_execution,
                on_epoch=hook,
                should_stop=lambda: self.interrupt() is not None or self.abandoned(),
            )
            release()
            if c.stop is Stop.INTERRUPTED:
                if self.interrupt() is None and trial is not None and self.abandoned():
                    raise TakenOver(trial.number)
                raise Interrupted(self.interrupt() or signal.SIGTERM)
            curves.append(c)
            if c.stop is Stop.DIVERGED:
                stopped = f"diverged in repeat {r} of {repeats}"
                break
            if c.stop is Stop.PRUNED:
                stopped = f"pruned at epoch {c.epochs} of repeat 0 by the {spec.pruner.name} pruner"
                break
            if report and trial is not None and r + 1 < repeats:
                decision = self.db(
                    functools.partial(self.go_on, trial, curves, len(copied)), f"allocating trial {trial.number}"
                )
                if decision.action is not Action.REPEAT:
                    stopped, raced_out = f"stopped after {r + 1} of {repeats} repeats: {decision.reason}", True
                    break
        reference, calibration = None, None
        if trial is not None:
            reference, calibration = self.db(
                lambda: study_scales(trial, repeats), f"reading the study for trial {trial.number}"
            )
        summary = summarize(
            [c.val_loss for c in curves],
            [c.loss for c in curves],
            tail=spec.stability.tail,
            risk=spec.stability.risk,
            baseline=sum(self.baselines[: len(curves)]) / len(curves),
            reference=reference if len(curves) == repeats else None,
            calibration=calibration,
        )
        if stopped and summary.diagnosis is not Diagnosis.DIVERGED:
            summary = replace(summary, diagnosis=Diagnosis.PRUNED, hint=f"{stopped}: {HINTS[Diagnosis.PRUNED]}")
        return TrialOutcome(curves=tuple(curves), summary=summary, stopped=stopped, raced_out=raced_out)

    def go_on(self, trial: optuna.Trial, curves: list[Curves], copied: int) -> Decision:
        """Write this trial's progress, then ask the allocation whether it trains its next repeat."""
        progress = self.progress(curves, copied)
        records.set_attrs(trial, progress)
        seen = ledger.observe(trial.study.get_trials(deepcopy=False), spec=self.spec, asking=trial.number)
        key = ledger.key_of(trial.number, trial.user_attrs)
        scores = tuple(math.inf if x is None else x for x in progress[ledger.REPEAT_SCORES])
        configs = [c for c in seen.configs if c.key != key] + [Config(key=key, scores=scores, busy=True)]
        return go_on(configs, ledger.plan_of(self.spec), key, used=seen.used)

    def progress(self, curves: tuple[Curves, ...] | list[Curves], copied: int) -> dict[str, Any]:
        """The attrs the allocation reads: each repeat's score, and the epochs this trial trained itself."""
        tail, risk = self.spec.stability.tail, self.spec.stability.risk
        scores = [repeat_score(c.val_loss, tail=tail, risk=risk) for c in curves]
        return {
            ledger.REPEAT_SCORES: [records.finite_or_none(x) for x in scores],
            ledger.EPOCHS_TRAINED: sum(c.epochs for c in curves[copied:]),
        }

    def record(
        self, trial: optuna.Trial, outcome: TrialOutcome, *, copied: int = 0
    ) -> float | tuple[float, float]:
        """Store curves and summary on the trial (:func:`records.set_attrs`); end it as the outcome says.

        ``copied`` repeats came from an earlier trial of the same configuration:
        their epochs are not this trial's.
        """
        import optuna

        curves, summary = outcome.curves, outcome.summary
        attrs: dict[str, Any] = {records.CURVES: curves_attr(curves), **records.summary_attrs(summary)}
        attrs[records.STOPPED] = outcome.stopped or f"all {len(self.prepared)} repeats ran"
        spec = self.spec
        attrs.update(self.progress(curves, copied))
        if copied:
            attrs[ledger.FIRST_REPEAT] = copied
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
        self.db(lambda: batch.flush(trial), f"recording trial {trial.number}")  # stored before the notes are made
        if self.on_recorded is not None:
            seconds = self.on_recorded(trial, outcome)
            self.db(
                lambda: trial.set_user_attr("dashboard_seconds", round(seconds, 3)), f"recording trial {trial.number}"
            )
        if diverged:
            self.last = (trial.number, "FAIL", None)
            raise TrialFailed(attrs[records.FAIL_REASON])
        if outcome.raced_out:
            # Optuna's value of a pruned trial is its last report: make it the trial's score, at a step
            # after every epoch of repeat 0, so that it is the same number as the ranked score.
            step = spec.training.max_epochs
            self.db(lambda: trial.report(summary.score, step), f"recording trial {trial.number}")
        if last.stop is Stop.PRUNED or outcome.raced_out:
            self.last = (trial.number, "PRUNED", None)
            raise optuna.TrialPruned(outcome.stopped)
        result: float | tuple[float, float] = (
            (summary.tail_mean, summary.tail_std) if self.spec.study.objective == "pareto" else summary.score
        )
        self.last = (trial.number, "COMPLETE", result)
        return result


def study_scales(trial: optuna.Trial, repeats: int) -> tuple[tuple[float, ...] | None, Calibration | None]:
    """The per-split reference and the calibration from the study's complete trials so far.

    See :func:`sweep.stability.split_reference` and :func:`sweep.calibration.calibrate`.
    """
    complete = [t for t in _finished(trial) if t.state.name == "COMPLETE"]
    means = [records.trial_attr(t, "repeat_means") or [] for t in complete]
    rows = [{**t.user_attrs, "evidence": records.trial_attr(t, "evidence")} for t in complete]
    return split_reference([m for m in means if isinstance(m, list)], n_repeats=repeats), calibrate(rows)


def _finished(trial: optuna.Trial) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


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
    """Report repeat 0's running score each epoch and ask the pruner: the pruned value is then the ranked score.

    The reports are held with the trial's other writes (:mod:`sweep.batch`) and
    written at the first epoch, then at least once a heartbeat interval, so that
    the dashboard and the other workers see a running trial's progress within
    one. The pruner reads the study's complete trials again once a heartbeat
    interval has passed since it last read them (:class:`sweep.search.PrunerView`);
    such a read carries the held reports with it.
    """
    import time

    from sweep.search import PrunerView, should_prune

    seen: list[float] = []
    reported: dict[int, float] = {}
    tail, risk = spec.stability.tail, spec.stability.risk
    interval = spec.worker.heartbeat_interval
    view = PrunerView(trial.study, max_age_s=interval)
    written_at: float | None = None

    def hook(epoch: int, val_loss: float) -> bool:
        nonlocal written_at
        seen.append(val_loss)
        score = repeat_score(seen, tail=tail, risk=risk)
        what = f"reporting epoch {epoch + 1} of trial {trial.number}"
        db(lambda: trial.report(score, epoch), what)
        reported[epoch] = float(score)
        pruned = bool(db(lambda: should_prune(trial, reported, view), what))
        now = time.monotonic()
        if not pruned and (written_at is None or now - written_at >= interval):
            db(lambda: batch.flush(trial), what)  # nothing to write when the pruner's read just carried it
            written_at = now
        return pruned

    return hook
