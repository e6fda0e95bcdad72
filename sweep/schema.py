"""A JSON Schema for study files, generated from the spec models in :mod:`sweep.spec`.

Editors read it to complete and check study files (taplo and Even Better TOML take a
``#:schema`` directive or a ``[[rule]]`` in ``taplo.toml``; VS Code's JSON tooling takes it
as is). It starts from pydantic's ``model_json_schema()`` for each section and fixes what
pydantic cannot see: fields typed ``Any`` whose validators accept several forms (search
parameters, durations, ``data.target``, ``worker.gpus``), patterns written as Python regular
expressions, and the rules that join two fields.

The schema never refuses a file the spec accepts. Where the spec's rule cannot be written in
JSON Schema (``low < high`` in a range, ``grace_period > heartbeat_interval``, an integer
written as ``3.0``, ``inf`` or ``nan`` where a number has no upper bound) the schema lets the
value through and the spec reports it on load. ``[study]`` does not require one of
``budget``, ``n_trials`` or ``timeout``: the command line may give them.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import re
import textwrap
from typing import Any

from pydantic import BaseModel

from sweep.spec import (
    _DURATION,
    _RULES,
    BUILDER_REF,
    DEFAULT_STORAGE,
    PARAM_NAMES,
    Choice,
    Fixed,
    Range,
    StudySpec,
    _Rule,
)

__all__ = ["SCHEMA_DRAFT", "schema_json", "study_schema"]

SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"
"""The JSON Schema dialect of :func:`study_schema`."""

_WORD = r"(?:[0-9A-Za-z_]|[^\u0000-\u007f])"
"""Python's ``\\w`` for an ECMA-262 engine (where ``\\w`` is ASCII only): any non-ASCII character passes."""

_EXTRA_NAME = rf"^[A-Za-z_]{_WORD}{{0,63}}$"
_STUDY_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$"
_SEARCHED = (*PARAM_NAMES, "layer_norm")

_ZERO_DURATION = r"^\s*0+(?:\.0+)?\s*[smhd]?\s*$"
_DURATION_FIELDS = {("study", "timeout"), ("worker", "outage_timeout"), ("worker", "crash_window")}

_SECTION_NOTES: dict[str, str] = {
    "study": "The study: its name, where it is stored, its seed, when it stops and what it optimises.",
    "data": "The dataset: a built-in one, or a CSV or NPZ file, and how it is split.",
    "search": (
        "The search space: the eight hyperparameters and layer_norm, each a constant, a list of choices "
        "or a range {low, high, log, step}; [search.extra] holds a builder's own parameters."
    ),
    "training": "How each configuration is trained: epochs, early stopping, repeats and optimizer settings.",
    "stability": "How a trial's curves are scored: score = tail_mean + risk * tail_std over the last `tail` epochs.",
    "sampler": "The Optuna sampler that proposes configurations.",
    "pruner": "The Optuna pruner that stops unpromising trials early (on repeat 0's running score).",
}
"""Descriptions of the sections whose model has no docstring."""

_NOTES: dict[tuple[str, str], str] = {
    ("study", "name"): "The study's name in the storage: 1-256 letters, digits, '.', '_' or '-', "
    "starting with a letter or digit.",
    ("study", "storage"): "The storage URL, used when neither --storage nor $SWEEP_STORAGE is given "
    f"(default: {DEFAULT_STORAGE}).",
    ("study", "seed"): "The base seed: repeat r of every trial splits the data and trains with seed + r.",
    ("study", "n_trials"): "How many trials to run (give budget, n_trials or timeout, here or on the command line).",
    ("study", "timeout"): "Stop starting trials after this long: seconds, or a duration such as '90m', '2h', '1d'.",
    ("study", "objective"): "'score' (the stability score, lower is better), or 'pareto' for a two-objective "
    "study of tail_mean and tail_std.",
    ("data", "source"): "A built-in dataset (digits, mackey_glass, breast_cancer, diabetes) or a file (csv, npz).",
    ("data", "path"): "The file to read (required for csv and npz); relative to the study file's folder.",
    ("data", "features"): "The CSV columns the model reads: a non-empty list of distinct names.",
    ("data", "target"): "The column to predict, or a list of columns.",
    ("data", "task"): "classification, regression or forecast; required for csv and npz (mackey_glass is forecast).",
    ("data", "lookback"): "The input window, in steps, when a series is windowed.",
    ("data", "horizon"): "How many steps ahead a forecast predicts.",
    ("data", "group"): "A CSV column whose groups of rows each become one variable-length sequence.",
    ("data", "length"): "The number of points of the generated mackey_glass series.",
    ("data", "validation_fraction"): "The fraction of the rows each repeat validates on.",
    ("model", "family"): "A built-in model family (give either family or builder).",
    ("model", "builder"): "Your own model as 'module:function' (see sweep.builder; give either family or builder).",
    ("search", "n_layers"): "The number of layers.",
    ("search", "units"): "Cells per recurrent layer, or neurons per dense layer.",
    ("search", "activation"): "The activation function.",
    ("search", "learning_rate"): "The optimizer's learning rate.",
    ("search", "optimizer"): "The optimizer (sgd uses training.momentum).",
    ("search", "batch_size"): "The batch size.",
    ("search", "dropout"): "The dropout rate.",
    ("search", "l2"): "L2 kernel regularisation (0 turns it off).",
    ("search", "layer_norm"): "LayerNormalization between recurrent layers (lstm and gru only).",
    ("training", "max_epochs"): "The most epochs one training run takes.",
    ("training", "patience"): "Epochs without improvement before early stopping (0 turns early stopping off).",
    ("training", "repeats"): "Training runs per configuration, each with its own seed and split.",
    ("training", "momentum"): "The momentum of the sgd optimizer.",
    ("training", "clipnorm"): "Clip each gradient to this norm (unset: no clipping).",
    ("training", "steps_per_execution"): "Batches Keras runs per call (Keras's steps_per_execution).",
    ("stability", "tail"): "The epochs at the end of each curve that the score summarises.",
    ("stability", "risk"): "The weight of tail_std in score = tail_mean + risk * tail_std.",
    ("sampler", "name"): "tpe, random, qmc, or nsga2 (for objective = 'pareto' only).",
    ("sampler", "n_startup_trials"): "Random trials before TPE starts modelling.",
    ("sampler", "multivariate"): "TPE's multivariate mode.",
    ("sampler", "constant_liar"): "TPE's constant liar, so that parallel workers propose different configurations.",
    ("pruner", "name"): "median, percentile, hyperband, or none (which objective = 'pareto' needs).",
    ("pruner", "n_startup_trials"): "Trials that are never pruned (median and percentile).",
    ("pruner", "n_warmup_steps"): "Epochs before a trial may be pruned (median and percentile).",
    ("pruner", "percentile"): "The percentile a trial must be within to go on (percentile).",
    ("pruner", "min_resource"): "Hyperband's minimum epochs.",
    ("pruner", "reduction_factor"): "Hyperband's reduction factor.",
    ("racing", "enabled"): "Whether racing is on; without allocation.policy, false means every repeat for "
    "every trial ('full').",
    ("racing", "keep"): "The fraction of repeat-0 scores a trial must be among to train its other repeats.",
    ("racing", "n_startup_trials"): "The first trials to finish repeat 0, which always go on.",
    ("allocation", "policy"): "Which configurations train more than repeat 0 (see the section).",
    ("allocation", "verify"): "With study.budget, how many of the best configurations get all their repeats "
    "before it runs out.",
    ("worker", "max_trials"): "Trials a worker process runs before a fresh process replaces it.",
    ("worker", "max_memory_growth_mb"): "Replace a worker process before a trial would grow it past this many MB.",
    ("worker", "threads"): "TensorFlow's threads: 'auto' (the cores the worker may use) or a number.",
    ("worker", "heartbeat_interval"): "Seconds between a running trial's heartbeats.",
    ("worker", "grace_period"): "Seconds without a heartbeat after which a trial is marked failed and its "
    "configuration queued again; longer than heartbeat_interval.",
    ("worker", "max_retries"): "How many times a failed trial's configuration is queued again.",
    ("worker", "crash_window"): "Seconds (or '10m') over which crash_limit counts a slot's crashes.",
    ("dashboard", "notes"): "Whether workers write notes, figures and artifacts for optuna-dashboard.",
    ("dashboard", "artifacts"): "A folder every worker can write, or s3://bucket/prefix.",
}
"""Descriptions of the fields that have no docstring in :mod:`sweep.spec`."""


def study_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a whole study file, as a fresh dict.

    Every section and key :class:`sweep.spec.StudySpec` accepts is listed, with its type,
    default, allowed values and a description; unknown sections and keys are refused, as the
    spec refuses them.
    """
    sections = {name: _section(name, _model(name)) for name in StudySpec.model_fields}
    return {
        "$schema": SCHEMA_DRAFT,
        "title": "sweep study file",
        "description": _text(StudySpec.__doc__ or ""),
        "type": "object",
        "properties": sections,
        "required": [name for name, field in StudySpec.model_fields.items() if field.is_required()],
        "additionalProperties": False,
        "allOf": _cross_section_rules(),
    }


def schema_json() -> str:
    """:func:`study_schema` as JSON text: keys sorted, indented, ending in a newline."""
    return json.dumps(study_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- sections


def _model(section: str) -> type[BaseModel]:
    annotation = StudySpec.model_fields[section].annotation
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        raise TypeError(f"StudySpec.{section} is {annotation!r}, not a section model")
    return annotation


def _section(name: str, model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    if "$defs" in schema:
        raise TypeError(f"[{name}] nests another model; study_schema() does not inline $defs")
    docs = _attribute_docs(model)
    properties: dict[str, Any] = {}
    for key, field in model.model_fields.items():
        prop = _override(name, key) or _without_null(schema["properties"][key])
        prop.pop("title", None)
        if not field.is_required():
            default = _raw(field.get_default(call_default_factory=True))
            if default is None:
                prop.pop("default", None)
            else:
                prop["default"] = default
        description = field.description or docs.get(key) or _NOTES.get((name, key), "")
        prop["description"] = _text(description)
        properties[key] = prop
    out: dict[str, Any] = {
        "title": f"[{name}]",
        "description": _text(model.__doc__ or _SECTION_NOTES.get(name, "")),
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if schema.get("required"):
        out["required"] = list(schema["required"])
    out.update(_section_rules(name))
    return out


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """Drop the ``null`` branch of an optional field: TOML has no null, a file leaves the key out."""
    prop = dict(prop)
    branches = [b for b in prop.pop("anyOf", []) if b != {"type": "null"}]
    if len(branches) == 1:
        prop.update(branches[0])
    elif branches:
        prop["anyOf"] = branches
    return prop


def _override(section: str, key: str) -> dict[str, Any]:
    """The whole schema of a field whose validators accept forms pydantic cannot see; ``{}`` for the others."""
    if (section, key) in _DURATION_FIELDS:
        return _duration()
    if section == "search" and key == "extra":
        return _extra_table()
    if section == "search" and key in _RULES:
        return _param(_RULES[key])
    overrides: dict[tuple[str, str], dict[str, Any]] = {
        ("study", "name"): {"type": "string", "pattern": _STUDY_NAME},
        ("data", "features"): {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"type": "string", "minLength": 1},
        },
        ("data", "target"): {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "minItems": 1, "items": {"type": "string"}},
            ]
        },
        ("model", "builder"): {"type": "string", "pattern": "^" + _ecma(BUILDER_REF.pattern) + "$"},
        ("worker", "threads"): {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1}]},
        ("worker", "gpus"): {
            "anyOf": [
                {"type": "string", "pattern": r"\S"},
                {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
            ],
            "examples": ["auto", "none", "0,1", [0, 1]],
        },
    }
    return overrides.get((section, key), {})


def _section_rules(section: str) -> dict[str, Any]:
    """Rules between two fields of one section, where JSON Schema can say them."""
    if section == "model":
        return {"oneOf": [{"required": ["family"]}, {"required": ["builder"]}]}
    if section == "data":
        return {
            "allOf": [
                {
                    "if": {"properties": {"source": {"enum": ["csv", "npz"]}}, "required": ["source"]},
                    "then": {"required": ["path", "task"]},
                },
                {
                    "if": {"properties": {"source": {"const": "mackey_glass"}}, "required": ["source"]},
                    "then": {"properties": {"task": {"const": "forecast"}}},
                },
            ]
        }
    return {}


def _cross_section_rules() -> list[dict[str, Any]]:
    """``pareto`` cannot prune (a ``[pruner]`` without ``name`` gets ``none``); ``nsga2`` is for ``pareto``."""
    pareto = {"properties": {"study": {"properties": {"objective": {"const": "pareto"}}, "required": ["objective"]}},
              "required": ["study"]}  # fmt: skip
    return [
        {
            "if": pareto,
            "then": {"properties": {"pruner": {"properties": {"name": {"const": "none"}}}}},
            "else": {"properties": {"sampler": {"properties": {"name": {"not": {"const": "nsga2"}}}}}},
        }
    ]


# --------------------------------------------------------------------------- search parameters


def _scalar(rule: _Rule) -> dict[str, Any]:
    if rule.kind == "str":
        return {"type": "string", "enum": list(rule.allowed)}
    if rule.kind == "bool":
        return {"type": "boolean"}
    schema: dict[str, Any] = {"type": "integer" if rule.kind == "int" else "number"}
    if rule.minimum is not None:
        schema["exclusiveMinimum" if rule.exclusive_min else "minimum"] = rule.minimum
    if rule.maximum is not None:
        schema["exclusiveMaximum" if rule.exclusive_max else "maximum"] = rule.maximum
    return schema


def _range(bound: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
    """A range table: ``low`` and ``high`` required, ``log`` or ``step`` (not both), no other key."""
    return {
        "title": "range",
        "type": "object",
        "properties": {
            "low": {**bound, "description": "The lowest value (inclusive)."},
            "high": {**bound, "description": "The highest value (inclusive), above low."},
            "log": {"type": "boolean", "default": False, "description": "Sample on a log scale (needs low > 0)."},
            "step": {**step, "exclusiveMinimum": 0, "description": "Sample on a grid of this step (not with log)."},
        },
        "required": ["low", "high"],
        "additionalProperties": False,
        "not": {"properties": {"log": {"const": True}}, "required": ["log", "step"]},
        "if": {"properties": {"log": {"const": True}}, "required": ["log"]},
        "then": {"properties": {"low": {"exclusiveMinimum": 0}}},
    }


def _param(rule: _Rule) -> dict[str, Any]:
    """One of the eight (or ``layer_norm``): a constant, a list of distinct choices, or a numeric range."""
    scalar = _scalar(rule)
    forms: list[dict[str, Any]] = [
        {"title": "constant", **scalar},
        {"title": "choices", "type": "array", "minItems": 1, "uniqueItems": True, "items": scalar},
    ]
    if rule.kind in ("int", "float"):
        forms.append(_range(scalar, {"type": scalar["type"]}))
    return {"anyOf": forms}


def _extra_param() -> dict[str, Any]:
    """A ``[search.extra]`` entry: a number, string or boolean, a list of them, or a numeric range."""
    scalar: dict[str, Any] = {"type": ["number", "string", "boolean"]}
    return {
        "anyOf": [
            {"title": "constant", **scalar},
            {"title": "choices", "type": "array", "minItems": 1, "items": scalar},
            _range({"type": "number"}, {"type": "number"}),
        ]
    }


def _extra_table() -> dict[str, Any]:
    return {
        "type": "object",
        "propertyNames": {"pattern": _EXTRA_NAME, "not": {"enum": list(_SEARCHED)}},
        "additionalProperties": _extra_param(),
    }


def _duration() -> dict[str, Any]:
    return {
        "anyOf": [
            {"type": "number", "exclusiveMinimum": 0},
            {"type": "string", "pattern": _DURATION.pattern, "not": {"pattern": _ZERO_DURATION}},
        ],
        "examples": [3600, "90m", "2h", "1d"],
    }


# --------------------------------------------------------------------------- helpers


def _raw(value: Any) -> Any:
    """A default as a study file writes it (search parameters as their TOML form)."""
    if isinstance(value, Fixed | Choice | Range):
        return value.to_raw()
    if isinstance(value, dict):
        return {k: _raw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_raw(v) for v in value]
    return value


def _ecma(pattern: str) -> str:
    return pattern.replace(r"\w", _WORD)


def _attribute_docs(model: type[BaseModel]) -> dict[str, str]:
    """The docstrings written under fields (a string right after ``x: int = 1``), by field name."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    tree = ast.parse(source)
    if not tree.body or not isinstance(tree.body[0], ast.ClassDef):
        return {}
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = after.value.value
    return docs


def _text(doc: str) -> str:
    """A docstring as editor text: reST roles and double backticks plain, paragraphs on one line."""
    doc = inspect.cleandoc(doc)
    doc = re.sub(r":\w+:`([^`]+)`", r"`\1`", doc).replace("``", "`")
    return "\n\n".join(" ".join(p.split()) for p in doc.split("\n\n") if p.strip())
