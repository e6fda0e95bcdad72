"""Your own model: ``[model] builder = "module:function"``.

The builder is a function the user writes, called once per repeat as
``function(params, shape)``:

* ``params``: a dict of the trial's parameters, the eight of ``[search]`` (plus
  ``layer_norm``) and every ``[search.extra]`` one, by name;
* ``shape``: a :class:`sweep.model.ModelShape` (``input_shape`` without the batch
  axis, ``head`` ``"classification"`` or ``"regression"``, ``n_outputs``, and
  ``masked`` for padded variable-length sequences).

It returns a ``keras.Model`` whose output fits the task (``n_outputs``
probabilities for classification, ``n_outputs`` values for regression),
compiled or not: an uncompiled model is compiled here from ``optimizer``,
``learning_rate`` and the task's loss. Everything around it (splits, scaling,
seeds, early stopping, curves, scores, the saved model) stays sweep's.

The module is looked for in ``model.path`` (the study file's folder unless
given) and then on the Python path. Its file is fingerprinted with the study, so
that a changed builder is a spec change. Keras is imported only where the
builder is called.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.errors import SpecDriftError, SpecError

if TYPE_CHECKING:
    import keras

    from sweep.model import ModelShape

class BuilderError(SpecError):
    """The builder raised, or returned something that cannot be trained for the task. Exit code 2.

    ``details`` holds the traceback (recorded on the trial, not printed).
    """

    def __init__(self, message: str, *, details: str = "") -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class Builder:
    """Where a study's model comes from: ``ref`` (``module:function``), looked for first in ``path``."""

    ref: str
    path: str | None = None

    @property
    def module(self) -> str:
        return self.ref.split(":")[0]

    @property
    def function(self) -> str:
        return self.ref.split(":")[1]

    def _search_path(self) -> None:
        if self.path and Path(self.path).is_dir() and self.path not in sys.path:
            sys.path.insert(0, self.path)

    def source(self) -> Path:
        """The module's file, found without running it.

        Raises:
            SpecError: no such module here.
        """
        self._search_path()
        try:
            found = importlib.util.find_spec(self.module)
        except (ImportError, ValueError) as exc:
            found, reason = None, f"{type(exc).__name__}: {exc}"
        else:
            reason = f"no module named {self.module!r}"
        if found is None or not found.origin or not Path(found.origin).is_file():
            where = f"{self.path} and the Python path" if self.path else "the Python path"
            raise SpecError(f"model.builder: got {self.ref!r} but {reason} (looked in {where})")
        return Path(found.origin)

    def fingerprint(self) -> str:
        """A hash of the builder module's file (what makes a changed builder a spec change)."""
        return hashlib.sha256(self.source().read_bytes()).hexdigest()

    def check(self, recorded: str | None, *, study_name: str) -> None:
        """Refuse a builder that is missing here or differs from the one the study was created with.

        Raises:
            SpecError: the module cannot be found or imported, or has no such function.
            SpecDriftError: its file differs from the recorded fingerprint.
        """
        actual = self.fingerprint()
        if recorded is not None and actual != recorded:
            raise SpecDriftError(
                f"model.builder: {self.ref} here ({self.source()}) differs from the builder study "
                f"{study_name!r} was created with (fingerprint {recorded[:12]} -> {actual[:12]}); "
                "run the same builder file, or resume with --allow-spec-change"
            )
        self.load()

    def load(self) -> Callable[..., Any]:
        """The builder function, imported.

        Raises:
            SpecError: the module cannot be imported, or has no such function.
        """
        return _load(self.ref, self.path)

    def build(self, params: Mapping[str, Any], shape: ModelShape) -> keras.Model:
        """Call the builder and check what it returned.

        Raises:
            BuilderError: it raised, or its model does not fit the data or the task.
        """
        import keras

        function = self.load()
        shown = _show_params(params)
        try:
            model = function(dict(params), shape)
        except Exception as exc:
            raise BuilderError(
                f"model.builder {self.ref} raised {type(exc).__name__}: {_first_line(exc)} (params: {shown})",
                details=traceback.format_exc(),
            ) from None
        if not isinstance(model, keras.Model):
            raise BuilderError(
                f"model.builder {self.ref} returned {type(model).__name__}, not a keras.Model (params: {shown})"
            )
        problem = _misfit(model, shape)
        if problem:
            raise BuilderError(f"model.builder {self.ref}: {problem} (params: {shown})")
        return model


def builder_of(model: Any) -> Builder | None:
    """The :class:`Builder` of a spec's ``[model]`` section, or None for a built-in family."""
    return Builder(model.builder, model.path) if model.builder is not None else None


@functools.cache
def _load(ref: str, path: str | None) -> Callable[..., Any]:
    builder = Builder(ref, path)
    source = builder.source()
    try:
        module = importlib.import_module(builder.module)
    except Exception as exc:
        raise SpecError(
            f"model.builder: importing {builder.module!r} ({source}) raised {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    function = getattr(module, builder.function, None)
    if not callable(function):
        raise SpecError(f"model.builder: module {builder.module!r} ({source}) has no function {builder.function!r}")
    return function  # type: ignore[no-any-return]


def _misfit(model: keras.Model, shape: ModelShape) -> str | None:
    """What is wrong with ``model`` for data of ``shape``, or None."""
    from sweep.model import Head

    if len(model.inputs) != 1:
        return f"the model has {len(model.inputs)} inputs; sweep feeds one, of shape {shape.input_shape}"
    if len(model.outputs) != 1:
        return f"the model has {len(model.outputs)} outputs; the task needs one"
    given = tuple(model.inputs[0].shape[1:])
    fits = len(given) == len(shape.input_shape) and all(
        g is None or g == s for g, s in zip(given, shape.input_shape, strict=True)
    )
    if not fits:
        return f"its input has shape {given}; the data's samples have shape {shape.input_shape}"
    out = tuple(model.outputs[0].shape[1:])
    if out != (shape.n_outputs,):
        what = "class probabilities" if shape.head is Head.CLASSIFICATION else "values"
        return f"its output has shape {out}; the task needs ({shape.n_outputs},): {shape.n_outputs} {what} per sample"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:200]


def _show_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())
