"""The documentation: the site builds strictly, the generated reference matches the code, the
README fits on a screen and starts with the two commands."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer

from sweep.cli import app
from sweep.errors import SpecError
from sweep.spec import StudySpec, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEMPERATURE = ROOT / "studies" / "data" / "monthly-temperature.csv"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _listed_keys(markdown: str) -> dict[str, list[tuple[str, str]]]:
    """``{section: [(key, default cell), ...]}`` from the generated study-file reference."""
    keys: dict[str, list[tuple[str, str]]] = {}
    section = None
    for line in markdown.splitlines():
        heading = re.match(r"^## `\[(\w+)\]`", line)
        if heading:
            section = heading.group(1)
            keys[section] = []
            continue
        row = re.match(r"^\| `(\w+)`(?: \(required\))? \| .* \| (.*?) \| .* \|$", line)
        if row and section is not None:
            keys[section].append((row.group(1), row.group(2)))
    return keys


def _section_fields() -> dict[str, set[str]]:
    fields = {}
    for name, field in StudySpec.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        fields[name] = set(model.model_fields)
    return fields


def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """A broken link, a missing page, a bad anchor or a missing snippet fails the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    study_page = (tmp_path / "site" / "reference" / "study-file" / "index.html").read_text()
    assert "max_memory_growth_mb" in study_page
    assert "sweep schema" in (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "sweep on Kubernetes" in (tmp_path / "site" / "guides" / "kubernetes" / "index.html").read_text()


def test_strict_build_fails_on_a_broken_link(tmp_path: Path) -> None:
    """The check above can fail: the same configuration refuses a page with a dead link."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](nowhere.md)\n")
    config = (ROOT / "mkdocs.yml").read_text()
    config = re.sub(r"(?ms)^nav:.*", "nav:\n  - Home: index.md\n", config)
    config = config.replace("docs/gen_reference.py", str(ROOT / "docs" / "gen_reference.py"))
    (tmp_path / "mkdocs.yml").write_text(config)
    (docs / "reference").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"],
        cwd=tmp_path,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "nowhere.md" in done.stderr


def test_reference_lists_every_key_the_spec_accepts_and_no_other() -> None:
    listed = _listed_keys(_generator().study_file_markdown())
    fields = _section_fields()
    assert set(listed) == set(fields)
    for section, keys in listed.items():
        names = [key for key, _ in keys]
        assert len(names) == len(set(names)), section
        expected = fields[section] - {"extra"}
        assert set(names) == expected, f"[{section}]: listed {sorted(names)}, the spec has {sorted(expected)}"


def _valid_base() -> dict[str, Any]:
    return {
        "study": {"name": "reference", "n_trials": 1},
        "data": {
            "source": "csv",
            "path": str(TEMPERATURE),
            "task": "forecast",
            "target": "temperature",
            "features": ["temperature"],
            "order_by": "date",
            "lookback": 12,
        },
        "model": {"family": "lstm"},
    }


def test_every_listed_default_is_accepted_by_the_spec() -> None:
    """Each key written with the default the reference gives loads; a wrong type is refused."""
    listed = _listed_keys(_generator().study_file_markdown())
    checked = 0
    for section, keys in listed.items():
        for key, default in keys:
            if default == "—":
                continue
            value = tomllib.loads(f"v = {default.strip('`')}")["v"]
            raw = _valid_base()
            raw.setdefault(section, {})[key] = value
            spec = spec_from_dict(raw)
            assert getattr(spec, section) is not None
            checked += 1
            with pytest.raises(SpecError, match=rf"{section}\.{key}"):
                spec_from_dict({**raw, section: {**raw[section], key: {"not": "a value"}}})
    assert checked >= 40


def test_the_features_key_is_documented_and_accepted() -> None:
    """The key that was documented and refused once: the reference lists it and the spec takes it."""
    listed = {key for key, _ in _listed_keys(_generator().study_file_markdown())["data"]}
    assert "features" in listed
    assert spec_from_dict(_valid_base()).data.features == ("temperature",)


def test_the_copies_in_the_repository_are_up_to_date() -> None:
    """The README links docs/reference/*.md; they must say what the code generates."""
    for uri, text in _generator().pages().items():
        on_disk = (ROOT / "docs" / uri).read_text(encoding="utf-8")
        assert on_disk == text, f"docs/{uri} is stale: run python docs/gen_reference.py"


def test_cli_reference_lists_every_command_and_option() -> None:
    text = _generator().cli_markdown()
    group = typer.main.get_command(app)
    commands = [name for name, command in group.commands.items() if not command.hidden]  # type: ignore[attr-defined]
    assert re.findall(r"^## `sweep (\w+)`", text, flags=re.M) == commands
    for name in commands:
        command = group.commands[name]  # type: ignore[attr-defined]
        page = text.split(f"## `sweep {name}`", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("-"):
                    assert f"`{opt}" in page or f", {opt}" in page, (name, opt)


def test_readme_fits_a_screen_and_starts_with_the_two_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert commands[:2] == [
        "pip install -e . && sweep run studies/digits-lstm.toml",
        "pip install -e '.[test]' && python -m pytest",
    ]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
    assert text.index("```bash") < text.index("\n## ", text.index("## Two commands") + 1)


def test_readme_links_point_at_files_that_exist() -> None:
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"^[a-z]+://", t)]
    assert local, "the README links the docs"
    for target in local:
        assert (ROOT / target).exists(), target
