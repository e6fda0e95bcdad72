"""The search space: a spec's ``[search]`` section -> Optuna suggestions.

Every parameter, searched or fixed, is suggested through the trial so that
``trial.params`` always carries the eight names (a fixed value is a
one-choice categorical). ``layer_norm`` is added for recurrent families only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sweep.spec import PARAM_NAMES, Choice, Fixed, Param, Range, SearchSection

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Hyperparams:
    """One configuration: the values a trial trains with."""

    n_layers: int
    units: int
    activation: str
    learning_rate: float
    optimizer: str
    batch_size: int
    dropout: float
    l2: float
    layer_norm: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Hyperparams:
        """Rebuild from ``trial.params`` (as stored by :func:`suggest`)."""
        known = {name: params[name] for name in PARAM_NAMES}
        return cls(**known, layer_norm=bool(params.get("layer_norm", False)))


def searched_names(search: SearchSection, *, family: str) -> list[str]:
    """The parameters that actually vary (not fixed) for this model family."""
    return [name for name, p in _params(search, family=family).items() if not isinstance(p, Fixed)]


def suggest(trial: optuna.Trial, search: SearchSection, *, family: str) -> Hyperparams:
    """Draw one configuration from the trial and return it typed."""
    values = {name: _suggest_one(trial, name, p) for name, p in _params(search, family=family).items()}
    return Hyperparams(**values)


def distributions(search: SearchSection, *, family: str) -> dict[str, Any]:
    """The Optuna distributions of the space (for ``enqueue_trial`` checks and copies)."""
    import optuna.distributions as d

    out: dict[str, Any] = {}
    for name, p in _params(search, family=family).items():
        if isinstance(p, Fixed):
            out[name] = d.CategoricalDistribution([p.value])
        elif isinstance(p, Choice):
            out[name] = d.CategoricalDistribution(list(p.values))
        elif p.integer:
            out[name] = d.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[name] = d.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def _params(search: SearchSection, *, family: str) -> dict[str, Param]:
    params = search.params()
    if family == "dense":
        params.pop("layer_norm")
    return params


def _suggest_one(trial: optuna.Trial, name: str, p: Param) -> Any:
    if isinstance(p, Fixed):
        return trial.suggest_categorical(name, [p.value])
    if isinstance(p, Choice):
        return trial.suggest_categorical(name, list(p.values))
    assert isinstance(p, Range)
    if p.integer:
        return trial.suggest_int(name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
