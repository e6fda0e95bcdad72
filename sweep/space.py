"""The search space: a spec's ``[search]`` section -> Optuna suggestions.

Every parameter, searched or fixed, is suggested through the trial so that
``trial.params`` always carries the eight names (a fixed value is a
one-choice categorical). ``layer_norm`` is added for recurrent families and
builders; ``[search.extra]`` parameters for builders only (``family=None``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
    extra: dict[str, Any] = field(default_factory=dict)
    """The ``[search.extra]`` values, by name (a builder's own parameters)."""

    def as_dict(self) -> dict[str, Any]:
        """Every value by name, the extra ones beside the eight (what a builder is given)."""
        out = asdict(self)
        extra = out.pop("extra")
        return {**out, **extra}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Hyperparams:
        """Rebuild from ``trial.params`` (as stored by :func:`suggest`)."""
        known = {name: params[name] for name in PARAM_NAMES}
        extra = {k: v for k, v in params.items() if k not in PARAM_NAMES and k != "layer_norm"}
        return cls(**known, layer_norm=bool(params.get("layer_norm", False)), extra=extra)


def searched_names(search: SearchSection, *, family: str | None) -> list[str]:
    """The parameters that actually vary (not fixed) for this model family."""
    return [name for name, p in _params(search, family=family).items() if not isinstance(p, Fixed)]


def suggest(trial: optuna.Trial, search: SearchSection, *, family: str | None) -> Hyperparams:
    """Draw one configuration from the trial and return it typed (``family=None``: a builder's)."""
    values = {name: _suggest_one(trial, name, p) for name, p in _params(search, family=family).items()}
    extra = {name: values.pop(name) for name in list(values) if name in search.extra}
    return Hyperparams(**values, extra=extra)


def distributions(search: SearchSection, *, family: str | None) -> dict[str, Any]:
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


def _params(search: SearchSection, *, family: str | None) -> dict[str, Param]:
    params = search.params()
    if family == "dense":
        params.pop("layer_norm")
    if family is None:  # a builder: its own parameters too
        params.update(search.extras())
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
