from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

from sweep.errors import DataError, SpecError, UserError
from sweep.spec import (
    PARAM_NAMES,
    Choice,
    Fixed,
    Range,
    StudySpec,
    load_spec,
    parse_duration,
    parse_override,
    parse_param,
    spec_from_dict,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_STUDIES = sorted((REPO_ROOT / "studies").glob("*.toml"))

BASE_SECTIONS: dict[str, str] = {
    "study": 'name = "unit-study"\nn_trials = 3',
    "data": 'source = "digits"',
    "model": 'family = "lstm"',
}


def study_text(**sections: str | None) -> str:
    """A study file: the minimal base with sections replaced (a string) or removed (None)."""
    merged: dict[str, str | None] = {**BASE_SECTIONS, **sections}
    return "\n\n".join(f"[{name}]\n{body}" for name, body in merged.items() if body is not None) + "\n"


def write_study(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def spec_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = write_study(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return path, str(info.value)


def base_raw(**sections: dict[str, Any] | None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "study": {"name": "unit-study", "n_trials": 3},
        "data": {"source": "digits"},
        "model": {"family": "lstm"},
    }
    for name, body in sections.items():
        if body is None:
            raw.pop(name, None)
        else:
            raw[name] = {**raw.get(name, {}), **body}
    return raw


# --------------------------------------------------------------------------- example files


def test_example_studies_exist() -> None:
    assert EXAMPLE_STUDIES, "studies/*.toml holds no example study file"


@pytest.mark.parametrize("path", EXAMPLE_STUDIES, ids=[p.name for p in EXAMPLE_STUDIES])
def test_example_study_loads(path: Path) -> None:
    spec = load_spec(path)
    assert isinstance(spec, StudySpec)
    assert spec_from_dict(spec.to_json_dict()).drift_view() == spec.drift_view()


def test_digits_lstm_example_values() -> None:
    spec = load_spec(REPO_ROOT / "studies" / "digits-lstm.toml")
    assert spec.study.name == "digits-lstm"
    assert spec.study.seed == 42
    assert spec.study.n_trials == 12
    assert spec.model.family == "lstm"
    assert spec.data.source == "digits"
    assert spec.search.units == Range(8, 64, integer=True, log=True)
    assert spec.search.activation == Choice(("tanh", "relu"))
    assert spec.search.layer_norm == Choice((False, True))
    assert spec.training.max_epochs == 15
    assert spec.pruner.name == "median"


# --------------------------------------------------------------------------- bad input

# (id, sections replaced in the base study, field named, fragments the message must contain)
BAD_SECTIONS: list[tuple[str, dict[str, str | None], str, list[str]]] = [
    (
        "unknown-key-typo",
        {"training": "max_epoch = 3"},
        "training.max_epoch",
        ["unknown key 'max_epoch'", "did you mean 'max_epochs'?", "max_epochs, patience"],
    ),
    (
        "unknown-section",
        {"trainig": "max_epochs = 3"},
        "trainig",
        ["unknown key 'trainig'", "did you mean 'training'?", "study, data, model, search"],
    ),
    (
        "unknown-search-key",
        {"search": "unit = 5"},
        "search.unit",
        ["unknown key 'unit'", "did you mean 'units'?"],
    ),
    ("string-for-int", {"training": 'max_epochs = "ten"'}, "training.max_epochs", ["got 'ten'", "integer"]),
    ("float-for-int", {"training": "max_epochs = 2.5"}, "training.max_epochs", ["got 2.5", "integer"]),
    ("int-below-minimum", {"training": "max_epochs = 0"}, "training.max_epochs",
     ["got 0", "greater than or equal to 1"]),
    (
        "empty-range",
        {"search": "units = { low = 8, high = 8 }"},
        "search.units",
        ["low=8, high=8", "the range is empty", "constant 8"],
    ),
    (
        "inverted-range",
        {"search": "units = { low = 64, high = 8 }"},
        "search.units",
        ["low=64, high=8", "low must be <= high"],
    ),
    (
        "log-range-low-zero",
        {"search": "l2 = { low = 0.0, high = 0.01, log = true }"},
        "search.l2",
        ["low=0.0", "log=true", "low > 0"],
    ),
    (
        "range-missing-high",
        {"search": "units = { low = 8 }"},
        "search.units",
        ["{'low': 8}", "both 'low' and 'high'"],
    ),
    ("empty-choice-list", {"search": "batch_size = []"}, "search.batch_size", ["empty list", "at least one choice"]),
    (
        "duplicate-choices",
        {"search": "batch_size = [32, 64, 32]"},
        "search.batch_size",
        ["[32, 64, 32]", "choices must be distinct"],
    ),
    (
        "bad-activation-constant",
        {"search": 'activation = "relu6"'},
        "search.activation",
        ["got 'relu6'", "one of tanh, relu, elu, selu, gelu, swish, sigmoid, softsign"],
    ),
    (
        "bad-activation-in-choices",
        {"search": 'activation = ["tanh", "relu6"]'},
        "search.activation",
        ["got 'relu6'", "one of tanh, relu"],
    ),
    (
        "bad-optimizer",
        {"search": 'optimizer = "adagrad"'},
        "search.optimizer",
        ["got 'adagrad'", "one of adam, adamw, nadam, rmsprop, sgd"],
    ),
    ("dropout-one", {"search": "dropout = 1.0"}, "search.dropout", ["got 1.0", ">= 0 and < 1"]),
    (
        "dropout-range-reaches-one",
        {"search": "dropout = { low = 0.0, high = 1.0 }"},
        "search.dropout",
        ["got 1.0", ">= 0 and < 1"],
    ),
    ("negative-l2", {"search": "l2 = -0.1"}, "search.l2", ["got -0.1", ">= 0 and <= 1"]),
    ("learning-rate-zero", {"search": "learning_rate = 0.0"}, "search.learning_rate", ["got 0.0", "> 0"]),
    (
        "learning-rate-negative",
        {"search": "learning_rate = -0.001"},
        "search.learning_rate",
        ["got -0.001", "> 0"],
    ),
    (
        "range-on-categorical",
        {"search": "activation = { low = 1, high = 2 }"},
        "search.activation",
        ["range", "activation takes a constant or a list of choices"],
    ),
    (
        "unknown-range-key",
        {"search": "units = { low = 8, high = 64, lg = true }"},
        "search.units",
        ["unknown range key 'lg'", "low, high, log, step"],
    ),
    (
        "log-and-step",
        {"search": "learning_rate = { low = 1e-4, high = 1e-2, log = true, step = 1e-3 }"},
        "search.learning_rate",
        ["log=true", "step"],
    ),
    (
        "fractional-int-step",
        {"search": "units = { low = 8, high = 64, step = 1.5 }"},
        "search.units",
        ["step=1.5", "integer step"],
    ),
    ("missing-data", {"data": None}, "data", ["required but missing"]),
    ("missing-model", {"model": None}, "model", ["required but missing"]),
    (
        "unknown-family",
        {"model": 'family = "transformer"'},
        "model.family",
        ["got 'transformer'", "'lstm', 'gru' or 'dense'"],
    ),
    (
        "unknown-source",
        {"data": 'source = "mnist"'},
        "data.source",
        ["got 'mnist'", "'digits'", "'mackey_glass'", "'csv'", "'npz'"],
    ),
    (
        "csv-without-path",
        {"data": 'source = "csv"\ntask = "regression"'},
        "data",
        ["source 'csv'", "needs data.path"],
    ),
    (
        "csv-without-task",
        {"data": 'source = "csv"\npath = "table.csv"'},
        "data",
        ["source 'csv'", "needs data.task", "classification, regression, forecast"],
    ),
    (
        "mackey-glass-classification",
        {"data": 'source = "mackey_glass"\ntask = "classification"'},
        "data.task",
        ["got 'classification'", "'forecast'"],
    ),
    (
        "pareto-with-pruner",
        {"study": 'name = "p"\nn_trials = 3\nobjective = "pareto"', "pruner": 'name = "median"'},
        "pruner.name",
        ["got 'median'", "study.objective = 'pareto'", "use 'none'"],
    ),
    (
        "nsga2-with-score",
        {"sampler": 'name = "nsga2"'},
        "sampler.name",
        ["got 'nsga2'", "'score'", "tpe, random or qmc"],
    ),
    (
        "no-budget",
        {"study": 'name = "no-budget"'},
        "study",
        ["set budget, n_trials or timeout", "--n-trials / --timeout"],
    ),
    (
        "bad-timeout",
        {"study": 'name = "t"\ntimeout = "2 weeks"'},
        "study.timeout",
        ["got '2 weeks'", "'90m', '2h', '1d'"],
    ),
    ("zero-timeout", {"study": 'name = "t"\ntimeout = "0m"'}, "study.timeout", ["got '0m'", "> 0"]),
    (
        "bad-study-name",
        {"study": 'name = "my study"\nn_trials = 3'},
        "study.name",
        ["got 'my study'", "letters, digits"],
    ),
    (
        "grace-not-longer-than-heartbeat",
        {"worker": "heartbeat_interval = 30\ngrace_period = 30"},
        "worker",
        ["grace_period=30", "heartbeat_interval=30", "grace_period must be longer than heartbeat_interval"],
    ),
    ("threads-zero", {"worker": "threads = 0"}, "worker.threads", ["got 0", "'auto' or an integer >= 1"]),
    ("risk-nan", {"stability": "risk = nan"}, "stability.risk", ["got nan", "finite"]),
    (
        "validation-fraction-one",
        {"data": 'source = "digits"\nvalidation_fraction = 1.0'},
        "data.validation_fraction",
        ["got 1.0", "less than 1"],
    ),
]


@pytest.mark.parametrize(
    ("sections", "field", "fragments"),
    [pytest.param(s, f, fr, id=i) for i, s, f, fr in BAD_SECTIONS],
)
def test_bad_study_raises_one_line_spec_error(
    tmp_path: Path, sections: dict[str, str | None], field: str, fragments: list[str]
) -> None:
    path, message = spec_error(tmp_path, study_text(**sections))
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_spec_error_is_a_user_error_with_exit_code_2(tmp_path: Path) -> None:
    path = write_study(tmp_path, study_text(training="max_epochs = 0"))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert isinstance(info.value, UserError)
    assert info.value.exit_code == 2


def test_several_problems_are_counted_in_one_line(tmp_path: Path) -> None:
    _, message = spec_error(tmp_path, study_text(training="max_epochs = 0\npatience = -1"))
    assert "\n" not in message
    assert message.endswith("(and 1 more problem)")


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = write_study(tmp_path, '[study\nname = "x"\n')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not valid TOML: ")
    assert info.value.exit_code == 2


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(study_text().replace("unit-study", "caf\xe9").encode("latin-1"))
    with pytest.raises(SpecError, match="not a UTF-8 text file") as info:
        load_spec(path)
    assert str(info.value).startswith(str(path))


def test_missing_study_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: study file not found"
    assert info.value.exit_code == 2


def test_directory_is_not_a_study_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="study file not found"):
        load_spec(tmp_path)


def test_spec_from_dict_names_its_source() -> None:
    with pytest.raises(SpecError) as info:
        spec_from_dict(base_raw(training={"max_epochs": 0}), source="stored spec")
    assert str(info.value).startswith("stored spec: training.max_epochs: got 0")


# --------------------------------------------------------------------------- types and unions


@pytest.mark.parametrize(
    ("section", "body", "field"),
    [
        ("training", "max_epochs = true", "training.max_epochs"),
        ("study", 'name = "t"\nn_trials = true', "study.n_trials"),
    ],
)
def test_boolean_for_an_integer_field_is_refused(tmp_path: Path, section: str, body: str, field: str) -> None:
    path, message = spec_error(tmp_path, study_text(**{section: body}))
    assert message.startswith(f"{path}: {field}: got True")


def test_infinite_clipnorm_is_refused(tmp_path: Path) -> None:
    path, message = spec_error(tmp_path, study_text(training="clipnorm = inf"))
    assert message.startswith(f"{path}: training.clipnorm: got inf")


def test_union_field_error_names_the_field_and_all_allowed_forms(tmp_path: Path) -> None:
    path, message = spec_error(tmp_path, study_text(worker='threads = "many"'))
    assert message.startswith(f"{path}: worker.threads: got 'many'")
    assert "'auto'" in message


# --------------------------------------------------------------------------- overrides


def test_override_takes_the_toml_type(tmp_path: Path) -> None:
    path = write_study(tmp_path, study_text(training="max_epochs = 30"))
    spec = load_spec(
        path,
        overrides=[
            "training.max_epochs=3",
            "training.clipnorm=1.5",
            "search.batch_size=[16, 32]",
            "search.layer_norm=true",
            "search.units={ low = 4, high = 16 }",
        ],
    )
    assert spec.training.max_epochs == 3
    assert type(spec.training.max_epochs) is int
    assert spec.training.clipnorm == 1.5
    assert spec.search.batch_size == Choice((16, 32))
    assert spec.search.layer_norm == Fixed(True)
    assert spec.search.units == Range(4, 16, integer=True)


def test_override_that_is_not_toml_becomes_a_string(tmp_path: Path) -> None:
    path = write_study(tmp_path, study_text())
    spec = load_spec(path, overrides=["study.name=renamed-study", "model.family=gru"])
    assert spec.study.name == "renamed-study"
    assert spec.model.family == "gru"


def test_override_data_path_is_a_string(tmp_path: Path) -> None:
    path = write_study(tmp_path, study_text(data='source = "csv"\ntask = "regression"\npath = "other.csv"'))
    spec = load_spec(path, overrides=["data.path=foo.csv"])
    assert isinstance(spec.data.path, str)
    assert Path(spec.data.path).name == "foo.csv"
    assert Path(spec.data.path).is_absolute()


def test_override_nested_key_of_a_range_table(tmp_path: Path) -> None:
    path = write_study(tmp_path, study_text(search="units = { low = 8, high = 32, log = true }"))
    spec = load_spec(path, overrides=["search.units.high=64"])
    assert spec.search.units == Range(8, 64, integer=True, log=True)


def test_override_into_a_value_that_is_not_a_table(tmp_path: Path) -> None:
    path = write_study(tmp_path, study_text(search="batch_size = [32, 64]"))
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides=["search.batch_size.high=64"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("--set search.batch_size.high=64: search.batch_size is [32, 64], not a table")


def test_override_with_an_invalid_value_names_the_field(tmp_path: Path) -> None:
    path = write_study(tmp_path, study_text())
    with pytest.raises(SpecError, match=r": training\.max_epochs: got 0;"):
        load_spec(path, overrides=["training.max_epochs=0"])


def test_override_of_an_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = write_study(tmp_path, study_text())
    with pytest.raises(SpecError, match=r"training\.max_epoch: unknown key 'max_epoch'; did you mean 'max_epochs'\?"):
        load_spec(path, overrides=["training.max_epoch=3"])


@pytest.mark.parametrize("item", ["max_epochs=3", "training.max_epochs", "=3", "training..max_epochs=3", "1x.y=2"])
def test_malformed_override_raises_naming_it(tmp_path: Path, item: str) -> None:
    path = write_study(tmp_path, study_text())
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides=[item])
    assert str(info.value) == f"--set {item!r}: expected SECTION.KEY=VALUE, for example training.max_epochs=10"
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("training.max_epochs=3", ("training.max_epochs", 3)),
        (" training.patience = 4 ", ("training.patience", 4)),
        ("search.learning_rate=1e-3", ("search.learning_rate", 0.001)),
        ("search.units=[8, 16]", ("search.units", [8, 16])),
        ("search.units={low=1, high=3}", ("search.units", {"low": 1, "high": 3})),
        ("data.path=foo.csv", ("data.path", "foo.csv")),
        ("data.path=a=b.csv", ("data.path", "a=b.csv")),
        ("sampler.multivariate=false", ("sampler.multivariate", False)),
        ("search.units.high=64", ("search.units.high", 64)),
    ],
)
def test_parse_override(item: str, expected: tuple[str, Any]) -> None:
    key, value = parse_override(item)
    assert (key, value) == expected
    assert type(value) is type(expected[1])


def test_updates_win_over_file_and_overrides(tmp_path: Path) -> None:
    path = write_study(tmp_path, study_text(study='name = "t"\nn_trials = 3'))
    spec = load_spec(path, overrides=["study.n_trials=7"], updates={"study.n_trials": 5, "study.timeout": "2h"})
    assert spec.study.n_trials == 5
    assert spec.study.timeout == 7200.0


def test_none_update_leaves_the_file_value(tmp_path: Path) -> None:
    path = write_study(tmp_path, study_text(study='name = "t"\nn_trials = 3\ntimeout = "90m"'))
    spec = load_spec(path, updates={"study.n_trials": None, "study.timeout": None})
    assert spec.study.n_trials == 3
    assert spec.study.timeout == 5400.0


def test_update_can_supply_the_missing_budget(tmp_path: Path) -> None:
    path = write_study(tmp_path, study_text(study='name = "t"'))
    with pytest.raises(SpecError, match="set budget, n_trials or timeout"):
        load_spec(path)
    assert load_spec(path, updates={"study.n_trials": 4}).study.n_trials == 4


# --------------------------------------------------------------------------- data paths


def test_relative_data_path_is_resolved_against_the_study_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write_study(
        tmp_path,
        study_text(data='source = "csv"\ntask = "regression"\npath = "data/table.csv"'),
        name="studies/study.toml",
    )
    spec = load_spec(path)
    assert spec.data.path == str((tmp_path / "studies" / "data" / "table.csv").resolve())


def test_parent_relative_data_path(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        study_text(data='source = "npz"\ntask = "classification"\npath = "../arrays.npz"'),
        name="studies/study.toml",
    )
    assert load_spec(path).data.path == str((tmp_path / "arrays.npz").resolve())


def test_absolute_data_path_is_kept(tmp_path: Path) -> None:
    target = (tmp_path / "abs" / "table.csv").resolve()
    path = write_study(
        tmp_path,
        study_text(data=f'source = "csv"\ntask = "regression"\npath = {json.dumps(str(target))}'),
        name="studies/study.toml",
    )
    assert load_spec(path).data.path == str(target)


# --------------------------------------------------------------------------- frozen, round trip


@pytest.fixture
def full_study(tmp_path: Path) -> Path:
    return write_study(
        tmp_path,
        study_text(
            study='name = "full"\nstorage = "postgresql://alice:s3cret@db.example/sweeps"\n'
            'seed = 7\nn_trials = 20\ntimeout = "2h"',
            data='source = "digits"\nvalidation_fraction = 0.25',
            model='family = "gru"',
            search="n_layers = 2\nunits = { low = 8, high = 64, step = 8 }\n"
            'activation = ["tanh", "relu"]\nlearning_rate = { low = 1e-4, high = 1e-2, log = true }\n'
            'optimizer = "sgd"\nbatch_size = [32]\ndropout = { low = 0.0, high = 0.5, step = 0.1 }\n'
            "l2 = 0.0001\nlayer_norm = [false, true]",
            training="max_epochs = 4\nclipnorm = 1.0\nmomentum = 0.8",
            stability="tail = 3\nrisk = 0.5",
            sampler='name = "random"',
            pruner='name = "hyperband"',
            worker='threads = 2\nheartbeat_interval = 10\ngrace_period = 40',
        ),
    )


def test_spec_is_frozen(full_study: Path) -> None:
    spec = load_spec(full_study)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        spec.training.max_epochs = 99  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        spec.study = spec.study  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.search.units.low = 1  # type: ignore[misc]
    assert spec.training.max_epochs == 4


def test_round_trip_through_json(full_study: Path) -> None:
    spec = load_spec(full_study)
    dumped = spec.to_json_dict()
    again = spec_from_dict(json.loads(json.dumps(dumped)))
    assert again.drift_view() == spec.drift_view()
    assert again.to_json_dict() == dumped
    assert again.search == spec.search
    assert again.study.timeout == 7200.0
    assert again.study.storage is None


def test_json_dict_leaves_out_the_storage_url(full_study: Path) -> None:
    spec = load_spec(full_study)
    assert spec.study.storage == "postgresql://alice:s3cret@db.example/sweeps"
    dumped = spec.to_json_dict()
    assert "storage" not in dumped["study"]
    assert "s3cret" not in json.dumps(dumped)
    assert spec.study.storage is not None  # the spec itself is untouched


def test_json_dict_search_forms(full_study: Path) -> None:
    search = load_spec(full_study).to_json_dict()["search"]
    assert search["n_layers"] == 2
    assert search["batch_size"] == 32
    assert search["optimizer"] == "sgd"
    assert search["activation"] == ["tanh", "relu"]
    assert search["units"] == {"low": 8, "high": 64, "log": False, "step": 8}
    assert search["learning_rate"] == {"low": 1e-4, "high": 1e-2, "log": True}


# --------------------------------------------------------------------------- drift


@pytest.mark.parametrize(
    "override",
    [
        "search.units={ low = 8, high = 32 }",
        "search.optimizer=nadam",
        "model.family=gru",
        "data.validation_fraction=0.3",
        "training.max_epochs=4",
        "training.repeats=2",
        "stability.tail=3",
        "stability.risk=2.0",
        'study.objective="pareto"',
    ],
)
def test_drift_view_changes_with_results_relevant_sections(tmp_path: Path, override: str) -> None:
    path = write_study(tmp_path, study_text())
    assert load_spec(path, overrides=[override]).drift_view() != load_spec(path).drift_view()


@pytest.mark.parametrize(
    "override",
    [
        "study.n_trials=99",
        'study.timeout="3h"',
        "study.storage=sqlite:///other.db",
        "sampler.name=random",
        "sampler.n_startup_trials=1",
        "pruner.name=hyperband",
        "pruner.n_warmup_steps=0",
        "worker.max_trials=3",
        "worker.threads=4",
    ],
)
def test_drift_view_ignores_budget_sampler_pruner_and_worker(tmp_path: Path, override: str) -> None:
    path = write_study(tmp_path, study_text())
    assert load_spec(path, overrides=[override]).drift_view() == load_spec(path).drift_view()


def test_drift_view_holds_the_drift_sections(tmp_path: Path) -> None:
    view = load_spec(write_study(tmp_path, study_text())).drift_view()
    assert set(view) == {"data", "model", "search", "training", "stability", "study.objective"}
    assert json.loads(json.dumps(view)) == view


# --------------------------------------------------------------------------- pareto defaults


def test_pareto_without_pruner_section_defaults_to_none(tmp_path: Path) -> None:
    path = write_study(tmp_path, study_text(study='name = "p"\nn_trials = 3\nobjective = "pareto"'))
    assert load_spec(path).pruner.name == "none"


def test_pareto_pruner_section_without_name_defaults_to_none(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        study_text(study='name = "p"\nn_trials = 3\nobjective = "pareto"', pruner="n_startup_trials = 2"),
    )
    spec = load_spec(path)
    assert spec.pruner.name == "none"
    assert spec.pruner.n_startup_trials == 2


def test_pareto_by_override_also_defaults_the_pruner(tmp_path: Path) -> None:
    path = write_study(tmp_path, study_text())
    assert load_spec(path).pruner.name == "median"
    assert load_spec(path, overrides=["study.objective=pareto"]).pruner.name == "none"


# --------------------------------------------------------------------------- parse_param


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("units", 32, Fixed(32)),
        ("units", 32.0, Fixed(32)),
        ("dropout", 0, Fixed(0.0)),
        ("activation", ["relu"], Fixed("relu")),
        ("batch_size", [16, 32], Choice((16, 32))),
        ("layer_norm", [False, True], Choice((False, True))),
        ("units", {"low": 8, "high": 64}, Range(8, 64, integer=True)),
        ("units", {"low": 8, "high": 64, "step": 8.0}, Range(8, 64, integer=True, step=8)),
        ("learning_rate", {"low": 1e-4, "high": 1e-2, "log": True}, Range(1e-4, 1e-2, integer=False, log=True)),
        ("dropout", {"low": 0, "high": 0.5, "step": 0.1}, Range(0.0, 0.5, integer=False, step=0.1)),
    ],
)
def test_parse_param_forms(name: str, raw: Any, expected: Any) -> None:
    parsed = parse_param(name, raw)
    assert parsed == expected
    if isinstance(expected, Fixed):
        assert type(parsed.value) is type(expected.value)  # type: ignore[union-attr]


def test_parse_param_duplicates_after_normalising() -> None:
    with pytest.raises(ValueError, match="choices must be distinct"):
        parse_param("batch_size", [32, 32.0])


def test_param_names_are_the_eight() -> None:
    assert PARAM_NAMES == (
        "n_layers",
        "units",
        "activation",
        "learning_rate",
        "optimizer",
        "batch_size",
        "dropout",
        "l2",
    )


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90m", 5400.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.5d", 129600.0),
        ("45s", 45.0),
        ("45", 45.0),
        (" 2 h ", 7200.0),
        (30, 30.0),
        (2.5, 2.5),
        (None, None),
    ],
)
def test_parse_duration(value: Any, seconds: float | None) -> None:
    result = parse_duration(value)
    assert result == seconds
    if seconds is not None:
        assert type(result) is float


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "allowed: seconds or a duration like '90m', '2h', '1d'"),
        ("2x", "allowed: seconds or a duration"),
        ("2hours", "allowed: seconds or a duration"),
        ("h", "allowed: seconds or a duration"),
        ("-1h", "allowed: seconds or a duration"),
        ("1e3", "allowed: seconds or a duration"),
        (True, "allowed: seconds or a duration"),
        ("0", "a time limit must be > 0"),
        (0, "a time limit must be > 0"),
        (-3, "a time limit must be > 0"),
        (float("inf"), "a time limit must be > 0"),
        (float("nan"), "a time limit must be > 0"),
    ],
)
def test_parse_duration_refuses(value: Any, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value).startswith(f"got {value!r}; ")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("section", "body", "message"),
    [
        ("training", 'max_epochs = "2"', "training.max_epochs: got '2'; allowed: an integer"),
        ("training", "max_epochs = 2.0", "training.max_epochs: got 2.0; allowed: an integer"),
        ("dashboard", 'notes = "yes"', "dashboard.notes: got 'yes'; allowed: true or false"),
        ("racing", 'keep = "0.5"', "racing.keep: got '0.5'; allowed: a number"),
    ],
)
def test_a_wrong_type_is_refused_not_converted(tmp_path: Path, section: str, body: str, message: str) -> None:
    _, error = spec_error(tmp_path, study_text(**{section: body}))
    assert message in error


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dashboard.notes=yes", "dashboard.notes: got 'yes'; allowed: true or false"),
        ("dashboard.notes=off", "dashboard.notes: got 'off'; allowed: true or false"),
        ("training.max_epochs=1e3", "training.max_epochs: got 1000.0; allowed: an integer"),
        ("training.repeats='3'", "training.repeats: got '3'; allowed: an integer"),
    ],
)
def test_an_override_keeps_its_toml_type_and_is_refused_where_it_does_not_fit(
    tmp_path: Path, override: str, message: str
) -> None:
    path = write_study(tmp_path, study_text())
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides=[override])
    assert message in str(info.value)


# --------------------------------------------------------------------------- features, budget, allocation


def test_a_study_file_names_its_feature_columns_with_a_toml_array(tmp_path: Path) -> None:
    """TOML has arrays, not tuples: a CSV with a date column is read through ``features``."""
    from sweep.data import data_kwargs, load_dataset

    rows = "".join(f"2020-{m % 12 + 1:02d}-01,{m % 12 + 1},{20 + (m % 12) * 0.5}\n" for m in range(80))
    (tmp_path / "sst.csv").write_text("date,month,sst\n" + rows, encoding="utf-8")
    data = 'source = "csv"\npath = "sst.csv"\ntask = "forecast"\ntarget = "sst"\n'
    data += 'features = ["month", "sst"]\nlookback = 6'
    text = study_text(data=data)
    spec = load_spec(write_study(tmp_path, text))
    assert spec.data.features == ("month", "sst")
    ds = load_dataset(**data_kwargs(spec.data))
    assert ds.X.shape[1:] == (6, 2)


_SHAPES = {
    # (the [data] lines, the shape of one sample): a CSV with a date and a station column the model never reads
    "tabular": ('task = "regression"\ntarget = "y"\nfeatures = ["a", "b"]', (2,)),
    "series": ('task = "forecast"\ntarget = "y"\nfeatures = ["a", "y"]\nlookback = 5', (5, 2)),
    "grouped sequences": ('task = "regression"\ntarget = "y"\nfeatures = ["a", "b"]\ngroup = "station"', (10, 2)),
}


@pytest.mark.parametrize("shape", list(_SHAPES))
def test_features_in_a_study_file_read_the_named_columns_of_each_data_shape(tmp_path: Path, shape: str) -> None:
    from sweep.data import data_kwargs, load_dataset

    rows = "".join(f"2020-01-{d % 28 + 1:02d},s{d // 10},{d * 0.1},{(d * 7) % 5},{d % 3 + 0.5}\n" for d in range(60))
    (tmp_path / "obs.csv").write_text("date,station,a,b,y\n" + rows, encoding="utf-8")
    lines, sample = _SHAPES[shape]
    spec = load_spec(write_study(tmp_path, study_text(data=f'source = "csv"\npath = "obs.csv"\n{lines}')))
    ds = load_dataset(**data_kwargs(spec.data))
    assert ds.X.shape[1:] == sample
    # A named column that is not numeric: one line naming it and a value from it.
    named_date = lines.replace('"a"', '"date"')
    bad = study_text(data=f'source = "csv"\npath = "obs.csv"\n{named_date}')
    with pytest.raises(DataError) as refused:
        load_dataset(**data_kwargs(load_spec(write_study(tmp_path, bad)).data))
    assert "'date'" in str(refused.value) and "2020-01-01" in str(refused.value) and "\n" not in str(refused.value)


def test_a_date_column_orders_a_series_and_each_group(tmp_path: Path) -> None:
    import random

    import numpy as np

    from sweep.data import data_kwargs, load_dataset

    rows = [f"2021-{m // 28 + 1:02d}-{m % 28 + 1:02d},s{m % 3},{m * 0.5},{m % 7}\n" for m in range(84)]
    (tmp_path / "sorted.csv").write_text("date,station,a,y\n" + "".join(rows), encoding="utf-8")
    random.Random(3).shuffle(rows)
    (tmp_path / "shuffled.csv").write_text("date,station,a,y\n" + "".join(rows), encoding="utf-8")

    def load(file: str, lines: str) -> np.ndarray:
        text = study_text(data=f'source = "csv"\npath = "{file}"\ntarget = "y"\nfeatures = ["a"]\n{lines}')
        return load_dataset(**data_kwargs(load_spec(write_study(tmp_path, text)).data)).X

    series = 'task = "forecast"\nlookback = 4'
    grouped = 'task = "regression"\ngroup = "station"'
    for lines in (series, grouped):
        assert np.array_equal(load("shuffled.csv", lines + '\norder_by = "date"'), load("sorted.csv", lines))
        assert not np.array_equal(load("shuffled.csv", lines), load("sorted.csv", lines))
    with pytest.raises(DataError, match=r"data\.order_by: orders a series; use it with data\.lookback or data\.group"):
        load("sorted.csv", 'task = "regression"\norder_by = "date"')
    with pytest.raises(DataError) as refused:
        load("sorted.csv", series + '\norder_by = "station"')
    assert str(refused.value) == (
        f"data.order_by: '{tmp_path / 'sorted.csv'}' column 'station' row 2 is 's0'; "
        "allowed: numbers or ISO dates and times (2024-01-31, 2024-01-31T12:00)"
    )


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ("[]", 'data.features: got []; allowed: a non-empty list of column names'),
        ('["a", "a"]', 'data.features: got ["a", "a"]; the column names must be distinct'),
        ('"a"', "data.features: got 'a'; allowed: a non-empty list of column names"),
    ],
)
def test_bad_features_are_one_line(tmp_path: Path, features: str, message: str) -> None:
    text = study_text(data=f'source = "csv"\npath = "x.csv"\ntask = "regression"\nfeatures = {features}')
    path, error = spec_error(tmp_path, text)
    assert error == f"{path}: {message}"


def test_a_budget_alone_says_when_to_stop_and_the_default_allocation_is_auto() -> None:
    raw = base_raw()
    raw["study"] = {"name": "b", "budget": 150}
    spec = spec_from_dict(raw)
    assert spec.study.budget == 150 and spec.study.n_trials is None
    assert spec.allocation.policy == "auto" and spec.allocation.verify == 2
    with pytest.raises(SpecError, match=r"study\.budget: got 0; allowed: greater than or equal to 1"):
        spec_from_dict(base_raw(study={"name": "b", "budget": 0}))


@pytest.mark.parametrize(
    ("sections", "policy"),
    [
        ({"racing": {"enabled": False}}, "full"),
        ({"racing": {"keep": 0.5}}, "racing"),
        ({"racing": {"enabled": False}, "allocation": {"policy": "single"}}, "single"),
        ({"allocation": {"verify": 2}}, "auto"),
    ],
)
def test_study_files_from_before_the_allocation_keep_their_meaning(sections: dict[str, Any], policy: str) -> None:
    assert spec_from_dict(base_raw(**sections)).allocation.policy == policy
