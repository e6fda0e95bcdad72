"""The study-file JSON Schema against the real spec loader and the real ``jsonschema`` validator."""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from sweep.errors import SpecError
from sweep.schema import SCHEMA_DRAFT, schema_json, study_schema
from sweep.spec import ACTIVATIONS, FAMILIES, OPTIMIZERS, SOURCES, TASKS, StudySpec, load_spec, spec_from_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_STUDIES = sorted((REPO_ROOT / "studies").glob("*.toml"))
BASE_STUDY = REPO_ROOT / "studies" / "digits-lstm.toml"

MINIMAL: dict[str, Any] = {
    "study": {"name": "probe", "n_trials": 3},
    "data": {"source": "digits"},
    "model": {"family": "lstm"},
}


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    return Draft202012Validator(study_schema())


def _sections() -> dict[str, type[BaseModel]]:
    out: dict[str, type[BaseModel]] = {}
    for name, field in StudySpec.model_fields.items():
        annotation = field.annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel), name
        out[name] = annotation
    return out


def _spec_accepts(raw: dict[str, Any]) -> bool:
    try:
        spec_from_dict(copy.deepcopy(raw))
    except SpecError:
        return False
    return True


def _base() -> dict[str, Any]:
    return tomllib.loads(BASE_STUDY.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the example studies


def test_there_are_example_studies() -> None:
    assert len(EXAMPLE_STUDIES) >= 3


@pytest.mark.parametrize("path", EXAMPLE_STUDIES, ids=lambda p: p.name)
def test_example_study_validates_against_the_schema_and_the_spec(path: Path, validator: Draft202012Validator) -> None:
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(raw)]
    assert errors == []
    load_spec(path)


# --------------------------------------------------------------------------- what the spec refuses


def _set(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        raw.setdefault(section, {})[key] = value

    return edit


def _replace(section: str, table: Any) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        raw[section] = table

    return edit


def _drop(section: str, key: str | None = None) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        if key is None:
            del raw[section]
        else:
            del raw[section][key]

    return edit


REFUSED: dict[str, Callable[[dict[str, Any]], None]] = {
    "unknown key in [training]": _set("training", "max_epoch", 10),
    "unknown key in [study]": _set("study", "trials", 10),
    "unknown section": _replace("trainer", {"max_epochs": 10}),
    "unknown top-level key": _replace("name", "digits"),
    "family not in FAMILIES": _set("model", "family", "transformer"),
    "source not in SOURCES": _set("data", "source", "mnist"),
    "task not in TASKS": _set("data", "task", "ranking"),
    "range with an unknown key": _set("search", "units", {"low": 8, "high": 64, "scale": "log"}),
    "range without high": _set("search", "n_layers", {"low": 1}),
    "range with a non-boolean log": _set("search", "units", {"low": 8, "high": 64, "log": "yes"}),
    "range with log and step": _set("search", "units", {"low": 8, "high": 64, "log": True, "step": 8}),
    "log range from zero": _set("search", "dropout", {"low": 0.0, "high": 0.5, "log": True}),
    "integer range with a fractional step": _set("search", "units", {"low": 8, "high": 64, "step": 0.5}),
    "range with a negative step": _set("search", "dropout", {"low": 0.0, "high": 0.5, "step": -0.1}),
    "range for a categorical": _set("search", "optimizer", {"low": 1, "high": 2}),
    "range bound out of bounds": _set("search", "dropout", {"low": 0.0, "high": 1.0}),
    "activation not in ACTIVATIONS": _set("search", "activation", ["tanh", "mish"]),
    "optimizer not in OPTIMIZERS": _set("search", "optimizer", "lion"),
    "empty choices": _set("search", "batch_size", []),
    "repeated choices": _set("search", "batch_size", [32, 32]),
    "constant out of bounds": _set("search", "n_layers", 17),
    "fractional integer constant": _set("search", "units", 12.5),
    "boolean for a number parameter": _set("search", "l2", True),
    "number for layer_norm": _set("search", "layer_norm", 1),
    "extra range with an unknown key": _set("search", "extra", {"width": {"low": 1, "high": 4, "steps": 1}}),
    "extra range without low": _set("search", "extra", {"width": {"high": 4}}),
    "extra named like one of the eight": _set("search", "extra", {"units": [16, 32]}),
    "extra name not an identifier": _set("search", "extra", {"1width": [16, 32]}),
    "extra empty choices": _set("search", "extra", {"width": []}),
    "extra table choice": _set("search", "extra", {"width": [{"a": 1}]}),
    "extra not a table": _set("search", "extra", [1, 2]),
    "boolean for an integer": _set("training", "max_epochs", True),
    "string for an integer": _set("training", "repeats", "3"),
    "integer below its minimum": _set("training", "repeats", 0),
    "number above its maximum": _set("training", "momentum", 1.0),
    "bad study name": _set("study", "name", "-digits"),
    "unreadable duration": _set("study", "timeout", "1 hour"),
    "zero duration": _set("study", "timeout", 0),
    "zero duration text": _set("worker", "crash_window", "0.0m"),
    "boolean duration": _set("worker", "outage_timeout", True),
    "unknown objective": _set("study", "objective", "loss"),
    "csv without path and task": _replace("data", {"source": "csv"}),
    "mackey_glass as classification": _replace("data", {"source": "mackey_glass", "task": "classification"}),
    "empty features": _set("data", "features", []),
    "repeated features": _set("data", "features", ["a", "a"]),
    "empty target list": _set("data", "target", []),
    "family and builder": _set("model", "builder", "mod:build"),
    "neither family nor builder": _replace("model", {}),
    "builder without a function": _replace("model", {"builder": "mod.build"}),
    "pareto with a median pruner": _set("study", "objective", "pareto"),
    "nsga2 with objective score": _set("sampler", "name", "nsga2"),
    "threads zero": _set("worker", "threads", 0),
    "gpus empty list": _set("worker", "gpus", []),
    "gpus negative id": _set("worker", "gpus", [-1]),
    "gpus blank": _set("worker", "gpus", "  "),
    "policy not allowed": _set("allocation", "policy", "greedy"),
    "missing study name": _drop("study", "name"),
    "missing [data]": _drop("data"),
}


@pytest.mark.parametrize("edit", REFUSED.values(), ids=REFUSED.keys())
def test_schema_refuses_what_the_spec_refuses(
    edit: Callable[[dict[str, Any]], None], validator: Draft202012Validator
) -> None:
    raw = _base()
    assert validator.is_valid(raw) and _spec_accepts(raw)
    edit(raw)
    with pytest.raises(SpecError):
        spec_from_dict(raw)
    assert not validator.is_valid(raw)


def test_a_typo_in_a_file_is_refused_by_load_spec_and_the_schema(
    tmp_path: Path, validator: Draft202012Validator
) -> None:
    text = BASE_STUDY.read_text(encoding="utf-8").replace("max_epochs = 15", "max_epoch = 15")
    file = tmp_path / "typo.toml"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError, match=r"training\.max_epoch: unknown key 'max_epoch'; did you mean 'max_epochs'"):
        load_spec(file)
    errors = list(validator.iter_errors(tomllib.loads(text)))
    assert [list(e.absolute_path) for e in errors] == [["training"]]
    assert "'max_epoch' was unexpected" in errors[0].message


def test_a_draft_7_validator_reads_the_schema_the_same_way() -> None:
    """Editors whose validator knows only draft 7 (no 2020-12 keyword is used) check files the same way."""
    from jsonschema import Draft7Validator

    schema = study_schema()
    Draft7Validator.check_schema(schema)
    draft7 = Draft7Validator(schema)
    for path in EXAMPLE_STUDIES:
        assert draft7.is_valid(tomllib.loads(path.read_text(encoding="utf-8"))), path.name
    for name, edit in REFUSED.items():
        raw = _base()
        edit(raw)
        assert not draft7.is_valid(raw), name


# --------------------------------------------------------------------------- what the spec accepts


def _pareto(raw: dict[str, Any]) -> None:
    """The spec gives a ``[pruner]`` without ``name`` the name ``none`` in a pareto study."""
    raw["study"]["objective"] = "pareto"
    raw["sampler"]["name"] = "nsga2"
    raw["pruner"] = {"n_startup_trials": 2}


ACCEPTED: dict[str, Callable[[dict[str, Any]], None]] = {
    "a builder instead of a family": _replace("model", {"builder": "pkg.models:build_net", "path": "models"}),
    "a builder with a non-ASCII name": _replace("model", {"builder": "modèles:bâtir"}),
    "csv with path and task": _replace("data", {"source": "csv", "path": "d.csv", "task": "regression"}),
    "a target list": _set("data", "target", ["a", "b"]),
    "pareto with a [pruner] without a name": _pareto,
    "duration in hours": _set("study", "timeout", "1.5h"),
    "duration in seconds": _set("worker", "crash_window", 90),
    "integer-valued float constant": _set("search", "units", 32.0),
    "integer range with a step": _set("search", "units", {"low": 16, "high": 128, "step": 16}),
    "integer choices for a float parameter": _set("search", "learning_rate", [1, 2]),
    "layer_norm both ways": _set("search", "layer_norm", [True, False]),
    "extra of every form": _set(
        "search",
        "extra",
        {
            "width": [16, 32],
            "kind": ["a", 1, True],
            "depth": {"low": 1, "high": 4, "step": 1},
            "rate": {"low": 1e-3, "high": 1e-1, "log": True},
            "gain": 0.5,
            "flag": False,
            "größe": 3,
        },
    ),
    "threads a number": _set("worker", "threads", 4),
    "gpus as a list": _set("worker", "gpus", [0, 1]),
    "gpus as text": _set("worker", "gpus", "0,1"),
}


@pytest.mark.parametrize("edit", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_schema_accepts_what_the_spec_accepts(
    edit: Callable[[dict[str, Any]], None], validator: Draft202012Validator
) -> None:
    raw = _base()
    edit(raw)
    spec_from_dict(copy.deepcopy(raw))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(raw)]
    assert errors == []


PROBES: list[Any] = [
    0, 1, 2, 3, 7, 50, 120, 5000, -1, 0.5, 0.05, 2.5, 1e-3, 1e9, True, False,
    "auto", "none", "1h", " 90 m ", "0", "x", "0,1", "mod:fn", "a.b:c",
    [], [0, 1], [1, 0.5], ["a", "b"], ["a", "a"], [16, 32], [True, False], ["tanh", "relu"], ["adam", "sgd"],
    {"low": 1, "high": 4}, {"low": 0.1, "high": 0.5, "log": True}, {"low": 1, "high": 8, "step": 2},
    {"low": 0.0, "high": 0.4, "step": 0.1}, {"low": 4, "high": 1}, {"low": 1, "high": 4, "scale": 2},
    {"width": [16, 32]}, {"width": {"low": 1, "high": 4}}, {"n_layers": 2}, {},
    "0h", "0.0m", "10", float("inf"), float("nan"),
]  # fmt: skip
"""Values tried in every field: each one the spec accepts, the schema must accept."""


def test_schema_never_refuses_a_value_the_spec_accepts(validator: Draft202012Validator) -> None:
    schema = study_schema()
    accepted = 0
    for section, model in _sections().items():
        for key in model.model_fields:
            prop = schema["properties"][section]["properties"][key]
            for value in [*PROBES, *prop.get("enum", []), *prop.get("examples", [])]:
                raw = copy.deepcopy(MINIMAL)
                raw.setdefault(section, {})[key] = value
                if _spec_accepts(raw):
                    accepted += 1
                    errors = [e.message for e in validator.iter_errors(raw)]
                    assert errors == [], f"{section}.{key} = {value!r}: the spec accepts it, the schema refuses it"
    assert accepted > 300


# --------------------------------------------------------------------------- the schema follows the models


def test_schema_lists_every_section_and_every_field() -> None:
    schema = study_schema()
    sections = _sections()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(sections)
    assert schema["required"] == [n for n, f in StudySpec.model_fields.items() if f.is_required()]
    for name, model in sections.items():
        section = schema["properties"][name]
        assert model.model_config.get("extra") == "forbid"
        assert section["additionalProperties"] is False, name
        assert section["type"] == "object"
        assert section["description"], name
        assert set(section["properties"]) == set(model.model_fields), name
        assert section.get("required", []) == [k for k, f in model.model_fields.items() if f.is_required()]
        for key in model.model_fields:
            prop = section["properties"][key]
            assert prop["description"].strip(), f"{name}.{key} has no description"
            assert {"type", "anyOf", "enum", "const"} & set(prop), f"{name}.{key} accepts anything"


def test_defaults_are_the_models_defaults() -> None:
    schema = study_schema()
    dumped = spec_from_dict(MINIMAL).model_dump(mode="json")
    for section, model in _sections().items():
        for key, field in model.model_fields.items():
            if field.is_required() or key in MINIMAL.get(section, {}):
                continue
            prop = schema["properties"][section]["properties"][key]
            if dumped[section][key] is None:
                assert "default" not in prop, f"{section}.{key}"
            else:
                assert prop["default"] == dumped[section][key], f"{section}.{key}"


def test_enums_are_the_spec_tuples() -> None:
    props = {name: section["properties"] for name, section in study_schema()["properties"].items()}
    assert props["data"]["source"]["enum"] == list(SOURCES)
    assert props["data"]["task"]["enum"] == list(TASKS)
    assert props["model"]["family"]["enum"] == list(FAMILIES)
    for key, allowed in (("activation", ACTIVATIONS), ("optimizer", OPTIMIZERS)):
        constant, choices = props["search"][key]["anyOf"]
        assert constant["enum"] == list(allowed)
        assert choices["items"]["enum"] == list(allowed)


def test_descriptions_come_from_the_code() -> None:
    props = study_schema()["properties"]
    assert props["study"]["properties"]["budget"]["description"].startswith("Epochs to train in all")
    assert props["data"]["properties"]["order_by"]["description"].startswith("A column (dates or numbers)")
    assert props["racing"]["description"].startswith("Which trials get every repeat")
    assert "``" not in json.dumps(props)


# --------------------------------------------------------------------------- the JSON text


def test_schema_json_is_a_valid_deterministic_schema() -> None:
    text = schema_json()
    assert text == schema_json()
    assert text.endswith("}\n")
    loaded = json.loads(text)
    assert loaded == study_schema()
    assert text == json.dumps(loaded, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert loaded["$schema"] == SCHEMA_DRAFT
    Draft202012Validator.check_schema(loaded)


def test_study_schema_returns_a_fresh_dict() -> None:
    first = study_schema()
    first["properties"]["study"]["properties"].clear()
    assert study_schema()["properties"]["study"]["properties"]


def test_sweep_schema_prints_the_schema_editors_read(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    done = run_cli("schema")
    assert done.returncode == 0, done.stderr
    assert done.stdout == schema_json()
    (tmp_path / "study.schema.json").write_text(done.stdout)
    Draft202012Validator.check_schema(json.loads((tmp_path / "study.schema.json").read_text()))
