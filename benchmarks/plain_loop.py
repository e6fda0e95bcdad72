"""The baseline: a hand-written Optuna + Keras loop, as a user would write it without ``sweep``.

``python -m benchmarks.plain_loop --storage URL --study NAME --n-trials N --space FILE``
loads an existing study (the benchmark creates it and may queue fixed
configurations in it), and runs ``N`` trials in this one process: each
suggests the nine parameters from the distributions in ``FILE`` (Optuna's
JSON form), builds the same stacked LSTM that ``sweep`` builds, fits it on
scikit-learn's digits (the same stratified holdout and scaling as ``sweep``'s
first repeat), reports every epoch's validation loss to Optuna, stores the
curves as a user attr and returns the lowest validation loss.

It imports nothing from ``sweep``: this is the loop ``sweep`` is compared to.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any


def load_digits_split(seed: int, validation_fraction: float = 0.2) -> tuple[Any, Any, Any, Any]:
    """Digits as 8 steps of 8 features, a stratified holdout, standardised on the training rows."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.ascontiguousarray(bunch.images, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    n = len(y)
    n_valid = math.ceil(validation_fraction * n - 1e-9)
    train, valid = train_test_split(
        np.arange(n), test_size=n_valid, random_state=seed % 2**32, shuffle=True, stratify=y
    )
    train, valid = np.sort(train), np.sort(valid)
    fit = x[train].astype(np.float64).reshape(-1, x.shape[-1])
    mean, std = fit.mean(axis=0), fit.std(axis=0)
    std = np.where(std <= 1e-12 * np.maximum(1.0, np.abs(mean)), 1.0, std)

    def scaled(rows: Any) -> Any:
        return ((x[rows].astype(np.float64) - mean) / std).astype(np.float32)

    return scaled(train), y[train], scaled(valid), y[valid]


def build_lstm(params: dict[str, Any], *, input_shape: tuple[int, ...], n_classes: int, momentum: float = 0.9) -> Any:
    """A stack of LSTM layers with dropout, L2 and optional LayerNormalization, and a softmax head."""
    import keras
    from keras import layers

    l2 = float(params["l2"])
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None
    inputs = keras.Input(shape=input_shape)
    x = inputs
    n_layers = int(params["n_layers"])
    for i in range(n_layers):
        last = i == n_layers - 1
        x = layers.LSTM(
            int(params["units"]),
            activation=params["activation"],
            return_sequences=not last,
            kernel_regularizer=regularizer,
            dropout=float(params["dropout"]),
        )(x)
        if params.get("layer_norm") and not last:
            x = layers.LayerNormalization()(x)
    if float(params["dropout"]) > 0:
        x = layers.Dropout(float(params["dropout"]))(x)
    outputs = layers.Dense(n_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    lr = float(params["learning_rate"])
    optimizer = {
        "adam": lambda: keras.optimizers.Adam(learning_rate=lr),
        "adamw": lambda: keras.optimizers.AdamW(learning_rate=lr),
        "nadam": lambda: keras.optimizers.Nadam(learning_rate=lr),
        "rmsprop": lambda: keras.optimizers.RMSprop(learning_rate=lr),
        "sgd": lambda: keras.optimizers.SGD(learning_rate=lr, momentum=momentum),
    }[params["optimizer"]]()
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def suggest_all(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """Suggest every parameter of ``space`` (name -> Optuna distribution JSON)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
        json_to_distribution,
    )

    params: dict[str, Any] = {}
    for name, raw in space.items():
        dist = json_to_distribution(raw if isinstance(raw, str) else json.dumps(raw))
        if isinstance(dist, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, list(dist.choices))
        elif isinstance(dist, IntDistribution):
            params[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        elif isinstance(dist, FloatDistribution):
            params[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            raise TypeError(f"{name}: unsupported distribution {type(dist).__name__}")
    return params


class EpochLog:
    """A Keras callback factory that keeps the curves and reports validation loss to the trial."""

    def __init__(self, trial: Any | None) -> None:
        self.trial = trial
        self.loss: list[float] = []
        self.val_loss: list[float] = []
        self.pruned = False
        self.fit_seconds = 0.0

    def callback(self) -> Any:
        import keras

        owner = self

        class Callback(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                logs = logs or {}
                owner.loss.append(float(logs.get("loss", math.nan)))
                owner.val_loss.append(float(logs.get("val_loss", math.nan)))
                if owner.trial is not None:
                    owner.trial.report(owner.val_loss[-1], epoch)
                    if owner.trial.should_prune():
                        owner.pruned = True
                        self.model.stop_training = True

        return Callback()


def train_one(
    params: dict[str, Any],
    data: tuple[Any, Any, Any, Any],
    *,
    epochs: int,
    seed: int,
    patience: int = 0,
    trial: Any | None = None,
    extra_callbacks: list[Any] | None = None,
) -> EpochLog:
    """Fit one model; the returned log holds its per-epoch curves."""
    import keras

    x_train, y_train, x_valid, y_valid = data
    keras.utils.set_random_seed(seed)
    model = build_lstm(params, input_shape=tuple(x_train.shape[1:]), n_classes=int(y_train.max()) + 1)
    log = EpochLog(trial)
    callbacks = [log.callback(), *(extra_callbacks or [])]
    if patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, mode="min"))
    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        validation_data=(x_valid, y_valid),
        epochs=epochs,
        batch_size=int(params["batch_size"]),
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    log.fit_seconds = time.perf_counter() - start
    del model
    keras.backend.clear_session()
    return log


def run(
    *,
    storage: str,
    study_name: str,
    n_trials: int,
    space: dict[str, Any],
    epochs: int,
    seed: int,
    patience: int = 0,
    sampler_seed: int | None = None,
    n_startup_trials: int = 10,
    data: tuple[Any, Any, Any, Any] | None = None,
    prune: bool = False,
) -> Any:
    """Run ``n_trials`` trials of the plain loop on an existing study; returns the study.

    Without ``prune`` no trial is pruned (Optuna's default would be its median
    pruner): the fixed-trial comparisons need every queued trial trained to the end.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=n_startup_trials)
    pruner = optuna.pruners.MedianPruner() if prune else optuna.pruners.NopPruner()
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
    data = data if data is not None else load_digits_split(seed)

    def objective(trial: optuna.Trial) -> float:
        params = suggest_all(trial, space)
        log = train_one(params, data, epochs=epochs, seed=seed, patience=patience, trial=trial)
        trial.set_user_attr("curves", {"loss": [log.loss], "val_loss": [log.val_loss]})
        trial.set_user_attr("train_seconds", round(log.fit_seconds, 3))  # model.fit alone, as sweep records it
        if log.pruned:
            raise optuna.TrialPruned()
        finite = [v for v in log.val_loss if math.isfinite(v)]
        if not finite:
            raise optuna.TrialPruned("no finite validation loss")
        return min(finite)

    study.optimize(objective, n_trials=n_trials, gc_after_trial=False)
    return study


def configure_threads(threads: int) -> None:
    """The same thread pools ``sweep`` gives a worker with ``threads`` cores."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plain_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--n-trials", type=int, required=True)
    parser.add_argument("--space", required=True, help="JSON file: parameter name -> Optuna distribution JSON")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--patience", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42, help="model seed and split seed (sweep's repeat 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sampler-seed", type=int, default=None)
    parser.add_argument("--prune", action="store_true", help="Optuna's median pruner (default: none)")
    args = parser.parse_args(argv)
    configure_threads(args.threads)
    with open(args.space, encoding="utf-8") as f:
        space = json.load(f)
    run(
        storage=args.storage,
        study_name=args.study,
        n_trials=args.n_trials,
        space=space,
        epochs=args.epochs,
        seed=args.seed,
        patience=args.patience,
        sampler_seed=args.sampler_seed,
        prune=args.prune,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
