"""``sweep proxy``: Optuna's gRPC storage proxy, with the database's outages said as outages.

Optuna's proxy answers a call that meets an unreachable database (a restart, a
failover) with gRPC ``UNKNOWN`` and the text of the exception, which a worker
cannot tell from a refused write, so the worker stopped. Here such a call is
answered ``UNAVAILABLE``, what a worker takes for an outage and waits out
(``worker.outage_timeout``), as it does when it talks to the database itself.
Every other answer is Optuna's own.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sweep.outage import is_outage, one_line

if TYPE_CHECKING:
    import grpc  # type: ignore[import-untyped]
    import optuna


def make_server(storage: optuna.storages.BaseStorage, *, url: str, host: str, port: int) -> grpc.Server:
    """A gRPC server (not started) for ``storage`` (opened from ``url``) on ``host:port``, as Optuna's,
    with the database's outages said as such."""
    import grpc
    import optuna
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    if isinstance(storage, optuna.storages.RDBStorage):
        # Optuna's servicer reads every trial of the study at each call; the cache keeps the
        # finished ones in memory (what optuna.storages.get_storage does), or the proxy slows
        # with the study's size until workers' beats arrive late and are judged stale.
        from optuna.storages._cached_storage import _CachedStorage

        storage = _CachedStorage(storage)
    server = grpc.server(ThreadPoolExecutor(max_workers=10), interceptors=[_outages(url)])
    api_pb2_grpc.add_StorageServiceServicer_to_server(  # type: ignore[no-untyped-call]
        OptunaStorageProxyService(storage), server
    )
    server.add_insecure_port(f"{host}:{port}")
    return server


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
