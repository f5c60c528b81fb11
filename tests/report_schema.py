"""The JSON report as every test reads it: parsed, then validated against the shipped schema.

``schema/report.schema.json`` is the artifact's contract with the tools that read it, so each
end-to-end test checks it on the report its run wrote, not only the fields that test looks at.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "schema" / "report.schema.json"
SHOWN_ERRORS = 10


@functools.cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@functools.cache
def validator() -> Draft202012Validator:
    Draft202012Validator.check_schema(schema())  # a broken schema must not pass every report
    return Draft202012Validator(schema())


def check_report(document: Any, where: str = "the JSON report") -> Any:
    """``document`` itself, or an :class:`AssertionError` naming each key that breaks the schema."""
    # best_match: under "null or a section", the section's own error, not "valid under none of the given schemas"
    errors = [best_match([error]) for error in validator().iter_errors(document)]
    errors.sort(key=lambda error: list(map(str, error.absolute_path)))
    if errors:
        lines = [f"  {_where(error)}: {error.message[:300]}" for error in errors[:SHOWN_ERRORS]]
        if len(errors) > SHOWN_ERRORS:
            lines.append(f"  … and {len(errors) - SHOWN_ERRORS} more")
        raise AssertionError(f"{where} does not match {SCHEMA_PATH.relative_to(ROOT)}:\n" + "\n".join(lines))
    return document


def load_report(text: str, where: str = "the JSON report") -> Any:
    """The report a run wrote, parsed and checked; ``None`` when there is no text (no report)."""
    if not text:
        return None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise AssertionError(f"{where} is not JSON ({exc}): {text[:300]!r}") from None
    return check_report(document, where)


def _where(error: ValidationError) -> str:
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
