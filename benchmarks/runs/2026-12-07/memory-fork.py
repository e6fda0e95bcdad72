"""Memory of a real recycled sweep run, forked workers against fresh ones, side by side (run on 2026-12-07).

``python benchmarks/runs/2026-12-07/memory-fork.py OUT_FOLDER [ROUNDS]``; writes OUT_FOLDER/memcheck.json.

For each run: every 0.2 s, the PSS (proportional set size: shared pages split between the processes
that share them) of the whole process tree below `sweep run`; its peak and median, and the run's wall time.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout
from tests.helpers import cheap_study


def tree(root: int) -> list[int]:
    parents = {}
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            try:
                parents[int(e.name)] = int(Path(f"/proc/{e.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                pass
    out, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for c, pp in parents.items():
            if pp == p and c not in out:
                out.add(c)
                frontier.append(c)
    return sorted(out)


def pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(label: str, folder: Path, fork: bool) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    study = cheap_study(folder, name="mem", n_trials=12, epochs=2)
    text = (
        study.read_text()
        .replace('source = "breast_cancer"', 'source = "digits"')
        .replace('family = "dense"', 'family = "lstm"')
    )
    study.write_text(text)
    cmd = [
        sys.executable,
        "-m",
        "sweep",
        "run",
        str(study),
        "--storage",
        f"sqlite:///{folder}/m.db",
        "-q",
        "--workers",
        "2",
        "--set",
        "worker.max_trials=3",
        "--set",
        f"worker.fork={'true' if fork else 'false'}",
    ]
    t0 = time.time()
    proc = subprocess.Popen(
        cmd, cwd=str(Path(__file__).resolve().parents[3]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak, samples = 0.0, []
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            pids = tree(proc.pid)
            total = sum(pss_mb(p) for p in pids)
            samples.append(total)
            peak = max(peak, total)
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate(timeout=1800)
    stop.set()
    th.join()
    secs = time.time() - t0
    assert proc.returncode == 0, out
    samples.sort()
    return {
        "label": label,
        "seconds": round(secs, 1),
        "peak_pss_mb": round(peak, 1),
        "median_pss_mb": round(samples[len(samples) // 2], 1),
    }


if __name__ == "__main__":
    base = Path(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    results = []
    for r in range(rounds):
        order = [("fork", True), ("spawn", False)]
        if r % 2:
            order.reverse()
        for label, fork in order:
            res = run(label, base / f"{label}-{r}", fork)
            res["round"] = r
            print(json.dumps(res), flush=True)
            results.append(res)
    Path(base / "memcheck.json").write_text(json.dumps(results, indent=1))
