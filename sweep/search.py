"""How a worker searches: its sampler (seeded per process) and its pruner, from the study's spec.

Optuna keeps neither in the storage, so every worker builds its own from the
stored spec; the seed differs per process so that workers started together do
not propose the same configurations.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from sweep.spec import StudySpec

__all__ = ["make_pruner", "make_sampler", "sampler_seed"]


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
