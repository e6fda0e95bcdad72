"""A study's learning curves, hyperparameters and scores for TensorBoard and MLflow (``sweep export``).

Exported: the trials ``sweep rank --all`` lists that are COMPLETE, and the PRUNED ones with curves
(marked as pruned). Numbers and diagnoses are the ranking's (:func:`sweep.report.rank`), curves the
trial's own (:data:`sweep.records.CURVES`); nothing is recomputed. Epochs count from 1.

TensorBoard (written with the ``tensorboard`` package's record writer and summary protos: its
``tensorboard.summary.Writer`` imports TensorFlow): ``DIR/trial-0007`` is the trial's HParams session
(hyperparameters, and ``diagnosis`` and ``state`` as string fields; scalars score, tail_mean, tail_std...
at step 0; a text ``hint``), ``DIR/trial-0007/repeat-0`` the repeat's per-epoch scalars (loss,
val_loss, accuracy...); ``DIR`` holds the HParams experiment and ``sweep-export.json`` (the study's
name). Exporting again rewrites each trial's folder whole; a folder of anything else is refused.

MLflow: a run ``trial-0007`` per trial, tagged ``sweep.study`` and ``sweep.trial``, in the experiment
named after the study. A trial already exported is not logged again: its tags are brought up to date.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep import records
from sweep.errors import SweepError, UserError
from sweep.report import NUMERIC_FIELDS, RankedTrial, rank, read_trials, study_spec

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from sweep.spec import StudySpec
    from sweep.stability import Summary

INSTALL = "pip install 'sweep[export]'"
EVENTS_FILE = "events.out.tfevents.sweep"
MARKER = "sweep-export.json"
STUDY_TAG, TRIAL_TAG = "sweep.study", "sweep.trial"


@dataclass(frozen=True)
class ExportedTrial:
    """One trial as exported: its row of the ranking and its stored curves."""

    row: RankedTrial
    curves: dict[str, list[list[float]]]
    """Curve name (``loss``, ``val_loss``, ``accuracy``, ...) -> one list per repeat; NaN where non-finite."""
    seconds: float
    """Seconds of training, every repeat."""

    @property
    def name(self) -> str:
        return f"trial-{self.row.number:04d}"

    @property
    def repeats(self) -> int:
        return max((len(c) for c in self.curves.values()), default=0)

    def metrics(self) -> dict[str, float]:
        """The ranking's numbers that the trial has (score, tail_mean, tail_std, ...)."""
        return {f: v for f in NUMERIC_FIELDS if (v := getattr(self.row, f)) is not None}

    def epochs(self, repeat: int) -> Iterator[tuple[int, dict[str, float]]]:
        """``(epoch, {curve name: value})`` for each epoch of ``repeat``, from epoch 1."""
        curves = {k: c[repeat] for k, c in self.curves.items() if repeat < len(c)}
        for i in range(max((len(c) for c in curves.values()), default=0)):
            yield i + 1, {k: c[i] for k, c in curves.items() if i < len(c)}


def trials_to_export(study_name: str, *, url: str) -> list[ExportedTrial]:
    """The complete trials, and the pruned ones with curves, in trial order.

    Raises:
        StudyNotFoundError: no such study.
        StorageError: the storage cannot be read.
    """
    ranked = rank(study_name, url=url, include_all=True)
    _, rows = read_trials(study_name, url=url, keys=(records.CURVES,))
    stored = {r.number: r.attrs.get(records.CURVES) for r in rows}
    out = []
    for row in ranked:
        raw = stored.get(row.number)
        raw = raw if isinstance(raw, dict) else {}
        if row.state == "COMPLETE" or (row.state == "PRUNED" and raw.get("val_loss")):
            seconds = sum(s for s in raw.get("seconds", []) if isinstance(s, int | float))
            out.append(ExportedTrial(row=row, curves=_curves(raw), seconds=float(seconds)))
    return sorted(out, key=lambda t: t.row.number)


def _curves(raw: dict[str, Any]) -> dict[str, list[list[float]]]:
    metric = str(raw.get("metric_name") or "metric")
    names = {"loss": "loss", "val_loss": "val_loss", "metric": metric, "val_metric": f"val_{metric}"}
    return {
        shown: [records.expand(c) for c in raw[stored]]
        for stored, shown in names.items()
        if isinstance(raw.get(stored), list) and any(raw[stored])
    }


def _require(module: str, option: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"{option} needs the {module} package, which is not installed: {INSTALL}")


# --------------------------------------------------------------------------- TensorBoard


def export_tensorboard(study_name: str, *, url: str, directory: Path) -> int:
    """Write the study's trials as TensorBoard runs under ``directory``; returns how many trials.

    Raises:
        UserError: ``tensorboard`` is not installed; ``directory`` holds something else, or cannot be written.
        StudyNotFoundError: no such study.
    """
    _require("tensorboard", "--tensorboard")
    from tensorboard.compat.proto import summary_pb2  # type: ignore[import-untyped]
    from tensorboard.plugins.hparams import summary_v2 as hp  # type: ignore[import-untyped]
    from tensorboard.plugins.scalar.summary_v2 import scalar_pb  # type: ignore[import-untyped]
    from tensorboard.plugins.text.summary_v2 import text_pb  # type: ignore[import-untyped]

    trials = trials_to_export(study_name, url=url)
    hparams = {t.row.number: _hparams(t.row) for t in trials}
    try:
        _claim(directory, study_name)
        for t in trials:
            folder = directory / t.name
            if folder.is_dir():
                shutil.rmtree(folder)
            head = [hp.hparams_pb(hparams[t.row.number], trial_id=t.name)]
            head += [scalar_pb(k, v) for k, v in t.metrics().items()]
            head.append(text_pb("hint", f"**{t.row.diagnosis or t.row.state.lower()}**: {t.row.hint or '-'}"))
            _write_events(folder, ((0, s) for s in head))
            for r in range(t.repeats):
                _write_events(folder / f"repeat-{r}", (
                    (e, summary_pb2.Summary(value=[v for k, x in values.items() for v in scalar_pb(k, x).value]))
                    for e, values in t.epochs(r)
                ))  # fmt: skip
        names = list(dict.fromkeys(k for h in hparams.values() for k in h))
        metrics = list(dict.fromkeys(k for t in trials for k in t.metrics()))
        config = hp.hparams_config_pb(
            hparams=[hp.HParam(n, _domain([h[n] for h in hparams.values() if n in h])) for n in names],
            metrics=[hp.Metric(m) for m in metrics],
        )
        _write_events(directory, [(0, config)])
    except OSError as exc:
        raise UserError(f"--tensorboard: cannot write {directory}: {exc.strerror or exc}") from None
    return len(trials)


def _hparams(row: RankedTrial) -> dict[str, bool | int | float | str]:
    """The trial's hyperparameters (a value of another type as text), its diagnosis and its state."""
    out = {k: v if isinstance(v, bool | int | float | str) else json.dumps(v) for k, v in row.params.items()}
    return {**out, "diagnosis": row.diagnosis or "-", "state": row.state}


def _domain(values: list[Any]) -> Any:
    """The HParams domain of one hyperparameter's values (``None`` when they are of mixed kinds)."""
    from tensorboard.plugins.hparams.summary_v2 import Discrete, IntInterval, RealInterval  # type: ignore[import-untyped]

    if all(isinstance(v, str) for v in values) or all(isinstance(v, bool) for v in values):
        return Discrete(sorted(set(values)))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return IntInterval(min(values), max(values))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return RealInterval(float(min(values)), float(max(values)))
    return None


def _write_events(folder: Path, summaries: Iterable[tuple[int, Any]]) -> None:
    """An event file of ``(step, summary proto)`` in ``folder``, in TensorBoard's record format."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter  # type: ignore[import-untyped]

    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    with open(folder / EVENTS_FILE, "wb") as f:
        writer = RecordWriter(f)
        writer.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
        for step, summary in summaries:
            writer.write(event_pb2.Event(wall_time=now, step=step, summary=summary).SerializeToString())


def _claim(directory: Path, study_name: str) -> None:
    """Make ``directory`` the export folder of ``study_name``, refusing one that holds anything else."""
    marker = directory / MARKER
    if marker.is_file():
        try:
            owner = json.loads(marker.read_text()).get("study")
        except (ValueError, AttributeError):
            owner = None
        if owner != study_name:
            raise UserError(
                f"--tensorboard: {directory} holds the export of study {owner!r}, not {study_name!r}; "
                "give another folder"
            )
    elif directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UserError(f"--tensorboard: {directory} is not empty and holds no sweep export; give a new folder")
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"study": study_name}) + "\n")


# --------------------------------------------------------------------------- MLflow


def export_mlflow(study_name: str, *, url: str, tracking_uri: str, experiment: str | None = None) -> int:
    """Log the study's trials as runs of an MLflow experiment (default: named after the study); returns how many.

    Raises:
        UserError: ``mlflow`` is not installed, or the experiment was deleted.
        StudyNotFoundError: no such study.
        SweepError: MLflow refused the tracking URI or a write (its message, on one line).
    """
    _require("mlflow", "--mlflow")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from sweep.outage import one_line
    from sweep.storage import mask

    trials = trials_to_export(study_name, url=url)
    spec = study_spec(study_name, url=url)
    quiet = logging.getLogger("mlflow")  # "Creating initial MLflow database tables...": the library does not print
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        experiment_id = _experiment(client, experiment or study_name, tracking_uri)
        runs = _runs(client, experiment_id, study_name)
        for t in trials:
            run = runs.get(t.row.number)
            if run is not None and run.info.status == "RUNNING":  # an export stopped half-way: log it anew
                client.delete_run(run.info.run_id)
                run = None
            if run is None:
                _log_run(client, experiment_id, study_name, t, spec)
            else:
                _refresh_run(client, run, study_name, t, spec)
    except MlflowException as exc:
        raise SweepError(f"--mlflow {mask(tracking_uri)}: {one_line(exc)}") from None
    finally:
        quiet.setLevel(level)
    return len(trials)


def _experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri))
    if found.lifecycle_stage != "active":
        raise UserError(f"--experiment: {name!r} was deleted; restore it (mlflow experiments restore) or name another")
    return str(found.experiment_id)


def _artifact_location(tracking_uri: str) -> str | None:
    """Beside a SQLite tracking file, ``mlartifacts/`` (MLflow's default is ``./mlruns`` in the current folder)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return str(Path(tracking_uri.removeprefix("sqlite:///").split("?")[0]).resolve().parent / "mlartifacts")


def _runs(client: MlflowClient, experiment_id: str, study_name: str) -> dict[int, Run]:
    """The runs already exported from ``study_name`` into the experiment, by trial number."""
    found: dict[int, Run] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            if tags.get(STUDY_TAG) == study_name and tags.get(TRIAL_TAG, "").isdigit():
                found.setdefault(int(tags[TRIAL_TAG]), run)
        token = page.token
        if not token:
            return found


def _tags(study_name: str, t: ExportedTrial) -> dict[str, str]:
    return {
        STUDY_TAG: study_name,
        TRIAL_TAG: str(t.row.number),
        "sweep.state": t.row.state,
        "sweep.diagnosis": t.row.diagnosis or "-",
        "sweep.hint": t.row.hint or "-",  # MLflow cuts a tag over 8,000 characters
    }


def _log_run(client: MlflowClient, experiment_id: str, study_name: str, t: ExportedTrial, spec: StudySpec) -> None:
    """Params, curves (repeat 0's as ``val_loss``, repeat 1's as ``repeat_1/val_loss``, ``step=epoch``), the
    ranking's numbers at step 0, tags, the curve image; the run ends FINISHED, KILLED for a pruned trial."""
    from mlflow.entities import Metric, Param

    start = int(time.time() * 1000)
    run_id = client.create_run(experiment_id, start_time=start, tags=_tags(study_name, t), run_name=t.name).info.run_id
    params = [Param(k, str(v)) for k, v in t.row.params.items()]
    metrics = [Metric(k, v, start, 0) for k, v in t.metrics().items()]
    for r in range(t.repeats):
        prefix = f"repeat_{r}/" if r else ""
        metrics += [Metric(prefix + k, v, start, e) for e, values in t.epochs(r) for k, v in values.items()]
    for i in range(0, len(params), 100):  # MLflow's limits per batch
        client.log_batch(run_id, params=params[i : i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    _log_image(client, run_id, t, spec)
    status = "FINISHED" if t.row.state == "COMPLETE" else "KILLED"
    client.set_terminated(run_id, status=status, end_time=start + round(t.seconds * 1000))


def _refresh_run(client: MlflowClient, run: Run, study_name: str, t: ExportedTrial, spec: StudySpec) -> None:
    """An exported trial's run with its tags up to date (a diagnosis is judged again as the study grows)."""
    old, new = run.data.tags, _tags(study_name, t)
    for key, value in new.items():
        if old.get(key) != value:
            client.set_tag(run.info.run_id, key, value)
    if old.get("sweep.diagnosis") != new["sweep.diagnosis"]:
        _log_image(client, run.info.run_id, t, spec)  # its title names the diagnosis


def _log_image(client: MlflowClient, run_id: str, t: ExportedTrial, spec: StudySpec) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"learning-curves-{t.name}.png"
        if curve_image(t, spec, path):
            client.log_artifact(run_id, str(path))


def curve_image(t: ExportedTrial, spec: StudySpec, path: Path) -> bool:
    """The trial's learning curves as a PNG (:func:`sweep.dashboard.plot_curves`); False when there are none."""
    from sweep.dashboard import plot_curves
    from sweep.stability import Diagnosis
    from sweep.train import Curves, TrialOutcome

    val = t.curves.get("val_loss", [])
    if not val or t.row.diagnosis not in {d.value for d in Diagnosis}:
        return False
    train = t.curves.get("loss", [])
    curves = tuple(
        Curves(loss=tuple(train[r] if r < len(train) and len(train[r]) == len(v) else [math.nan] * len(v)),
               val_loss=tuple(v))
        for r, v in enumerate(val)
    )  # fmt: skip
    outcome = TrialOutcome(curves=curves, summary=_summary(t.row, len(curves)))
    plot_curves(outcome, spec, str(path), title=f"trial {t.row.number}")
    return True


def _summary(row: RankedTrial, n_repeats: int) -> Summary:
    """The ranking's row as the :class:`Summary` the figure reads (its title: score and diagnosis)."""
    from sweep.stability import Diagnosis, Summary

    nan = math.nan
    return Summary(
        score=math.inf if row.score is None else row.score,
        tail_mean=nan if row.tail_mean is None else row.tail_mean,
        tail_std=nan if row.tail_std is None else row.tail_std,
        best=nan if row.best is None else row.best,
        degradation=nan if row.degradation is None else row.degradation,
        oscillation=nan if row.oscillation is None else row.oscillation,
        gap=row.gap, repeat_spread=row.repeat_spread, baseline=row.baseline,
        diagnosis=Diagnosis(row.diagnosis), hint=row.hint or "", n_repeats=row.n_repeats or n_repeats,
        epochs=tuple(row.epochs or ()), repeat_means=tuple(row.repeat_means or ()),
        repeat_stds=tuple(row.repeat_stds or ()),
    )  # fmt: skip
