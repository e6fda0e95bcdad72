"""``sweep proxy``: Optuna's gRPC storage proxy, with the database's outages said as outages.

Optuna's proxy answers a call that meets an unreachable database (a restart, a
failover) with gRPC ``UNKNOWN`` and the text of the exception, which a worker
cannot tell from a refused write, so the worker stopped. Here such a call is
answered ``UNAVAILABLE``, what a worker takes for an outage and waits out
(``worker.outage_timeout``), as it does when it talks to the database itself.
Every other answer is Optuna's own.

Many workers read the study's trials through one proxy, and each such read
reads every running trial again (Optuna's cache keeps only the finished
ones), so the proxy's cost per read grows with the workers, and it read for
one caller at a time, holding the cache's lock while the database answered.
Here the calls that wait for a read of the same study share one
(:func:`_shared_reads`), read outside that lock; a trial read once is turned
into its gRPC message once for every worker that asks for it (:func:`_service`);
and the server has threads and database connections for many waiting calls
(:data:`THREADS`).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sweep.outage import is_outage, one_line

if TYPE_CHECKING:
    import grpc  # type: ignore[import-untyped]
    import optuna


THREADS = 32
"""Threads of the server, and database connections of its storage: a call waiting for a shared read holds one
thread, so there are enough for the calls of many workers (Optuna's proxy has 10)."""


def make_server(
    storage: optuna.storages.BaseStorage, *, url: str, host: str, port: int, threads: int = THREADS
) -> grpc.Server:
    """A gRPC server (not started) for ``storage`` (opened from ``url``) on ``host:port``, as Optuna's,
    with the database's outages said as such and the reads of a study's trials shared by the calls that wait."""
    import grpc
    import optuna
    from optuna.storages._grpc.auto_generated import api_pb2_grpc

    if isinstance(storage, optuna.storages.RDBStorage):
        # Optuna's servicer reads every trial of the study at each call; the cache keeps the
        # finished ones in memory (what optuna.storages.get_storage does), or the proxy slows
        # with the study's size until workers' beats arrive late and are judged stale.
        storage = _shared_reads()(storage)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sweep-proxy"), interceptors=[_outages(url)]
    )
    api_pb2_grpc.add_StorageServiceServicer_to_server(_service()(storage), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"{host}:{port}")
    return server


MESSAGES_KEPT = 4096
"""Trials whose gRPC message the proxy keeps, the most recently asked for (a running trial's until it is read again)."""


@functools.cache
def _service() -> type:
    """Optuna's servicer, with each trial read turned into its gRPC message once, not once per worker.

    Every worker asks for every running trial at each read of the study (and
    for each newly finished one once), so the same trial objects, shared by
    the calls of one read (:func:`_shared_reads`), went to the same message
    once per worker. A message is kept with the trial object it was made
    from and used again only for that very object: a trial read again is a
    new object, and gets a new message.
    """
    import grpc
    from optuna.storages._grpc.auto_generated import api_pb2
    from optuna.storages._grpc.servicer import OptunaStorageProxyService, _to_proto_trial

    class Service(OptunaStorageProxyService):
        def __init__(self, storage: optuna.storages.BaseStorage) -> None:
            super().__init__(storage)
            self._messages: OrderedDict[int, tuple[optuna.trial.FrozenTrial, Any]] = OrderedDict()
            self._messages_lock = threading.Lock()

        def GetTrials(self, request: Any, context: grpc.ServicerContext) -> Any:
            """Optuna's ``GetTrials``: the study's trials after ``trial_id_greater_than`` and those included."""
            included = set(request.included_trial_ids)
            after = request.trial_id_greater_than
            try:
                trials = self._backend.get_all_trials(request.study_id, deepcopy=False)
            except KeyError as e:
                context.abort(code=grpc.StatusCode.NOT_FOUND, details=str(e))
            wanted = [t for t in trials if t._trial_id > after or t._trial_id in included]
            return api_pb2.GetTrialsReply(trials=[self._message(t) for t in wanted])

        def _message(self, trial: optuna.trial.FrozenTrial) -> Any:
            with self._messages_lock:
                kept = self._messages.get(trial._trial_id)
                if kept is not None and kept[0] is trial:
                    self._messages.move_to_end(trial._trial_id)
                    return kept[1]
            message = _to_proto_trial(trial)
            with self._messages_lock:
                self._messages[trial._trial_id] = (trial, message)
                self._messages.move_to_end(trial._trial_id)
                while len(self._messages) > MESSAGES_KEPT:
                    self._messages.popitem(last=False)
            return message

    return Service


@functools.cache
def _shared_reads() -> type:
    """Optuna's cache of a relational storage, whose reads of a study's trials are shared and unlocked.

    Each call that reads a study's trials waits for a read of the database
    that began after the call came, and every call that came before that read
    began takes its answer: a worker still reads all it wrote before its call,
    and under load the database is read once for many calls instead of once
    for each, one after another. The read runs outside the cache's lock, so
    that calls that only need the cache (a finished trial, a parameter's
    distribution) do not wait for the database. One read of a study runs at a
    time, and its trials are merged into the cache as Optuna merges them. A
    read that fails raises in the call that began it; the calls that waited
    for it begin another.
    """
    from optuna.storages._cached_storage import _CachedStorage, _StudyInfo

    class SharedReads(_CachedStorage):
        def __init__(self, backend: optuna.storages.RDBStorage) -> None:
            super().__init__(backend)
            self._reads = threading.Condition()
            self._began: dict[int, int] = {}
            self._answered: dict[int, int] = {}
            self._reading: set[int] = set()

        def _read_trials_from_remote_storage(self, study_id: int) -> None:
            with self._reads:
                needed = self._began.get(study_id, 0) + 1  # the first read that begins after this call came
                while self._answered.get(study_id, 0) < needed:
                    if study_id not in self._reading:
                        number = self._began[study_id] = self._began.get(study_id, 0) + 1
                        self._reading.add(study_id)
                        break
                    self._reads.wait()
                else:
                    return
            answered = False
            try:
                self._read(study_id)
                answered = True
            finally:
                with self._reads:
                    self._reading.discard(study_id)
                    if answered:
                        self._answered[study_id] = number
                    self._reads.notify_all()

        def _read(self, study_id: int) -> None:
            """Optuna's read of the study's new and unfinished trials, with the database read outside the lock."""
            with self._lock:
                study = self._studies.setdefault(study_id, _StudyInfo())
                unfinished = set(study.unfinished_trial_ids)
                after = study.last_finished_trial_id
            trials = self._backend._get_trials(
                study_id, states=None, included_trial_ids=unfinished, trial_id_greater_than=after
            )
            if not trials:
                return
            with self._lock:
                self._add_trials_to_cache(study_id, trials)
                for trial in trials:
                    if not trial.state.is_finished():
                        study.unfinished_trial_ids.add(trial._trial_id)
                        continue
                    study.last_finished_trial_id = max(study.last_finished_trial_id, trial._trial_id)
                    study.unfinished_trial_ids.discard(trial._trial_id)

    return SharedReads


def _outages(url: str) -> grpc.ServerInterceptor:
    """An interceptor that answers ``UNAVAILABLE`` where a call met an unreachable database."""
    import grpc

    from sweep.storage import scrub

    class Outages(grpc.ServerInterceptor):  # type: ignore[misc]
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = continuation(details)
            if handler is None or handler.unary_unary is None:  # every storage call is unary
                return handler
            inner = handler.unary_unary

            def call(request: Any, context: Any) -> Any:
                try:
                    return inner(request, context)
                except Exception as exc:
                    if not is_outage(exc):
                        raise
                    reason = scrub(one_line(exc.__cause__ or exc)[:200], url)
                    context.abort(grpc.StatusCode.UNAVAILABLE, f"the database behind the proxy is down: {reason}")

            return grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
            )

    return Outages()
