"""The one place that speaks the Actions runner's protocol.

Workflow commands (``::group::``, ``::error::``, ``::add-mask::``), the ``GITHUB_OUTPUT`` file
syntax and the job summary all live here, so stages only say *what* happened. Every byte that
leaves the process passes :meth:`Runner.redact` first: the runner masks registered secrets in
its own log, but not in files we write, and not at all on a laptop or another CI system.

Runner facts this module relies on (GitHub's runner and Gitea's act_runner):
- command data escapes ``%``, ``\\r``, ``\\n``; properties also ``:`` and ``,``;
- GitHub shows at most 10 annotations of a kind per step, so we emit 9 and then one that
  counts the rest (the rest still go to the log as plain lines); of the errors, one of the 9 is
  kept for the run's own verdict, so it is never the one that is cut;
- the job summary is dropped whole above 1 MiB, so we truncate below that;
- Gitea shows annotations as plain log lines and may ignore the summary, so the stages also
  log every fact the summary shows.

Outside a runner (``GITHUB_ACTIONS`` is not ``true``: GitLab, Jenkins, a laptop) nothing would
interpret workflow commands, so groups and annotations are written as plain lines instead.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

ANNOTATIONS_PER_KIND = 9
SUMMARY_LIMIT_BYTES = 1024 * 1024 - 16 * 1024  # margin below the runner's 1 MiB cut-off
MASK = "***"
PREFIX_CLUE = 12  # this many leading characters of a secret are as good as the secret


def _redact_prefixes(text: str, secret: str) -> str:
    start = text.find(secret[:PREFIX_CLUE])
    while start != -1:
        end = start + PREFIX_CLUE
        while end < len(text) and end - start < len(secret) and text[end] == secret[end - start]:
            end += 1
        text = text[:start] + MASK + text[end:]
        start = text.find(secret[:PREFIX_CLUE], start + len(MASK))
    return text


def _limit(kind: str) -> int:
    """Annotations of ``kind`` before the cap; one error slot is kept for the run's verdict."""
    return ANNOTATIONS_PER_KIND - (1 if kind == "error" else 0)


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


@dataclass
class Runner:
    """Log, annotate, group, mask, and write outputs and the summary for one run."""

    stream: TextIO = field(default_factory=lambda: sys.stdout)
    output_path: str | None = None
    summary_path: str | None = None
    in_actions: bool = False
    _secrets: list[str] = field(default_factory=list, repr=False)
    _counts: dict[str, int] = field(default_factory=dict, repr=False)
    _annotated: set[tuple[str, str, str]] = field(default_factory=set, repr=False)

    # -- secrets -------------------------------------------------------------------------

    def mask(self, *secrets: str) -> None:
        """Register secrets: redact them everywhere, and ask the runner to mask them too.

        ``::add-mask::`` is only printed inside an Actions runner: anywhere else (a laptop,
        GitLab) that line would itself print the secret in clear. The runner masks line by line,
        so a multi-line secret (a JSON key) is registered a line at a time as well.
        """
        for secret in secrets:
            for value in (secret, *secret.splitlines()) if "\n" in secret else (secret,):
                self._register(value.strip() if value is not secret else value)

    def _register(self, secret: str) -> None:
        if len(secret) < 3 or secret in self._secrets:  # a 1-2 character "secret" would mask half the log
            return
        # Also the forms it takes inside the report's JSON and the summary's table cells.
        forms = {secret, json.dumps(secret)[1:-1], secret.replace("|", "\\|")}
        self._secrets.extend(forms - set(self._secrets))
        self._secrets.sort(key=len, reverse=True)  # longest first: no partial leftovers
        if self.in_actions:
            self._write(f"::add-mask::{escape_data(secret)}")

    def redact(self, text: str) -> str:
        """Every registered secret, and any cut-off piece of one (its first 12 characters or more),
        as servers' error texts are shortened before they are logged."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        for secret in self._secrets:  # whole forms first, so a prefix never splits one
            if len(secret) > PREFIX_CLUE:
                text = _redact_prefixes(text, secret)
        return text

    # -- log -----------------------------------------------------------------------------

    def log(self, text: str = "") -> None:
        """Plain log lines. A line from a remote server can't smuggle in a workflow command."""
        for line in self.redact(text).splitlines() or [""]:
            if line.lstrip().startswith("::"):
                line = " " + line.lstrip().replace("::", ": :", 1)
            self._write(line)

    @contextmanager
    def group(self, title: str) -> Iterator[None]:
        title = self.redact(title)
        self._write(f"::group::{escape_data(title)}" if self.in_actions else f"== {title} ==")
        try:
            yield
        finally:
            if self.in_actions:
                self._write("::endgroup::")

    def error(self, message: str, title: str = "", final: bool = False) -> None:
        """``final`` is the run's own verdict: it always gets an annotation, however many came first."""
        self._annotate("error", message, title, final)

    def warning(self, message: str, title: str = "") -> None:
        self._annotate("warning", message, title)

    def notice(self, message: str, title: str = "") -> None:
        self._annotate("notice", message, title)

    def annotation_count(self, kind: str) -> int:
        return self._counts.get(kind, 0)

    def finish(self) -> None:
        """Emit the one annotation per kind that counts what the cap held back."""
        if not self.in_actions:
            return
        for kind, count in sorted(self._counts.items()):
            hidden = count - _limit(kind)
            if hidden > 0:
                plural = "s" if hidden > 1 else ""
                self._write(
                    f"::{kind}::{hidden} more {kind}{plural} not annotated"
                    " (GitHub shows 10 per step); see the log and the job summary"
                )

    def _annotate(self, kind: str, message: str, title: str, final: bool = False) -> None:
        message, title = self.redact(message), self.redact(title)
        if (kind, title, message) in self._annotated:  # said already (a gate re-checked): log it only
            self.log(f"{kind}: {title + ': ' if title else ''}{message}")
            return
        self._annotated.add((kind, title, message))
        if not final:
            self._counts[kind] = self._counts.get(kind, 0) + 1
        if (not final and self._counts[kind] > _limit(kind)) or not self.in_actions:
            prefix = f"{title}: " if title else ""
            self.log(f"{kind}: {prefix}{message}")
            return
        props = f" title={escape_property(title)}" if title else ""
        self._write(f"::{kind}{props}::{escape_data(message)}")

    def _write(self, line: str) -> None:
        # The runner also obeys the legacy `##[command]` syntax anywhere in a line; text from a
        # server (a CP error, a slug) must not switch off command processing or mask handling.
        self.stream.write(line.replace("##[", "##\u200b[") + "\n")
        self.stream.flush()

    # -- outputs and summary -------------------------------------------------------------

    def write_outputs(self, outputs: Mapping[str, str]) -> None:
        """Append outputs to ``GITHUB_OUTPUT``, or print ``name=value`` lines without one.

        Every value uses the heredoc form with a fresh random delimiter, which is valid for
        single-line values too and cannot be broken by a value's content.
        """
        values = {name: self.redact(value) for name, value in outputs.items()}
        if not self.output_path:
            for name, value in values.items():
                self._write(f"{name}={value}")
            return
        with open(self.output_path, "a", encoding="utf-8") as out:
            out.write("".join(format_output(name, value) for name, value in values.items()))

    def write_summary(self, markdown: str) -> None:
        """Append the job summary, truncated under the runner's 1 MiB limit."""
        if not self.summary_path:
            return
        text = truncate_utf8(self.redact(markdown), SUMMARY_LIMIT_BYTES)
        with open(self.summary_path, "a", encoding="utf-8") as out:
            out.write(text)


def format_output(name: str, value: str) -> str:
    """One output in the runner's ``name<<DELIM`` syntax, every line ending in ``\\n``."""
    delimiter = f"ghadelimiter_{uuid.uuid4()}"
    while delimiter in value:  # practically never; the check is what makes it safe
        delimiter = f"ghadelimiter_{uuid.uuid4()}"
    return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


def parse_output_file(text: str) -> dict[str, str]:
    """Read a ``GITHUB_OUTPUT`` file the way the runner does (used by tests and the demo)."""
    outputs: dict[str, str] = {}
    lines: Iterable[str] = iter(text.split("\n"))
    for line in lines:
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            value_lines = []
            for value_line in lines:
                if value_line == delimiter:
                    break
                value_lines.append(value_line)
            else:
                raise ValueError(f"output {name!r}: delimiter {delimiter!r} never closed")
            outputs[name] = "\n".join(value_lines)
        else:
            name, _, value = line.partition("=")
            outputs[name] = value
    return outputs


def truncate_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    note = "\n\n…summary truncated to stay under the runner's 1 MiB limit; see the JSON report.\n"
    cut = data[: limit - len(note.encode("utf-8"))].decode("utf-8", errors="ignore")
    return cut + note
