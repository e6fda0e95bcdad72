"""sweep: hyperparameter sweeps for Keras models, ranked by validation-loss stability.

The package is a thin typed library under the ``sweep`` command line. Heavy
dependencies (TensorFlow, Keras, scikit-learn) are imported only where training
or data preparation happens, so that reading commands start fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
