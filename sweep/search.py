"""How a worker searches: its sampler (seeded per process) and pruner from the study's spec; how it asks the pruner.

Optuna keeps neither in the storage, so every worker builds its own from the
stored spec; the seed differs per process so that workers started together do
not propose the same configurations. A trial asks its pruner after every epoch
of repeat 0 (:func:`should_prune`), reading the study's complete trials at most
once a heartbeat interval (:class:`PrunerView`).
"""

from __future__ import annotations

import copy
import socket
import time
from collections.abc import Callable, Container, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from sweep.spec import StudySpec

__all__ = ["PrunerView", "make_pruner", "make_sampler", "sampler_seed", "should_prune"]


def sampler_seed(base: int, *, existing: int, slot: int) -> int:
    """A sampler seed from the study's seed, the trials already there, the slot and the host.

    Reproducible for one ``sweep run`` on one machine; different for replicas on other
    hosts (compose containers have their own host names), which would otherwise propose
    the same configurations.
    """
    import numpy as np

    entropy = [base, existing, slot, *socket.gethostname().encode()]
    return int(np.random.SeedSequence([abs(e) for e in entropy]).generate_state(1)[0])


def make_sampler(spec: StudySpec, *, seed: int | None) -> optuna.samplers.BaseSampler:
    import optuna

    s = spec.sampler
    match s.name:
        case "random":
            return optuna.samplers.RandomSampler(seed=seed)
        case "qmc":
            return optuna.samplers.QMCSampler(seed=seed)
        case "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=s.n_startup_trials,
        multivariate=s.multivariate,
        constant_liar=s.constant_liar,
    )


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    import optuna

    p = spec.pruner
    match p.name:
        case "median":
            return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
        case "percentile":
            return optuna.pruners.PercentilePruner(
                p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
            )
        case "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=p.min_resource,
                max_resource=spec.training.max_epochs,
                reduction_factor=p.reduction_factor,
            )
    return optuna.pruners.NopPruner()


class PrunerView:
    """The study as a trial's pruner reads it: its complete trials as last read, read again once ``max_age_s`` old.

    Optuna's median and percentile pruners read nothing of a study but its
    complete trials (their intermediate values at the step being judged) and its
    direction. A trial asks its pruner after every epoch of repeat 0; through
    this view the complete trials are read at the first epoch and again only
    once the last read is ``max_age_s`` old (``worker.heartbeat_interval``).
    Each step is judged by the same rule on the same values as before; a trial
    that another worker completes meanwhile counts from the next read, at most
    ``max_age_s`` later than when the study was read at every epoch (with one
    worker nothing changes: each trial has its own view). A read of any other
    state goes to the study.

    Args:
        study: the study the trial belongs to.
        max_age_s: seconds after which the complete trials are read again.
        clock: a monotonic clock (tests pass their own).
    """

    def __init__(self, study: optuna.Study, *, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.study = study
        self.max_age_s = max_age_s
        self.clock = clock
        self.reads = 0
        self._complete: list[optuna.trial.FrozenTrial] = []
        self._read_at: float | None = None

    def get_trials(
        self, deepcopy: bool = True, states: Container[optuna.trial.TrialState] | None = None
    ) -> list[optuna.trial.FrozenTrial]:
        from optuna.trial import TrialState

        if states is None or any(s in states for s in TrialState if s is not TrialState.COMPLETE):
            return self.study.get_trials(deepcopy=deepcopy, states=states)
        now = self.clock()
        if self._read_at is None or now - self._read_at >= self.max_age_s:
            self._complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            self._read_at = now
            self.reads += 1
        trials = self._complete if TrialState.COMPLETE in states else []
        return copy.deepcopy(trials) if deepcopy else list(trials)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.study, name)


def should_prune(trial: optuna.Trial, reported: Mapping[int, float], view: PrunerView) -> bool:
    """Whether the study's pruner stops ``trial``, whose intermediate values so far are ``reported``.

    A median or percentile pruner reads the study through ``view`` (the values
    reported and the complete trials are all it reads); any other pruner is asked
    as Optuna asks it (``trial.should_prune()``: hyperband keeps its own records
    on the trials and reads them at each step).
    """
    import optuna
    from optuna.trial import TrialState, create_trial

    pruner = trial.study.pruner
    if not isinstance(pruner, optuna.pruners.PercentilePruner):  # MedianPruner is one
        return trial.should_prune()
    frozen = create_trial(state=TrialState.RUNNING, intermediate_values=dict(reported))
    return pruner.prune(view, frozen)  # type: ignore[arg-type]
