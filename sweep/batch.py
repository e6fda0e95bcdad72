"""A running trial's writes, held by its worker and written to the database in a few transactions.

Optuna writes each parameter, attr and intermediate value of a trial in a
transaction of its own: 65 of them in a sweep trial of 5 repeats of 20 epochs
(``python -m benchmarks.storage_calls``). While the objective runs a trial
(:func:`held`), the writes that its thread makes to it are held in memory
instead, and written together, in one transaction:

* before any read of the trial or of its study by the same thread, inside the
  transaction of that read, so that what the worker reads back includes what
  it wrote (the allocation reads the trial's progress, Optuna reads a pruned
  trial's last intermediate value);
* when the objective asks for it (:func:`flush`): after the parameters are
  drawn, so that other workers' samplers see them as before; after the
  records, before the dashboard's note; while repeat 0 trains, at the first
  epoch and then at least once a heartbeat interval, so that the dashboard and
  the other workers see its progress;
* when the block ends, whether it returns or raises (a pruned or failed trial
  keeps every record), always before the trial's final state is told.

A worker that dies loses what it held, at most the reports of one heartbeat
interval; its trial is then failed as stale, as before.

The rows written are those Optuna writes, by Optuna's own code, so every
reader sees the same storage. What the block holds: the trial's parameters,
user attrs, intermediate values, the system attrs of sweep (``sweep:<key>``),
and the study's system attrs (optuna-dashboard's notes). Other system attrs
(a pruner's rung records) and every write of another thread (the beats) go out
at once, as before. A write to a trial that another worker has failed is
refused at the transaction that carries it (``UpdateFinishedTrialError``),
which the worker reads as its trial taken over (:mod:`sweep.liveness`).

Only relational storages opened by :func:`sweep.storage.open_storage` hold
writes; on any other storage (the gRPC proxy) :func:`held` and :func:`flush`
do nothing and each write is its own call.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage as _Base
    from sqlalchemy.orm import Session
else:
    _Base = object

__all__ = ["HeldWrites", "flush", "held"]

SWEEP_PREFIX = "sweep:"


@dataclass
class _Pending:
    """What one thread holds for one trial, in the order of kinds Optuna writes them."""

    trial_id: int
    study_id: int
    params: dict[str, tuple[float, Any, Any]] = field(default_factory=dict)
    """Name -> (internal value, distribution, the distribution Optuna's cache passed, or None)."""
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    intermediate_values: dict[int, float] = field(default_factory=dict)
    study_system_attrs: dict[str, Any] = field(default_factory=dict)
    writing: bool = False
    """Being written (Optuna's checks then read the trial, which must not write it again)."""

    def __bool__(self) -> bool:
        return bool(
            self.params or self.user_attrs or self.system_attrs or self.intermediate_values or self.study_system_attrs
        )

    def clear(self) -> None:
        for held in (self.params, self.user_attrs, self.system_attrs, self.intermediate_values,
                     self.study_system_attrs):  # fmt: skip
            held.clear()


_LOCAL_LOCK = threading.Lock()


class HeldWrites(_Base):
    """A mixin for Optuna's ``RDBStorage`` that holds one trial's writes per thread (see the module).

    Every method calls Optuna's own for anything it does not hold.
    """

    def _pending(self) -> _Pending | None:
        local = self.__dict__.get("_held_local")
        pending: _Pending | None = getattr(local, "pending", None)
        return pending

    # ------------------------------------------------------------------ holding

    def hold(self, trial_id: int, study_id: int) -> None:
        """Hold the writes this thread makes to ``trial_id`` (of study ``study_id``) until they are written."""
        with _LOCAL_LOCK:
            local = self.__dict__.setdefault("_held_local", threading.local())
        local.pending = _Pending(trial_id=trial_id, study_id=study_id)

    def release(self) -> None:
        """Stop holding; whatever is still held is dropped (write it first with :meth:`write_held`)."""
        local = self.__dict__.get("_held_local")
        if local is not None:
            local.pending = None

    def write_held(self) -> None:
        """Write what this thread holds, in one transaction (nothing when it holds nothing)."""
        pending = self._pending()
        if not pending:
            return
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session) as session:
            self._write(session, pending)
        pending.clear()

    @contextlib.contextmanager
    def _writing_held_first(self, *, trial_id: int | None = None, study_id: int | None = None) -> Iterator[None]:
        """Run the read in the block in one transaction after the held writes, if it reads the held trial.

        Optuna's own method opens its session from the same thread-local registry, so it joins the
        transaction begun here and its commit writes both.
        """
        pending = self._pending()
        if not pending or pending.writing or (trial_id != pending.trial_id and study_id != pending.study_id):
            yield
            return
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session) as session:
            self._write(session, pending)
            yield
        pending.clear()

    def _write(self, session: Session, pending: _Pending) -> None:
        """Write ``pending`` in ``session`` with Optuna's own statements (no commit)."""
        pending.writing = True
        try:
            self._write_rows(session, pending)
        finally:
            pending.writing = False

    def _write_rows(self, session: Session, pending: _Pending) -> None:
        from optuna.storages._rdb import models

        trial_id = pending.trial_id
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
        self.check_trial_is_updatable(trial_id, trial.state)
        if pending.params:
            stored = {
                name
                for (name,) in session.query(models.TrialParamModel.param_name).filter(
                    models.TrialParamModel.trial_id == trial_id
                )
            }  # a transaction that was committed but whose answer was lost, then tried again
            for name, (value, distribution, previous) in pending.params.items():
                if name not in stored:
                    self._set_trial_param_without_commit(session, trial_id, name, value, distribution, previous)
        for model, attrs in (
            (models.TrialUserAttributeModel, pending.user_attrs),
            (models.TrialSystemAttributeModel, pending.system_attrs),
        ):
            for key, value in attrs.items():
                self._set_trial_attr_without_commit(session, model, trial_id, key, value)
        for step, value in pending.intermediate_values.items():
            self._set_trial_intermediate_value_without_commit(session, trial_id, step, value)
        for key, value in pending.study_system_attrs.items():
            _set_study_system_attr(session, pending.study_id, key, value)

    # ------------------------------------------------------------------ writes that are held

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any) -> None:
        self._set_trial_param(trial_id, param_name, param_value_internal, distribution, None)

    def _set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any, previous: Any
    ) -> None:
        pending = self._pending()
        if pending is not None and pending.trial_id == trial_id:
            pending.params[param_name] = (param_value_internal, distribution, previous)
            return
        super()._set_trial_param(trial_id, param_name, param_value_internal, distribution, previous)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        pending = self._pending()
        if pending is not None and pending.trial_id == trial_id:
            pending.user_attrs[key] = value
            return
        super().set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        pending = self._pending()
        if pending is not None and pending.trial_id == trial_id and key.startswith(SWEEP_PREFIX):
            pending.system_attrs[key] = value
            return
        super().set_trial_system_attr(trial_id, key, value)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        pending = self._pending()
        if pending is not None and pending.trial_id == trial_id:
            pending.intermediate_values[step] = intermediate_value
            return
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        pending = self._pending()
        if pending is not None and pending.study_id == study_id:
            pending.study_system_attrs[key] = value
            return
        super().set_study_system_attr(study_id, key, value)

    # ------------------------------------------------------------------ reads that write what is held first

    def get_trial(self, trial_id: int) -> Any:
        with self._writing_held_first(trial_id=trial_id):
            return super().get_trial(trial_id)

    def get_trial_user_attrs(self, trial_id: int) -> Any:
        with self._writing_held_first(trial_id=trial_id):
            return super().get_trial_user_attrs(trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> Any:
        with self._writing_held_first(trial_id=trial_id):
            return super().get_trial_system_attrs(trial_id)

    def _get_trials(self, study_id: int, *args: Any, **kwargs: Any) -> Any:
        with self._writing_held_first(study_id=study_id):
            return super()._get_trials(study_id, *args, **kwargs)

    def get_study_system_attrs(self, study_id: int) -> Any:
        with self._writing_held_first(study_id=study_id):
            return super().get_study_system_attrs(study_id)

    def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
        pending = self._pending()
        if not pending or pending.writing or pending.trial_id != trial_id:
            return bool(super().set_trial_state_values(trial_id, state=state, values=values))
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session) as session:
            self._write(session, pending)
            done = bool(super().set_trial_state_values(trial_id, state=state, values=values))
        if done:  # else Optuna rolled the transaction back: the writes are still held
            pending.clear()
        return done


def _set_study_system_attr(session: Session, study_id: int, key: str, value: Any) -> None:
    """Optuna's ``set_study_system_attr`` inside ``session``; a row another process added meanwhile is kept.

    Optuna ignores that conflict by ending its own transaction; here a savepoint
    keeps it from undoing the rest of the held writes.
    """
    import json

    from optuna.storages._rdb import models
    from sqlalchemy.exc import IntegrityError

    study = models.StudyModel.find_or_raise_by_id(study_id, session)
    try:
        with session.begin_nested():
            attribute = models.StudySystemAttributeModel.find_by_study_and_key(study, key, session)
            if attribute is None:
                session.add(models.StudySystemAttributeModel(study_id=study_id, key=key, value_json=json.dumps(value)))
            else:
                attribute.value_json = json.dumps(value)
    except IntegrityError:
        pass


def _backend(trial: optuna.Trial) -> HeldWrites | None:
    storage = trial.storage
    backend = getattr(storage, "_backend", storage)  # Optuna's cache wraps a relational storage
    return backend if isinstance(backend, HeldWrites) else None


@contextlib.contextmanager
def held(trial: optuna.Trial, *, retry: Callable[[Callable[[], None], str], None] | None = None) -> Iterator[None]:
    """Hold the writes this thread makes to ``trial`` while the block runs; write them when it ends.

    They are written when the block returns, and when it raises (a pruned,
    failed or interrupted trial keeps every record it made), except when it
    raises because the trial was taken over by another worker (nothing more is
    written to it) or because the storage stayed unreachable for too long.
    ``retry`` runs that last write through an outage as the objective runs its
    other storage calls (``retry(action, what)``).
    """
    from optuna.exceptions import UpdateFinishedTrialError

    from sweep.liveness import TakenOver
    from sweep.outage import OutageTimeout

    backend = _backend(trial)
    if backend is None:
        yield
        return

    def write() -> None:
        if retry is None:
            backend.write_held()
        else:
            retry(backend.write_held, f"recording trial {trial.number}")

    backend.hold(trial._trial_id, trial.study._study_id)
    try:
        try:
            yield
        except (TakenOver, UpdateFinishedTrialError, OutageTimeout):
            raise
        except Exception:
            write()  # a refusal here is raised from within the block's error
            raise
        write()
    finally:
        backend.release()


def flush(trial: optuna.Trial) -> None:
    """Write what :func:`held` holds for ``trial`` now, in one transaction (nothing on other storages)."""
    backend = _backend(trial)
    if backend is not None:
        backend.write_held()
