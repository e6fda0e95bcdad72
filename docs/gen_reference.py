"""The generated reference pages, and the MkDocs hook that builds them into the site.

``reference/study-file.md`` is written from :func:`sweep.schema.study_schema`, which is generated
from the spec models that check study files: every key, its type, default, allowed values and
description. ``reference/cli.md`` is written from the command tree of :mod:`sweep.cli`: every
command, its usage, arguments and options, as ``--help`` prints them.

The site is always built from the code: ``mkdocs.yml`` names this file under ``hooks``, and
:func:`on_files` replaces the two pages with freshly generated ones. Copies are also kept in
``docs/reference/`` for readers of the repository (the README links them); ``python
docs/gen_reference.py`` rewrites them, and ``tests/test_docs.py`` fails while they differ from
what the code generates.
"""

from __future__ import annotations

import json
from typing import Any

STUDY_FILE_PAGE = "reference/study-file.md"
CLI_PAGE = "reference/cli.md"

_STUDY_INTRO = """\
# Study file reference

*Generated from the spec models (`sweep/spec.py`, through `sweep schema`) by
`docs/gen_reference.py`: every key `sweep run` accepts, and no other.*

A study file is TOML with these sections. What is marked *required* must be given, `[model]`
needs `family` or `builder`, and a study needs one of `budget`, `n_trials` or `timeout`, in
the file or on the command line; everything else has a default or is optional. A key
that is not listed is refused with exit code 2 and one line naming it. `sweep run --set
SECTION.KEY=VALUE` sets any of them from the command line (the value is read as TOML).
`sweep schema` prints the same rules as a JSON Schema for editors.
"""

_CLI_INTRO = """\
# Command line reference

*Generated from the command tree of `sweep/cli.py` by `docs/gen_reference.py`; `sweep COMMAND
--help` prints the same.*

Exit codes: 0 success, 2 a mistake in the input (one line, no traceback), 130/143 interrupted
by SIGINT/SIGTERM, 1 anything else.
"""


def study_file_markdown() -> str:
    """The study-file reference: one table per section, from the JSON Schema of study files."""
    from sweep.schema import study_schema

    schema = study_schema()
    required_sections = set(schema.get("required", []))
    parts = [_STUDY_INTRO]
    for section, sub in schema["properties"].items():
        title = f"`[{section}]`" + (" (required)" if section in required_sections else "")
        parts.append(f"## {title}\n\n{sub.get('description', '')}\n")
        parts.append(_table(section, sub))
        extra = sub.get("properties", {}).get("extra")
        if extra is not None:
            parts.append(
                f"### `[{section}.extra]`\n\n{extra.get('description', '')}\n\n"
                "Each entry: any name of letters, digits and `_` (not one of the keys above), "
                f"whose value is {_kind(extra.get('additionalProperties', {}))}.\n"
            )
    return "\n".join(parts)


def _table(section: str, sub: dict[str, Any]) -> str:
    required = set(sub.get("required", []))
    rows = ["| key | type and allowed values | default | description |", "|---|---|---|---|"]
    for key, prop in sub.get("properties", {}).items():
        if key == "extra":
            continue
        name = f"`{key}`" + (" (required)" if key in required else "")
        default = f"`{_toml(prop['default'])}`" if "default" in prop else "—"
        rows.append(f"| {name} | {_cell(_kind(prop))} | {_cell(default)} | {_cell(prop.get('description', ''))} |")
    return "\n".join(rows) + "\n"


def _kind(prop: dict[str, Any]) -> str:
    """A JSON Schema property in words: its type, bounds and allowed values."""
    if "enum" in prop:
        return "one of " + ", ".join(f"`{_toml(v)}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{_toml(prop['const'])}`"
    if "anyOf" in prop:
        forms = [_form(alt) for alt in prop["anyOf"]]
        text = ", or ".join(forms)
        if "examples" in prop:
            text += " (e.g. " + ", ".join(f"`{_toml(v)}`" for v in prop["examples"]) + ")"
        return text
    kind = prop.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array":
        items = prop.get("items", {})
        unique = "distinct " if prop.get("uniqueItems") else ""
        least = prop.get("minItems", 0)
        size = f"{least} or more " if least else ""
        if items.get("type") == "string" and "minLength" in items:
            return f"list of {size}{unique}non-empty strings"
        return f"list of {size}{unique}{_plural(_kind(items))}"
    if kind == "object":
        keys = ", ".join(f"`{k}`" for k in prop.get("properties", {}))
        return f"table {{{keys}}}" if keys else "table"
    return str(kind) + _bounds(prop)


def _form(alt: dict[str, Any]) -> str:
    title = alt.get("title")
    if title == "constant":
        return f"a constant ({_kind({k: v for k, v in alt.items() if k != 'title'})})"
    if title == "choices":
        return "a list of choices"
    if title == "range":
        keys = ", ".join(alt.get("properties", {}))
        return f"a range {{{keys}}}"
    if alt.get("type") == "string" and "[smhd]" in alt.get("pattern", ""):
        return "a duration string"
    return _kind(alt)


def _bounds(prop: dict[str, Any]) -> str:
    low, high = prop.get("minimum"), prop.get("maximum")
    if low is not None and high is not None:
        return f" {_toml(low)}..{_toml(high)}"
    words = []
    if low is not None:
        words.append(f">= {_toml(low)}")
    if "exclusiveMinimum" in prop:
        words.append(f"> {_toml(prop['exclusiveMinimum'])}")
    if high is not None:
        words.append(f"<= {_toml(high)}")
    if "exclusiveMaximum" in prop:
        words.append(f"< {_toml(prop['exclusiveMaximum'])}")
    if "minLength" in prop:
        words.append("not empty")
    if prop.get("pattern", "").startswith("^") and prop.get("type") == "string" and not words:
        words.append(f"matching `{prop['pattern']}`")
    return (" " + ", ".join(words)) if words else ""


def _plural(kind: str) -> str:
    head, _, rest = kind.partition(" ")
    return f"{head}s" + (f" {rest}" if rest else "") if head in {"string", "integer", "number", "boolean"} else kind


def _toml(value: Any) -> str:
    """A default or allowed value as it is written in a study file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def cli_markdown() -> str:
    """The command-line reference: every command of ``sweep``, its usage and its parameters."""
    import typer

    from sweep.cli import app

    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="sweep")
    parts = [_CLI_INTRO]
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        if command.hidden:
            continue
        ctx = command.context_class(command, info_name=name, parent=root)
        usage = command.get_usage(ctx).removeprefix("Usage:").strip().replace("{", "").replace("}", "")
        parts.append(f"## `sweep {name}`\n\n{(command.help or '').strip()}\n\n```\n{usage}\n```\n")
        rows = ["| argument or option | what it does |", "|---|---|"]
        for param in command.params:
            record = param.get_help_record(ctx)
            if record is None:
                continue
            opts, text = record
            rows.append(f"| `{_cell(opts)}` | {_cell(' '.join(text.split()))} |")
        if len(rows) > 2:
            parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def pages() -> dict[str, str]:
    """Each generated page's path under ``docs/``, and its text."""
    return {STUDY_FILE_PAGE: study_file_markdown(), CLI_PAGE: cli_markdown()}


def on_files(files: Any, config: Any) -> Any:
    """MkDocs hook: the two reference pages, generated now, in place of the copies on disk."""
    from mkdocs.structure.files import File

    for uri, text in pages().items():
        stale = files.get_file_from_path(uri)
        if stale is not None:
            files.remove(stale)
        files.append(File.generated(config, uri, content=text))
    return files


def main() -> None:
    """Rewrite the copies in ``docs/reference/`` from the code."""
    from pathlib import Path

    docs = Path(__file__).resolve().parent
    for uri, text in pages().items():
        (docs / uri).write_text(text, encoding="utf-8")
        print(f"wrote docs/{uri}")


if __name__ == "__main__":
    main()
