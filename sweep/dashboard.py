"""What optuna-dashboard shows of a sweep, and launching it.

Per trial: a learning-curve image uploaded as an artifact, and a markdown note
(diagnosis, hint, the score beside its components, or why it was pruned or
failed; then the image at full size). Per study: a note with the current
top-10 stability ranking and what to change in each of them that is not
stable, and a Plotly figure of tail_mean against tail_std. All of it is written by the
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
from dataclasses import dataclass
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
    """Log a failed dashboard write and carry on: the dashboard never fails a trial.

    A write refused because the trial was taken over by another worker is not a
    dashboard failure: it goes on up (:mod:`sweep.liveness`).
    """
    from optuna.exceptions import UpdateFinishedTrialError

    from sweep.errors import Interrupted

    try:
        yield
    except (Interrupted, UpdateFinishedTrialError):
        raise
    except Exception as exc:  # a broken store or figure must not cost the trial
        from sweep.outage import one_line

        log.warning("dashboard: could not write %s: %s: %s", what, type(exc).__name__, one_line(exc))


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
    """Learning curves and note for one finished trial; returns the seconds it took.

    The curves are uploaded first so that the note can show them at full size: the dashboard's
    artifact list shows an image only as a small thumbnail.
    """
    from optuna_dashboard import save_note

    start = time.perf_counter()
    image, missing = None, NO_STORE
    if store is not None:
        missing = NOT_SAVED
        with guarded(f"the learning curves of trial {trial.number}"):
            image = _upload_curves(trial, outcome, spec, store)
    fixed = None
    with guarded(f"the trial that trial {trial.number} fixes"):
        fixed = fixed_trial(trial)
    with guarded(f"the note of trial {trial.number}"):
        save_note(trial, trial_note(trial.number, outcome, spec, image=image, missing=missing, fixes=fixed))
    return time.perf_counter() - start


@dataclass(frozen=True)
class Fixed:
    """The trial a ``sweep fix`` trial remedies, as its note links it."""

    number: int
    study_id: int
    diagnosis: str
    score: float | None
    change: str


def fixed_trial(trial: optuna.Trial) -> Fixed | None:
    """What ``trial`` fixes, when ``sweep fix`` queued it (:data:`sweep.records.FIXES`); else ``None``."""
    from sweep import records

    attrs = trial.user_attrs
    number = attrs.get(records.FIXES)
    if isinstance(number, bool) or not isinstance(number, int):
        return None
    storage, study_id = trial.storage, trial.study._study_id
    original = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))
    score = original.user_attrs.get("score")
    return Fixed(
        number=number,
        study_id=study_id,
        diagnosis=str(original.user_attrs.get("diagnosis", "?")),
        score=float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None,
        change=str(attrs.get(records.REMEDY, "")),
    )


def write_failure_note(trial: optuna.Trial, reason: str) -> None:
    from optuna_dashboard import save_note

    with guarded(f"the note of trial {trial.number}"):
        save_note(trial, f"### Trial {trial.number}: failed\n\n{reason}\n")


NO_STORE = "No learning-curve image: this study has no artifact store (set dashboard.artifacts in the study file)."
NOT_SAVED = "No learning-curve image: it could not be saved (the worker's log says why)."


def trial_note(
    number: int,
    outcome: TrialOutcome,
    spec: StudySpec,
    *,
    image: str | None = None,
    missing: str = NO_STORE,
    fixes: Fixed | None = None,
) -> str:
    """The trial's note in markdown: ``image`` is the learning curves' URL, else ``missing`` says why there is none.

    A trial that ``sweep fix`` queued (``fixes``) says which trial it fixes, with a link to it,
    and how its score compares.
    """
    s, curves = outcome.summary, outcome.curves
    lines: list[str] = []
    if fixes is not None:
        link = f"[trial {fixes.number}](/dashboard/studies/{fixes.study_id}/trials?numbers={fixes.number})"
        versus = ""
        if fixes.score is not None and math.isfinite(s.score):
            delta = s.score - fixes.score
            versus = f" Score {_f(s.score)} against {_f(fixes.score)}: {'better' if delta < 0 else 'not better'}"
            versus += f" by {_f(abs(delta))}." if delta else "."
        lines += [f"**Fix of {link}** ({fixes.diagnosis}): {fixes.change}.{versus}", ""]
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
        "",
        f"![learning curves of trial {number}]({image})" if image else missing,
    ]
    return "\n".join(lines) + "\n"


def tail_words(outcome: TrialOutcome, tail: int) -> str:
    """The tail window as the score used it: the last min(tail, length) epochs of each repeat."""
    used = sorted({min(tail, c.epochs) for c in outcome.curves})
    if len(used) == 1:
        return f"last {used[0]} epoch{'s' * (used[0] != 1)} of each repeat"
    return f"last {tail} epochs of each repeat, fewer where a repeat was shorter"


def _upload_curves(trial: optuna.Trial, outcome: TrialOutcome, spec: StudySpec, store: Any) -> str:
    """Upload the learning curves as a trial artifact; returns the URL the dashboard serves it at."""
    from optuna.artifacts import upload_artifact

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"learning-curves-trial-{trial.number}.png")
        plot_curves(outcome, spec, path, title=f"trial {trial.number}")
        artifact_id = upload_artifact(artifact_store=store, file_path=path, study_or_trial=trial, mimetype="image/png")
    # optuna-dashboard's own route for a trial's artifact (it uses Optuna's internal ids, as its save_note does).
    return f"/artifacts/{trial.study._study_id}/{trial._trial_id}/{artifact_id}"


CURVES_FIGSIZE = (9.6, 4.8)
"""The learning-curve image in inches at 100 dpi: 960x480 px, legible at its natural size in a trial's note."""


def plot_curves(outcome: TrialOutcome, spec: StudySpec, path: str, *, title: str) -> None:
    """Train (dashed) and validation (solid) loss per epoch for every repeat; tails shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=CURVES_FIGSIZE, dpi=100)
    try:
        tail = spec.stability.tail
        longest = max(c.epochs for c in outcome.curves)
        handles = []
        for r, c in enumerate(outcome.curves):
            color = f"C{r % 10}"
            epochs = list(range(1, c.epochs + 1))
            ax.plot(epochs, _finite(c.val_loss), color=color, linewidth=1.8)
            ax.plot(epochs, _finite(c.loss), color=color, linestyle="--", alpha=0.6)
            if c.epochs:
                ax.axvspan(max(0.5, c.epochs - min(tail, c.epochs) + 0.5), c.epochs + 0.5, color=color, alpha=0.08)
            handles.append(Line2D([], [], color=color, linewidth=1.8, label=f"repeat {r}"))
        handles += [
            Line2D([], [], color="0.3", label="validation"),
            Line2D([], [], color="0.3", linestyle="--", alpha=0.6, label="training"),
        ]
        s = outcome.summary
        ax.set_title(f"{title}: score {_f(s.score)}, {s.diagnosis.value} ({tail_words(outcome, tail)}, shaded)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_xlim(0.5, longest + 0.5)
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
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
    top = ranked[:TOP_IN_NOTE]
    lines = [
        f"### Stability ranking of {name} (top {len(top)} of {len(ranked)} complete)",
        "",
        "Lower is better: score = tail_mean + risk × tail_std, both from each repeat's own tail "
        "(the spread between splits is the same for every trial and is left out). Only complete trials "
        "are ranked: every repeat trained (verified), each configuration once. Updated " + stamp + ".",
        "",
        "| rank | trial | repeats | score | tail_mean | tail_std | diagnosis "
        "| layers | units | lr | optimizer | batch | dropout | l2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in top:
        p = r.params
        lines.append(
            f"| {r.rank} | {r.number} | {r.n_repeats if r.n_repeats is not None else '-'} | {_f(r.score)} "
            f"| {_f(r.tail_mean)} | {_f(r.tail_std)} | {r.diagnosis} "
            f"| {p.get('n_layers')} | {p.get('units')} | {_f(p.get('learning_rate'))} | {p.get('optimizer')} "
            f"| {p.get('batch_size')} | {_f(p.get('dropout'))} | {_f(p.get('l2'))} |"
        )
    unstable = [r for r in top if r.diagnosis != "stable" and r.hint]
    if unstable:
        lines += ["", f"#### What to change ({len(unstable)} of the top {len(top)} not stable)", ""]
        lines += [f"- **Trial {r.number}** (rank {r.rank}, {r.diagnosis}): {r.hint}" for r in unstable]
    return "\n".join(lines) + "\n"


STABILITY_TITLE = "Stability: where training ends against how much it moves"


def stability_figure(ranked: list[Any]) -> Any:
    """tail_mean against tail_std for every complete trial: the best, the rest of the top 10, the others.

    No text labels on the points (near points made them overlap): the legend names the best
    trial, and hovering a point names any trial.
    """
    import plotly.graph_objects as go

    def hover(r: Any) -> str:
        params = ", ".join(f"{k}={_f(v)}" for k, v in r.params.items())
        return f"trial {r.number} (rank {r.rank})<br>score {_f(r.score)}, {r.diagnosis}<br>{params}"

    best, runners_up, rest = ranked[:1], ranked[1:TOP_IN_NOTE], ranked[TOP_IN_NOTE:]
    groups = [
        (rest, "other complete trials", {"color": "lightgray", "size": 7}),
        (runners_up, f"ranks 2–{len(runners_up) + 1}", {"color": "crimson", "size": 9}),
        (best, f"rank 1: trial {best[0].number}" if best else "", {"color": "black", "size": 14, "symbol": "star"}),
    ]
    fig = go.Figure()
    for rows, name, marker in groups:
        if rows:
            fig.add_trace(
                go.Scatter(
                    x=[r.tail_mean for r in rows],
                    y=[r.tail_std for r in rows],
                    mode="markers",
                    name=name,
                    marker=marker,
                    hovertext=[hover(r) for r in rows],
                    hoverinfo="text",
                )
            )
    fig.update_layout(
        title={"text": STABILITY_TITLE, "font": {"size": 14}},
        xaxis_title="tail_mean (lower is better)",
        yaxis_title="tail_std (lower is better)",
        showlegend=True,
        legend={"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0},
        margin={"t": 50, "b": 90},
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
