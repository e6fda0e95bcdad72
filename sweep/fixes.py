"""``sweep fix``: queue each unstable trial's configuration with its remedy applied.

For each of the best-ranked complete trials whose diagnosis names a problem,
the remedy of :data:`sweep.remedy.REMEDIES` is applied to its parameters,
fitted to the study's search space, and queued with Optuna's
``enqueue_trial``, marked with the trial it fixes (:data:`records.FIXES`). The
next ``sweep run`` or ``sweep worker`` trains the queued trials first;
``sweep rank`` then shows each fix beside the trial it fixes. Queuing again
queues nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sweep import records
from sweep.remedy import REMEDIES

NOT_A_PROBLEM = ("stable", "pruned")
"""Diagnoses with nothing to fix."""


@dataclass(frozen=True)
class Fix:
    """What ``sweep fix`` did for one trial: ``queued`` a fix (its number) or why not (``reason``)."""

    trial: int
    diagnosis: str
    queued: int | None
    change: str
    reason: str = ""

    def line(self) -> str:
        head = f"#{self.trial} {self.diagnosis}:"
        if self.queued is None:
            return f"{head} {self.reason}"
        return f"{head} trial {self.queued} trains {self.change}" + (f" ({self.reason})" if self.reason else "")


def queue_fixes(study_name: str, *, url: str, top: int = 3) -> list[Fix]:
    """Queue the remedies of the ``top`` best-ranked complete trials that have a problem.

    Raises:
        StudyNotFoundError, StorageError: as :func:`sweep.report.rank`.
    """
    import optuna

    from sweep.report import rank
    from sweep.storage import open_storage, stored_spec

    problems = [r for r in rank(study_name, url=url) if r.diagnosis not in (None, *NOT_A_PROBLEM)][:top]
    if not problems:
        return []
    study = optuna.load_study(study_name=study_name, storage=open_storage(url, create=False))
    spec = stored_spec(study_name, study.user_attrs)
    space: dict[str, Any] = spec.search.params()
    if spec.model.builder is not None:
        space.update(spec.search.extras())
    trials = study.get_trials(deepcopy=False)
    queued = {t.user_attrs[records.FIXES]: t for t in trials if isinstance(t.user_attrs.get(records.FIXES), int)}
    out = []
    for r in problems:
        diagnosis = str(r.diagnosis)
        if r.number in queued:
            earlier = queued[r.number]
            out.append(Fix(r.number, diagnosis, earlier.number, str(earlier.user_attrs.get(records.REMEDY, "")),
                           reason=f"queued before; {earlier.state.name}"))  # fmt: skip
            continue
        params = dict(trials[r.number].params)
        fixed = REMEDIES[diagnosis].apply(params, space)
        if fixed is None:
            out.append(Fix(r.number, diagnosis, None, "", reason="no change of its remedy fits the search space"))
            continue
        change = ", ".join(f"{k} {_show(params[k])} -> {_show(v)}" for k, v in fixed.items() if v != params[k])
        study.enqueue_trial(fixed, user_attrs={records.FIXES: r.number, records.REMEDY: change})
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        number = max(t.number for t in waiting if t.user_attrs.get(records.FIXES) == r.number)
        out.append(Fix(r.number, diagnosis, number, change))
    return out


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
