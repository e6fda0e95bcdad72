"""One GPU per worker: GPUs found without TensorFlow, one per worker slot, set before the worker imports it.

This machine may have no GPU: the end-to-end test puts a fake ``nvidia-smi`` that lists two
GPUs on the PATH, and checks what each worker process was given (its environment, read from
``/proc``) and what each trial recorded. Training itself runs on the CPU then, and says so.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import optuna
import pytest

from sweep.devices import ENV_DEVICE, assign, describe, discover, parse_gpus, worker_env
from sweep.errors import UserError
from tests.helpers import cheap_study, run_cli, wait_for, worker_pids


def _fake_smi(folder: Path, ids: list[str]) -> str:
    """A folder holding an ``nvidia-smi`` that lists ``ids``; returns a PATH that finds it first."""
    folder.mkdir(exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo {i}\n" for i in ids))
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


def test_gpus_are_found_from_cuda_visible_devices_first_then_nvidia_smi(tmp_path: Path) -> None:
    path = _fake_smi(tmp_path / "bin", ["0", "1", "2"])
    assert discover({"PATH": path}) == ["0", "1", "2"]
    assert discover({"PATH": path, "CUDA_VISIBLE_DEVICES": "2,0"}) == ["2", "0"]
    assert discover({"PATH": path, "CUDA_VISIBLE_DEVICES": ""}) == []
    assert discover({"PATH": path, "CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert discover({"PATH": str(tmp_path / "empty")}) == []  # no nvidia-smi: no GPU


def test_gpus_setting_is_resolved_against_what_was_found() -> None:
    assert parse_gpus("auto", ["0", "1"]) == ["0", "1"]
    assert parse_gpus("auto", []) is None
    assert parse_gpus("none", ["0", "1"]) is None
    assert parse_gpus("1", ["0", "1"]) == ["1"]
    assert parse_gpus("1,0,1", ["0", "1"]) == ["1", "0"]
    with pytest.raises(UserError) as info:
        parse_gpus("0,5", ["0", "1"])
    assert str(info.value) == (
        "--gpus: got '0,5'; GPU 5 does not exist (GPUs found: 0, 1); "
        "allowed: auto, none, or a comma-separated list of ids among 0, 1"
    )
    with pytest.raises(UserError, match=r"^worker\.gpus: got '0'; GPU 0 does not exist \(no GPU was found"):
        parse_gpus("0", [], field="worker.gpus")
    with pytest.raises(UserError, match=r"^--gpus: got '0,'; allowed"):
        parse_gpus("0,", ["0"])


def test_each_slot_gets_its_own_device_round_robin() -> None:
    assert [assign(s, ["3", "5"]) for s in range(5)] == ["gpu:3", "gpu:5", "gpu:3", "gpu:5", "gpu:3"]
    assert assign(2, None) == "cpu"
    assert worker_env("gpu:5", hide_gpus=False) == {ENV_DEVICE: "gpu:5", "CUDA_VISIBLE_DEVICES": "5"}
    assert worker_env("cpu", hide_gpus=True) == {ENV_DEVICE: "cpu", "CUDA_VISIBLE_DEVICES": ""}
    assert worker_env("cpu", hide_gpus=False) == {ENV_DEVICE: "cpu"}
    assert describe("gpu:1", usable=1) == "gpu:1"
    assert describe("gpu:1", usable=0) == "cpu (GPU 1 assigned, not visible to TensorFlow)"
    assert describe("cpu", usable=0) == "cpu"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.slow
def test_two_workers_each_see_only_their_own_gpu(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT

    path = _fake_smi(tmp_path / "bin", ["0", "1"])
    env = {**os.environ, "PATH": path, "COLUMNS": "200"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("SWEEP_STORAGE", None)
    url = f"sqlite:///{tmp_path / 'g.db'}"
    study = cheap_study(tmp_path, name="gpus", n_trials=4, epochs=30)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep", "run", str(study), "--storage", url, "--workers", "2", "--gpus", "0,1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: dict[int, dict[str, str]] = {}
    try:

        def both_running() -> bool:
            for pid in worker_pids("gpus"):
                if pid not in seen:
                    seen[pid] = _environ(pid)
            return len(seen) >= 2

        wait_for(both_running, timeout=120, what="two worker processes", every=0.2, ignore=(OSError,))
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    given = {(e.get("CUDA_VISIBLE_DEVICES"), e.get(ENV_DEVICE)) for e in seen.values()}
    assert given == {("0", "gpu:0"), ("1", "gpu:1")}, given  # recycled workers keep their slot's GPU
    assert "2 worker(s) on GPU 0, 1" in err
    assert "GPU 0 assigned, not visible to TensorFlow: TensorFlow sees no GPU; training on the CPU" in err
    trials = optuna.load_study(study_name="gpus", storage=url).get_trials()
    devices = {t.user_attrs.get("device") for t in trials}
    assert devices == {
        "cpu (GPU 0 assigned, not visible to TensorFlow)",
        "cpu (GPU 1 assigned, not visible to TensorFlow)",
    }, devices


def test_a_gpu_that_does_not_exist_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = _fake_smi(tmp_path / "bin", ["0", "1"])
    url = f"sqlite:///{tmp_path / 'n.db'}"
    study = cheap_study(tmp_path, name="nogpu", n_trials=1, epochs=1)
    result = run_cli("run", str(study), "--storage", url, "--gpus", "0,7", env={"PATH": path})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --gpus: got '0,7'; GPU 7 does not exist (GPUs found: 0, 1); "
        "allowed: auto, none, or a comma-separated list of ids among 0, 1"
    )
    assert not (tmp_path / "n.db").exists()  # nothing written


def test_gpus_in_a_study_file_are_checked(tmp_path: Path) -> None:
    study = cheap_study(tmp_path, name="bad", extra='\n[worker]\ngpus = true\n')
    result = run_cli("run", str(study), "--storage", f"sqlite:///{tmp_path / 'b.db'}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "worker.gpus" in result.stderr, result.stderr
