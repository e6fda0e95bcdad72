"""What the workers write for optuna-dashboard, and the dashboard itself in a real browser.

The unit tests build trial outcomes by hand (no training). The end-to-end test runs a real
three-trial sweep with the real CLI, starts ``sweep dashboard`` on it, and reads the notes,
the stability figure and the learning-curve artifacts in headless Chromium. Its screenshots go
to ``test-output/dashboard/``; with ``SWEEP_UPDATE_SCREENSHOTS=1`` they also replace the
images of the docs in ``docs/images/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest

from sweep import records
from sweep.dashboard import (
    CURVES_FIGSIZE,
    NO_STORE,
    NOT_SAVED,
    STABILITY_TITLE,
    STUDY_FIGURE_ID,
    TOP_IN_NOTE,
    artifact_store,
    guarded,
    plot_curves,
    refresh_study,
    stability_figure,
    study_note,
    trial_note,
    write_failure_note,
    write_trial,
)
from sweep.objective import curves_attr
from sweep.report import RankedTrial, rank
from sweep.spec import StudySpec, load_spec
from sweep.stability import Diagnosis, summarize
from sweep.storage import default_artifacts
from sweep.train import Curves, Stop, TrialOutcome
from tests.helpers import ROOT, run_cli, wait_for, write_study

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCREENSHOTS = ROOT / "test-output" / "dashboard"
DOCS = ROOT / "docs" / "images"
UPDATE_SCREENSHOTS = "SWEEP_UPDATE_SCREENSHOTS"
WAIT_MS = 30_000
SERVER_WAIT_S = 60.0
DIAGNOSES = tuple(d.value for d in Diagnosis)
OVERLAPPING_LABELS = """figure => {
    const boxes = [...figure.querySelectorAll('svg text')]
        .filter(t => t.textContent.trim() && t.getBBox().width > 0)
        .map(t => [t.textContent.trim(), t.getBoundingClientRect()]);
    const out = [];
    for (let i = 0; i < boxes.length; i++)
        for (let j = i + 1; j < boxes.length; j++) {
            const [a, p] = boxes[i], [b, q] = boxes[j];
            if (p.left < q.right - 1 && q.left < p.right - 1 && p.top < q.bottom - 1 && q.top < p.bottom - 1)
                out.push(`${a} / ${b}`);
        }
    return out;
}"""
"""The pairs of text labels in a Plotly figure whose boxes overlap (more than a pixel)."""

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def spec(tmp_path: Path) -> StudySpec:
    """The tiny study with a risk of 2, a tail of 3 and a median pruner, so each shows in the notes."""
    return load_spec(
        write_study(tmp_path),
        overrides=["stability.risk=2", "stability.tail=3", "pruner.name=median"],
    )


def _outcome(curves: list[Curves], spec: StudySpec, *, stopped: str = "", raced_out: bool = False) -> TrialOutcome:
    summary = summarize(
        [c.val_loss for c in curves],
        [c.loss for c in curves],
        tail=spec.stability.tail,
        risk=spec.stability.risk,
    )
    return TrialOutcome(curves=tuple(curves), summary=summary, stopped=stopped, raced_out=raced_out)


def _overfitting(spec: StudySpec) -> TrialOutcome:
    return _outcome(
        [
            Curves(loss=(1.0, 0.7, 0.5, 0.35, 0.25, 0.18), val_loss=(1.0, 0.7, 0.6, 0.7, 0.8, 0.9),
                   stop=Stop.EARLY_STOPPED, seconds=1.5),
            Curves(loss=(1.0, 0.72, 0.52, 0.36, 0.26, 0.19), val_loss=(1.0, 0.71, 0.61, 0.71, 0.8, 0.92),
                   stop=Stop.EARLY_STOPPED, seconds=1.25),
        ],
        spec,
    )


def _pruned(spec: StudySpec) -> TrialOutcome:
    return _outcome(
        [Curves(loss=(2.3, 2.2), val_loss=(2.31, 2.25), stop=Stop.PRUNED, seconds=0.5)],
        spec,
        stopped="pruned at epoch 2 of repeat 0 by the median pruner",
    )


def _raced_out(spec: StudySpec) -> TrialOutcome:
    return _outcome(
        [Curves(loss=(2.3, 2.2, 2.1), val_loss=(2.31, 2.25, 2.2), stop=Stop.COMPLETED, seconds=0.5)],
        spec,
        stopped="raced out after repeat 0 of 2: its repeat-0 score 2.3 is not among the best 25% of 8 "
        "repeat-0 scores (cut 1.1)",
        raced_out=True,
    )


def _diverged(spec: StudySpec) -> TrialOutcome:
    nan = math.nan
    return _outcome([Curves(loss=(1.0, 5.0, nan), val_loss=(1.0, 8.0, nan), stop=Stop.DIVERGED, seconds=0.7)], spec)


def _f(value: float) -> str:
    return f"{value:.4g}"


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG: {head[:8]!r}"
    assert head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _ranked(n: int) -> list[RankedTrial]:
    """``n`` complete trials in rank order, numbered out of order so rank and number differ."""
    rows = []
    for i in range(n):
        tail_mean, tail_std = 0.5 + 0.1 * i, 0.01 * (n - i)
        rows.append(
            RankedTrial(
                rank=i + 1,
                number=(7 * i + 3) % n,
                state="COMPLETE",
                score=tail_mean + tail_std,
                tail_mean=tail_mean,
                tail_std=tail_std,
                best=tail_mean - 0.05,
                degradation=0.05,
                oscillation=0.01,
                gap=0.02,
                repeat_spread=0.01,
                diagnosis="stable",
                hint="nothing to change",
                n_repeats=3,
                params={"n_layers": 1, "units": 8 + i, "learning_rate": 0.001, "optimizer": "adam",
                        "batch_size": 64, "dropout": 0.1, "l2": 1e-5},
            )
        )
    return rows


def _note_rows(note: str) -> list[list[str]]:
    """The data rows of the note's markdown table."""
    lines = [line for line in note.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


# --------------------------------------------------------------------------- trial notes


def test_trial_note_of_a_complete_trial_gives_diagnosis_hint_and_score_with_its_components(spec: StudySpec) -> None:
    outcome = _overfitting(spec)
    s = outcome.summary
    assert s.diagnosis is Diagnosis.OVERFITTING
    assert s.score == pytest.approx(s.tail_mean + spec.stability.risk * s.tail_std)

    note = trial_note(4, outcome, spec)

    assert note.startswith("### Trial 4: overfitting\n\n" + s.hint + "\n")
    assert (
        f"**Score {_f(s.score)}** = tail_mean {_f(s.tail_mean)} + 2 × tail_std {_f(s.tail_std)} "
        "(last 3 epochs of each repeat)"
    ) in note
    for name in ("best", "degradation", "oscillation", "gap"):
        assert f"| {name} | {_f(getattr(s, name))} |" in note, name
    assert "| repeat_spread | - |" in note  # not judged without the study's per-split reference
    assert "Repeats: 6 epochs (early_stopped), 6 epochs (early_stopped); 2.8 s of training." in note
    assert note.endswith(f"\n\n{NO_STORE}\n")  # no artifact store: the note says so instead of an image

    shown = trial_note(4, outcome, spec, image="/artifacts/1/5/abc-123")

    assert shown.endswith("\n\n![learning curves of trial 4](/artifacts/1/5/abc-123)\n")
    assert NO_STORE not in shown


def test_the_note_of_a_fix_links_the_trial_it_fixes_and_compares_the_scores(spec: StudySpec, tmp_path: Path) -> None:
    from sweep.dashboard import fixed_trial

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'fix.db'}", study_name="fixes")
    original = study.ask()
    original.set_user_attr("diagnosis", "overfitting")
    original.set_user_attr("score", 9.5)
    study.tell(original, 9.5)
    study.enqueue_trial(dict(original.params), user_attrs={records.FIXES: 0, records.REMEDY: "dropout 0.1 -> 0.2"})
    fix = study.ask()
    assert fixed_trial(original) is None
    fixed = fixed_trial(fix)
    assert fixed is not None and (fixed.number, fixed.diagnosis, fixed.score) == (0, "overfitting", 9.5)

    outcome = _overfitting(spec)
    note = trial_note(1, outcome, spec, fixes=fixed)

    link = f"[trial 0](/dashboard/studies/{study._study_id}/trials?numbers=0)"
    delta = _f(9.5 - outcome.summary.score)
    assert note.startswith(
        f"**Fix of {link}** (overfitting): dropout 0.1 -> 0.2. Score {_f(outcome.summary.score)} against 9.5: "
        f"better by {delta}.\n\n### Trial 1: overfitting\n"
    )


def test_trial_note_of_a_pruned_trial_says_where_and_why(spec: StudySpec) -> None:
    note = trial_note(5, _pruned(spec), spec)

    assert note.startswith("### Trial 5: pruned after 1 of 2 repeat(s)\n")
    assert (
        "The median pruner stopped it at epoch 2 of repeat 0: its running score was worse than the other "
        "trials' at that epoch."
    ) in note
    assert "pruned trials are never ranked above complete ones, and get no training advice." in note
    assert "Repeats: 2 epochs (pruned); 0.5 s of training." in note


def test_trial_note_of_a_raced_out_trial_says_why(spec: StudySpec) -> None:
    note = trial_note(7, _raced_out(spec), spec)

    assert note.startswith("### Trial 7: pruned after 1 of 2 repeat(s)\n")
    assert "Racing stopped it after repeat 0: raced out after repeat 0 of 2: its repeat-0 score 2.3" in note
    assert "Its value is its repeat-0 score" in note


def test_trial_note_of_a_diverged_trial_gives_the_hint_and_an_infinite_score(spec: StudySpec) -> None:
    outcome = _diverged(spec)
    assert outcome.summary.diagnosis is Diagnosis.DIVERGED

    note = trial_note(6, outcome, spec)

    assert note.startswith("### Trial 6: diverged\n\n" + outcome.summary.hint + "\n")
    assert "lower the learning rate" in note
    assert "**Score inf** = tail_mean inf + 2 × tail_std inf" in note
    assert "| best | 1 |" in note
    assert "Repeats: 3 epochs (diverged); 0.7 s of training." in note
    assert "| nan |" not in note


def test_trial_note_names_the_tail_window_actually_used(tmp_path: Path) -> None:
    spec = load_spec(write_study(tmp_path, epochs=3))
    assert spec.stability.tail == 5
    curves = [
        Curves(loss=(2.0, 1.5, 1.2), val_loss=(1.9, 1.4, 1.3)),
        Curves(loss=(2.1, 1.6, 1.3), val_loss=(2.0, 1.5, 1.35)),
    ]

    note = trial_note(0, _outcome(curves, spec), spec)

    assert "last 5 epochs" not in note
    assert "(last 3 epochs of each repeat)" in note


# --------------------------------------------------------------------------- study note and figure


def test_study_note_lists_the_top_ten_in_rank_order() -> None:
    ranked = _ranked(12)

    note = study_note("demo", ranked)

    assert note.startswith("### Stability ranking of demo (top 10 of 12 complete)\n")
    assert "score = tail_mean + risk × tail_std" in note
    rows = _note_rows(note)
    assert len(rows) == TOP_IN_NOTE
    assert [int(r[0]) for r in rows] == list(range(1, 11))
    assert [int(r[1]) for r in rows] == [r.number for r in ranked[:10]]
    first = ranked[0]
    assert rows[0][2:7] == ["3", _f(first.score), _f(first.tail_mean), _f(first.tail_std), "stable"]
    assert rows[0][7:] == ["1", "8", "0.001", "adam", "64", "0.1", "1e-05"]


def test_study_note_says_what_to_change_in_each_unstable_trial_of_the_top_ten() -> None:
    ranked = _ranked(12)
    changed = {1: ("overfitting", "add dropout or L2"), 4: ("oscillation", "lower the learning rate"),
               11: ("underfitting", "train for more epochs")}  # fmt: skip
    for i, (diagnosis, hint) in changed.items():
        ranked[i] = dataclasses.replace(ranked[i], diagnosis=diagnosis, hint=hint)

    note = study_note("demo", ranked)

    section = note.split("#### What to change (2 of the top 10 not stable)\n\n", 1)[1]
    assert section.splitlines() == [
        f"- **Trial {ranked[1].number}** (rank 2, overfitting): add dropout or L2",
        f"- **Trial {ranked[4].number}** (rank 5, oscillation): lower the learning rate",
    ]  # rank 12 is not in the note's table, so not in its advice
    assert "What to change" not in study_note("demo", _ranked(12))


def test_study_note_without_complete_trials_says_so() -> None:
    note = study_note("demo", [])

    assert note.startswith("### Stability ranking of demo\n\nNo complete trial yet (")


def test_stability_figure_marks_the_best_and_the_top_ten_and_greys_the_rest() -> None:
    ranked = _ranked(12)

    fig = stability_figure(ranked)

    best_name = f"rank 1: trial {ranked[0].number}"
    assert [t.name for t in fig.data] == ["other complete trials", "ranks 2–10", best_name]
    rest, runners_up, best = fig.data
    assert (list(best.x), list(best.y)) == ([ranked[0].tail_mean], [ranked[0].tail_std])
    assert list(runners_up.x) == [r.tail_mean for r in ranked[1:10]]
    assert list(runners_up.y) == [r.tail_std for r in ranked[1:10]]
    assert list(rest.x) == [r.tail_mean for r in ranked[10:]]
    assert f"trial {ranked[0].number} (rank 1)" in best.hovertext[0]
    assert f"trial {ranked[1].number} (rank 2)" in runners_up.hovertext[0]
    assert all(t.mode == "markers" and t.text is None for t in fig.data)  # no labels on points to overlap
    assert fig.layout.title.text == STABILITY_TITLE
    assert fig.layout.xaxis.title.text == "tail_mean (lower is better)"
    assert fig.layout.yaxis.title.text == "tail_std (lower is better)"


def test_stability_figure_of_few_trials_has_no_grey_trace() -> None:
    ranked = _ranked(3)
    fig = stability_figure(ranked)

    assert [t.name for t in fig.data] == ["ranks 2–3", f"rank 1: trial {ranked[0].number}"]
    assert [t.name for t in stability_figure(ranked[:1]).data] == [f"rank 1: trial {ranked[0].number}"]


def test_refresh_study_writes_the_ranking_note_and_the_figure(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    study = optuna.create_study(study_name="refresh", storage=url)
    dist = {"units": optuna.distributions.IntDistribution(1, 64)}
    for i, level in enumerate([0.9, 0.3, 0.6]):
        curves = [Curves(loss=(1.0, level, level), val_loss=(1.0, level, level + 0.01))]
        s = summarize([c.val_loss for c in curves], [c.loss for c in curves], tail=2)
        study.add_trial(optuna.trial.create_trial(
            params={"units": 8 + i}, distributions=dist, value=s.score,
            user_attrs=records.split_attrs({records.CURVES: curves_attr(curves), **records.summary_attrs(s)})[0],
            system_attrs=records.split_attrs({records.CURVES: curves_attr(curves), **records.summary_attrs(s)})[1],
        ))

    refresh_study(study, url=url)

    from optuna_dashboard import get_note
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    note = get_note(study)
    assert note.startswith("### Stability ranking of refresh (top 3 of 3 complete)")
    assert [int(r[1]) for r in _note_rows(note)] == [1, 2, 0]
    figures = get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))
    assert set(figures) == {STUDY_FIGURE_ID}
    figure = json.loads(figures[STUDY_FIGURE_ID])
    assert [t["name"] for t in figure["data"]] == ["ranks 2–3", "rank 1: trial 1"]
    assert figure["data"][0]["x"] == [r.tail_mean for r in rank("refresh", url=url)[1:]]


# --------------------------------------------------------------------------- learning curves


@pytest.mark.parametrize("make", [_overfitting, _pruned, _diverged], ids=["overfitting", "pruned", "diverged"])
def test_plot_curves_writes_a_png(spec: StudySpec, tmp_path: Path, make: Any) -> None:
    path = tmp_path / "curves.png"

    plot_curves(make(spec), spec, str(path), title="trial 3")

    assert _png_size(path) == (CURVES_FIGSIZE[0] * 100, CURVES_FIGSIZE[1] * 100) == (960, 480)
    assert path.stat().st_size > 5_000


# --------------------------------------------------------------------------- guarded writes


def test_guarded_logs_an_exception_and_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sweep.dashboard")

    with guarded("the note of trial 9"):
        raise RuntimeError("store offline")

    message = "dashboard: could not write the note of trial 9: RuntimeError: store offline"
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("sweep.dashboard", logging.WARNING, message)
    ]


def test_guarded_says_a_many_line_error_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """A gRPC error from the proxy prints five lines; its details are what the line needs."""
    import grpc

    from sweep.outage import is_outage
    from tests.helpers import free_port

    caplog.set_level(logging.WARNING, logger="sweep.dashboard")
    channel = grpc.insecure_channel(f"127.0.0.1:{free_port()}")  # nothing listens there
    call = channel.unary_unary("/x/y", request_serializer=bytes, response_deserializer=bytes)
    with guarded("the study's ranking"):
        try:
            call(b"", timeout=5)
        except grpc.RpcError as exc:
            assert is_outage(exc) and len(str(exc).splitlines()) > 1
            raise
    (record,) = caplog.records
    assert record.getMessage().startswith("dashboard: could not write the study's ranking: _InactiveRpcError: ")
    assert "\n" not in record.getMessage()


def test_guarded_lets_an_interrupt_through() -> None:
    with pytest.raises(KeyboardInterrupt), guarded("anything"):
        raise KeyboardInterrupt


class _BrokenStore:
    """An artifact store whose every write fails, like a full disk or an unreachable bucket."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, artifact_id: str, content_body: Any) -> None:
        self.writes += 1
        raise OSError(28, "No space left on device")

    def open_reader(self, artifact_id: str) -> Any:
        raise FileNotFoundError(artifact_id)

    def remove(self, artifact_id: str) -> None:
        raise FileNotFoundError(artifact_id)


def test_a_failed_artifact_write_does_not_fail_the_trial(spec: StudySpec, caplog: pytest.LogCaptureFixture) -> None:
    from optuna_dashboard import get_note

    caplog.set_level(logging.WARNING, logger="sweep.dashboard")
    study = optuna.create_study()
    trial = study.ask()
    store = _BrokenStore()

    seconds = write_trial(trial, _overfitting(spec), spec, store)

    assert seconds >= 0
    assert store.writes == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"dashboard: could not write the learning curves of trial {trial.number}: OSError: "
        "[Errno 28] No space left on device"
    ]
    note = get_note(trial)
    assert note.startswith(f"### Trial {trial.number}: overfitting")
    assert note.rstrip().endswith(NOT_SAVED)
    study.tell(trial, 1.0)
    assert study.trials[0].state is optuna.trial.TrialState.COMPLETE


def test_write_trial_uploads_the_learning_curves(spec: StudySpec, tmp_path: Path) -> None:
    from optuna.artifacts import get_all_artifact_meta
    from optuna_dashboard import get_note

    store = artifact_store(str(tmp_path / "artifacts"))
    study = optuna.create_study()
    trial = study.ask()

    write_trial(trial, _overfitting(spec), spec, store)

    metas = get_all_artifact_meta(trial)
    assert [(m.filename, m.mimetype) for m in metas] == [(f"learning-curves-trial-{trial.number}.png", "image/png")]
    files = list((tmp_path / "artifacts").iterdir())
    assert len(files) == 1
    assert _png_size(files[0]) == (960, 480)
    # The note shows the image at full size, from the dashboard's route for this trial's artifact.
    link = f"/artifacts/{study._study_id}/{trial._trial_id}/{metas[0].artifact_id}"
    assert get_note(trial).rstrip().endswith(f"![learning curves of trial {trial.number}]({link})")


def test_failure_note(caplog: pytest.LogCaptureFixture) -> None:
    from optuna_dashboard import get_note

    study = optuna.create_study()
    trial = study.ask()

    write_failure_note(trial, "ValueError: bad input shape")

    assert get_note(trial) == f"### Trial {trial.number}: failed\n\nValueError: bad input shape\n"
    assert not caplog.records


# --------------------------------------------------------------------------- artifact locations


def test_default_artifacts_sit_beside_a_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_artifacts(f"sqlite:///{tmp_path / 'sweep.db'}") == str(tmp_path / "sweep-artifacts")
    assert default_artifacts(f"sqlite:///{tmp_path / 'runs.v2.db'}?timeout=60") == str(tmp_path / "runs.v2-artifacts")
    monkeypatch.chdir(tmp_path)
    assert default_artifacts("sqlite:///sub/d.db") == str(tmp_path.resolve() / "sub" / "d-artifacts")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://user:secret@db.example:5432/sweeps",
        "mysql+pymysql://root@127.0.0.1:3306/test",
        "sqlite:///:memory:",
        "grpc://proxy:13000",
    ],
)
def test_default_artifacts_elsewhere_is_none(url: str) -> None:
    assert default_artifacts(url) is None


def test_artifact_store_for_a_folder_creates_it(tmp_path: Path) -> None:
    from optuna.artifacts import FileSystemArtifactStore

    folder = tmp_path / "a" / "b"

    assert isinstance(artifact_store(str(folder)), FileSystemArtifactStore)
    assert folder.is_dir()
    assert artifact_store(None) is None
    assert artifact_store("") is None


# --------------------------------------------------------------------------- in a real browser


def _browser() -> tuple[Any, str]:
    """Playwright's sync API and Debian's Chromium, or a skip that says which is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install 'playwright>=1.40'); .ci/run installs it")
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium); .ci/run installs it")
    return sync_playwright, chromium


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_server(url: str, proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + SERVER_WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sweep dashboard exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    pytest.fail(f"sweep dashboard did not answer {url} within {SERVER_WAIT_S:.0f} s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
            pytest.fail("sweep dashboard did not stop within 15 s of SIGINT")
    return int(proc.returncode)


@pytest.mark.slow
def test_sigterm_stops_the_dashboard_cleanly(tmp_path: Path) -> None:
    """docker stop and a deleted Kubernetes pod send SIGTERM: the server stops at once, exit 0."""
    url = f"sqlite:///{tmp_path / 'd.db'}"
    result = run_cli("run", str(write_study(tmp_path, n_trials=1, epochs=1)), "--storage", url, "-q")
    assert result.returncode == 0, result.stderr
    port = _free_port()
    out_log, err_log = tmp_path / "dashboard.out", tmp_path / "dashboard.err"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SWEEP_STORAGE", None)
    with out_log.open("w") as out, err_log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweep", "dashboard", "--storage", url, "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=err, text=True,
        )  # fmt: skip
    try:
        # The URL is printed once the server answers there: a request right after it succeeds.
        link = f"http://127.0.0.1:{port}/dashboard"
        wait_for(lambda: out_log.read_text().strip() == link, timeout=SERVER_WAIT_S, what="the URL on standard output")
        with urllib.request.urlopen(link, timeout=5) as response:
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)  # without a handler it would die at once with -15
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err_log.read_text()
    assert err_log.read_text().rstrip().endswith("stopped")


@pytest.mark.slow
def test_dashboard_shows_notes_figure_and_learning_curves_in_a_browser(tmp_path: Path) -> None:
    sync_playwright, chromium = _browser()
    db = tmp_path / "d.db"
    url = f"sqlite:///{db}"
    result = run_cli("run", str(write_study(tmp_path, n_trials=3, epochs=3)), "--storage", url, "--n-trials", "3", "-q")
    assert result.returncode == 0, result.stderr

    artifacts = tmp_path / "d-artifacts"
    stored = sorted(artifacts.iterdir())
    assert len(stored) == 3, stored
    for path in stored:
        assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    study = optuna.load_study(study_name="tiny", storage=url)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    from optuna.artifacts import get_all_artifact_meta

    for t in trials:
        assert [m.filename for m in get_all_artifact_meta(t, storage=study._storage)] == [
            f"learning-curves-trial-{t.number}.png"
        ]
    chosen = trials[-1]
    diagnosis = chosen.user_attrs["diagnosis"]
    assert diagnosis in DIAGNOSES
    best = min(trials, key=lambda t: t.user_attrs["score"])

    port = _free_port()
    out_log, err_log = tmp_path / "dashboard.out", tmp_path / "dashboard.err"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SWEEP_STORAGE", None)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with out_log.open("w") as out, err_log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweep", "dashboard", "--storage", url, "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=err, text=True,
        )
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/dashboard", proc, err_log)
        link = f"http://127.0.0.1:{port}/dashboard"
        wait_for(lambda: out_log.read_text().strip() == link, timeout=10, what="the URL on standard output")
        assert f"artifacts in {artifacts.resolve()}" in err_log.read_text()
        base = f"http://127.0.0.1:{port}"

        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                user_data_dir=str(tmp_path / "profile"),
                executable_path=chromium,
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--no-first-run"],
                viewport={"width": 1400, "height": 1000},
            )
            context.set_default_timeout(WAIT_MS)
            try:
                page = context.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))

                # The study list links to the study; its id comes from the app, not a guess.
                page.goto(base + "/dashboard")
                page.locator("a[href*='/dashboard/studies/']", has_text="tiny").first.click()
                page.wait_for_url(re.compile(r".*/dashboard/studies/\d+$"))
                study_id = int(page.url.rsplit("/", 1)[1])
                assert study_id == study._study_id

                # The study page: the stability figure the workers saved, the best trial in its legend,
                # and no two of its labels (title, axes, ticks, legend) overlapping.
                title = page.get_by_text(STABILITY_TITLE)
                title.wait_for()
                figure = page.locator(".js-plotly-plot", has=title)
                assert figure.count() == 1
                assert figure.get_by_text(f"rank 1: trial {best.number}", exact=True).count() == 1
                overlaps = figure.evaluate(OVERLAPPING_LABELS)
                assert overlaps == [], overlaps
                page.set_viewport_size({"width": 1400, "height": 1750})
                figure.scroll_into_view_if_needed()
                page.screenshot(path=str(SCREENSHOTS / "study.png"))
                page.set_viewport_size({"width": 1400, "height": 1000})

                # The study note: the ranking, best first.
                page.locator(f"a[href$='/studies/{study_id}/note']").click()
                page.get_by_text("Stability ranking of tiny (top 3 of 3 complete)").wait_for()
                rows = page.locator("table tbody tr")
                assert rows.count() == 3
                assert rows.first.locator("td").nth(1).inner_text().strip() == str(best.number)
                for t in trials:  # what to change, for each trial of the ranking that is not stable
                    if t.user_attrs["diagnosis"] != "stable":
                        advice = f"Trial {t.number} (rank "
                        assert page.locator("li", has_text=advice).inner_text().endswith(records.trial_attr(t, "hint"))
                assert page.evaluate("document.documentElement.scrollWidth") <= 1400
                page.screenshot(path=str(SCREENSHOTS / "note.png"))

                # The trial list.
                page.locator(f"a[href$='/studies/{study_id}/trials']").click()
                page.get_by_text("3 Trials", exact=True).wait_for()
                for t in trials:
                    page.get_by_text(f"Trial {t.number}", exact=True).first.wait_for()
                page.screenshot(path=str(SCREENSHOTS / "trials.png"))

                # One trial: its diagnosis note and its learning curves.
                page.get_by_text(f"Trial {chosen.number}", exact=True).first.click()
                page.wait_for_url(re.compile(rf".*/trials\?numbers={chosen.number}$"))
                page.get_by_text(f"Trial {chosen.number} (trial_id=").wait_for()
                page.get_by_role("heading", name=f"Trial {chosen.number}: {diagnosis}").wait_for()
                score = page.locator("strong", has_text=re.compile(r"^Score "))
                assert score.inner_text() == f"Score {chosen.user_attrs['score']:.4g}"
                assert page.get_by_text(records.trial_attr(chosen, "hint")).count() == 1  # the note's, whole
                name = f"learning-curves-trial-{chosen.number}.png"
                page.get_by_text(name, exact=True).wait_for()  # the artifact list still has it
                # The learning curves at full size in the note, from the artifact's URL.
                alt = f"learning curves of trial {chosen.number}"
                image = page.locator(f"img[alt='{alt}']")
                image.wait_for()
                page.wait_for_function(
                    "alt => { const i = document.querySelector(`img[alt='${alt}']`);"
                    " return i && i.complete && i.naturalWidth > 0; }",
                    arg=alt,
                    timeout=WAIT_MS,
                )
                assert image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [960, 480]
                shown = image.bounding_box()
                assert shown is not None and shown["width"] >= 600, shown
                # The page reads at 1400 px: nothing makes it scroll sideways (the curves and the
                # per-repeat lists are system attrs, every user attr fits on its line).
                page.wait_for_timeout(500)
                assert page.evaluate("document.documentElement.scrollWidth") <= 1400
                page.set_viewport_size({"width": 1400, "height": 1900})
                page.mouse.move(1399, 1899)
                page.evaluate("() => document.activeElement && document.activeElement.blur()")
                page.wait_for_function("() => !document.querySelector('.MuiTouchRipple-child')", timeout=WAIT_MS)
                box = image.bounding_box()
                assert box is not None
                bottom = min(1900, int(box["y"] + box["height"] + 80))
                clip = {"x": 0, "y": 0, "width": 1400, "height": bottom}
                page.screenshot(path=str(SCREENSHOTS / "trial.png"), clip=clip)
                assert not errors, errors
            finally:
                context.close()
    finally:
        code = _stop(proc)
    stderr = err_log.read_text()
    assert code == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.rstrip().endswith("stopped")

    for shot in ("study", "note", "trials", "trial"):
        assert _png_size(SCREENSHOTS / f"{shot}.png")[0] == 1400
    if os.environ.get(UPDATE_SCREENSHOTS) == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SCREENSHOTS / "trial.png", DOCS / "dashboard-trial.png")
        shutil.copyfile(SCREENSHOTS / "study.png", DOCS / "dashboard-study.png")
