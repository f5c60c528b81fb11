"""Generate the README's inputs and outputs tables from action.yml, the single source of truth.

    python scripts/readme_tables.py          # rewrite the tables in README.md
    python scripts/readme_tables.py --check  # exit 1 if README.md is out of date (the tests run this)
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MARKERS = {
    "inputs": ("<!-- inputs:start (generated from action.yml) -->", "<!-- inputs:end -->"),
    "outputs": ("<!-- outputs:start (generated from action.yml) -->", "<!-- outputs:end -->"),
}


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def inputs_table(manifest: dict) -> str:
    rows = ["| input | default | env | description |", "| --- | --- | --- | --- |"]
    for name, meta in manifest["inputs"].items():
        default = str(meta.get("default", ""))
        env = "FLEET_" + name.upper().replace("-", "_")
        shown = f"`{default}`" if default else "—"
        required = " **(required)**" if meta.get("required") else ""
        rows.append(f"| `{name}`{required} | {_cell(shown)} | `{env}` | {_cell(meta['description'])} |")
    return "\n".join(rows)


def outputs_table(manifest: dict) -> str:
    rows = ["| output | description |", "| --- | --- |"]
    rows += [f"| `{name}` | {_cell(meta['description'])} |" for name, meta in manifest["outputs"].items()]
    return "\n".join(rows)


def render(readme: str, manifest: dict) -> str:
    tables = {"inputs": inputs_table(manifest), "outputs": outputs_table(manifest)}
    for key, (start, end) in MARKERS.items():
        head, found, rest = readme.partition(start)
        _, found_end, tail = rest.partition(end)
        if not (found and found_end):
            raise SystemExit(f"README.md lacks the {key} markers {start} … {end}")
        readme = f"{head}{start}\n{tables[key]}\n{end}{tail}"
    return readme


def main(argv: list[str]) -> int:
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    fresh = render(readme, yaml.safe_load((ROOT / "action.yml").read_text()))
    if "--check" in argv:
        if fresh != readme:
            print("README.md tables differ from action.yml: run python scripts/readme_tables.py")
            return 1
        return 0
    readme_path.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
