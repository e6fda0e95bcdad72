"""Which GPU each worker trains on: found without TensorFlow, chosen per worker slot, set before it imports.

TensorFlow gives its first process all the memory of every GPU it sees, so
several workers on one machine must each see only their own device. The
supervisor finds the GPUs (``CUDA_VISIBLE_DEVICES`` when the user set it,
else ``nvidia-smi``; it never imports TensorFlow) and starts worker slot ``s``
with ``CUDA_VISIBLE_DEVICES`` set to the ``s``-th chosen GPU (round robin when
there are more workers than GPUs). The worker turns memory growth on before it
builds a model and records the device of every trial it runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from sweep.errors import UserError

__all__ = ["ENV_DEVICE", "assign", "describe", "discover", "parse_gpus", "worker_env"]

ENV_DEVICE = "SWEEP_DEVICE"
"""Set by the supervisor for each worker: ``gpu:ID`` or ``cpu``."""
NVIDIA_SMI_TIMEOUT_S = 10.0


def discover(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPU ids a worker may be given: ``CUDA_VISIBLE_DEVICES`` if set, else what ``nvidia-smi`` lists."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [part.strip() for part in visible.split(",") if part.strip()]
        return [] if ids[:1] == ["-1"] else ids
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if smi is None:
        return []
    try:
        listed = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True, env=dict(env),
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def parse_gpus(value: str | Sequence[str], found: Sequence[str], *, field: str = "--gpus") -> list[str] | None:
    """The GPUs to use: ``auto`` (every one found; None when there is none), ``none``, or a list of ids.

    Returns None for "no GPU, train on the CPU" and a non-empty list otherwise.

    Raises:
        UserError: an id that was not found, or an unreadable value (one line).
    """
    if isinstance(value, str):
        text = value.strip()
        if text == "auto":
            return list(found) or None
        if text == "none":
            return None
        wanted = [part.strip() for part in text.split(",")]
    else:
        wanted = [str(part).strip() for part in value]
    allowed = f"auto, none, or a comma-separated list of ids among {', '.join(found)}" if found else "auto or none"
    if not wanted or any(not part for part in wanted):
        raise UserError(f"{field}: got {value!r}; allowed: {allowed}")
    missing = [part for part in wanted if part not in found]
    if missing:
        seen = f"GPUs found: {', '.join(found)}" if found else "no GPU was found (nvidia-smi lists none)"
        raise UserError(f"{field}: got {value!r}; GPU {missing[0]} does not exist ({seen}); allowed: {allowed}")
    return list(dict.fromkeys(wanted))


def assign(slot: int, gpus: Sequence[str] | None) -> str:
    """The device of worker slot ``slot``: ``gpu:ID`` round robin over ``gpus``, or ``cpu``."""
    return f"gpu:{gpus[slot % len(gpus)]}" if gpus else "cpu"


def worker_env(device: str, *, hide_gpus: bool) -> dict[str, str]:
    """What to add to a worker's environment so that it sees only ``device``.

    ``hide_gpus``: on ``cpu``, hide every GPU (``--gpus none`` on a machine that has some), so
    that TensorFlow does not take them.
    """
    if device.startswith("gpu:"):
        return {ENV_DEVICE: device, "CUDA_VISIBLE_DEVICES": device.removeprefix("gpu:")}
    return {ENV_DEVICE: "cpu", **({"CUDA_VISIBLE_DEVICES": ""} if hide_gpus else {})}


def describe(assigned: str, usable: int) -> str:
    """The ``device`` attr of a trial: the assigned device, and whether TensorFlow could use it."""
    if assigned.startswith("gpu:") and usable == 0:
        return f"cpu (GPU {assigned.removeprefix('gpu:')} assigned, not visible to TensorFlow)"
    return assigned
