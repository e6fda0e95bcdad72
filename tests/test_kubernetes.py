"""deploy/kubernetes/: the manifests, validated offline against the Kubernetes API, and what they promise.

No cluster is needed: kubernetes-validate ships the API schemas of each Kubernetes release, and
its strict mode rejects any field the API does not know (a misspelt field that ``kubectl apply``
would drop with a warning). The other tests read the YAML: no credentials in it, the storage URL
from a Secret only, the workers' Job shape, resources and security settings, and every command a
``sweep`` subcommand that ``sweep --help`` lists, whose arguments the CLI's own parser accepts.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
STUDY_FILE = ROOT / "studies" / "digits-lstm.toml"
KUBERNETES_VERSION = "1.30.0"
SECRET_NAME = "sweep-storage"
STORAGE_VAR = "SWEEP_STORAGE"
GPU = "nvidia.com/gpu"
WORKER_JOBS = ("sweep-workers", "sweep-workers-gpu")
TRAINING_JOBS = WORKER_JOBS
FORBIDDEN = re.compile(r"postgresql://|postgresql\+|mysql://|mysql\+|sqlite:///|password", re.IGNORECASE)
SHELLS = ("sh", "/bin/sh", "bash", "/bin/bash")
# `sweep SUBCOMMAND ARGS...` inside a shell script, up to a redirection or a shell operator.
SHELL_SWEEP = re.compile(r"(?:^|[\s;&|(])sweep((?:\s+[^\s;&|<>()]+)+)")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@functools.cache
def _objects() -> tuple[dict[str, Any], ...]:
    """Every object of every manifest, parsed once (tests that change one change a deep copy)."""
    return tuple(doc for path in MANIFESTS for doc in _documents(path))


def _object(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} under {DEPLOY}, found {len(found)}"
    return found[0]


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def _containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def _workloads() -> list[dict[str, Any]]:
    return [o for o in _objects() if o["kind"] in ("Job", "Deployment")]


def _all_containers() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{o['kind']} {o['metadata']['name']}", c) for o in _workloads() for c in _containers(_pod_spec(o))]


def _sweep_calls(container: dict[str, Any]) -> list[list[str]]:
    """The argument lists (subcommand first) of each `sweep` call a container makes."""
    argv = [*container.get("command", []), *container.get("args", [])]
    if argv and argv[0] in SHELLS and argv[1:2] == ["-c"]:
        script = " ".join(argv[2:])
        return [shlex.split(m[1]) for m in SHELL_SWEEP.finditer(script)]
    if argv and argv[0] == "sweep":
        return [argv[1:]]
    return []


def _kubernetes_validate() -> Any:
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (pip install 'kubernetes-validate>=1.30'): "
        "the manifests are not checked against the Kubernetes API schemas",
    )


# -- Schema validation -------------------------------------------------------------------------


def test_the_manifests_are_there() -> None:
    names = {p.name for p in MANIFESTS}
    assert {
        "configmap-study.yaml",
        "job-create-study.yaml",
        "job-workers.yaml",
        "job-workers-gpu.yaml",
        "dashboard.yaml",
    } <= names
    assert (DEPLOY / "README.md").is_file()
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in _objects())
    assert kinds == [
        ("ConfigMap", "sweep-study"),
        ("Deployment", "sweep-dashboard"),
        ("Job", "sweep-create-study"),
        ("Job", "sweep-workers"),
        ("Job", "sweep-workers-gpu"),
        ("Service", "sweep-dashboard"),
    ]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_for_kubernetes(path: Path) -> None:
    kv = _kubernetes_validate()
    docs = _documents(path)
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        try:
            validated = kv.validate(doc, KUBERNETES_VERSION, strict=True)
        except kv.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata'].get('name')}: {where}: {exc.message}")
        assert validated == "1.30", f"validated against Kubernetes {validated}, not 1.30"


def _unknown_container_field(job: dict[str, Any]) -> None:
    _pod_spec(job)["containers"][0]["resource"] = {"limits": {"cpu": "1"}}  # `resources` misspelt


def _unknown_job_field(job: dict[str, Any]) -> None:
    job["spec"]["paralellism"] = 8


def _wrong_type(job: dict[str, Any]) -> None:
    job["spec"]["parallelism"] = "four"


def _missing_required(job: dict[str, Any]) -> None:
    del _pod_spec(job)["containers"][0]["name"]


@pytest.mark.parametrize("breakage", [_unknown_container_field, _unknown_job_field, _wrong_type, _missing_required])
def test_a_broken_manifest_fails_validation(breakage: Any) -> None:
    """The validation is not vacuous: the workers' Job, broken in memory, is rejected."""
    kv = _kubernetes_validate()
    job = _object("Job", "sweep-workers")
    kv.validate(job, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(job)
    breakage(broken)
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, KUBERNETES_VERSION, strict=True)


# -- No credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_no_credentials_or_storage_url_in_a_manifest(path: Path) -> None:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        found = FORBIDDEN.search(line)
        assert found is None, f"{path.name}:{number}: {found[0] if found else ''!r} in {line.strip()!r}"


def test_the_storage_url_comes_from_the_secret_only() -> None:
    """Each container gets SWEEP_STORAGE from the Secret (a secretKeyRef, or envFrom a secretRef), never a value."""
    for where, container in _all_containers():
        what = f"{where}/{container['name']}"
        env = {e["name"]: e for e in container.get("env", [])}
        env_from = container.get("envFrom", [])
        for source in env_from:
            assert set(source) <= {"secretRef", "prefix"}, f"{what}: envFrom other than a Secret: {source}"
        if STORAGE_VAR in env:
            entry = env[STORAGE_VAR]
            assert "value" not in entry, f"{what}: {STORAGE_VAR} is written in the manifest"
            assert entry["valueFrom"] == {"secretKeyRef": {"name": SECRET_NAME, "key": STORAGE_VAR}}, what
        else:
            assert any(s["secretRef"]["name"] == SECRET_NAME and not s.get("prefix") for s in env_from), (
                f"{what}: no {STORAGE_VAR}"
            )
        for call in _sweep_calls(container):
            assert not any(a == "--storage" or a.startswith("--storage=") for a in call), (
                f"{what}: --storage on the command line"
            )
    readme = (DEPLOY / "README.md").read_text()
    assert f"kubectl create secret generic {SECRET_NAME}" in readme
    assert f"--from-literal={STORAGE_VAR}=" in readme


# -- What the manifests promise ----------------------------------------------------------------


@pytest.mark.parametrize("name", WORKER_JOBS)
def test_workers_job_is_indexed_and_restarts_on_failure(name: str) -> None:
    job = _object("Job", name)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] >= 2
    assert spec["completions"] == spec["parallelism"], "an Indexed Job scales with both changed together"
    assert isinstance(spec.get("backoffLimit"), int) and spec["backoffLimit"] >= 1
    assert _pod_spec(job)["restartPolicy"] == "OnFailure"


@pytest.mark.parametrize("name", TRAINING_JOBS)
def test_training_pods_get_time_to_end_their_trial(name: str) -> None:
    """SIGTERM ends the running trial within about one epoch; the pod must not be killed first."""
    job = _object("Job", name)
    assert _pod_spec(job)["terminationGracePeriodSeconds"] >= 120
    assert "backoffLimit" in job["spec"]


def test_every_container_has_cpu_and_memory_requests_and_limits() -> None:
    for where, container in _all_containers():
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert resource in resources.get(part, {}), f"{where}/{container['name']}: no {part}.{resource}"


def test_pods_run_as_an_unprivileged_user() -> None:
    for workload in _workloads():
        pod = _pod_spec(workload)
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        # The image's USER is a name (`sweep`): the kubelet starts such a pod only with a numeric uid given here.
        assert isinstance(context["runAsUser"], int) and context["runAsUser"] != 0
        for container in _containers(pod):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert "ALL" in container["securityContext"]["capabilities"]["drop"]


def test_the_gpu_workers_ask_for_one_gpu_each() -> None:
    pod = _pod_spec(_object("Job", "sweep-workers-gpu"))
    assert pod["containers"][0]["resources"]["limits"][GPU] == 1
    cpu_pod = _pod_spec(_object("Job", "sweep-workers"))
    assert all(GPU not in c["resources"]["limits"] for c in _containers(cpu_pod))
    gpu_args = [c.get("args") for c in pod["containers"]]
    assert gpu_args == [c.get("args") for c in cpu_pod["containers"]], "the GPU Job runs the same workers"


def test_the_service_selects_the_dashboard_pods() -> None:
    deployment = _object("Deployment", "sweep-dashboard")
    service = _object("Service", "sweep-dashboard")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    # No other pod carries the labels the Service selects.
    for workload in _workloads():
        if workload is not deployment:
            other = workload["spec"]["template"]["metadata"].get("labels", {})
            assert not service["spec"]["selector"].items() <= other.items(), workload["metadata"]["name"]

    (container,) = _pod_spec(deployment)["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8080
    target = port["targetPort"]
    assert (ports[target] if isinstance(target, str) else target) == 8080
    probe = container["readinessProbe"]["httpGet"]
    assert (ports[probe["port"]] if isinstance(probe["port"], str) else probe["port"]) == 8080
    assert _sweep_calls(container) == [["dashboard", "--host", "0.0.0.0", "--port", "8080"]]


def test_the_configmap_holds_the_study_the_workers_join() -> None:
    configmap = _object("ConfigMap", "sweep-study")
    stored = tomllib.loads(configmap["data"]["study.toml"])
    assert stored == tomllib.loads(STUDY_FILE.read_text()), f"the ConfigMap's study.toml differs from {STUDY_FILE}"
    study_name = stored["study"]["name"]

    create_job = _object("Job", "sweep-create-study")
    create = _pod_spec(create_job)
    (container,) = create["containers"]
    assert _sweep_calls(container) == [["create", "/study/study.toml"]], "it creates the study and trains nothing"
    assert create["restartPolicy"] == "OnFailure" and create_job["spec"]["backoffLimit"] >= 1
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in create["volumes"]}
    assert volumes[next(n for n, p in mounts.items() if p == "/study")]["configMap"]["name"] == "sweep-study"

    for name in WORKER_JOBS:
        pod = _pod_spec(_object("Job", name))
        (worker,) = pod["containers"]
        # The workers wait for the study themselves, so the Jobs start in any order.
        assert _sweep_calls(worker) == [["worker", study_name, "--workers", "1", "--wait", "30m"]]
        assert not pod.get("initContainers"), "no init container: `sweep worker --wait` waits for the study"
        assert "volumes" not in pod, "the workers read the study from the database, not from a file"


# -- The commands exist ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subcommands() -> set[str]:
    """The names in the Commands panel of `sweep --help`, run as the containers run it."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop(STORAGE_VAR, None)
    done = subprocess.run(
        [sys.executable, "-m", "sweep", "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    panel = done.stdout.split("Commands", 1)[1]
    return {m[1] for m in re.finditer(r"^\W\s([a-z][a-z-]*)\s{2,}\S", panel, re.MULTILINE)}


def _parse(call: list[str]) -> None:
    """Parse `sweep CALL` as the CLI would (options, types, ranges, extra arguments) without running it."""
    import typer.main

    from sweep.cli import app

    command = typer.main.get_command(app).commands[call[0]]  # a click group (typer may bundle its own click)
    with command.make_context(call[0], list(call[1:])):
        pass


def test_every_container_runs_a_sweep_subcommand_that_exists(subcommands: set[str]) -> None:
    assert {"create", "worker", "status", "dashboard"} <= subcommands, subcommands
    # The parsing below is not vacuous: a misspelt option, an extra argument, a port out of range,
    # an option without its value.
    for bad in (["worker", "digits-lstm", "--wrkers", "1"], ["worker", "a", "b"], ["dashboard", "--port", "99999"],
                ["create", "/study/study.toml", "--workers", "1"], ["worker", "digits-lstm", "--wait"]):
        with pytest.raises(Exception, match=r"No such option|unexpected extra argument|less than or equal|requires an"):
            _parse(bad)
    for where, container in _all_containers():
        calls = _sweep_calls(container)
        assert calls, f"{where}/{container['name']}: runs no `sweep` command"
        for call in calls:
            assert call and call[0] in subcommands, f"{where}/{container['name']}: `sweep {shlex.join(call)}`"
            try:
                _parse(call)
            except Exception as exc:  # click's UsageError and BadParameter
                pytest.fail(f"{where}/{container['name']}: `sweep {shlex.join(call)}`: {exc}")
