"""Fitting one model: per-epoch curves, early stopping, pruning, non-finite losses.

This is the only module that imports TensorFlow/Keras at call time.
"""

from __future__ import annotations

import enum
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweep.builder import Builder
    from sweep.data import Prepared
    from sweep.model import Family, ModelShape
    from sweep.space import Hyperparams
    from sweep.stability import Summary

EpochHook = Callable[[int, float], bool]
"""Called after each epoch with (epoch, val_loss); returning True stops training (pruning)."""


class Stop(str, enum.Enum):
    """Why a repeat's training ended."""

    COMPLETED = "completed"  # ran max_epochs
    EARLY_STOPPED = "early_stopped"  # patience ran out
    PRUNED = "pruned"  # the epoch hook asked to stop
    INTERRUPTED = "interrupted"  # the process was asked to stop (SIGINT/SIGTERM)
    DIVERGED = "diverged"  # a loss became NaN or infinite


@dataclass(frozen=True)
class Curves:
    """The per-epoch history of one trained model."""

    loss: tuple[float, ...]
    val_loss: tuple[float, ...]
    metric: tuple[float, ...] = ()
    val_metric: tuple[float, ...] = ()
    metric_name: str = ""
    stop: Stop = Stop.COMPLETED
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.val_loss)


@dataclass(frozen=True)
class TrialOutcome:
    """What training one configuration gave: a curve per repeat that ran, and their summary.

    ``stopped`` says why fewer than R repeats ran (pruned, raced out, diverged),
    or is empty when every repeat ran; ``raced_out`` marks a trial that racing stopped.
    """

    curves: tuple[Curves, ...]
    summary: Summary
    stopped: str = ""
    raced_out: bool = False


def import_tensorflow() -> Any:
    """Import TensorFlow with its C++ start-up chatter (CUDA probing, oneDNN notices) silenced.

    Errors still surface: a failed import raises after stderr is restored.
    """
    import sys

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras  # noqa: F401  (keras 3 initialises its backend on import)
            import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf


def configure_threads(threads: int) -> None:
    """Size TensorFlow's thread pools; must run before TensorFlow does any work."""
    tf = import_tensorflow()

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:  # already initialised in this process: keep what it has
        pass


def prepare_gpus() -> int:
    """Let TensorFlow take GPU memory as it needs it (not all at once); return the GPUs it can use.

    Must run before TensorFlow does any work. Several workers can then share a GPU, and a
    worker's memory shows what its models need.
    """
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: keep what it has
            pass
    return len(gpus)


def set_mixed_precision(enabled: bool) -> None:
    """Train in float16 with float32 variables (Keras' ``mixed_float16``); outputs stay float32."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16" if enabled else "float32")


def fit_repeat(
    params: Hyperparams,
    *,
    family: Family | str | None,
    shape: ModelShape,
    data: Prepared,
    max_epochs: int,
    patience: int,
    seed: int,
    momentum: float = 0.9,
    clipnorm: float | None = None,
    steps_per_execution: int = 1,
    on_epoch: EpochHook | None = None,
    should_stop: Callable[[], bool] | None = None,
    keep_model: bool = False,
    builder: Builder | None = None,
) -> tuple[Curves, Any]:
    """Train one model and return its curves (and the model when ``keep_model``).

    Early stopping watches ``val_loss`` with ``patience`` epochs (0 turns it
    off). A non-finite training or validation loss stops training at once and
    the curves end with that value, ``stop == Stop.DIVERGED``. ``should_stop``
    is polled before every batch: when it says so, training ends within one
    batch with ``stop == Stop.INTERRUPTED``.
    """
    import keras

    from sweep.model import build_model

    keras.utils.set_random_seed(seed)
    model = build_model(
        params,
        family=family,
        shape=shape,
        momentum=momentum,
        clipnorm=clipnorm,
        steps_per_execution=steps_per_execution,
        builder=builder,
    )
    recorder = _Recorder(on_epoch, should_stop)
    callbacks: list[Any] = [recorder.callback()]
    early = None
    if patience > 0:
        early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, mode="min")
        callbacks.append(early)
    start = time.perf_counter()
    model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_valid, data.y_valid),
        epochs=max_epochs,
        batch_size=params.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - start
    if recorder.interrupted:
        stop = Stop.INTERRUPTED
    elif recorder.diverged:
        stop = Stop.DIVERGED
    elif recorder.pruned:
        stop = Stop.PRUNED
    elif early is not None and early.stopped_epoch > 0:
        stop = Stop.EARLY_STOPPED
    else:
        stop = Stop.COMPLETED
    curves = Curves(
        loss=tuple(recorder.history.get("loss", ())),
        val_loss=tuple(recorder.history.get("val_loss", ())),
        metric=tuple(recorder.history.get(recorder.metric, ())),
        val_metric=tuple(recorder.history.get("val_" + recorder.metric, ())),
        metric_name=recorder.metric,
        stop=stop,
        seconds=seconds,
    )
    return curves, (model if keep_model else None)


def release() -> None:
    """Drop Keras' global state between trials (the worker is still recycled: see runner)."""
    import keras

    keras.backend.clear_session(free_memory=True)  # this also runs the garbage collector


class _Recorder:
    """Collects each epoch's logs; stops training on a non-finite loss or when the hook says so."""

    def __init__(self, on_epoch: EpochHook | None, should_stop: Callable[[], bool] | None = None) -> None:
        self.on_epoch = on_epoch
        self.should_stop = should_stop
        self.interrupted = False
        self.history: dict[str, list[float]] = {}
        self.metric = ""
        self.diverged = False
        self.pruned = False

    def callback(self) -> Any:
        import keras

        owner = self

        class Callback(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                owner.epoch_end(epoch, logs or {}, self.model)

        if self.should_stop is None:
            return Callback()

        class Interruptible(Callback):
            def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
                if owner.should_stop is not None and owner.should_stop():
                    owner.interrupted = True
                    self.model.stop_training = True

        return Interruptible()

    def epoch_end(self, epoch: int, logs: dict[str, Any], model: Any) -> None:
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        if not self.metric:
            self.metric = next((k for k in ("accuracy", "mae") if k in logs), "")
        val = float(logs.get("val_loss", math.nan))
        if not (math.isfinite(val) and math.isfinite(float(logs.get("loss", math.nan)))):
            self.diverged = True
            model.stop_training = True
            return
        if self.on_epoch is not None and self.on_epoch(epoch, val):
            self.pruned = True
            model.stop_training = True
