"""sweep: hyperparameter sweeps for Keras models, ranked by validation-loss stability.

The package is a thin typed library under the ``sweep`` command line. Heavy
dependencies (TensorFlow, Keras, scikit-learn) are imported only where training
or data preparation happens, so that reading commands start fast. The public
functions below are imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_spec": "sweep.spec",
    "StudySpec": "sweep.spec",
    "run_sweep": "sweep.runner",
    "rank": "sweep.report",
    "study_status": "sweep.report",
    "retrain_best": "sweep.retrain",
    "summarize": "sweep.stability",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sweep' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
