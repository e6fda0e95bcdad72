"""A private PostgreSQL server: ``initdb`` into a temporary folder, trust authentication, a free port.

Stopping it touches nobody else, so tests and the soak (``benchmarks/soak.py``)
can take it away and bring it back at will. As root the server runs as the
``postgres`` user (it refuses to run as root), through ``runuser``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

FOLDER_PREFIX = "sweep-pg-"
_AS_POSTGRES = ["runuser", "-u", "postgres", "--"]


def pg_bin(name: str) -> str | None:
    """The path of a PostgreSQL server program (``initdb``, ``pg_ctl``), if installed."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def unavailable() -> str | None:
    """Why no private server can be started here, or None when one can."""
    if pg_bin("initdb") is None or pg_bin("pg_ctl") is None:
        return "the PostgreSQL server programs (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start a private PostgreSQL server"
    return None


@dataclass
class Server:
    data: Path
    port: int
    log: Path
    as_user: list[str]
    host: str = "127.0.0.1"
    options: str = ""
    """More ``postgres`` command-line options (``-c max_connections=200``)."""

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/postgres"

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        pg_ctl = pg_bin("pg_ctl")
        assert pg_ctl is not None
        return subprocess.run([*self.as_user, pg_ctl, "-D", str(self.data), *args], check=check, capture_output=True,
                              timeout=120)  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses={self.host} -k {self.data} {self.options}".rstrip()
        self._ctl("-o", options, "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE``: ``fast`` (clients disconnected, clean shutdown) or ``immediate`` (a crash)."""
        self._ctl("-m", mode, "-w", "stop")

    def kill(self) -> None:
        """Stop it as fast as possible, whatever its state; never raises for a server already down."""
        self._ctl("-m", "immediate", "stop", check=False)


@contextmanager
def private_server(*, host: str = "127.0.0.1", clients: str | None = None, options: str = "") -> Iterator[Server]:
    """A fresh server listening on ``host`` (and a unix socket in its data folder), removed afterwards.

    ``initdb -A trust`` lets in local connections only; ``clients`` (a network, ``10.213.7.0/24``)
    is let in too, without a password.

    Raises:
        RuntimeError: the server programs are missing (see :func:`unavailable`).
    """
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    initdb = pg_bin("initdb")
    assert initdb is not None
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))  # outside pytest's folders, which only root may enter
    try:
        (folder / "owner").write_text(str(os.getpid()))
        if os.geteuid() == 0:
            as_user = _AS_POSTGRES
            shutil.chown(folder, "postgres")
        data = folder / "data"
        subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                       capture_output=True, timeout=120)  # fmt: skip
        if clients is not None:
            with (data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {clients} trust\n")
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        server = Server(data=data, port=port, log=folder / "server.log", as_user=as_user, host=host, options=options)
        server.start()
        try:
            yield server
        finally:
            server.kill()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_leftovers() -> list[Path]:
    """Stop and remove the servers of processes that are gone (a run killed before it could); their folders.

    Only folders with an ``owner`` file (the pid that made them) whose process no longer exists are touched.
    """
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"):
        try:
            owner = int((folder / "owner").read_text())
        except (OSError, ValueError):
            continue
        if Path(f"/proc/{owner}").exists():
            continue
        pg_ctl = pg_bin("pg_ctl")
        if pg_ctl is not None and (folder / "data").is_dir():
            as_user = _AS_POSTGRES if os.geteuid() == 0 else []
            subprocess.run([*as_user, pg_ctl, "-D", str(folder / "data"), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
