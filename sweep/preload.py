"""What a worker imports, imported once in the process workers are forked from (:mod:`sweep.zygote`).

Importing this module imports TensorFlow and Keras (silenced, as :func:`sweep.train.import_tensorflow`
does), Optuna, SQLAlchemy, the worker's own modules and the libraries a default sweep loads at its
first trial; nothing is run, so no thread pool or device is started. The objects that exist then
are frozen out of the garbage collector, so that the workers' collections do not touch (and copy)
the pages they share with this process.
"""

from __future__ import annotations

import gc
import os
import sys

# Its own session: a signal sent to the terminal's or the supervisor's process group (Ctrl-C, `timeout`)
# does not end it; it ends when the supervisor does (multiprocessing's fork server watches a pipe).
try:
    os.setsid()
except OSError:  # already a session's leader
    pass
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")  # read when TensorFlow loads, which happens here, not in a worker

from sweep.train import import_tensorflow

import_tensorflow()

import optuna  # noqa: E402, F401
import sqlalchemy  # noqa: E402, F401

from sweep import builder, dashboard, data, objective, search, storage, worker  # noqa: E402, F401
from sweep.zygote import _title  # noqa: E402

_title(f"{sys.executable} -m sweep.preload (sweep's worker fork server)")

worker._warm_imports()
gc.collect()
gc.freeze()
