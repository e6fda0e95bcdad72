"""Workers forked from one process that has already imported TensorFlow.

A worker is replaced every few trials to bound its memory (:mod:`sweep.worker`), and a
fresh Python process pays for importing TensorFlow, Keras, Optuna and the rest again: about
4 s of CPU, taken from training on a small machine. Here one process (Python's
``forkserver``, with :mod:`sweep.preload` preloaded) imports them once; every worker,
the first ones and each replacement, is a ``fork()`` of it, a copy of an interpreter that
has imported everything and run nothing. It never trains, so TensorFlow has started no
thread pool and touched no device when it is copied; each worker sizes its own pools, as
before.

Linux, CPU workers only: a GPU worker must see only its own GPU from before TensorFlow
loads (``CUDA_VISIBLE_DEVICES``), so those are still started as fresh processes
(``worker.fork = false`` does that for every worker).

A forked worker behaves like one started with :class:`subprocess.Popen`: its own session,
its output through a pipe, its exit code (negative for a signal), and it ends when the
supervisor dies (the fork server, its parent, ends then, and the worker's parent-death
signal follows).
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any, Protocol

PRELOAD = "sweep.preload"


class WorkerProcess(Protocol):
    """What the supervisor uses of a worker process: :class:`subprocess.Popen` has it, so has :class:`Forked`."""

    pid: int
    stdin: IO[str] | None
    stdout: IO[str] | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


def available() -> bool:
    """Whether workers are forked here: Linux only (the parent-death signal that ends them with the supervisor
    is Linux's, and forking after importing TensorFlow is not safe on macOS)."""
    return sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods()


class Zygote:
    """Forks workers from a process that has imported what a worker needs.

    :meth:`start` launches that process and returns at once (it imports for a few
    seconds); :meth:`fork` waits for it the first time, then costs a ``fork()``.
    The process is this object's own (not multiprocessing's shared fork server), and
    a worker is sent only what it needs (its arguments, environment, working folder
    and ``sys.path``): the caller's ``__main__`` is not run again in it.
    """

    def __init__(self) -> None:
        from multiprocessing import forkserver

        self._server: Any = forkserver.ForkServer()
        self._server.set_forkserver_preload([PRELOAD])

    def start(self) -> None:
        """Start the importing process now, so that its import overlaps the caller's work."""
        self._server.ensure_running()

    def fork(self, argv: Sequence[str], env: Mapping[str, str]) -> Forked:
        """A new worker running ``python -m sweep.worker ARGV`` with environment ``env``.

        Raises OSError or EOFError when the importing process is gone (it is started
        again at the next call).
        """
        from multiprocessing import forkserver, reduction

        read, write = os.pipe()
        try:
            status, data = self._server.connect_to_new_process([write])  # the child gets a copy of ``write``
        finally:
            os.close(write)
        try:
            with open(data, "wb", closefd=True) as f:
                reduction.dump({"sys_path": list(sys.path), "dir": os.getcwd()}, f)
                reduction.dump(_Start(list(argv), dict(env)), f)
            pid = forkserver.read_signed(status)
        except BaseException:
            os.close(status)
            os.close(read)
            raise
        return Forked(pid, status, os.fdopen(read, "r", encoding="utf-8", errors="replace"))

    def stop(self) -> None:
        """End the importing process once the workers have ended (at once, even in the middle of its import).

        It would end by itself when this process exits; a supervisor called from a longer-lived
        process (a test, a notebook) should not leave it behind.
        """
        pid = getattr(self._server, "_forkserver_pid", None)
        if not isinstance(pid, int):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        stop = getattr(self._server, "_stop", None)  # closes its lifeline and reaps it
        if callable(stop):
            stop()


class Forked:
    """A forked worker, seen through the part of :class:`subprocess.Popen`'s interface the supervisor uses.

    Its exit status comes from the process that forked it (its parent). Should that process
    die first, the status is lost: the worker then counts as running until it has ended
    (seen through a pidfd), and its exit code is 255, as multiprocessing reports it.
    """

    stdin: IO[str] | None = None
    LOST = 255

    def __init__(self, pid: int, status: int, stdout: IO[str]) -> None:
        self.pid = pid
        self.stdout: IO[str] | None = stdout
        self.returncode: int | None = None
        self._status: int | None = status
        self._lock = threading.Lock()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # an old kernel, or it has ended already
            pass

    def poll(self) -> int | None:
        # A signal handler of the supervisor polls too: never read the status twice at once.
        if self.returncode is not None or not self._lock.acquire(blocking=False):
            return self.returncode
        try:
            if self._status is not None:
                if not select.select([self._status], [], [], 0)[0]:
                    return None
                try:
                    from multiprocessing import forkserver

                    self.returncode = forkserver.read_signed(self._status)  # negative for a signal, as Popen
                except (OSError, EOFError):  # its parent died: the status is lost
                    pass
                os.close(self._status)
                self._status = None
                if self.returncode is not None:
                    self._close_pidfd()
                    return self.returncode
            if self._running():
                return None
            self.returncode = self.LOST
            self._close_pidfd()
            return self.returncode
        finally:
            self._lock.release()

    def _running(self) -> bool:
        if self._pidfd is not None:
            return not select.select([self._pidfd], [], [], 0)[0]
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"sweep.worker (pid {self.pid})", timeout or 0.0)
            fds = [fd for fd in (self._status, self._pidfd) if fd is not None]
            left = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            if fds:
                select.select(fds, [], [], left)
            else:
                time.sleep(left)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:  # it ended meanwhile
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Start:
    """What the importing process is sent for each worker; it calls ``_bootstrap`` in the forked child."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env

    def _bootstrap(self, parent_sentinel: int) -> int:  # pragma: no cover (runs in the child)
        _run_worker(self.argv, self.env)
        return 0


def _run_worker(argv: list[str], env: dict[str, str]) -> None:  # pragma: no cover (a child)
    """In the forked child: become a worker process as ``Popen(start_new_session=True)`` would have made it."""
    from multiprocessing import forkserver

    parent = os.getppid()
    _die_with(parent)
    os.setsid()
    _title(" ".join([sys.executable, "-m", "sweep.worker", *argv]))  # what ps shows; before environ changes
    # Only the supervisor holds the importing process's lifeline: it ends, that process ends, this
    # worker gets its parent-death signal. A copy held here would keep that process alive.
    server: Any = forkserver._forkserver
    alive = getattr(server, "_forkserver_alive_fd", None)
    (out,) = getattr(server, "_inherited_fds", None) or (None,)
    if isinstance(alive, int):
        try:
            os.close(alive)
        except OSError:
            pass
    os.environ.clear()
    os.environ.update(env)
    if isinstance(out, int):
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115 (the process's own)
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    import numpy as np

    np.random.seed()  # Python's own random is reseeded at a fork; numpy's global state is not
    from sweep import worker

    worker.exit_now(worker.main(argv))


def _die_with(parent: int) -> None:
    """Get SIGTERM when ``parent`` (the importing process) dies; at once if it already has."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _title(title: str) -> None:
    """Show ``title`` as this process's command line in ``ps`` (forked processes share their server's)."""
    try:
        import setproctitle
    except ImportError:  # pragma: no cover (a dependency)
        return
    setproctitle.setproctitle(title)
