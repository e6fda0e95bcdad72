"""The picture of each diagnosis: ``python docs/diagnosis.py`` writes ``docs/images/diagnosis.png``.

Each panel is one trial of a made-up study of ten-class cross-entropy curves
(baseline ln 10 = 2.30): eight ordinary trials (grey) and the trial the panel
names, labelled by sweep's own calibrated rules against the ordinary ones
(:func:`labels`; a test checks that every panel gets its title).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sweep.calibration import calibrate  # noqa: E402
from sweep.stability import Diagnosis, rediagnose, residual_spread, split_reference, summarize  # noqa: E402

EPOCHS = 20
TAIL = 5
BASELINE = math.log(10)
REPEATS = 2


def _noise(seed: int, scale: float) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, EPOCHS)


def _fall(low: float, rate: float) -> np.ndarray:
    e = np.arange(EPOCHS, dtype=np.float64)
    return low + (BASELINE - low) * np.exp(-rate * e)


def ordinary(i: int) -> tuple[list[list[float]], list[list[float]]]:
    """An ordinary trial: validation and training loss fall to a plateau and stay there."""
    val = [list(_fall(0.45 + 0.03 * i, 0.5) + _noise(100 * i + r, 0.006)) for r in range(REPEATS)]
    train = [list(_fall(0.35 + 0.03 * i, 0.5)) for _ in range(REPEATS)]
    return val, train


def _example(name: str) -> tuple[list[list[float]], list[list[float]]]:
    e = np.arange(EPOCHS, dtype=np.float64)
    train = _fall(0.3, 0.5)
    if name == "stable":
        val = _fall(0.40, 0.5) + _noise(1, 0.006)
    elif name == "not_learning":
        val = BASELINE - 0.08 * (1 - np.exp(-0.3 * e)) + _noise(2, 0.006)
        train = BASELINE - 0.1 * (1 - np.exp(-0.3 * e))
    elif name == "oscillating":
        val = _fall(0.45, 0.5) + np.where(e % 2 == 1, 0.25, 0.0) * (e > 4)
    elif name == "overfitting":
        val = _fall(0.35, 0.6) + np.clip(e - 7, 0, None) * 0.05
        train = _fall(0.05, 0.4)
    elif name == "underfitting":
        val = _fall(0.30, 0.05)
        train = _fall(0.25, 0.05)
    elif name == "diverged":
        val = _fall(0.6, 0.6) + np.clip(e - 6, 0, None) ** 2 * 0.06
        train = _fall(0.6, 0.6) + np.clip(e - 6, 0, None) ** 2 * 0.05
    else:
        raise ValueError(name)
    return [list(val)] * REPEATS, [list(train)] * REPEATS


NAMES = ("stable", "not_learning", "oscillating", "overfitting", "underfitting", "diverged")


def labels() -> dict[str, tuple[Diagnosis, str]]:
    """Each example's diagnosis and hint, judged with the ordinary trials as ``sweep rank`` judges."""
    out = {}
    for name in NAMES:
        trials = [ordinary(i) for i in range(8)] + [_example(name)]
        summaries = [summarize(v, u, tail=TAIL, baseline=BASELINE).to_attrs() for v, u in trials]
        reference = split_reference([s["repeat_means"] for s in summaries], n_repeats=REPEATS)
        for s in summaries:
            s["repeat_spread"] = residual_spread(s["repeat_means"], reference)
        calibration = calibrate(summaries)
        assert calibration is not None
        judged = rediagnose(summaries[-1], calibration=calibration, reference=reference, tail=TAIL)
        assert judged is not None
        out[name] = (judged[0], judged[1])
    return out


def main(path: Path = ROOT / "docs" / "images" / "diagnosis.png") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = labels()
    fig, axes = plt.subplots(2, 3, figsize=(11, 6), sharex=True)
    for ax, name in zip(axes.flat, NAMES, strict=True):
        for i in range(8):
            ax.plot(ordinary(i)[0][0], color="0.8", lw=1)
        val, train = _example(name)
        ax.plot(val[0], color="C0", lw=2, label="validation")
        ax.plot(train[0], color="C1", lw=1.5, ls="--", label="training")
        ax.axhline(BASELINE, color="C3", lw=1, ls=":", label="baseline")
        ax.axvspan(EPOCHS - TAIL - 0.5, EPOCHS - 0.5, color="0.93", zorder=0)
        ax.set_title(judged[name][0].value)
        ax.set_ylim(0, 3.5)
    axes[0][0].legend(loc="upper right", fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("epoch (shaded: the tail)")
    fig.suptitle("Each diagnosis, judged against the study's other trials (grey)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


if __name__ == "__main__":
    print(main())
