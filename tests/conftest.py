"""Shared fixtures: real storages, the real CLI, tiny study files."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ENV = "SWEEP_TEST_POSTGRES_URL"
MYSQL_ENV = "SWEEP_TEST_MYSQL_URL"

TINY_STUDY = """
[study]
name = "{name}"
seed = 7
n_trials = {n_trials}

[data]
source = "digits"

[model]
family = "{family}"

[search]
n_layers = {{ low = 1, high = 2 }}
units = {{ low = 4, high = 12 }}
activation = ["tanh", "relu"]
learning_rate = {{ low = 1e-3, high = 3e-2, log = true }}
optimizer = ["adam", "rmsprop", "nadam", "sgd"]
batch_size = [64, 128]
dropout = {{ low = 0.0, high = 0.3 }}
l2 = {{ low = 1e-6, high = 1e-3, log = true }}

[training]
max_epochs = {epochs}
patience = 3
repeats = 2

[sampler]
n_startup_trials = 2

[pruner]
name = "none"
"""


def write_study(folder: Path, *, name: str = "tiny", n_trials: int = 3, family: str = "lstm", epochs: int = 3,
                extra: str = "") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(TINY_STUDY.format(name=name, n_trials=n_trials, family=family, epochs=epochs) + extra)
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real ``sweep`` entry point in a fresh process."""
    full_env = {**os.environ, "COLUMNS": "200"}
    full_env.pop("SWEEP_STORAGE", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sweep", *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def tiny_study(tmp_path: Path) -> Path:
    return write_study(tmp_path)


def _server_database(env_var: str, dialect: str) -> Iterator[str]:
    """Create a fresh database on the server named by ``env_var``; drop it afterwards."""
    base = os.environ.get(env_var)
    if not base:
        pytest.skip(f"{env_var} is not set: no {dialect} server to test against")
    import sqlalchemy as sa

    name = f"sweep_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            if dialect == "postgresql":
                conn.execute(sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ), {"n": name})
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _server_database(POSTGRES_ENV, "postgresql")


@pytest.fixture
def mysql_url() -> Iterator[str]:
    yield from _server_database(MYSQL_ENV, "mysql")


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One real storage per parameter: a SQLite file, and the PostgreSQL/MariaDB servers when configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sweep.db'}"
    elif request.param == "postgresql":
        yield from _server_database(POSTGRES_ENV, "postgresql")
    else:
        yield from _server_database(MYSQL_ENV, "mysql")


def worker_pids(study: str) -> list[int]:
    """Pids of the live ``sweep.worker`` processes of ``study`` on this machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"sweep.worker" in cmd and study.encode() in cmd:
            pids.append(int(entry.name))
    return pids
