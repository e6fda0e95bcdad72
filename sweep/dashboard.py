"""What optuna-dashboard shows of a sweep, and launching it.

Per trial: a markdown note (diagnosis, hint, the score beside its components;
or why it was pruned or failed) and a learning-curve image uploaded as an
artifact. Per study: a note with the current top-10 stability ranking and a
Plotly figure of tail_mean against tail_std. All of it is written by the
workers as trials finish; a write that fails is logged and never fails the
trial (:func:`guarded`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.errors import UserError

if TYPE_CHECKING:
    import optuna

    from sweep.spec import StudySpec
    from sweep.train import TrialOutcome

log = logging.getLogger("sweep.dashboard")

STUDY_FIGURE_ID = "sweep-stability"
TOP_IN_NOTE = 10


@contextmanager
def guarded(what: str) -> Iterator[None]:
    """Log a failed dashboard write and carry on: the dashboard never fails a trial."""
    from sweep.errors import Interrupted

    try:
        yield
    except Interrupted:
        raise
    except Exception as exc:  # a broken store or figure must not cost the trial
        log.warning("dashboard: could not write %s: %s: %s", what, type(exc).__name__, exc)


def artifact_store(location: str | None) -> Any:
    """An Optuna artifact store for a folder (shared by all workers) or an ``s3://bucket/prefix``."""
    if not location:
        return None
    from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

    if location.startswith("s3://"):
        try:
            import boto3  # noqa: F401
        except ImportError:
            raise UserError(f"dashboard.artifacts: got {location!r}; an s3:// store needs boto3 installed") from None
        bucket = location.removeprefix("s3://").split("/", 1)[0]
        return Boto3ArtifactStore(bucket)
    folder = Path(location)
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


# --------------------------------------------------------------------------- per trial


def write_trial(trial: optuna.Trial, outcome: TrialOutcome, spec: StudySpec, store: Any) -> float:
    """Note and learning curves for one finished trial; returns the seconds it took."""
    from optuna_dashboard import save_note

    start = time.perf_counter()
    with guarded(f"the note of trial {trial.number}"):
        save_note(trial, trial_note(trial.number, outcome, spec))
    if store is not None:
        with guarded(f"the learning curves of trial {trial.number}"):
            _upload_curves(trial, outcome, spec, store)
    return time.perf_counter() - start


def write_failure_note(trial: optuna.Trial, reason: str) -> None:
    from optuna_dashboard import save_note

    with guarded(f"the note of trial {trial.number}"):
        save_note(trial, f"### Trial {trial.number}: failed\n\n{reason}\n")


def trial_note(number: int, outcome: TrialOutcome, spec: StudySpec) -> str:
    s, curves = outcome.summary, outcome.curves
    lines: list[str] = []
    if outcome.stopped and s.diagnosis.value != "diverged":
        why = (
            f"Racing stopped it after repeat 0: {outcome.stopped}."
            if outcome.raced_out
            else f"The {spec.pruner.name} pruner stopped it at epoch {curves[-1].epochs} of repeat 0: its running "
            "score was worse than the other trials' at that epoch."
        )
        lines += [
            f"### Trial {number}: pruned after {len(curves)} of {spec.training.repeats} repeat(s)",
            "",
            f"{why} Its value is its repeat-0 score; pruned trials are never ranked above complete ones, "
            "and get no training advice.",
            "",
        ]
    else:
        lines += [f"### Trial {number}: {s.diagnosis.value}", "", s.hint, ""]
    lines += [
        f"**Score {_f(s.score)}** = tail_mean {_f(s.tail_mean)} + {spec.stability.risk:g} × tail_std "
        f"{_f(s.tail_std)} ({tail_words(outcome, spec.stability.tail)})",
        "",
        "| component | value | meaning |",
        "|---|---|---|",
        f"| best | {_f(s.best)} | lowest validation loss seen |",
        f"| baseline | {_f(s.baseline)} | loss of a model that learned nothing |",
        f"| degradation | {_f(s.degradation)} | tail mean above the best stretch of training |",
        f"| oscillation | {_f(s.oscillation)} | mean epoch-to-epoch change in the tail |",
        f"| gap | {_f(s.gap)} | tail validation minus training loss |",
        f"| repeat_spread | {_f(s.repeat_spread)} | repeats' spread beyond the splits' own (when judged) |",
        "",
        "Repeats: "
        + ", ".join(f"{c.epochs} epochs ({c.stop.value})" for c in curves)
        + f"; {sum(c.seconds for c in curves):.1f} s of training.",
    ]
    return "\n".join(lines) + "\n"


def tail_words(outcome: TrialOutcome, tail: int) -> str:
    """The tail window as the score used it: the last min(tail, length) epochs of each repeat."""
    used = sorted({min(tail, c.epochs) for c in outcome.curves})
    if len(used) == 1:
        return f"last {used[0]} epoch{'s' * (used[0] != 1)} of each repeat"
    return f"last {tail} epochs of each repeat, fewer where a repeat was shorter"


def _upload_curves(trial: optuna.Trial, outcome: TrialOutcome, spec: StudySpec, store: Any) -> None:
    from optuna.artifacts import upload_artifact

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"learning-curves-trial-{trial.number}.png")
        plot_curves(outcome, spec, path, title=f"trial {trial.number}")
        upload_artifact(artifact_store=store, file_path=path, study_or_trial=trial, mimetype="image/png")


def plot_curves(outcome: TrialOutcome, spec: StudySpec, path: str, *, title: str) -> None:
    """Train (dashed) and validation (solid) loss per epoch for every repeat; tails shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    try:
        tail = spec.stability.tail
        longest = max(c.epochs for c in outcome.curves)
        for r, c in enumerate(outcome.curves):
            color = f"C{r % 10}"
            epochs = list(range(1, c.epochs + 1))
            ax.plot(epochs, _finite(c.val_loss), color=color, label=f"repeat {r} validation")
            ax.plot(epochs, _finite(c.loss), color=color, linestyle="--", alpha=0.6, label=f"repeat {r} training")
            if c.epochs:
                ax.axvspan(max(0.5, c.epochs - min(tail, c.epochs) + 0.5), c.epochs + 0.5, color=color, alpha=0.08)
        s = outcome.summary
        ax.set_title(
            f"{title}: score {_f(s.score)}, {s.diagnosis.value} ({tail_words(outcome, tail)}, shaded)", fontsize=9
        )
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_xlim(0.5, longest + 0.5)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- per study


def refresh_study(study: optuna.Study, *, url: str) -> float:
    """Rewrite the study's ranking note and stability figure; returns the seconds it took."""
    start = time.perf_counter()
    from sweep.report import rank

    with guarded("the study's ranking"):
        ranked = rank(study.study_name, url=url)
        from optuna_dashboard import save_note, save_plotly_graph_object

        save_note(study, study_note(study.study_name, ranked))
        if ranked:
            save_plotly_graph_object(study, stability_figure(ranked), graph_object_id=STUDY_FIGURE_ID)
    return time.perf_counter() - start


def study_note(name: str, ranked: list[Any]) -> str:
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if not ranked:
        return f"### Stability ranking of {name}\n\nNo complete trial yet ({stamp}).\n"
    lines = [
        f"### Stability ranking of {name} (top {min(TOP_IN_NOTE, len(ranked))} of {len(ranked)} complete)",
        "",
        "Lower is better: score = tail_mean + risk × tail_std, both from each repeat's own tail "
        "(the spread between splits is the same for every trial and is left out). Updated " + stamp + ".",
        "",
        "| rank | trial | score | tail_mean | tail_std | diagnosis "
        "| layers | units | lr | optimizer | batch | dropout | l2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ranked[:TOP_IN_NOTE]:
        p = r.params
        lines.append(
            f"| {r.rank} | {r.number} | {_f(r.score)} | {_f(r.tail_mean)} | {_f(r.tail_std)} | {r.diagnosis} "
            f"| {p.get('n_layers')} | {p.get('units')} | {_f(p.get('learning_rate'))} | {p.get('optimizer')} "
            f"| {p.get('batch_size')} | {_f(p.get('dropout'))} | {_f(p.get('l2'))} |"
        )
    return "\n".join(lines) + "\n"


def stability_figure(ranked: list[Any]) -> Any:
    """tail_mean against tail_std for every complete trial, the top 10 marked."""
    import plotly.graph_objects as go

    def hover(r: Any) -> str:
        params = ", ".join(f"{k}={_f(v)}" for k, v in r.params.items())
        return f"trial {r.number} (rank {r.rank})<br>score {_f(r.score)}, {r.diagnosis}<br>{params}"

    top, rest = ranked[:TOP_IN_NOTE], ranked[TOP_IN_NOTE:]
    fig = go.Figure()
    if rest:
        fig.add_trace(
            go.Scatter(
                x=[r.tail_mean for r in rest],
                y=[r.tail_std for r in rest],
                mode="markers",
                name="other complete trials",
                marker={"color": "lightgray", "size": 7},
                hovertext=[hover(r) for r in rest],
                hoverinfo="text",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[r.tail_mean for r in top],
            y=[r.tail_std for r in top],
            mode="markers+text",
            name=f"top {len(top)} by stability score",
            text=[f"#{r.number}" for r in top],
            textposition="top center",
            marker={"color": "crimson", "size": 10},
            hovertext=[hover(r) for r in top],
            hoverinfo="text",
        )
    )
    fig.update_layout(
        title="Stability: where training ends (tail_mean) against how much it moves (tail_std)",
        xaxis_title="tail_mean (lower is better)",
        yaxis_title="tail_std (lower is better)",
    )
    return fig


# --------------------------------------------------------------------------- serving


def serve(url: str, *, host: str, port: int, artifacts: str | None, on_ready: Callable[[str], None]) -> None:
    """Run optuna-dashboard on the storage until Ctrl-C (KeyboardInterrupt is left to the caller)."""
    import optuna_dashboard

    from sweep.storage import open_storage

    storage = open_storage(url, create=False)
    store = artifact_store(artifacts)
    link = f"http://{host if host not in ('0.0.0.0', '::') else '127.0.0.1'}:{port}/dashboard"
    threading.Thread(target=_announce_when_answering, args=(link, on_ready), daemon=True).start()
    optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)


def _announce_when_answering(link: str, on_ready: Callable[[str], None], timeout_s: float = 300.0) -> None:
    """Call ``on_ready(link)`` once the server answers there (not before: a link that fails is no use)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(link, timeout=2) as response:
                if response.status == 200:
                    on_ready(link)
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.2)


def _finite(values: Any) -> list[float]:
    return [v if math.isfinite(v) else math.nan for v in values]


def _f(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
