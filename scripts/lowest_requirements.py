"""The lowest versions pyproject.toml allows, as a requirements file, for the tests to run on.

    python scripts/lowest_requirements.py          # print requirements: each runtime dependency at
                                                   # its lower bound, then the test tools' pins
    python scripts/lowest_requirements.py --check  # exit 1 unless this interpreter has exactly the
                                                   # lower bounds installed

`.ci/run` installs these in a virtual environment of their own and runs the demo and the
end-to-end tests there: a lower bound that is too low (requests 2.31 had no
`HTTPAdapter.get_connection_with_tls_context`, which the tenant reads call) then fails CI, not a
user's install. A runtime dependency without a lower bound is an error: the lowest version it
allows would be unknown.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
LOWER = re.compile(r">=\s*([0-9][A-Za-z0-9.]*)")


def lowest() -> dict[str, str]:
    """Each runtime dependency of pyproject.toml → the lowest version it allows."""
    found = {}
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = NAME.match(requirement)
        bound = LOWER.search(requirement.split(";")[0])
        if name is None or bound is None:
            raise SystemExit(f"pyproject.toml: {requirement!r} has no lower bound (>=)")
        found[name.group(1)] = bound.group(1)
    return found


TEST_TOOLS = ("pytest", "requests-mock", "pyyaml", "jsonschema")  # what the tests import (not the linters)


def test_tools() -> list[str]:
    """The pins of the test tools in requirements-dev.txt (its runtime pins are replaced by the lowest)."""
    lines = (line.split("#")[0].strip() for line in (ROOT / "requirements-dev.txt").read_text().splitlines())
    return [line for line in lines if line.partition("==")[0].lower() in TEST_TOOLS]


def release(version: str) -> tuple[int, ...]:
    """``2.6`` and ``2.6.0`` are one release."""
    parts = [int(part) for part in re.findall(r"\d+", version.split("+")[0])]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def main(argv: list[str]) -> int:
    bounds = lowest()
    if argv == ["--check"]:
        wrong = [f"{name} {metadata.version(name)} (the lower bound is {version})"
                 for name, version in bounds.items() if release(metadata.version(name)) != release(version)]
        print("; ".join(wrong) or "lowest versions installed: " + ", ".join(f"{n} {v}" for n, v in bounds.items()))
        return 1 if wrong else 0
    print("\n".join([*(f"{name}=={version}" for name, version in bounds.items()), *test_tools()]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
