"""The worker process on its own: held start-up, and what a refused study leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna

from tests.conftest import ROOT, run_cli, worker_pids, write_study


def _held_worker(url: str, study: str, stdin: str) -> subprocess.CompletedProcess[str]:
    """``python -m sweep.worker STUDY --await-go`` fed ``stdin``, as the supervisor starts it."""
    return subprocess.run(
        [sys.executable, "-m", "sweep.worker", study, "--await-go", "--target", "3"],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "SWEEP_WORKER_STORAGE": url},
        cwd=ROOT,
        timeout=120,
    )


def test_a_held_worker_leaves_on_end_of_input_without_touching_the_storage(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    proc = _held_worker(f"sqlite:///{db}", "held-study", "")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not db.exists()


def test_a_held_worker_told_go_opens_the_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(study_name="other", storage=url)
    proc = _held_worker(url, "no-such-study", "go\n")
    # It went on to look the study up, and says (in one line, with exit 2) that it is not there.
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no-such-study" in proc.stderr and "Traceback" not in proc.stderr


def test_a_refused_resume_leaves_no_worker_behind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'refused.db'}"
    study = write_study(tmp_path, name="refused-resume", n_trials=1, epochs=1)
    first = run_cli("run", str(study), "--storage", url, timeout=600)
    assert first.returncode == 0, first.stderr
    # The workers start (and import TensorFlow) while the supervisor checks the study; when it
    # refuses the changed spec, they are killed before they touch anything.
    second = run_cli("run", str(study), "--storage", url, "--set", "training.max_epochs=2", "--workers", "2")
    assert second.returncode == 2
    assert "training.max_epochs" in second.stderr and "Traceback" not in second.stderr
    assert worker_pids("refused-resume") == []
