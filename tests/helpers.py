"""Helpers shared by the tests: the real CLI in a fresh process, tiny study files, waits that fail."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

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
    text = TINY_STUDY.format(name=name, n_trials=n_trials, family=family, epochs=epochs) + extra
    if "[racing]" not in text and "[allocation]" not in text:
        # Tests of storage, workers and reports: every trial takes its repeats as under the racing that was
        # the default before [allocation] (the allocation has tests of its own, tests/test_allocation.py).
        text += '\n[allocation]\npolicy = "racing"\n'
    path.write_text(text)
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


def worker_pids(study: str) -> list[int]:
    """Pids of the live ``sweep.worker`` processes of ``study`` on this machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").split()  # a forked worker's title: one string
        except OSError:
            continue
        if b"sweep.worker" in cmd and study.encode() in cmd:
            pids.append(int(entry.name))
    return pids


def cheap_study(folder: Path, *, name: str = "cheap", n_trials: int = 4, epochs: int = 2, extra: str = "") -> Path:
    """A study whose trials take about a second: a dense model on the breast-cancer table, one repeat."""
    path = write_study(folder, name=name, n_trials=n_trials, family="dense", epochs=epochs, extra=extra)
    text = path.read_text().replace('source = "digits"', 'source = "breast_cancer"')
    text = text.replace("repeats = 2", "repeats = 1")
    path.write_text(text)
    return path


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    every: float = 0.5,
    ignore: tuple[type[BaseException], ...] = (),
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds.

    ``ignore`` names the errors that mean "not yet" (a study not created yet, a server
    still starting); any other error fails at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except ignore:
            pass
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def quiet_env() -> dict[str, str]:
    """This process's environment for a ``sweep`` child: wide lines, and no ``SWEEP_STORAGE`` of the caller's."""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("SWEEP_STORAGE", None)
    return env


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    import optuna

    return optuna.load_study(study_name=name, storage=url).get_trials()


def wait_for_training(url: str, name: str, timeout: float = 120) -> optuna.trial.FrozenTrial:
    """The first RUNNING trial of study ``name`` once it has reported an epoch (so a signal lands mid-trial)."""
    found: list[optuna.trial.FrozenTrial] = []

    def training() -> bool:
        found[:] = [t for t in trials_of(url, name) if t.state.name == "RUNNING" and t.intermediate_values]
        return bool(found)

    wait_for(training, timeout=timeout, what=f"a trial of {name!r} to train", ignore=(KeyError,))
    return found[0]
