"""The study lifecycle: create or resume, check for spec drift, supervise worker processes.

``run_sweep`` validates everything (spec, data, storage URL) before it writes
anything, then creates the study or resumes it toward its target, and runs
``workers`` trial processes (:mod:`sweep.worker`) on it. The processes share
nothing but the storage: this is the same machinery as workers on many
machines. Each process is replaced after a bounded number of trials or of
memory growth, so a days-long sweep stays flat in memory.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from sweep import ledger, records
from sweep.devices import assign, discover, parse_gpus, worker_env
from sweep.errors import (
    FatalError,
    Interrupted,
    SpecDriftError,
    SpecError,
    StorageError,
    SweepError,
    UserError,
)
from sweep.outage import OutageTimeout, one_line, retry
from sweep.protocol import CONNECTED, ENV_URL, MARKERS, RECYCLE_SOON, go_line
from sweep.spec import StudySpec, WorkerSection, spec_from_dict
from sweep.storage import (
    default_artifacts,
    load_study,
    mask,
    open_storage,
    open_sweep,
    resolve_url,
    storage_options,
)
from sweep.supervisor import Connected, Exited, Kind, Policy, State, decide
from sweep.waiting import interruptible, wait_for_study
from sweep.zygote import WorkerProcess, Zygote
from sweep.zygote import available as zygote_available

if TYPE_CHECKING:

    import optuna

log = logging.getLogger("sweep.runner")


@dataclass(frozen=True)
class Progress:
    """A snapshot of a running sweep, handed to the ``on_progress`` callback."""

    done: int
    target: int | None
    running: int
    failed: int
    best_value: float | None
    best_number: int | None
    elapsed: float


@dataclass(frozen=True)
class SweepResult:
    study_name: str
    storage: str  # masked
    target: int | None
    counts: dict[str, int] = field(default_factory=dict)
    done: int = 0
    best_number: int | None = None
    best_value: float | None = None


# --------------------------------------------------------------------------- opening


def _load_data(spec: StudySpec) -> Any:
    """Load and check the data (and its fit with the model family and the splits)."""
    from sweep.data import data_kwargs, load_dataset, make_splits, repeat_seed
    from sweep.model import check_family, model_shape

    dataset = load_dataset(**data_kwargs(spec.data))
    shape = model_shape(dataset)
    if spec.model.family is not None:
        check_family(spec.model.family, shape, data_name=spec.data.path or spec.data.source)
        if spec.search.extra:
            log.warning(
                "search.extra: %s reach a model.builder only; model.family = %r ignores them",
                ", ".join(spec.search.extra), spec.model.family,
            )
    elif shape.masked:
        raise SpecError(
            f"model.builder: got {spec.model.builder!r} with variable-length sequences (data.group); "
            "a builder takes fixed-length samples for now: give data.lookback, or use a built-in family"
        )
    make_splits(
        dataset,
        n_splits=spec.training.repeats,
        validation_fraction=spec.data.validation_fraction,
        seed=repeat_seed(spec.study.seed, 0),
    )
    return dataset


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for package in ("sweep", "optuna", "tensorflow", "keras", "numpy", "scikit-learn"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def spec_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two JSON-shaped dicts."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(spec_diff(a, b, path + "."))
        elif a != b:
            out.append(f"{path} ({json.dumps(a)} -> {json.dumps(b)})")
    return out


@dataclass(frozen=True)
class Prepared:
    """A study created, or checked and resumed, by :func:`prepare_study`."""

    study: optuna.Study
    created: bool
    spec_changes: tuple[str, ...] = ()
    """What differs from the stored spec (accepted with ``allow_spec_change``)."""
    requeued: tuple[int, ...] = ()
    """Interrupted trials whose configurations were queued again."""


def prepare_study(
    spec: StudySpec, *, url: str, allow_spec_change: bool = False
) -> tuple[optuna.Study, bool]:
    """Create the study, or check and resume it. Returns (study, created).

    Everything that can be wrong with the user's input is checked before the
    storage is touched, so a mistake leaves no study behind.

    Raises:
        DataError, SpecError: bad data or a family that cannot read it.
        SpecDriftError: the study exists with a different spec (and
            ``allow_spec_change`` is False).
    """
    prepared = _prepare(spec, url=url, allow_spec_change=allow_spec_change)
    return prepared.study, prepared.created


def _prepare(spec: StudySpec, *, url: str, allow_spec_change: bool) -> Prepared:
    """:func:`prepare_study`, saying also what changed and what was queued again."""
    import optuna

    from sweep.builder import builder_of
    from sweep.data import describe, fingerprint

    dataset = _load_data(spec)
    fp = fingerprint(dataset)
    builder = builder_of(spec.model)
    builder_fp = builder.fingerprint() if builder is not None else None
    storage = open_storage(url, **storage_options(spec))
    name = spec.study.name
    new = spec.to_json_dict()
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        study = None
    if study is not None:
        stored = study.user_attrs.get(records.SPEC) or _wait_for_spec(name, storage)
        if stored is None:
            raise UserError(f"study {name!r} already exists in {mask(url)} but was not created by 'sweep run'")
        old_spec = spec_from_dict(stored, source=f"stored spec of {name!r}")
        changed = spec_diff(old_spec.drift_view(), spec.drift_view())
        old_fp = study.user_attrs.get(records.FINGERPRINT)
        if old_fp != fp:
            changed.append(f"data fingerprint ({str(old_fp)[:12]} -> {fp[:12]})")
        old_builder = study.user_attrs.get(records.BUILDER_FINGERPRINT)
        if old_builder != builder_fp and builder_fp is not None and old_builder is not None:
            changed.append(f"builder fingerprint ({old_builder[:12]} -> {builder_fp[:12]})")
        if changed and not allow_spec_change:
            raise SpecDriftError(
                f"study {name!r} exists with a different spec: {'; '.join(changed)}. "
                "Old and new trials would not be comparable; use a new study name, "
                "or pass --allow-spec-change to continue anyway"
            )
        if changed:
            history = list(study.user_attrs.get(records.SPEC_CHANGES, []))
            history.append({"at": datetime.now(UTC).isoformat(timespec="seconds"), "changed": changed})
            study.set_user_attr(records.SPEC_CHANGES, history)
            study.set_user_attr(records.FINGERPRINT, fp)
            if builder_fp is not None:
                study.set_user_attr(records.BUILDER_FINGERPRINT, builder_fp)
        study.set_user_attr(records.SPEC, new)
        study.set_user_attr(records.TARGET, spec.study.n_trials)
        requeued = requeue_interrupted(study, enqueue=not changed)
        return Prepared(study, created=False, spec_changes=tuple(changed), requeued=() if changed else tuple(requeued))

    directions: list[Literal["minimize", "maximize"]] = (
        ["minimize", "minimize"] if spec.study.objective == "pareto" else ["minimize"]
    )
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    except optuna.exceptions.DuplicatedStudyError:
        # Another process created it a moment ago (several workers started at once).
        _wait_for_spec(name, storage)
        return _prepare(spec, url=url, allow_spec_change=allow_spec_change)
    study.set_user_attr(records.FINGERPRINT, fp)
    if builder_fp is not None:
        study.set_user_attr(records.BUILDER_FINGERPRINT, builder_fp)
    study.set_user_attr(records.DATA, describe(dataset))
    study.set_user_attr(records.TARGET, spec.study.n_trials)
    study.set_user_attr(records.VERSIONS, _versions())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(
            ["tail_mean", "tail_std"] if spec.study.objective == "pareto" else ["stability_score"]
        )
    study.set_user_attr(records.SPEC, new)  # last: its presence marks a complete creation
    return Prepared(study, created=True)


def _prepare_through_outage(spec: StudySpec, *, url: str, allow_spec_change: bool) -> Prepared:
    """:func:`_prepare`, retried while the storage is unreachable, for up to ``worker.outage_timeout``.

    Raises:
        StorageError: the storage stayed unreachable that long.
    """
    try:
        return retry(
            lambda: _prepare(spec, url=url, allow_spec_change=allow_spec_change),
            timeout_s=spec.worker.outage_timeout,
            what="preparing the study",
        )
    except OutageTimeout as exc:
        raise StorageError(str(exc)) from None


def _wait_for_spec(name: str, storage: Any, timeout: float = 15.0) -> dict[str, Any] | None:
    """The stored spec of a study that another process may be creating right now."""
    import optuna

    deadline = time.time() + timeout
    while True:
        spec = optuna.load_study(study_name=name, storage=storage).user_attrs.get(records.SPEC)
        if spec is not None or time.time() >= deadline:
            return spec
        time.sleep(0.5)


def requeue_interrupted(study: optuna.Study, *, enqueue: bool = True) -> list[int]:
    """Queue again, once each, the configurations whose trials were interrupted.

    The sampler chose them; an interruption is no verdict on them. Returns the
    numbers of the trials queued again (recorded in ``sweep:requeued``). With
    ``enqueue=False`` (the spec changed, so they may not fit the new space)
    they are only marked as handled. Two processes resuming at once may both
    queue one; the worker runs the first and ends the other as surplus.
    """
    from optuna.trial import TrialState

    done = set(study.user_attrs.get(records.REQUEUED, []))
    again = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if records.FailReason.of(t.user_attrs.get(records.FAIL_REASON)) is records.FailReason.INTERRUPTED
        and t.number not in done
    ]
    for t in again if enqueue else []:
        attrs: dict[str, Any] = {"retry_of": t.number}
        if (key := t.user_attrs.get(ledger.VERIFIES)) is not None:
            attrs[ledger.VERIFIES] = key  # it goes on verifying the same configuration
        study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)
    if again:
        study.set_user_attr(records.REQUEUED, sorted(done | {t.number for t in again}))
    return [t.number for t in again]


# --------------------------------------------------------------------------- running


def default_workers() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup (container) CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, int(quota) // int(period))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def threads_per_worker(spec: StudySpec, workers: int) -> int:
    if isinstance(spec.worker.threads, int):
        return spec.worker.threads
    return max(1, default_workers() // max(1, workers))


@dataclass(frozen=True)
class Devices:
    """The GPUs the workers of this machine train on (None: the CPU), and how many workers."""

    gpus: list[str] | None
    workers: int
    hide_gpus: bool
    """GPUs exist but are not used (``--gpus none``): hide them from the workers."""


def plan_devices(gpus: str, workers: int | None, *, field: str = "--gpus") -> Devices:
    """Resolve ``--gpus`` (``auto``, ``none`` or ids) against the GPUs found, without TensorFlow.

    ``workers`` None means one worker per GPU in use, or 1 on the CPU.

    Raises:
        UserError: a GPU id that does not exist (one line).
    """
    found = discover()
    chosen = parse_gpus(gpus, found, field=field)
    n = workers if workers is not None else (len(chosen) if chosen else 1)
    return Devices(gpus=chosen, workers=n, hide_gpus=chosen is None and bool(found))


def _devices_of(spec: StudySpec, *, gpus: str | None, workers: int | None) -> Devices:
    """``--gpus`` when given, else the study's ``worker.gpus``; errors name the one that was used."""
    return plan_devices(gpus or spec.worker.gpus, workers, field="--gpus" if gpus else "worker.gpus")


def run_sweep(
    *,
    spec: StudySpec,
    storage: str | None = None,
    workers: int | None = None,
    gpus: str | None = None,
    allow_spec_change: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    on_output: Callable[[int, str], None] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> SweepResult:
    """Create or resume ``spec``'s study and run it to its target or time limit.

    ``spec.study.n_trials`` is the study's total: a resumed study runs only the
    trials it still lacks. Raises :class:`~sweep.errors.Interrupted` after a
    SIGINT/SIGTERM once every worker has ended its trial as FAIL
    ``interrupted``. ``gpus`` (default: ``worker.gpus``) and ``workers`` (default: one per
    GPU in use, else 1) are resolved by :func:`plan_devices`.
    """
    devices = _devices_of(spec, gpus=gpus, workers=workers)
    workers = devices.workers
    url = resolve_url(storage, spec.study.storage)
    spec = spec.with_artifacts(default_artifacts(url))
    target = spec.study.n_trials
    prepared: list[optuna.Study] = []

    def prepare() -> bool:
        # Runs while the workers import TensorFlow: the two costs overlap.
        made = _prepare_through_outage(spec, url=url, allow_spec_change=allow_spec_change)
        study, created = made.study, made.created
        prepared.append(study)
        done = records.tally(study.get_trials(deepcopy=False)).done
        if on_start is not None:
            verb = "created" if created else f"resuming ({done} of {target if target is not None else '-'} done)"
            where = f" on GPU {', '.join(devices.gpus)}" if devices.gpus else ""
            on_start(f"study {spec.study.name} {verb} on {mask(url)}, {workers} worker(s){where}")
        return target is None or done < target

    supervise(
        study_name=spec.study.name,
        url=url,
        target=target,
        deadline=time.time() + spec.study.timeout if spec.study.timeout else None,
        workers=workers,
        threads=threads_per_worker(spec, workers),
        on_progress=on_progress,
        on_output=on_output,
        prepare=prepare,
        policy=supervisor_policy(spec),
        gpus=devices.gpus,
        hide_gpus=devices.hide_gpus,
    )
    return summarize_study(prepared[0], url=url)


@dataclass(frozen=True)
class Creation:
    """What :func:`create_study` found or made: the study, its target and how far it is."""

    study_name: str
    storage: str  # masked
    created: bool
    target: int | None
    done: int
    spec_changes: tuple[str, ...] = ()
    """Differences from the stored spec, accepted with ``allow_spec_change`` (and recorded on the study)."""
    requeued: tuple[int, ...] = ()
    """Interrupted trials whose configurations were queued again for the next worker."""


def create_study(
    *, spec: StudySpec, storage: str | None = None, allow_spec_change: bool = False
) -> Creation:
    """Create ``spec``'s study, or check an existing one against it, as :func:`run_sweep` does; train nothing.

    The study gets its spec, data fingerprint and target (``spec.study.n_trials``), and
    workers join it with :func:`plan_join` (``sweep worker``). An existing study is resumed
    exactly as by :func:`run_sweep`: its target becomes ``spec.study.n_trials``, and the
    configurations of its interrupted trials are queued again, once, for the next worker
    to take. The storage is waited for through an outage for up to ``worker.outage_timeout``.
    Imports no TensorFlow. SIGINT/SIGTERM (in the main thread) raise :class:`Interrupted`.

    Raises:
        DataError, SpecError: bad data or a family that cannot read it; nothing is written.
        SpecDriftError: the study exists with a different spec (and ``allow_spec_change`` is False).
        StorageError: the storage stayed unreachable for ``worker.outage_timeout``.
        Interrupted: SIGINT or SIGTERM.
    """
    url = resolve_url(storage, spec.study.storage)
    spec = spec.with_artifacts(default_artifacts(url))
    with interruptible(f"creating study {spec.study.name!r}"):
        made = _prepare_through_outage(spec, url=url, allow_spec_change=allow_spec_change)
        done = records.tally(made.study.get_trials(deepcopy=False)).done
    return Creation(
        study_name=spec.study.name,
        storage=mask(url),
        created=made.created,
        target=spec.study.n_trials,
        done=done,
        spec_changes=made.spec_changes,
        requeued=made.requeued,
    )


def summarize_study(study: optuna.Study, *, url: str) -> SweepResult:
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    best = records.best_trial(trials)
    return SweepResult(
        study_name=study.study_name,
        storage=mask(url),
        target=study.user_attrs.get(records.TARGET),
        counts=counts,
        done=records.tally(trials).done,
        best_number=best.number if best else None,
        best_value=best.user_attrs["score"] if best else None,
    )


@dataclass(frozen=True)
class Join:
    """What ``sweep worker`` runs: an existing study, its target and deadline, and the workers for it."""

    study_name: str
    url: str
    target: int | None
    deadline: float | None
    threads: int
    policy: Policy
    devices: Devices


def plan_join(
    study_name: str,
    url: str,
    *,
    n_trials: int | None = None,
    timeout_s: float | None = None,
    workers: int | None = None,
    gpus: str | None = None,
    wait_s: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Join:
    """Read an existing study's spec from the storage, and plan workers that join it.

    ``n_trials`` is the study's total (default: the target stored by ``sweep run``);
    ``timeout_s`` stops starting trials after that long (default: the study's own time
    limit when it has no trial count), counted from when the study is found; ``gpus`` and
    ``workers`` as for :func:`run_sweep`. With ``wait_s``, a study that is not there yet
    is waited for (:func:`wait_for_study`, which hands ``on_wait`` its lines); without it,
    only a storage that does not answer is, for the default ``worker.outage_timeout``.

    Raises:
        StudyNotFoundError: no such study (after ``wait_s``, if given).
        UserError: the study was not created by ``sweep run``, or a GPU that does not exist.
        Interrupted: SIGINT or SIGTERM while waiting.
    """
    # A database that does not answer yet (restarting as this machine starts) is waited for as
    # `sweep run` waits for it, for the default worker.outage_timeout (the study's own is in it).
    outage_s = WorkerSection().outage_timeout
    wait_for_study(
        study_name, url, wait_s=outage_s if wait_s is None else wait_s, on_wait=on_wait, missing_ok=wait_s is not None
    )
    study, spec = open_sweep(study_name, url)
    devices = _devices_of(spec, gpus=gpus, workers=workers)
    target = n_trials if n_trials is not None else study.user_attrs.get(records.TARGET)
    if timeout_s is None and target is None:
        timeout_s = spec.study.timeout  # a study with a time limit and no trial count
    return Join(
        study_name=study_name,
        url=url,
        target=target,
        deadline=time.time() + timeout_s if timeout_s else None,
        threads=threads_per_worker(spec, devices.workers),
        policy=supervisor_policy(spec),
        devices=devices,
    )


def join_sweep(
    join: Join,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_output: Callable[[int, str], None] | None = None,
) -> None:
    """Run ``join.devices.workers`` workers on the study until its target or deadline (see :func:`supervise`)."""
    supervise(
        study_name=join.study_name,
        url=join.url,
        target=join.target,
        deadline=join.deadline,
        workers=join.devices.workers,
        threads=join.threads,
        on_progress=on_progress,
        on_output=on_output,
        policy=join.policy,
        gpus=join.devices.gpus,
        hide_gpus=join.devices.hide_gpus,
    )


def supervisor_policy(spec: StudySpec) -> Policy:
    """The supervisor's limits from the ``[worker]`` section."""
    w = spec.worker
    return Policy(crash_limit=w.crash_limit, crash_window_s=w.crash_window, outage_timeout_s=w.outage_timeout,
                  fork_workers=w.fork)  # fmt: skip


def supervise(
    *,
    study_name: str,
    url: str,
    target: int | None,
    deadline: float | None,
    workers: int,
    threads: int,
    on_progress: Callable[[Progress], None] | None = None,
    on_output: Callable[[int, str], None] | None = None,
    poll_s: float = 1.0,
    prepare: Callable[[], bool] | None = None,
    policy: Policy | None = None,
    gpus: Sequence[str] | None = None,
    hide_gpus: bool = False,
) -> None:
    """Run ``workers`` worker processes on the study until none has work left.

    With ``gpus``, worker slot ``s`` sees only GPU ``gpus[s % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``,
    set before it imports TensorFlow); ``hide_gpus`` hides every GPU from CPU workers.

    CPU workers are forked from one process that imports TensorFlow once
    (:mod:`sweep.zygote`; ``policy.fork_workers``), so a replaced worker costs a
    fork, not an import. GPU workers, and every worker without it, are fresh
    processes: with ``prepare``, the first ones start at once and import
    TensorFlow (seconds) while ``prepare()`` creates or checks the study here;
    they open the storage only after it returns True. When it returns False
    (nothing to do) or raises, they are killed: they have touched nothing yet.
    Forked workers are forked once it returns True; the import runs meanwhile.

    What happens when a worker exits is decided by :func:`sweep.supervisor.decide`
    (recycle, restart after a crash or an outage, stop); this loop applies it.
    Called from the main thread, it forwards SIGINT and SIGTERM to the workers
    and raises :class:`Interrupted` once they have stopped. From another thread
    no handler is installed (Python allows that in the main thread only): the
    caller then stops the workers by signalling this process's main thread.

    Raises:
        Interrupted: after SIGINT/SIGTERM, once the workers have stopped.
        UserError: a worker refused the study (for example, different data).
        FatalError: workers keep crashing, the storage stays unreachable, or trials keep failing.
    """
    policy = policy or Policy()
    env = {
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "ABSL_MIN_LOG_LEVEL": "3",
        **os.environ,
        ENV_URL: url,
        "PYTHONUNBUFFERED": "1",
    }
    state = State()
    zygote = Zygote() if policy.fork_workers and not gpus and not hide_gpus and zygote_available() else None
    procs: dict[int, WorkerProcess] = {}
    relays: dict[int, threading.Thread] = {}
    events: queue.SimpleQueue[tuple[str, int, str]] = queue.SimpleQueue()  # written by the relay threads
    last_error: dict[int, str] = {}
    received: list[int] = []
    # At most one spare: a held worker, TensorFlow imported, no slot yet, for the device of the
    # slot that will recycle (it sees only that GPU from the start).
    # (Forked workers need none: a fork is as cheap as waking a spare.)
    spares: list[tuple[WorkerProcess, str]] = []
    recycling: list[int] = []  # slots whose worker said it will recycle soon and has no successor yet

    def spawn(slot: int | None, *, held: bool, device: str) -> WorkerProcess:
        argv = [study_name, "--threads", str(threads)]
        if slot is not None:
            argv += ["--slot", str(slot)]
        if target is not None:
            argv += ["--target", str(target)]
        if deadline is not None:
            argv += ["--deadline", repr(deadline)]
        if held:
            argv.append("--await-go")
        if zygote is not None and not held:
            try:
                return zygote.fork(argv, {**env, **worker_env(device, hide_gpus=hide_gpus)})
            except (OSError, EOFError) as exc:  # the importing process is gone; the next fork starts another
                why = one_line(exc) or type(exc).__name__
                log.warning("worker not forked (%s); starting it as a fresh process", why)
        return subprocess.Popen(
            [sys.executable, "-m", "sweep.worker", *argv],
            env={**env, **worker_env(device, hide_gpus=hide_gpus)},
            stdin=subprocess.PIPE if held else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def attach(slot: int, proc: WorkerProcess) -> None:
        procs[slot] = proc
        if received:  # a signal came while this worker was being started
            proc.send_signal(received[-1])
        relays[slot] = threading.Thread(target=_relay, args=(proc, slot, on_output, events), daemon=True)
        relays[slot].start()

    def start(slot: int, *, held: bool = False) -> None:
        attach(slot, spawn(slot, held=held, device=assign(slot, gpus)))

    def replace(slot: int) -> None:
        """A fresh worker in ``slot``: the spare if one is ready for its device (start-up paid), else a new one."""
        for i, (spare, device) in enumerate(spares):
            if device == assign(slot, gpus):
                del spares[i]
                if _send_go(spare, slot):
                    attach(slot, spare)
                    return
                break
        start(slot)

    def drain() -> None:
        nonlocal state
        while True:
            try:
                what, slot, text = events.get_nowait()
            except queue.Empty:
                return
            if what == RECYCLE_SOON:
                recycling.append(slot)
            elif what == CONNECTED:
                _, state = decide(Connected(slot, time.time()), state, policy)
            else:
                last_error[slot] = text

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        _signal_all(procs, signum)

    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    restart_at: dict[int, float] = {}
    failure: SweepError | None = None
    started = time.time()
    next_poll = 0.0
    watched: list[optuna.Study] = []
    go = True
    try:
        if zygote is not None:
            zygote.start()  # it imports TensorFlow while prepare() runs
            go = (prepare is None or prepare()) and not received
            for slot in range(workers if go else 0):
                start(slot)
        else:
            for slot in range(workers):
                start(slot, held=prepare is not None)
            if prepare is not None:
                go = False  # until prepare() says otherwise
                try:
                    go = prepare() and not received
                finally:
                    _release(procs, go=go)
        while procs or restart_at:
            stopping = bool(received) or failure is not None
            for slot, when in list(restart_at.items()):
                if stopping:
                    del restart_at[slot]
                elif time.time() >= when:
                    del restart_at[slot]
                    start(slot)
            drain()
            for slot, proc in list(procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del procs[slot]
                if stopping:
                    continue
                relays[slot].join(timeout=5)  # the worker's last lines, its error among them
                drain()
                decision, state = decide(Exited(slot, code, time.time(), last_error.pop(slot, "")), state, policy)
                if decision is None:
                    continue
                match decision.kind:
                    case Kind.REPLACE:
                        replace(slot)
                    case Kind.RETIRE:
                        pass
                    case Kind.START:
                        log.warning("%s", decision.message)
                        start(slot)
                    case Kind.START_LATER:
                        log.warning("%s", decision.message)
                        restart_at[slot] = time.time() + decision.delay
                    case Kind.STOP_USER_ERROR | Kind.STOP_FATAL:
                        error = UserError if decision.kind is Kind.STOP_USER_ERROR else FatalError
                        failure = error(decision.message)
                        _signal_all(procs, signal.SIGTERM)  # each ends its trial as FAIL "interrupted"
                        stopping = True
            if zygote is not None:
                recycling.clear()  # its successor will be a fork: nothing to start ahead
            elif recycling and not spares and not stopping and procs:
                # A worker will recycle soon: start its successor now, so that the TensorFlow
                # import overlaps that worker's last trials instead of leaving its core idle.
                device = assign(recycling.pop(0), gpus)
                spares.append((spawn(None, held=True, device=device), device))
            if on_progress is not None and time.time() >= next_poll:
                next_poll = time.time() + poll_s
                _report(watched, study_name, url, target, started, on_progress)
            time.sleep(0.2)
    finally:
        for spare, _ in spares:  # held: it has touched nothing
            spare.kill()
            spare.wait()
        _stop_all(procs)
        if zygote is not None:
            zygote.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if on_progress is not None and go:
        _report(watched, study_name, url, target, started, on_progress)
    if received:
        raise Interrupted(received[0])
    if failure is not None:
        raise failure


def _signal_all(procs: dict[int, WorkerProcess], signum: int) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signum)


def _report(
    watched: list[optuna.Study],
    study_name: str,
    url: str,
    target: int | None,
    started: float,
    on_progress: Callable[[Progress], None],
) -> None:
    try:
        if not watched:
            watched.append(load_study(study_name, url))
        trials = watched[0].get_trials(deepcopy=False)
    except Exception as exc:  # the progress bar must never stop a sweep; workers handle outages
        log.debug("progress not read: %s", type(exc).__name__)
        return
    best = records.best_trial(trials)
    on_progress(
        Progress(
            done=(counted := records.tally(trials)).done,
            target=target,
            running=counted.running,
            failed=counted.failed,
            best_value=best.user_attrs["score"] if best else None,
            best_number=best.number if best else None,
            elapsed=time.time() - started,
        )
    )


def _relay(
    proc: WorkerProcess,
    slot: int,
    on_output: Callable[[int, str], None] | None,
    events: queue.SimpleQueue[tuple[str, int, str]],
) -> None:
    """Pass a worker's lines on; its marker lines and its error line go to the supervisor as events."""
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line in MARKERS:
            events.put((line, slot, ""))
            continue
        if line.startswith("error: "):  # the sweep ends with this line (exit 1 or 2), printed once by the supervisor
            events.put(("error", slot, line.removeprefix("error: ")))
            continue
        if on_output is not None:
            on_output(slot, line)
        else:
            log.warning("[worker %d] %s", slot, line)


def _send_go(proc: WorkerProcess, slot: int) -> bool:
    """Tell a held worker to start as ``slot``; False if it has died meanwhile."""
    if proc.stdin is None or proc.poll() is not None:
        return False
    try:
        proc.stdin.write(go_line(slot))
        proc.stdin.close()
    except OSError:
        return False
    return True


def _release(procs: dict[int, WorkerProcess], *, go: bool) -> None:
    """Let held workers open the storage, or kill them (they have touched nothing yet)."""
    for slot, proc in list(procs.items()):
        if go:
            _send_go(proc, slot)  # one that died meanwhile: the supervisor's loop restarts or reports it
            continue
        proc.kill()
        proc.wait()
        del procs[slot]


def _stop_all(procs: dict[int, WorkerProcess], grace_s: float = 30.0) -> None:
    """End workers still running when the supervisor leaves (an error in it, for example)."""
    live = [p for p in procs.values() if p.poll() is None]
    for p in live:
        p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    for p in live:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
