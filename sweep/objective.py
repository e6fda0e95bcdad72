"""One trial: draw a configuration, train it R times, summarise its stability, record it.

Repeats use the same seeds and the same splits for every trial (repeat r
trains with seed ``base + r`` on split r), so that trials differ only by
their configuration. Only the first repeat reports its per-epoch validation
loss to Optuna: the pruner then compares every trial's repeat 0 at the same
epoch, on the same split and seed (like with like), and a configuration it
stops never spends the other R-1 repeats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweep import records
from sweep.errors import Interrupted, TrialFailed
from sweep.stability import summarize
from sweep.train import Stop

if TYPE_CHECKING:
    import optuna

    from sweep.data import Dataset, Prepared
    from sweep.model import ModelShape
    from sweep.spec import StudySpec
    from sweep.stability import Summary
    from sweep.train import Curves


def model_shape(dataset: Dataset) -> ModelShape:
    """What the model families need to know about ``dataset``."""
    from sweep.data import Task
    from sweep.model import Head, ModelShape

    if dataset.task is Task.CLASSIFICATION:
        head, outputs = Head.CLASSIFICATION, int(dataset.n_classes or 2)
    else:
        head, outputs = Head.REGRESSION, 1 if dataset.y.ndim == 1 else int(dataset.y.shape[1])
    return ModelShape(
        input_shape=tuple(int(d) for d in dataset.X.shape[1:]),
        head=head,
        n_outputs=outputs,
        masked=dataset.padded,
    )


def repeat_seed(base: int | None, repeat: int) -> int:
    return (0 if base is None else base) + repeat


@dataclass(frozen=True)
class TrialOutcome:
    curves: tuple[Curves, ...]
    summary: Summary


class Objective:
    """The callable handed to ``study.optimize``."""

    def __init__(self, spec: StudySpec, dataset: Dataset, *, artifact_store: Any = None) -> None:
        from sweep.data import make_splits, prepare

        self.spec = spec
        self.artifact_store = artifact_store
        self.shape = model_shape(dataset)
        splits = make_splits(
            dataset,
            n_splits=spec.training.repeats,
            validation_fraction=spec.data.validation_fraction,
            seed=repeat_seed(spec.study.seed, 0),
        )
        self.prepared: list[Prepared] = [prepare(dataset, s) for s in splits]
        self.before_trial: Any = None
        self.interrupt: Any = lambda: None  # -> the signal number once the process was asked to stop

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        from sweep.space import suggest

        if self.before_trial is not None:
            self.before_trial(trial)
        params = suggest(trial, self.spec.search, family=self.spec.model.family)
        return self.record(trial, self.train(params, trial=trial))

    def train(self, params: Any, *, trial: optuna.Trial | None = None) -> TrialOutcome:
        from sweep.train import fit_repeat, release

        spec = self.spec
        report = trial is not None and spec.study.objective == "score"
        curves: list[Curves] = []
        for r, data in enumerate(self.prepared):
            hook = _pruning_hook(trial) if (report and r == 0 and trial is not None) else None
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
                raise Interrupted(self.interrupt())
            curves.append(c)
            if c.stop in (Stop.DIVERGED, Stop.PRUNED):
                break
        summary = summarize(
            [c.val_loss for c in curves],
            [c.loss for c in curves],
            tail=spec.stability.tail,
            risk=spec.stability.risk,
        )
        return TrialOutcome(curves=tuple(curves), summary=summary)

    def record(self, trial: optuna.Trial, outcome: TrialOutcome) -> float | tuple[float, float]:
        """Store curves and summary on the trial; end it as the outcome says."""
        import optuna

        curves, summary = outcome.curves, outcome.summary
        trial.set_user_attr(records.CURVES, curves_attr(curves))
        for key, value in records.summary_attrs(summary).items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("train_seconds", round(sum(c.seconds for c in curves), 3))
        if self.spec.dashboard.notes:
            from sweep.dashboard import write_trial

            seconds = write_trial(trial, outcome, self.spec, self.artifact_store)
            trial.set_user_attr("dashboard_seconds", round(seconds, 3))
        last = curves[-1]
        if last.stop is Stop.DIVERGED or not math.isfinite(summary.score):
            reason = (
                f"{records.DIVERGED_PREFIX}: non-finite loss at epoch {last.epochs} "
                f"of repeat {len(curves) - 1}"
            )
            trial.set_user_attr(records.FAIL_REASON, reason)
            raise TrialFailed(reason)
        if last.stop is Stop.PRUNED:
            trial.set_user_attr("pruned_at_epoch", last.epochs)
            raise optuna.TrialPruned(f"pruned at epoch {last.epochs} of repeat 0")
        if self.spec.study.objective == "pareto":
            return summary.tail_mean, summary.tail_std
        return summary.score


def curves_attr(curves: tuple[Curves, ...] | list[Curves]) -> dict[str, Any]:
    """Every repeat's curves, compact, as one JSON-safe user attr."""
    return {
        "loss": [records.compact(c.loss) for c in curves],
        "val_loss": [records.compact(c.val_loss) for c in curves],
        "metric_name": curves[0].metric_name if curves else "",
        "metric": [records.compact(c.metric) for c in curves],
        "val_metric": [records.compact(c.val_metric) for c in curves],
        "stop": [c.stop.value for c in curves],
        "seconds": [round(c.seconds, 3) for c in curves],
    }


def _pruning_hook(trial: optuna.Trial) -> Any:
    def hook(epoch: int, val_loss: float) -> bool:
        trial.report(val_loss, epoch)
        return trial.should_prune()

    return hook
