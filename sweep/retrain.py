"""``sweep best``: retrain the top-ranked configuration with fresh seeds and save it.

The sweep predicts that a configuration ends near its ``tail_mean``; this
retrains it N times with seeds the sweep never used, on the canonical
holdout split, and reports each run's tail validation loss beside that
prediction, so the user sees whether the ranking holds up. The saved model is
the run with the median tail loss: representative, not the luckiest.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sweep import records
from sweep.errors import UserError


def verdict(predicted: float | None, retrained_mean: float, spread: float | None) -> str:
    """Whether the winner held up: its retrained tail loss within the sweep's own spread of the prediction.

    ``held up`` when ``|retrained mean - predicted| <= spread``, else ``worse than predicted`` or
    ``better than predicted``; ``no prediction`` when the trial recorded none.
    """
    if predicted is None or spread is None or not math.isfinite(predicted) or not math.isfinite(retrained_mean):
        return "no prediction"
    if abs(retrained_mean - predicted) <= spread:
        return "held up"
    return "worse than predicted" if retrained_mean > predicted else "better than predicted"


FRESH_SEED_OFFSET = 10_000
"""Retraining seeds start here above the study's seed, far from the repeats' seeds."""


@dataclass(frozen=True)
class RetrainResult:
    study_name: str
    trial_number: int
    params: dict[str, Any]
    predicted_tail_mean: float | None
    predicted_score: float | None
    seeds: tuple[int, ...]
    tail_losses: tuple[float, ...]
    mean: float
    std: float
    model_path: str
    config_path: str
    spread: float | None = None
    """The sweep's own spread for this trial: the std of its repeats' tail means (its tail_std with one repeat)."""
    verdict: str = ""
    """``held up``, ``better than predicted`` or ``worse than predicted`` (see :func:`verdict`)."""
    saved_valid: dict[str, float] | None = None
    """The saved model's validation loss (and metric) on the split it was trained on, in the study's units."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def retrain_best(
    study_name: str,
    *,
    url: str,
    seeds: int,
    out_dir: Path,
    trial_number: int | None = None,
    threads: int | None = None,
) -> RetrainResult:
    """Retrain the best-ranked trial (or ``trial_number``) ``seeds`` times; save model and config.

    Raises:
        UserError: no complete trial to retrain, or a bad ``seeds``.
    """
    if seeds < 1:
        raise UserError(f"--retrain-seeds: got {seeds}; allowed: an integer >= 1")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out: cannot use '{out_dir}' as a folder: {exc.strerror or exc}") from None
    from sweep.report import rank
    from sweep.storage import open_sweep

    study, spec = open_sweep(study_name, url)
    ranked = rank(study_name, url=url)
    if trial_number is not None:
        ranked = [r for r in ranked if r.number == trial_number]
        if not ranked:
            raise UserError(f"--trial: got {trial_number}; it is not a complete trial of {study_name!r}")
    if not ranked:
        raise UserError(f"study {study_name!r} has no complete trial to retrain yet")
    top = ranked[0]

    from sweep.builder import builder_of
    from sweep.data import PAD_VALUE, check_fingerprint, data_kwargs, load_dataset, make_splits, prepare, repeat_seed
    from sweep.model import export_model, model_shape
    from sweep.runner import default_workers
    from sweep.space import Hyperparams
    from sweep.stability import summarize
    from sweep.train import configure_threads, fit_repeat, release

    dataset = load_dataset(**data_kwargs(spec.data))
    recorded = study.user_attrs.get(records.FINGERPRINT)
    check_fingerprint(dataset, recorded, section=spec.data, study_name=study.study_name)
    builder = builder_of(spec.model)
    if builder is not None:
        builder.check(study.user_attrs.get(records.BUILDER_FINGERPRINT), study_name=study.study_name)
    configure_threads(threads or default_workers())
    base = repeat_seed(spec.study.seed, 0)
    (split,) = make_splits(dataset, n_splits=1, validation_fraction=spec.data.validation_fraction, seed=base)
    data = prepare(dataset, split)
    params = Hyperparams.from_params(top.params)
    shape = model_shape(dataset)

    runs: list[tuple[float, int, Any]] = []
    seed_list = tuple(base + FRESH_SEED_OFFSET + i for i in range(seeds))
    for seed in seed_list:
        curves, model = fit_repeat(
            params,
            family=spec.model.family,
            builder=builder,
            shape=shape,
            data=data,
            max_epochs=spec.training.max_epochs,
            patience=spec.training.patience,
            seed=seed,
            momentum=spec.training.momentum,
            clipnorm=spec.training.clipnorm,
            steps_per_execution=spec.training.steps_per_execution,
            keep_model=True,
        )
        tail = summarize([curves.val_loss], tail=spec.stability.tail, risk=spec.stability.risk).tail_mean
        runs.append((tail, seed, model))
    tails = [t for t, _, _ in runs]
    median_run = sorted(runs, key=lambda r: r[0])[(len(runs) - 1) // 2]
    model_path = out_dir / f"{study_name}-trial{top.number}.keras"
    trained = median_run[2]
    scores = trained.evaluate(data.x_valid, data.y_valid, verbose=0, return_dict=True)
    saved_valid = {str(k): float(v) for k, v in scores.items()}
    export_model(trained, shape=shape, prepared=data, nested=builder is not None).save(model_path)
    runs.clear()
    release()
    means = top.repeat_means or []
    spread = statistics.stdev(means) if len(means) > 1 else top.tail_std
    mean = statistics.fmean(tails)

    result = RetrainResult(
        study_name=study_name,
        trial_number=top.number,
        params=top.params,
        predicted_tail_mean=top.tail_mean,
        predicted_score=top.score,
        seeds=seed_list,
        tail_losses=tuple(tails),
        mean=mean,
        std=statistics.pstdev(tails) if len(tails) > 1 else 0.0,
        model_path=str(model_path),
        config_path=str(out_dir / f"{study_name}-trial{top.number}.json"),
        spread=spread,
        verdict=verdict(top.tail_mean, mean, spread),
        saved_valid=saved_valid,
    )
    config = {
        "study": study_name,
        "trial": top.number,
        "params": top.params,
        "model": spec.model.model_dump(mode="json"),
        "data": spec.data.model_dump(mode="json"),
        "training": spec.training.model_dump(mode="json"),
        "stability": spec.stability.model_dump(mode="json"),
        "predicted": {"tail_mean": top.tail_mean, "score": top.score, "diagnosis": top.diagnosis},
        "retrained": {
            "seeds": list(seed_list),
            "tail_losses": [records.finite_or_none(t) for t in tails],
            "mean": records.finite_or_none(mean),
            "saved_seed": median_run[1],
        },
        "verdict": {
            "verdict": result.verdict,
            "rule": "held up when |retrained mean - predicted tail_mean| <= the trial's repeat spread",
            "predicted_tail_mean": top.tail_mean,
            "retrained_mean": records.finite_or_none(mean),
            "spread": spread,
        },
        "saved_model": {
            "file": model_path.name,
            "inputs": "the raw inputs of the study's data source, shape " + str(list(shape.input_shape))
            + (f"; padded time steps all {PAD_VALUE}" if shape.masked else ""),
            "outputs": "class probabilities" if data.y_mean is None else "targets in the data's own units",
            "classes": None if dataset.classes is None else [str(c) for c in dataset.classes],
            "valid": saved_valid,
            "split": {"seed": base, "validation_fraction": spec.data.validation_fraction},
        },
        "preprocessing": {
            "x_mean": data.x_mean.tolist(),
            "x_scale": data.x_scale.tolist(),
            "y_mean": None if data.y_mean is None else data.y_mean.tolist(),
            "y_scale": None if data.y_scale is None else data.y_scale.tolist(),
            "inside_the_model": True,
        },
        "data_fingerprint": study.user_attrs.get(records.FINGERPRINT),
    }
    Path(result.config_path).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return result
