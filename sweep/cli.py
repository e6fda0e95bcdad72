"""The ``sweep`` command line: thin commands over the library.

Errors are mapped to exit codes in one place (:func:`_errors`): a user
mistake prints one line and exits 2, an interruption exits 130 (SIGINT) or
143 (SIGTERM), any other :class:`~sweep.errors.SweepError` exits 1. No
command prints a storage URL with its password.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from sweep import __version__
from sweep.errors import Interrupted, SweepError, UserError

if TYPE_CHECKING:
    from sweep.spec import StudySpec

app = typer.Typer(
    name="sweep",
    help="Hyperparameter sweeps for Keras models, ranked by validation-loss stability.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

_STORAGE_HELP = "Storage URL (sqlite:///FILE, postgresql+psycopg://..., mysql+pymysql://..., grpc://HOST:PORT)."
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        metavar="URL",
        help=f"{_STORAGE_HELP} Default: $SWEEP_STORAGE, then sqlite:///sweep.db.",
        show_default=False,
    ),
]
FileStorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        metavar="URL",
        help=f"{_STORAGE_HELP} Default: $SWEEP_STORAGE, then the study file's study.storage, then sqlite:///sweep.db.",
        show_default=False,
    ),
]


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """The one place where library errors become messages and exit codes."""
    try:
        yield
    except Interrupted as exc:
        if exc.while_ is not None:  # no trial was running
            err.print(f"[yellow]{escape(str(exc))}[/]")
        else:
            err.print(
                f"[yellow]{escape(str(exc))}[/]: the running trial was marked FAIL (interrupted); "
                "run the same command again to resume"
            )
        raise typer.Exit(exc.exit_code) from None
    except SweepError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(exc.exit_code) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"sweep {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Hyperparameter sweeps for Keras models, ranked by validation-loss stability."""


WorkersOpt = Annotated[
    str | None,
    typer.Option(
        "--workers",
        metavar="N|auto",
        help="Worker processes on this machine: N or 'auto' (one per core). Default: one per GPU in use, else 1.",
        show_default=False,
    ),
]
TimeoutOpt = Annotated[
    str | None,
    typer.Option(
        "--timeout", metavar="DURATION", help="Stop starting trials after this long: seconds, or 90m, 2h, 1d."
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or per-trial lines.")]
GpusOpt = Annotated[
    str | None,
    typer.Option(
        "--gpus",
        metavar="auto|none|IDS",
        help="GPUs for this machine's workers: 'auto' (each worker on its own GPU, one worker per GPU "
        "found), 'none' (the CPU), or ids such as 0,1. Default: the study's worker.gpus, 'auto'.",
        show_default=False,
    ),
]


def _parse_workers(value: str | None) -> int | None:
    from sweep.runner import default_workers

    if value is None:
        return None
    if value == "auto":
        return default_workers()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise UserError(f"--workers: got {value!r}; allowed: an integer >= 1 or 'auto' (one per core)")


StudyFileArg = Annotated[
    Path, typer.Argument(metavar="STUDY_FILE", help="The study file (TOML).", show_default=False)
]
NTrialsOpt = Annotated[
    int | None,
    typer.Option(
        "--n-trials",
        min=1,
        metavar="N",
        help="The study's total number of trials (a resumed study runs only the rest).",
    ),
]
BudgetOpt = Annotated[
    int | None,
    typer.Option(
        "--budget",
        min=1,
        metavar="EPOCHS",
        help="Epochs to train in all, every repeat of every trial (a resumed study trains only the rest).",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="SECTION.KEY=VALUE",
        help="Override a study-file field, the value read as TOML (strings in quotes); repeatable.",
    ),
]
AllowSpecChangeOpt = Annotated[
    bool,
    typer.Option("--allow-spec-change", help="Resume even if the search space, model, data or training changed."),
]


def _study_file(
    study_file: Path,
    *,
    storage: str | None,
    set_: list[str] | None,
    n_trials: int | None,
    timeout: str | None,
    budget: int | None,
) -> tuple[StudySpec, str]:
    """The spec of STUDY_FILE with the command's options applied, and the storage URL to use."""
    from sweep.spec import load_spec
    from sweep.storage import resolve_url

    updates: dict[str, Any] = {"study.n_trials": n_trials, "study.timeout": timeout, "study.budget": budget}
    if storage is not None:
        updates["study.storage"] = storage
    spec = load_spec(study_file, overrides=set_ or (), updates=updates)
    return spec, resolve_url(storage, spec.study.storage)


def _create(spec: StudySpec, url: str, *, allow_spec_change: bool) -> None:
    """Create the study or check it against the file (``sweep create``, ``sweep run --create-only``): one line."""
    from sweep.runner import create_study

    made = create_study(spec=spec, storage=url, allow_spec_change=allow_spec_change)
    name = made.study_name
    if made.created:
        target = f"target {made.target} trials" if made.target is not None else "no trial target"
        line = f"study {name} created on {made.storage} ({target}); start workers with: sweep worker {name}"
    else:
        line = f"study {name} exists on {made.storage} ({made.done} of {made.target or '-'} done); "
        if made.spec_changes:
            line += f"spec change accepted and recorded: {'; '.join(made.spec_changes)}"
        else:
            line += "spec unchanged"
        if made.requeued:
            line += f"; {len(made.requeued)} interrupted trial(s) queued again"
    out.print(line, markup=False)


@app.command()
def create(
    study_file: StudyFileArg,
    storage: FileStorageOpt = None,
    set_: SetOpt = None,
    n_trials: NTrialsOpt = None,
    budget: BudgetOpt = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            metavar="DURATION",
            help="The study's time limit, stored with it: seconds, or 90m, 2h, 1d. Workers of a study "
            "without a trial count stop starting trials this long after they join.",
        ),
    ] = None,
    allow_spec_change: AllowSpecChangeOpt = False,
) -> None:
    """Create a study from STUDY_FILE without training, or check an existing one against it.

    Records the spec, the data fingerprint and the target; workers then join with
    'sweep worker STUDY' (with --wait, they may start first). A study that exists is
    checked and resumed as 'sweep run' does (a changed file is refused, exit 2).
    """
    with _errors():
        spec, url = _study_file(
            study_file, storage=storage, set_=set_, n_trials=n_trials, timeout=timeout, budget=budget
        )
        _create(spec, url, allow_spec_change=allow_spec_change)


@app.command()
def run(
    study_file: StudyFileArg,
    n_trials: NTrialsOpt = None,
    budget: BudgetOpt = None,
    timeout: TimeoutOpt = None,
    storage: FileStorageOpt = None,
    set_: SetOpt = None,
    workers: WorkersOpt = None,
    gpus: GpusOpt = None,
    allow_spec_change: AllowSpecChangeOpt = False,
    create_only: Annotated[
        bool,
        typer.Option("--create-only", help="Create (or check) the study and exit without training: 'sweep create'."),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Create a study from STUDY_FILE, or resume it, and run it to its target."""
    with _errors():
        from sweep.runner import run_sweep

        spec, url = _study_file(
            study_file, storage=storage, set_=set_, n_trials=n_trials, timeout=timeout, budget=budget
        )
        if create_only:
            for option, value in (("--workers", workers), ("--gpus", gpus)):
                if value is not None:
                    raise UserError(
                        f"{option}: got {value!r}; --create-only starts no workers, so it takes no {option}"
                    )
            _create(spec, url, allow_spec_change=allow_spec_change)
            return
        n_workers = _parse_workers(workers)
        with _progress_bar(spec.study.n_trials, quiet=quiet) as (on_progress, on_output):
            result = run_sweep(
                spec=spec,
                storage=url,
                workers=n_workers,
                gpus=gpus,
                allow_spec_change=allow_spec_change,
                on_progress=on_progress,
                on_output=on_output,
                on_start=None if quiet else lambda line: err.print(line, markup=False),
            )
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(result.counts.items()))
        best = (
            f"; best trial {result.best_number} (score {result.best_value:.4g})"
            if result.best_value is not None
            else ""
        )
        out.print(f"{result.study_name}: {result.done} of {result.target or '-'} trials done ({states}){best}")


@app.command()
def worker(
    study_name: Annotated[str, typer.Argument(metavar="STUDY", help="The study to join.", show_default=False)],
    storage: StorageOpt = None,
    n_trials: Annotated[
        int | None,
        typer.Option("--n-trials", min=1, metavar="N", help="The study's total (default: the stored target)."),
    ] = None,
    timeout: TimeoutOpt = None,
    workers: WorkersOpt = None,
    gpus: GpusOpt = None,
    wait: Annotated[
        str | None,
        typer.Option(
            "--wait",
            metavar="DURATION",
            help="If the study is not there yet (not created, or the storage does not answer), wait for it "
            "this long: seconds, or 90s, 10m, 2h.",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Join an existing study from any machine; the spec is read from the storage."""
    with _errors():
        from sweep.runner import join_sweep, plan_join
        from sweep.storage import resolve_url

        seconds = _duration("--timeout", timeout)
        wait_s = _duration("--wait", wait)
        n_workers = _parse_workers(workers)
        join = plan_join(
            study_name,
            resolve_url(storage),
            n_trials=n_trials,
            timeout_s=seconds,
            workers=n_workers,
            gpus=gpus,
            wait_s=wait_s,
            on_wait=lambda line: err.print(line, markup=False),
        )
        with _progress_bar(join.target, quiet=quiet) as (on_progress, on_output):
            join_sweep(join, on_progress=on_progress, on_output=on_output)


@app.command()
def status(
    study_name: Annotated[str, typer.Argument(metavar="STUDY", help="The study.", show_default=False)],
    storage: StorageOpt = None,
    format_: Annotated[str, typer.Option("--format", metavar="table|json", help="Output format.")] = "table",
) -> None:
    """Counts of trials by state, and the best trial."""
    with _errors():
        from sweep.report import study_status
        from sweep.storage import resolve_url

        fmt = _choice("--format", format_, ("table", "json"))
        st = study_status(study_name, url=resolve_url(storage))
        if fmt == "json":
            out.print_json(json.dumps(st.as_dict()))
            return
        for line in st.lines():
            out.print(line, markup=False)


@app.command("rank")
def rank_(
    study_name: Annotated[str, typer.Argument(metavar="STUDY", help="The study.", show_default=False)],
    storage: StorageOpt = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top",
            min=1,
            metavar="K",
            help=f"Show the best K only. Default: {TABLE_ROWS} in a table, all in json/csv.",
        ),
    ] = None,
    format_: Annotated[str, typer.Option("--format", metavar="table|json|csv", help="Output format.")] = "table",
    by: Annotated[
        str,
        typer.Option(
            "--by",
            metavar="FIELD",
            help="Sort by this field, lower is better: score, tail_mean, tail_std, best, degradation, "
            "oscillation, gap or repeat_spread.",
        ),
    ] = "score",
    risk: Annotated[
        float | None,
        typer.Option("--risk", metavar="R", help="Re-score with this risk (score = tail_mean + risk * tail_std)."),
    ] = None,
    tail: Annotated[
        int | None, typer.Option("--tail", metavar="W", help="Re-score with a tail window of W epochs.")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Also list pruned and failed trials (after complete ones).")
    ] = False,
    wide: Annotated[
        bool, typer.Option("--wide", help="Every score component and parameter, whatever the terminal's width.")
    ] = False,
) -> None:
    """Trials ranked by validation-loss stability, with a diagnosis and a hint for each."""
    with _errors():
        from sweep.report import ranking
        from sweep.storage import resolve_url

        fmt = _choice("--format", format_, ("table", "json", "csv"))
        first = TABLE_ROWS if fmt == "table" and top is None else top
        ranked = ranking(
            study_name, url=resolve_url(storage), top=first, by=by, risk=risk, tail=tail, include_all=all_
        )
        rows, hidden = ranked.trials, (ranked.total - len(ranked.trials) if top is None else 0)
        if fmt == "json":
            sys.stdout.write(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
        elif fmt == "csv":
            _write_csv(rows)
        else:
            used = _ranking_used(study_name, resolve_url(storage), by=by, risk=risk, tail=tail)
            _print_rank_table(study_name, rows, wide=wide, used=used)
            if hidden:
                out.print(f"({hidden} more; --top K shows more, --format json or csv shows all)", markup=False)


@app.command()
def fix(
    study_name: Annotated[str, typer.Argument(metavar="STUDY", help="The study.", show_default=False)],
    storage: StorageOpt = None,
    top: Annotated[
        int, typer.Option("--top", min=1, metavar="K", help="Fix the K best-ranked trials that have a problem.")
    ] = 3,
) -> None:
    """Queue each unstable trial's configuration with its remedy applied (the diagnosis's hint, as parameters).

    The next 'sweep run' or 'sweep worker' trains the queued fixes first; 'sweep rank' shows
    each beside the trial it fixes. Running it again queues nothing twice.
    """
    with _errors():
        from sweep.fixes import queue_fixes
        from sweep.storage import resolve_url

        fixes = queue_fixes(study_name, url=resolve_url(storage), top=top)
        if not fixes:
            out.print(f"{study_name}: no complete trial has a problem to fix", markup=False)
            return
        for f in fixes:
            out.print(f.line(), markup=False, soft_wrap=True)
        new = sum(f.queued is not None and not f.reason for f in fixes)
        if new:
            out.print(
                f"{new} queued: the next 'sweep run' or 'sweep worker {study_name}' trains them first "
                "(raise --n-trials if the study has reached its target)",
                markup=False,
            )


@app.command()
def best(
    study_name: Annotated[str, typer.Argument(metavar="STUDY", help="The study.", show_default=False)],
    storage: StorageOpt = None,
    retrain_seeds: Annotated[
        int,
        typer.Option("--retrain-seeds", min=1, metavar="N", help="Retrain the top configuration with N fresh seeds."),
    ] = 3,
    out_dir: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Folder for the saved model (.keras) and its JSON config.")
    ] = Path("best"),
    trial: Annotated[
        int | None, typer.Option("--trial", metavar="N", help="Retrain this trial instead of the top-ranked.")
    ] = None,
    format_: Annotated[str, typer.Option("--format", metavar="table|json", help="Output format.")] = "table",
) -> None:
    """Retrain the top-ranked configuration with fresh seeds, say whether it held up, and save it.

    The saved model takes the raw inputs of the study's data (the scaling is inside it) and
    loads with plain keras.models.load_model. Verdict: held up when the retrained mean tail
    loss is within the trial's own repeat spread of the predicted one. Exit 0 either way.
    """
    with _errors():
        from sweep.retrain import retrain_best
        from sweep.storage import resolve_url

        fmt = _choice("--format", format_, ("table", "json"))
        result = retrain_best(
            study_name, url=resolve_url(storage), seeds=retrain_seeds, out_dir=out_dir, trial_number=trial
        )
        if fmt == "json":
            out.print_json(json.dumps(result.as_dict()))
            return
        predicted = result.predicted_tail_mean
        out.print(f"trial {result.trial_number}: " + " ".join(f"{k}={_fmt(v)}" for k, v in result.params.items()))
        out.print(f"predicted tail val loss {_fmt(predicted)} (score {_fmt(result.predicted_score)})")
        for seed, loss in zip(result.seeds, result.tail_losses, strict=True):
            delta = f" ({loss - predicted:+.4g})" if predicted is not None else ""
            out.print(f"  seed {seed}: tail val loss {_fmt(loss)}{delta}")
        out.print(f"retrained mean {_fmt(result.mean)} ± {_fmt(result.std)} over {len(result.seeds)} seeds")
        out.print(
            f"verdict: {result.verdict} (retrained {_fmt(result.mean)} vs predicted {_fmt(predicted)}, "
            f"the trial's repeat spread {_fmt(result.spread)})"
        )
        valid = ", ".join(f"{k} {_fmt(v)}" for k, v in (result.saved_valid or {}).items())
        out.print(f"saved {result.model_path} (raw inputs; validation {valid}) and {result.config_path}")


@app.command()
def predict(
    model_file: Annotated[
        Path, typer.Argument(metavar="MODEL_FILE", help="A model saved by 'sweep best' (.keras).", show_default=False)
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            metavar="FILE",
            help="Inputs: an .npz with an array X of raw inputs, or a .csv with the study's feature columns "
            "(tabular studies).",
            show_default=False,
        ),
    ],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", metavar="FILE", help="Where to write the predictions (CSV). Default: beside --data."),
    ] = None,
) -> None:
    """Predict with a model saved by 'sweep best', on raw inputs in the study's format."""
    with _errors():
        from sweep.predict import predict_file

        written, n = predict_file(model_file, data, out_file)
        out.print(f"{n} predictions written to {written}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


TABLE_ROWS = 25
"""Rows of the ranking a table shows unless --top says otherwise (JSON and CSV show all)."""

_PARAM_HEADERS = {
    "n_layers": "layers",
    "units": "units",
    "activation": "act",
    "learning_rate": "lr",
    "optimizer": "opt",
    "batch_size": "batch",
    "dropout": "drop",
    "l2": "l2",
    "layer_norm": "ln",
}
_COMPONENTS = ("score", "tail_mean", "tail_std", "best", "degradation", "oscillation", "gap", "repeat_spread")


_DEFAULT_COMPONENTS = ("score", "tail_mean", "tail_std")
_COMPONENT_HEADERS = {"degradation": "degr", "oscillation": "osc", "repeat_spread": "spread"}


def _rank_table(title: str, rows: list[Any], components: tuple[str, ...], params: list[str]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("rank", "trial", "reps", *(_COMPONENT_HEADERS.get(c, c) for c in components)):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("diagnosis", no_wrap=True)
    for p in params:
        table.add_column(_PARAM_HEADERS.get(p, p), justify="right", no_wrap=True)
    for r in rows:
        label = r.diagnosis or "-"
        table.add_row(
            str(r.rank),
            str(r.number),
            "-" if r.n_repeats is None else str(r.n_repeats),
            *(_fmt(getattr(r, f)) for f in components),
            label if r.state == "COMPLETE" or label == r.state.lower() else f"{label} ({r.state.lower()})",
            *(_fmt(r.params.get(p)) for p in params),
        )
    return table


def _ranking_used(study_name: str, url: str, *, by: str, risk: float | None, tail: int | None) -> str:
    """What the ranking sorted by, with the risk and tail it used (the study's own unless given)."""
    from sweep.report import study_spec

    stability = study_spec(study_name, url=url).stability
    r = stability.risk if risk is None else risk
    t = stability.tail if tail is None else tail
    score = f"score = tail_mean + {r:g} x tail_std over the last {t} epochs"
    if by != "score":
        return f"ranked by {by}, lower is better ({score})"
    return f"ranked by {score}, lower is better"


def _param_names(rows: list[Any]) -> list[str]:
    """The parameters the rows carry: the eight (and ``layer_norm``) first, then a builder's own."""
    names = [p for p in _PARAM_HEADERS if any(p in r.params for r in rows)]
    for r in rows:
        names += [p for p in r.params if p not in names]
    return names


def _print_rank_table(study_name: str, rows: list[Any], *, wide: bool, used: str) -> None:
    """The ranking as a table that fits the terminal: searched parameters are dropped from the right
    until it does (``--wide``: every component and parameter, whatever the width)."""
    from rich.measure import Measurement

    if not rows:
        out.print(f"{study_name}: no trials to rank yet (complete trials only; --all shows the others)")
        return
    title = f"{study_name}: {used}"
    components = _COMPONENTS if wide else _DEFAULT_COMPONENTS
    names = _param_names(rows)
    searched = [p for p in names if len({repr(r.params.get(p)) for r in rows if p in r.params}) > 1]
    params = names if wide else searched
    table = _rank_table(title, rows, components, params)
    if wide:
        Console(highlight=False, width=max(out.width, 1000)).print(table)
    else:
        shown = list(params)
        unbounded = out.options.update_width(100_000)  # the table's natural width, not clamped to the terminal
        while shown and Measurement.get(out, unbounded, table).maximum > out.width:
            shown.pop()
            table = _rank_table(title, rows, components, shown)
        out.print(table, soft_wrap=False, crop=False)
        if len(shown) < len(params):
            hidden = ", ".join(_PARAM_HEADERS.get(p, p) for p in params[len(shown):])
            out.print(f"(not shown to fit {out.width} columns: {hidden}; --wide shows every column)", markup=False)
    for r in rows:
        if r.diagnosis not in (None, "stable") or r.fail_reason:
            out.print(f"#{r.number} {r.diagnosis or r.state.lower()}: {r.hint or r.fail_reason}", markup=False,
                      soft_wrap=wide)  # fmt: skip
    by_number = {r.number: r for r in rows}
    for r in rows:
        if r.fixes is not None:
            out.print(_fix_line(r, by_number.get(r.fixes)), markup=False, soft_wrap=wide)


def _fix_line(fix: Any, original: Any) -> str:
    """``#12 fixes #5 (oscillating): score 0.21 against 0.25, better by 0.04``."""
    head = f"#{fix.number} fixes #{fix.fixes}"
    if original is None or fix.score is None or original.score is None:
        return f"{head}: score {_fmt(fix.score)}"
    delta = original.score - fix.score
    verdict = f"better by {_fmt(delta)}" if delta > 0 else f"worse by {_fmt(-delta)}" if delta < 0 else "the same"
    return f"{head} ({original.diagnosis}): score {_fmt(fix.score)} against {_fmt(original.score)}, {verdict}"


def _write_csv(rows: list[Any]) -> None:
    import csv

    from sweep.report import NUMERIC_FIELDS
    from sweep.spec import PARAM_NAMES

    extra = [p for p in _param_names(rows) if p not in (*PARAM_NAMES, "layer_norm")]
    names = ["rank", "number", "state", *NUMERIC_FIELDS, "diagnosis", "hint", "n_repeats", "stopped",
             *PARAM_NAMES, "layer_norm", *extra, "fail_reason"]  # fmt: skip
    writer = csv.DictWriter(sys.stdout, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        d = r.as_dict()
        params = d.pop("params")
        writer.writerow({**{k: d.get(k) for k in names if k in d}, **params})


@app.command()
def dashboard(
    study_file: Annotated[
        Path | None, typer.Argument(
            metavar="STUDY_FILE", help="A study file (its storage and artifact folder are used).", show_default=False
        )
    ] = None,
    storage: FileStorageOpt = None,
    host: Annotated[
        str, typer.Option("--host", metavar="ADDRESS", help="Address to listen on (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, metavar="PORT", help="Port to listen on.")] = 8080,
    artifacts: Annotated[
        str | None,
        typer.Option(
            "--artifacts", metavar="DIR", help="Artifact folder (default: the study's, as the workers wrote it)."
        ),
    ] = None,
) -> None:
    """Open optuna-dashboard on the sweep's storage, with learning-curve artifacts wired in."""
    with _errors():
        from sweep.dashboard import serve
        from sweep.storage import default_artifacts, mask, resolve_url

        if study_file is not None:
            from sweep.spec import load_spec

            spec = load_spec(study_file)
            url = resolve_url(storage, spec.study.storage)
            location = artifacts or spec.dashboard.artifacts or default_artifacts(url)
        else:
            url = resolve_url(storage)
            location = artifacts or _stored_artifacts(url) or default_artifacts(url)
        err.print(f"optuna-dashboard on {mask(url)}" + (f", artifacts in {location}" if location else ""), markup=False)
        # SIGTERM (docker stop, a Kubernetes pod deleted) stops the server like Ctrl-C; without a
        # handler, a process that runs as PID 1 in a container would ignore it.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _stop_serving)
        try:
            serve(url, host=host, port=port, artifacts=location, on_ready=lambda link: out.print(link, markup=False))
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            raise UserError(f"--port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        _stopped()


STOP_GRACE_S = 5.0
"""How long the dashboard may take to stop after SIGINT/SIGTERM before it exits regardless."""


def _stopped() -> None:
    err.print("stopped")
    sys.stdout.flush()
    sys.stderr.flush()
    # Nothing here needs tearing down: the database has committed or rolled back every write the
    # dashboard made, and a request cut short by the signal may leave a connection or lock behind
    # that the interpreter's exit would wait on for ever.
    os._exit(0)


def _stop_serving(signum: int, frame: object) -> None:
    """Stop the server as Ctrl-C does; if it has not stopped within a few seconds, exit anyway."""
    import threading

    watchdog = threading.Timer(STOP_GRACE_S, _stopped)
    watchdog.daemon = True
    watchdog.start()
    raise KeyboardInterrupt


def _stored_artifacts(url: str) -> str | None:
    """The artifact folder recorded in the specs of the studies in the storage, if any.

    Read from the studies alone: Optuna's study summaries load every trial (minutes at 100,000).
    """
    from sweep import records
    from sweep.storage import open_storage

    storage = open_storage(url, create=False)
    for study in storage.get_all_studies():
        location = (study.user_attrs.get(records.SPEC) or {}).get("dashboard", {}).get("artifacts")
        if location:
            return str(location)
    return None


@app.command()
def copy(
    from_url: Annotated[
        str, typer.Option("--from", metavar="URL", help="The storage to copy from.", show_default=False)
    ],
    to_url: Annotated[str, typer.Option("--to", metavar="URL", help="The storage to copy to.", show_default=False)],
    study: Annotated[
        str | None, typer.Option("--study", metavar="NAME", help="Copy this study only (default: all).")
    ] = None,
) -> None:
    """Copy a study (or all) to another storage: trials, params, curves, notes and spec."""
    with _errors():
        from sweep.transfer import copy_studies

        for result in copy_studies(from_url=from_url, to_url=to_url, study=study):
            out.print(
                f"copied {result.study_name} ({result.trials} trials) from {result.source} to {result.destination}",
                markup=False,
            )


@app.command()
def export(
    study_name: Annotated[str, typer.Argument(metavar="STUDY", help="The study.", show_default=False)],
    storage: StorageOpt = None,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            "--tensorboard",
            metavar="DIR",
            help="Write TensorBoard logs here (a new folder, or an earlier export of STUDY).",
            show_default=False,
        ),
    ] = None,
    mlflow: Annotated[
        str | None,
        typer.Option(
            "--mlflow",
            metavar="URI",
            help="Log MLflow runs to this tracking URI (sqlite:///mlflow.db, http://HOST:5000).",
            show_default=False,
        ),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option("--experiment", metavar="NAME", help="The MLflow experiment. Default: the study's name."),
    ] = None,
) -> None:
    """Export the complete (and pruned) trials' learning curves, hyperparameters and scores to TensorBoard or MLflow.

    Exporting again replaces what an earlier export wrote for each trial; it never duplicates a run.
    """
    with _errors():
        from sweep.export import export_mlflow, export_tensorboard
        from sweep.storage import mask, resolve_url

        if tensorboard is None and mlflow is None:
            raise UserError("export: give --tensorboard DIR, --mlflow URI, or both")
        if experiment is not None and mlflow is None:
            raise UserError("--experiment: names an MLflow experiment; give --mlflow URI too")
        url = resolve_url(storage)
        if tensorboard is not None:
            n = export_tensorboard(study_name, url=url, directory=tensorboard)
            out.print(f"{n} trial{'s' * (n != 1)} of {study_name} written to {tensorboard} "
                      f"(view: tensorboard --logdir {tensorboard})", markup=False)  # fmt: skip
        if mlflow is not None:
            n = export_mlflow(study_name, url=url, tracking_uri=mlflow, experiment=experiment)
            shown = mask(mlflow)
            out.print(f"{n} trial{'s' * (n != 1)} of {study_name} logged to MLflow experiment "
                      f"{experiment or study_name!r} at {shown} (view: mlflow ui --backend-store-uri {shown})",
                      markup=False)  # fmt: skip


@app.command()
def proxy(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option("--host", metavar="ADDRESS", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, metavar="PORT", help="Port to listen on.")] = 13000,
) -> None:
    """Serve the storage to many workers over gRPC (they use --storage grpc://HOST:PORT)."""
    with _errors():
        from sweep.proxy import THREADS, make_server
        from sweep.storage import mask, open_storage, resolve_url

        url = resolve_url(storage)
        if url.startswith("grpc://"):
            raise UserError("--storage: the proxy serves a database; give a sqlite/postgresql/mysql URL")
        backend = open_storage(url, pool_size=THREADS)
        import optuna

        err.print(f"serving {mask(url)} on grpc://{host}:{port} (Ctrl-C stops)", markup=False)
        logging_level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            server = make_server(backend, url=url, host=host, port=port)
            server.start()
            server.wait_for_termination()
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        finally:
            optuna.logging.set_verbosity(logging_level)


@app.command()
def init(
    data_file: Annotated[
        Path, typer.Argument(metavar="DATA_FILE", help="A .csv (a header row, then one row per sample) or a .npz.")
    ],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", metavar="FILE", help="Where to write the study file. Default: DATA_FILE's stem.toml."),
    ] = None,
) -> None:
    """Write a commented study file for your data: the target, task and model it guessed, each said in a comment."""
    with _errors():
        from sweep.scaffold import propose, write_study

        path = write_study(data_file, out=out_file)
        proposal = propose(data_file)
        out.print(
            f"wrote {path}: {proposal.task.value} of {proposal.target or 'y'} with a {proposal.family.value} "
            f"model; check the guesses in its comments, then: sweep run {path}",
            markup=False,
        )


@app.command()
def schema() -> None:
    """Print the JSON Schema of study files (for editors: taplo, Even Better TOML, VS Code)."""
    with _errors():
        from sweep.schema import schema_json

        sys.stdout.write(schema_json())


def _duration(option: str, value: str | None) -> float | None:
    from sweep.spec import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UserError(f"{option}: {exc}") from None


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise UserError(f"{option}: got {value!r}; allowed: {', '.join(allowed)}")
    return value


def eta_seconds(*, done: int, elapsed: float, remaining: int) -> float | None:
    """Seconds left at the pace of this run so far (``done`` trials in ``elapsed`` s); None before the first."""
    if remaining <= 0:
        return 0.0
    if done <= 0 or elapsed <= 0:
        return None
    return elapsed / done * remaining


@contextlib.contextmanager
def _progress_bar(target: int | None, *, quiet: bool) -> Iterator[tuple[Any, Any]]:
    """A live bar (trials done of the target, best score, elapsed, ETA) with worker lines above it.

    The bar appears with the first progress report, so an error found while
    checking the input is printed alone.
    """
    if quiet:  # errors, the storage's comings and goings, trials taken over still print, one line each
        from sweep.protocol import notice

        def quiet_line(slot: int, line: str) -> None:
            if notice(line):
                err.print(line, markup=False)

        yield None, quiet_line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Eta(ProgressColumn):
        """Counts down to the finish projected at the last trial that counted (it does not freeze between)."""

        def render(self, task: Any) -> Text:
            finish = task.fields.get("finish_at")
            if finish is None:
                return Text("-:--:--", style="progress.remaining")
            left = max(0, int(finish - time.monotonic()))
            return Text(f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}", style="progress.remaining")

    bar = Progress(
        TextColumn("trials"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[best]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        Eta(),
        console=err,
        transient=False,
    )
    task = bar.add_task("sweep", total=target, best="best -", finish_at=None)
    first: list[int] = []  # trials done when this run began (a resumed study has some)
    last: list[int] = []

    def on_progress(p: Any) -> None:
        if not bar.live.is_started:
            bar.start()
        best = f"best {p.best_value:.4g} (#{p.best_number})" if p.best_value is not None else "best -"
        first[:] = first or [p.done]
        fields: dict[str, Any] = {}
        if last != [p.done]:  # a trial counted: project the finish again from the pace so far
            last[:] = [p.done]
            left = eta_seconds(done=p.done - first[0], elapsed=p.elapsed, remaining=(p.target or 0) - p.done)
            fields["finish_at"] = None if left is None else time.monotonic() + left
        bar.update(task, completed=p.done, total=p.target, best=best, **fields)

    def on_output(slot: int, line: str) -> None:
        bar.console.print(Text.assemble((f"w{slot} ", "dim"), line), highlight=False)

    try:
        yield on_progress, on_output
    finally:
        if bar.live.is_started:
            bar.stop()


def command() -> Any:
    """The click command tree behind ``app``, with help that says what each parameter takes.

    Typer 0.29 prints a Python type beside every option (``--quiet <bool>``, ``--timeout <str>``).
    A flag takes no value, so it shows none; every option that takes a value declares a metavar
    (``--timeout DURATION``), and every argument one in capitals (``STUDY_FILE``).
    """
    import typer.main

    root = typer.main.get_command(app)
    for cmd in (root, *getattr(root, "commands", {}).values()):
        for param in (*cmd.params, cmd.get_help_option(typer.Context(cmd))):
            if param is not None and getattr(param, "is_flag", False):
                param.metavar = ""
    return root


def main() -> None:
    """Console-script entry point: a usage mistake (a bad option value, a missing argument) is one line, exit 2."""
    try:
        code = command()(prog_name="sweep", standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # click's usage errors
        message = exc.format_message().strip()
        if "\n" in message:  # no arguments at all: the help text
            err.print(message, markup=False)
        elif message:  # (empty when the help was already shown)
            err.print(f"error: {message}", markup=False)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
