"""Shared fixtures: real storages (a SQLite file, the PostgreSQL and MariaDB servers), tiny study files."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import MYSQL_ENV, POSTGRES_ENV, write_study


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


SLOW_FILES_FIRST = (
    "test_outage.py",
    "test_distributed.py",
    "test_cli.py",
    "test_liveness.py",
    "test_builder.py",
    "test_soak.py",
    "test_worker.py",
    "test_dashboard.py",
    "test_best.py",
    "test_benchmarks.py",
)
"""The files that take longest (waiting on servers, subprocesses and grace periods), longest first.

The processes take whole files (``--dist loadfile``) in collection order; starting with the
longest leaves the short ones to fill the end, so no process is left alone with a long file.
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: a file keeps its own order
