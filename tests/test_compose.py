"""docker-compose.yml and the Dockerfile: their structure, and each service's command run here.

No container is built or started. The compose variables are filled in for a fresh database
on the PostgreSQL server named by ``SWEEP_TEST_POSTGRES_URL``, the host ``postgres`` becomes
that server's address, and each service's command runs as its container would run it:
the healthcheck, a worker started before the study exists, the one-shot create (with tiny
budgets appended) that it waits for, and the dashboard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
CREDENTIALS = ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
DUMMY_PASSWORD = "pw-not-printed-123"
TINY_BUDGET = ["--set", "training.max_epochs=1", "--set", "training.repeats=1", "--n-trials", "1"]
WAIT_S = 60.0

# Compose interpolation: $$ (a literal $), ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _interpolate(value: Any, variables: dict[str, str]) -> Any:
    """Fill in compose variables as ``docker compose`` does; an unset plain ``${VAR}`` fails the test."""
    if isinstance(value, dict):
        return {k: _interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["named"]
        found = variables.get(name)
        op = m["op"]
        missing = found is None or (op is not None and op.startswith(":") and found == "")
        if op is not None and op.endswith("-"):
            return m["arg"] if missing else str(found)
        if missing:
            pytest.fail(f"compose variable {name} is not set ({m['arg'] or 'no default'})")
        return str(found)

    return _VARIABLE.sub(substitute, value)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return value.split() if isinstance(value, str) else [str(v) for v in value]


def _dockerfile_instruction(name: str) -> list[str]:
    """The last ``name`` instruction of the Dockerfile, in exec (JSON) form."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.split(maxsplit=1)[:1] == [name]]
    assert lines, f"the Dockerfile has no {name}"
    value = lines[-1].split(maxsplit=1)[1]
    assert value.startswith("["), f"{name} must be in exec form (a JSON list) so that signals reach the process"
    return json.loads(value)


def _depends_on_healthy_postgres(service: dict[str, Any]) -> bool:
    depends = service.get("depends_on") or {}
    return isinstance(depends, dict) and (depends.get("postgres") or {}).get("condition") == "service_healthy"


# --------------------------------------------------------------------------- structure


def test_services_volume_and_healthcheck() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "dashboard", "create", "worker"} <= set(services)

    pg = services["postgres"]
    assert pg["image"].startswith("postgres:")
    volumes = compose.get("volumes") or {}
    named = [v.split(":", 1) for v in pg["volumes"]]
    assert any(source in volumes and target == "/var/lib/postgresql/data" for source, target in named), pg["volumes"]
    test = pg["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and "pg_isready" in " ".join(test)
    assert "${POSTGRES_USER}" in " ".join(test) and "${POSTGRES_DB}" in " ".join(test)
    assert set(CREDENTIALS) <= set(_environment(pg)) or pg.get("env_file")


def test_ports_are_local_only_and_workers_scale() -> None:
    services = _services()
    for name, service in services.items():
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    assert services["dashboard"]["ports"] == ["127.0.0.1:8080:8080"]
    worker = services["worker"]
    assert "container_name" not in worker and not worker.get("ports"), "the worker must scale with --scale worker=N"
    for name in ("dashboard", "create", "worker"):
        assert _depends_on_healthy_postgres(services[name]), f"{name} must wait for a healthy postgres"
        assert services[name].get("init") is True, f"{name} needs an init to pass on SIGTERM and reap children"
    assert worker.get("build"), "the worker is built from the Dockerfile"
    assert any(v.endswith(":/app/studies:ro") for v in services["create"].get("volumes") or [])
    grace = str(worker["stop_grace_period"])
    assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) >= 30, grace


def test_the_workers_wait_for_the_study_that_create_makes() -> None:
    """No start order between them: the workers wait for the study; create trains nothing and exits."""
    services = _services()
    create, worker = services["create"], services["worker"]
    study_file = _as_list(create["command"])[1]
    study_name = tomllib.loads((ROOT / study_file).read_text())["study"]["name"]
    assert _as_list(create["command"]) == ["create", study_file]
    assert _as_list(worker["command"]) == ["worker", study_name, "--workers", "1", "--wait", "10m"]
    for name in ("create", "worker"):
        assert set(services[name].get("depends_on") or {}) == {"postgres"}, f"{name} waits for nothing but postgres"
    assert create.get("restart") != "always" and not create.get("ports"), "create is one-shot"


def test_storage_comes_from_the_environment_and_no_password_is_written() -> None:
    services = _services()
    for name in ("dashboard", "create", "worker"):
        url = _environment(services[name])["SWEEP_STORAGE"]
        assert url == "postgresql+psycopg://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres:5432/${POSTGRES_DB}"
        argv = _as_list(services[name].get("entrypoint")) + _as_list(services[name].get("command"))
        assert not any("://" in a or a == "--storage" for a in argv), f"{name}'s command line holds a storage URL"

    text = COMPOSE_FILE.read_text()
    for password in re.findall(r"://[^/@\s\"']+?:([^@\s\"']+)@", text):
        assert _REFERENCE.fullmatch(password), f"a URL in docker-compose.yml holds a literal password: {password!r}"
    for service in services.values():
        for key, value in _environment(service).items():
            if "PASSWORD" in key:
                assert _REFERENCE.fullmatch(value), f"{key} must be a ${{VARIABLE}}, not a literal"
    example = dict(
        ln.split("=", 1) for ln in ENV_EXAMPLE.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    )
    assert set(example) == set(CREDENTIALS)
    assert "copy to .env" in ENV_EXAMPLE.read_text()
    assert example["POSTGRES_PASSWORD"] not in text
    used = {m["braced"] or m["named"] for m in _VARIABLE.finditer(text) if not m["escaped"]}
    assert used == set(CREDENTIALS), f"docker-compose.yml uses variables that .env.example does not set: {used}"


def test_env_file_is_ignored_by_git_and_docker() -> None:
    if shutil.which("git") and (ROOT / ".git").exists():
        done = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
        assert done.returncode == 0, ".env is not git-ignored"
    else:
        assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in DOCKERIGNORE.read_text().splitlines()


def test_dockerfile_runs_sweep_as_a_user_and_stops_on_sigterm() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install --no-cache-dir ." in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    assert _dockerfile_instruction("ENTRYPOINT") == ["sweep"]


# --------------------------------------------------------------------------- the commands, run here


def _variables(postgres_url: str) -> dict[str, str]:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    assert url.username and url.database
    return {"POSTGRES_USER": url.username, "POSTGRES_PASSWORD": DUMMY_PASSWORD, "POSTGRES_DB": url.database}


def _localize(storage: str, postgres_url: str) -> str:
    """The compose URL with the host ``postgres`` replaced by the test server's address."""
    from sqlalchemy.engine import make_url

    server = make_url(postgres_url)
    url = make_url(storage)
    assert url.host == "postgres" and url.password == DUMMY_PASSWORD
    return url.set(host=server.host or "127.0.0.1", port=server.port or 5432).render_as_string(hide_password=False)


def _service_env(service: dict[str, Any], postgres_url: str) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("SWEEP_STORAGE", None)
    for key, value in _environment(service).items():
        env[key] = _localize(value, postgres_url) if "://" in value else value
    return env


def _argv(service: dict[str, Any]) -> list[str]:
    """The container's command line: the service's entrypoint (else the Dockerfile's) and its command."""
    entrypoint = _as_list(service.get("entrypoint")) or _dockerfile_instruction("ENTRYPOINT")
    argv = entrypoint + _as_list(service.get("command"))
    if argv[0] == "sweep":
        argv = [sys.executable, "-m", "sweep", *argv[1:]]
    return argv


def _assert_no_password(*outputs: str) -> None:
    for output in outputs:
        assert DUMMY_PASSWORD not in output, "the database password was printed"


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it, from ``/proc``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _command_lines(pid: int) -> list[str]:
    """The command line of ``pid`` and of every process below it, as ``ps`` would show them."""
    lines = []
    for p in _tree(pid):
        try:
            lines.append(Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_postgres_healthcheck_passes(postgres_url: str) -> None:
    if shutil.which("pg_isready") is None:
        pytest.skip("pg_isready is not installed")
    from sqlalchemy.engine import make_url

    server = make_url(postgres_url)
    test = _interpolate(_services()["postgres"]["healthcheck"]["test"], _variables(postgres_url))
    where = ["-h", server.host or "127.0.0.1", "-p", str(server.port or 5432)]
    if test[0] == "CMD-SHELL":
        argv = ["sh", "-c", " ".join([test[1], *where])]
    else:
        argv = [*test[1:], *where]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    _assert_no_password(done.stdout, done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr


def _watch(proc: subprocess.Popen[bytes], *, timeout: float, lines: list[str]) -> int:
    """Wait for ``proc``, collecting the command line of every process it starts (as `ps` reads them)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        lines += _command_lines(proc.pid)
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    return proc.wait(timeout=30)


@pytest.mark.slow
def test_worker_create_then_dashboard_on_a_fresh_database(postgres_url: str, tmp_path: Path) -> None:
    import optuna

    services = _interpolate(_services(), _variables(postgres_url))
    create, worker, dashboard = services["create"], services["worker"], services["dashboard"]
    worker_env = _service_env(worker, postgres_url)
    storage = worker_env["SWEEP_STORAGE"]

    # The worker first, as its container runs it (cwd: the repository, which the image copies to
    # /app), on a database without a study yet (without Optuna's tables, even): it waits.
    argv = _argv(worker)
    assert "://" not in " ".join(argv)
    worker_log = tmp_path / "worker.log"
    with worker_log.open("w") as sink:
        proc = subprocess.Popen([*argv, "-q"], cwd=ROOT, env=worker_env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT_S
        while "waiting up to" not in worker_log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "waiting up to 10m for study" in worker_log.read_text(), worker_log.read_text()

        # Then the one-shot create, with tiny budgets: it makes the study and exits without training.
        create_argv = _argv(create)
        assert "://" not in " ".join(create_argv)
        create_log = tmp_path / "create.log"
        create_lines: list[str] = []
        with create_log.open("w") as sink:
            made = subprocess.Popen(create_argv + TINY_BUDGET, cwd=ROOT, env=_service_env(create, postgres_url),
                                    stdout=sink, stderr=subprocess.STDOUT)
            assert _watch(made, timeout=120, lines=create_lines) == 0, create_log.read_text()
        study_file = next(a for a in create_argv if a.endswith(".toml"))
        study_name = tomllib.loads((ROOT / study_file).read_text())["study"]["name"]
        assert create_log.read_text().startswith(f"study {study_name} created on "), create_log.read_text()
        _assert_no_password(*create_lines, create_log.read_text())

        # The worker joins it and runs it to its target.
        lines: list[str] = []
        code = _watch(proc, timeout=400, lines=lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert any("sweep.worker" in line for line in lines), lines  # the workers were seen
    _assert_no_password(*lines, worker_log.read_text())
    assert code == 0, worker_log.read_text()
    assert f"study {study_name!r} found after" in worker_log.read_text()
    study = optuna.load_study(study_name=study_name, storage=storage)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]

    # The dashboard, on this machine only and on a free port.
    port = _free_port()
    argv = _argv(dashboard)
    argv = [{"0.0.0.0": "127.0.0.1", "8080": str(port)}.get(a, a) for a in argv]
    assert argv[-4:] == ["--host", "127.0.0.1", "--port", str(port)], argv
    env = _service_env(dashboard, postgres_url)
    log = tmp_path / "dashboard.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        body = None
        deadline = time.monotonic() + WAIT_S
        while body is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    if response.status == 200:
                        body = response.read().decode()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert body is not None, f"the dashboard did not answer within {WAIT_S:.0f} s: {log.read_text()[-2000:]}"
        listing = json.loads(body)
        # optuna-dashboard names the list "study_summaries" and plans to rename it "studies".
        names = [s["study_name"] for s in listing.get("study_summaries", listing.get("studies", []))]
        assert study_name in names, body[:2000]
        lines = _command_lines(proc.pid)
        assert lines and all("dashboard" in line for line in lines[:1]), lines
        _assert_no_password(*lines)
        assert not any("://" in line for line in lines), lines  # no storage URL at all
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
    _assert_no_password(log.read_text())
