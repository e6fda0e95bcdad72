"""Predictions from a model saved by ``sweep best``, on raw inputs in the study's format.

The saved model holds its own scaling (:func:`sweep.model.export_model`), so the
inputs are the data as the study's source gives it: an ``.npz`` with an array
``X`` of raw inputs, or, for a tabular study read from a CSV file, a ``.csv``
with the same feature columns. The JSON that ``sweep best`` writes beside the
model says which columns and which classes.
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from sweep.errors import UserError

__all__ = ["predict_file", "read_inputs"]


def _config(model_file: Path) -> dict[str, Any]:
    config_file = model_file.with_suffix(".json")
    if not config_file.is_file():
        raise UserError(
            f"MODEL: {model_file} has no {config_file.name} beside it; allowed: a model saved by 'sweep best'"
        )
    try:
        loaded = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"MODEL: cannot read {config_file}: {exc}") from None
    if not isinstance(loaded, dict) or "saved_model" not in loaded:
        raise UserError(f"MODEL: {config_file} was not written by 'sweep best'")
    return loaded


def read_inputs(data_file: Path, config: dict[str, Any], input_shape: tuple[int, ...]) -> np.ndarray:
    """The raw inputs in ``data_file``, checked against the model's input shape.

    Raises:
        UserError: a missing or unreadable file, a missing array or column, or a shape that does not fit.
    """
    if not data_file.is_file():
        raise UserError(f"--data: {str(data_file)!r} is not a file; allowed: an .npz with X, or a .csv")
    suffix = data_file.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(data_file, allow_pickle=False) as arrays:
                if "X" not in arrays:
                    raise UserError(f"--data: {data_file} has no array 'X' (it has: {', '.join(arrays.files)})")
                x = np.asarray(arrays["X"], dtype=np.float32)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            reason = str(exc) or type(exc).__name__
            raise UserError(f"--data: cannot read {data_file} as .npz: {reason}") from None
    elif suffix == ".csv":
        x = _read_csv(data_file, config)
    else:
        raise UserError(f"--data: got {data_file.name!r}; allowed: a .npz file with X, or a .csv file")
    if tuple(x.shape[1:]) != tuple(input_shape) or x.shape[0] == 0:
        raise UserError(
            f"--data: X in {data_file} has shape {list(x.shape)}; the model takes "
            f"[rows, {', '.join(str(d) for d in input_shape)}]"
        )
    if not np.isfinite(x).all():
        raise UserError(f"--data: X in {data_file} holds NaN or infinite values")
    return x


def _read_csv(data_file: Path, config: dict[str, Any]) -> np.ndarray:
    section = config.get("data") or {}
    if section.get("source") != "csv" or section.get("lookback") or section.get("group"):
        raise UserError(
            "--data: a .csv works for tabular studies read from a CSV file; for this study "
            "give an .npz with the array X of raw inputs"
        )
    with data_file.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise UserError(f"--data: {data_file} is empty")
    header = [h.strip() for h in rows[0]]
    target = section.get("target")
    targets = {target} if isinstance(target, str) else set(target or [])
    features = section.get("features") or [h for h in header if h not in targets]
    missing = [name for name in features if name not in header]
    if missing:
        raise UserError(f"--data: {data_file} has no column {missing[0]!r}; the model reads {', '.join(features)}")
    where = [header.index(name) for name in features]
    values = np.empty((len(rows) - 1, len(where)), dtype=np.float32)
    for r, row in enumerate(rows[1:]):
        for c, i in enumerate(where):
            try:
                values[r, c] = float(row[i])
            except (ValueError, IndexError):
                cell = row[i] if i < len(row) else ""
                raise UserError(
                    f"--data: {data_file} row {r + 2} column {features[c]!r} is {cell!r}; allowed: a number"
                ) from None
    return values


def predict_file(model_file: Path, data_file: Path, out_file: Path | None = None) -> tuple[Path, int]:
    """Write the model's predictions for the inputs in ``data_file`` as CSV; return (path, rows).

    Classification: the predicted class and each class's probability; regression and
    forecasts: the predicted values, in the data's own units.

    Raises:
        UserError: the model or the data cannot be used (one line).
    """
    if not model_file.is_file() or model_file.suffix != ".keras":
        raise UserError(f"MODEL: {str(model_file)!r} is not a .keras file saved by 'sweep best'")
    config = _config(model_file)
    from sweep.train import import_tensorflow

    import_tensorflow()
    import keras

    model = keras.models.load_model(model_file, compile=False)
    input_shape = tuple(int(d) for d in model.input_shape[1:])
    x = read_inputs(data_file, config, input_shape)
    outputs = np.asarray(model.predict(x, verbose=0))
    target = out_file or data_file.with_name(data_file.stem + "-predictions.csv")
    classes = (config.get("saved_model") or {}).get("classes")
    with target.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if config["saved_model"].get("outputs") == "class probabilities":
            names = [str(c) for c in classes] if classes and len(classes) == outputs.shape[1] else [
                str(i) for i in range(outputs.shape[1])
            ]
            writer.writerow(["prediction", *(f"p_{n}" for n in names)])
            for row in outputs:
                writer.writerow([names[int(np.argmax(row))], *(f"{p:.6g}" for p in row)])
        else:
            flat = outputs.reshape(outputs.shape[0], -1)
            writer.writerow(["prediction"] if flat.shape[1] == 1 else [f"prediction_{i}" for i in range(flat.shape[1])])
            writer.writerows([[f"{v:.6g}" for v in row] for row in flat])
    return target, int(outputs.shape[0])
