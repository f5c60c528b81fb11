"""The one place that speaks the Actions runner's protocol.

Workflow commands (``::group::``, ``::error::``, ``::add-mask::``), the ``GITHUB_OUTPUT`` file
syntax and the job summary all live here, so stages only say *what* happened. Every byte that
leaves the process passes :meth:`Runner.redact` first: the runner masks registered secrets in
its own log, but not in files we write, and not at all on a laptop or another CI system.
Redaction covers the forms a server may echo a secret in (URL-, HTML-, JSON-escaped, base64 at
any alignment) and any piece of 6 characters of one, and it is applied to values, never to the
syntax around them (outputs, the report's JSON, the summary's Markdown), which a short secret
would otherwise corrupt. Every log line is capped at :data:`LINE_LIMIT` characters.

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

Nothing written here can raise on its content: every writer (the log, ``GITHUB_OUTPUT``, the
summary; the report's in :mod:`deploy.report`) makes its text writable first
(:func:`deploy.domain.writable`), whatever the HTTP layer already did. The log is best effort: a
line the stream refuses (a full disk under a redirected stdout) is dropped, never raised, so no
safety action (promote's put-back, a rollback) can depend on a log line. The runner's files must
be regular files (:func:`regular_file`; the report's path follows the same rule).
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import re
import stat
import sys
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import quote, quote_plus

from deploy.domain import writable

ANNOTATIONS_PER_KIND = 9
SUMMARY_LIMIT_BYTES = 1024 * 1024 - 16 * 1024  # margin below the runner's 1 MiB cut-off
MASK = "***"
MIN_SECRET = 3  # a 1-2 character "secret" would mask half the log
WINDOW = 6  # this many consecutive characters of any form of a secret are as good as the secret
GRAM = 3  # the redaction prefilter's piece: every WINDOW-long match holds one starting at a STRIDE multiple
STRIDE = WINDOW - GRAM + 1
LINE_LIMIT = 4096  # characters per log line: one server body must not become a megabyte line
# Gitea's act reads GITHUB_OUTPUT with a 64 KiB line limit and then drops *every* output of the
# step, so each output value stays far below it; the JSON report keeps the full lists.
OUTPUT_LIST_LIMIT = 16 * 1024
OUTPUT_TEXT_LIMIT = 8 * 1024
_MARKER_ROOM = 40  # the longest "… (N more characters)"
_UPPER_HEX = re.compile(r"%[0-9A-F]{2}")
_MARKDOWN = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", **{c: "\\" + c for c in "\\`*_[]()!#|~{}:"}}
)
_AUTOLINK_WWW = re.compile(r"(?i)\b(www)\.")


def escape_markdown(text: str) -> str:
    """Server text as inert Markdown on one line: no link, image, HTML, autolink or table break.

    HTML-significant characters become entities, Markdown punctuation is backslash-escaped (an
    escaped ``:`` also stops ``https://`` autolinks) and ``www.`` loses its autolink dot, while a
    plain slug such as ``tenant-1`` stays exactly as it is.
    """
    return _AUTOLINK_WWW.sub(r"\1\\.", " ".join(str(text).split()).translate(_MARKDOWN))


def counted(number: int, noun: str) -> str:
    """``1 tenant``, ``2 tenants``, ``1 batch``, ``3 batches``: a count with its noun, plural right."""
    if number == 1:
        return f"{number} {noun}"
    return f"{number} {noun}{'es' if noun.endswith(('s', 'sh', 'ch', 'x')) else 's'}"


def listing(names: Sequence[str], limit: int = 20) -> str:
    """``a, b, c`` — or the first ``limit`` and a count, so a message stays one readable line."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, … and {len(names) - limit} more"


def bounded_json_list(items: Sequence[str], limit: int = OUTPUT_LIST_LIMIT) -> str:
    """A JSON array of at most ``limit`` characters: the first items that fit, then a last
    element ``"+N more"`` (still valid JSON; the JSON report has the full list)."""
    encoded = [json.dumps(item) for item in items]
    size, kept = 2, 0
    for text in encoded:
        if size + len(text) + 1 > limit - 32:  # room for the "+N more" element
            break
        size, kept = size + len(text) + 1, kept + 1
    rest = [json.dumps(f"+{len(items) - kept} more")] if kept < len(items) else []
    return "[" + ", ".join(encoded[:kept] + rest) + "]"


def cap_line(line: str, limit: int = LINE_LIMIT, cut: int = 0) -> str:
    """At most ``limit`` characters, saying how many were cut so the reader knows it is not all.

    ``cut``: characters already dropped before this line was redacted (they count as cut too).
    """
    if len(line) <= limit and not cut:
        return line
    kept = min(len(line), limit - _MARKER_ROOM)
    return f"{line[:kept]}… ({len(line) - kept + cut} more characters)"


def secret_forms(secret: str) -> set[str]:
    """The forms a secret takes when a server or our own files echo it: raw, and escaped for JSON,
    Markdown, URLs (either hex case) and HTML, in UTF-8 and, when it differs, latin-1 (what
    requests uses for Basic auth)."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
             secret.replace("|", "\\|"), escape_markdown(secret)}
    for quoted in (True, False):
        escaped = html.escape(secret, quote=quoted)
        forms |= {escaped, escaped.replace("&#x27;", "&#39;")}
    for data in _encodings(secret):
        for url in (quote(data, safe=""), quote_plus(data, safe=""), "".join(f"%{b:02X}" for b in data)):
            forms |= {url, _UPPER_HEX.sub(lambda m: m.group().lower(), url)}
    forms |= _escaped_everywhere(secret)
    return {form for form in forms if form}


def _escaped_everywhere(secret: str) -> set[str]:
    """Encoders that escape more than they must: Go's JSON (``\\u0026`` for ``&``, ``<``, ``>``),
    and every character as ``\\uXXXX``, ``&#NN;`` or ``&#xNN;``, in either hex case."""
    go_json = json.dumps(secret)[1:-1]
    for char, code in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        go_json = go_json.replace(char, code)
    every_u = "".join(json.dumps(c)[1:-1] if ord(c) > 0xFFFF else f"\\u{ord(c):04x}" for c in secret)
    return {go_json, every_u, every_u.replace("\\u", "\\U").upper().replace("\\U", "\\u"),
            "".join(f"&#{ord(c)};" for c in secret), "".join(f"&#x{ord(c):x};" for c in secret),
            "".join(f"&#x{ord(c):X};" for c in secret)}


def base64_pieces(secret: str) -> set[str]:
    """The part of any base64 text that depends only on the secret, at each of the 3 alignments.

    An echoed ``Bearer <token>`` or ``Basic base64(user:pass)`` is base64 of a longer string, so
    the secret's bytes may start at any offset mod 3; the characters that also carry bits of the
    bytes before or after it are trimmed (what GitHub's runner does for its base64 masker).
    """
    pieces = set()
    for data in _encodings(secret):
        for pad in range(3):
            start, end = -(-8 * pad // 6), 8 * (pad + len(data)) // 6
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                pieces.add(encode(bytes(pad) + data).decode("ascii")[start:end])
    return pieces


def _encodings(secret: str) -> list[bytes]:
    """The bytes a secret is sent as. A value read from the environment may hold a byte that is not
    UTF-8 (as ``\\udcXX``): it is sent as that byte, so that is the form to look for."""
    try:
        utf8 = secret.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate outside that range: sent as nothing could encode it
        utf8 = secret.encode("utf-8", "surrogatepass")
    try:
        latin1 = secret.encode("latin-1")
    except UnicodeEncodeError:
        return [utf8]
    return [utf8] if latin1 == utf8 else [utf8, latin1]


def _limit(kind: str) -> int:
    """Annotations of ``kind`` before the cap; one error slot is kept for the run's verdict."""
    return ANNOTATIONS_PER_KIND - (1 if kind == "error" else 0)


FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (a named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words; '' for a regular file."""
    return "" if stat.S_ISREG(mode) else next((kind for test, kind in FILE_KINDS if test(mode)), "not a file")


def _discards(info: os.stat_result) -> bool:
    """/dev/null itself (the same device number), however it is named."""
    try:
        null = os.stat(os.devnull)
    except OSError:
        return False
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == null.st_rdev


def regular_file(path: str | os.PathLike[str]) -> int:
    """A descriptor of ``path`` opened to append, if it is a regular file or ``/dev/null``.

    The runner's files (``GITHUB_OUTPUT``, ``GITHUB_STEP_SUMMARY``) and the report are regular
    files; anything else at those paths is a mistake or a trap, and an ``OSError`` that says what
    it is: a FIFO nobody reads would block an ``open`` forever (past SIGTERM: nothing interrupts a
    blocked ``open``), a socket or a device swallows or refuses what is written, a symbolic link
    loop never resolves. The open itself is non-blocking, so even a FIFO that appears between the
    check and the open is refused at once rather than waited on. ``/dev/null`` is accepted: it
    is how a person says "I do not want this file" (``GITHUB_STEP_SUMMARY=/dev/null`` on a laptop).
    """
    with contextlib.suppress(FileNotFoundError):  # none yet: created below (through a dangling link too)
        refuse_unless_regular(path, os.stat(path))  # a loop raises here: too many levels of links
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
    descriptor = os.open(path, flags, 0o666)
    try:
        refuse_unless_regular(path, os.fstat(descriptor))
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def refuse_unless_regular(path: str | os.PathLike[str], info: os.stat_result) -> None:
    """Raise ``OSError`` naming what ``path`` is, unless it is a regular file or /dev/null."""
    kind = file_kind(info.st_mode)
    if kind and not _discards(info):
        raise OSError(f"{os.fspath(path)} is {kind}, not a regular file")


def append_text(path: str, text: str) -> None:
    """Append ``text`` (made writable) to a runner file that :func:`regular_file` accepts."""
    with open(regular_file(path), "a", encoding="utf-8") as out:
        out.write(writable(text))


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
    _forms: list[str] = field(default_factory=list, repr=False)  # longest first: no partial leftovers
    _short: list[str] = field(default_factory=list, repr=False)  # forms too short for a window
    _windows: set[str] = field(default_factory=set, repr=False)
    _grams: set[str] = field(default_factory=set, repr=False)
    _secrets: list[str] = field(default_factory=list, repr=False)  # as registered, to warn about later facts
    _facts: set[str] = field(default_factory=set, repr=False)
    _fact_text: str = field(default="", repr=False)  # every fact, NUL-separated: one substring search for all
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
                value = value.strip() if value is not secret else value
                self._register(value)
                if writable(value) != value:  # what every writer turns it into (see writable)
                    self._register(writable(value))

    def public(self, *facts: str) -> None:
        """Register the run's own public facts — its SHA, tags, image names, tenant names, digests —
        which redaction must never censor.

        A secret that is part of a fact hides nothing the fact does not show, and redacting it
        would censor the fact everywhere (a token service answering with the SHA's first 12
        characters would take the SHA out of the log and the report): it is not redacted, and a
        warning says so. A piece of a secret that a fact holds stops counting as a piece of it.
        Facts may come after the secrets (tenant names, digests): each fact is checked once.
        """
        new = [fact for fact in dict.fromkeys(facts) if fact and fact not in self._facts]
        if not new:
            return
        self._facts.update(new)
        joined = "\0".join(new)
        self._fact_text = f"{self._fact_text}\0{joined}" if self._fact_text else joined
        if not self._secrets:
            return
        pruned = {window for fact in new for i in range(len(fact) - WINDOW + 1)
                  if (window := fact[i : i + WINDOW]) in self._windows}
        if pruned:
            self._windows -= pruned
            self._forms = [form for form in self._forms if form not in joined]
        self._short = [form for form in self._short if form not in joined]
        for secret in [secret for secret in self._secrets if secret in joined]:
            self._secrets.remove(secret)
            self._public_secret(secret)

    def _public_secret(self, secret: str) -> None:
        self.warning(f"a secret of {len(secret)} characters is part of one of this run's public facts (its SHA, a "
                     "tag, an image, a tenant name or a digest): it is not redacted, so that those stay readable",
                     title="secret not redacted")

    def _register(self, secret: str) -> None:
        if len(secret) < MIN_SECRET or secret in self._secrets:
            return
        facts = self._fact_text
        if secret in facts:  # a fact, or a piece of one: see public()
            self._public_secret(secret)
            return
        self._secrets.append(secret)
        forms = secret_forms(secret) | {p for p in base64_pieces(secret) if len(p) >= WINDOW}
        for form in forms - set(self._forms) - set(self._short):
            if form in facts:
                continue
            if len(form) < WINDOW:
                self._short.append(form)
                continue
            self._forms.append(form)
            windows = (form[i : i + WINDOW] for i in range(len(form) - WINDOW + 1))
            self._windows.update(window for window in windows if window not in facts)
            self._grams.update(form[i : i + GRAM] for i in range(len(form) - GRAM + 1))
        self._forms.sort(key=len, reverse=True)
        self._short.sort(key=len, reverse=True)
        if self.in_actions:
            self._write(f"::add-mask::{escape_data(secret)}")

    def redact(self, text: str) -> str:
        """Every registered form of every secret, and any piece of one of :data:`WINDOW` characters
        or more: servers' error texts are shortened before they are logged, so a cut-off head or
        tail of a secret must go too.

        Linear in the text, and cheap on the common line that holds no secret: a match of
        ``WINDOW`` characters always contains a ``GRAM``-long piece of a form starting at a
        multiple of ``STRIDE``, so only those few pieces are looked up before the full scan, and
        the full scan only visits positions next to a piece that was found.
        """
        for form in self._short:
            text = text.replace(form, MASK)
        grams = self._grams
        if not grams or not any([text[j : j + GRAM] in grams for j in range(0, len(text) - GRAM + 1, STRIDE)]):
            return text
        for form in self._forms:
            text = text.replace(form, MASK)
        return self._mask_runs(text)

    def _mask_runs(self, text: str) -> str:
        """Replace each maximal run whose every ``WINDOW``-long slice is a piece of a form."""
        windows, n = self._windows, len(text)
        hits = [j for j in range(0, n - GRAM + 1, STRIDE) if text[j : j + GRAM] in self._grams]
        parts: list[str] = []
        done = i = 0
        for j in hits:  # a match starting at i holds the piece found at the one j in [i, i + STRIDE - 1]
            i = max(i, j - STRIDE + 1)
            while i <= j and i + WINDOW <= n:
                if text[i : i + WINDOW] not in windows:
                    i += 1
                    continue
                end = i + WINDOW
                while end < n and text[end - WINDOW + 1 : end + 1] in windows:
                    end += 1
                parts += [text[done:i], MASK]
                done = i = end
        return "".join(parts) + text[done:]

    # -- log -----------------------------------------------------------------------------

    def log(self, text: str = "") -> None:
        """Plain log lines. A line from a remote server can't smuggle in a workflow command.

        Each line is capped at :data:`LINE_LIMIT` after redaction: a server's body is not a log line.
        """
        for raw in writable(text).splitlines() or [""]:
            line, cut = self._redact_head(raw)
            if line.lstrip().startswith("::"):
                line = " " + line.lstrip().replace("::", ": :", 1)
            self._write(cap_line(line, LINE_LIMIT, cut))

    def _redact_head(self, text: str) -> tuple[str, int]:
        """The redacted head of a text that is about to be capped, and how much was left off.

        Only a few times :data:`LINE_LIMIT` is scanned, not a whole 50 MB body that is cut anyway;
        a piece of a secret the cut leaves behind is still redacted, as any ``WINDOW`` of one is.
        """
        head = text[: 4 * LINE_LIMIT]
        return self.redact(head), len(text) - len(head)

    @contextmanager
    def group(self, title: str) -> Iterator[None]:
        title = self.redact(writable(title))
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

    def errors_said(self) -> list[str]:
        """The error annotations made so far, as written (redacted, capped), whitespace folded."""
        return [" ".join(message.split()) for kind, _title, message in self._annotated if kind == "error"]

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

    def has_said(self, kind: str, message: str, title: str = "") -> bool:
        """Whether this very annotation was made: a check asked before every call says its finding once."""
        return (kind, *self._annotation(message, title)) in self._annotated

    def _annotation(self, message: str, title: str) -> tuple[str, str]:
        """(title, message) as annotated: redacted, writable, capped."""
        (message, cut), (title, title_cut) = self._redact_head(writable(message)), self._redact_head(writable(title))
        return cap_line(title, 256, title_cut), cap_line(message, LINE_LIMIT, cut)

    def _annotate(self, kind: str, message: str, title: str, final: bool = False) -> None:
        title, message = self._annotation(message, title)
        # As a plain line the title leads the message, unless the message already says what it is
        # about: it begins with the title's first word ("batch 2/2 failed: batch 2/2: …" and
        # "canary t01: canary not proven: …" would say one thing twice).
        subject = title.split(" ", 1)[0]
        prefix = f"{title}: " if title and not message.startswith(subject) else ""
        if (kind, title, message) in self._annotated:  # said already (a gate re-checked): once is enough
            return
        self._annotated.add((kind, title, message))
        if not final:
            self._counts[kind] = self._counts.get(kind, 0) + 1
        if (not final and self._counts[kind] > _limit(kind)) or not self.in_actions:
            self.log(f"{kind}: {prefix}{message}")
            return
        props = f" title={escape_property(title)}" if title else ""
        self._write(f"::{kind}{props}::{escape_data(message)}")

    def _write(self, line: str, capped: bool = True) -> None:
        # The runner also obeys the legacy `##[command]` syntax anywhere in a line; text from a
        # server (a CP error, a slug) must not switch off command processing or mask handling.
        # Every line is capped, but never a mask: cutting one would leave the secret unmasked.
        if capped and not line.startswith("::add-mask::"):
            line = "\n".join(cap_line(part) for part in line.split("\n"))
        try:
            self.stream.write(writable(line).replace("##[", "##\u200b[") + "\n")
            self.stream.flush()
        except OSError:  # the log is best effort: a line it refuses must not stop what follows it
            pass

    # -- outputs and summary -------------------------------------------------------------

    def write_outputs(self, outputs: Mapping[str, str | Sequence[str]], verbatim: Collection[str] = ()) -> None:
        """Append outputs to ``GITHUB_OUTPUT``, or print ``name=value`` lines without one.

        Redaction must never rewrite structure (a 3-character token ``tru`` would turn ``ok:
        true`` into ``***e``), so values are redacted, never the syntax around them: a list is
        redacted item by item and then written as a JSON array (still valid JSON); a string is
        redacted unless its name is in ``verbatim`` — outputs made only of our own words, numbers,
        digests and paths. Every value uses the heredoc form with a fresh random delimiter, which
        is valid for single-line values too and cannot be broken by a value's content.
        """
        values = {name: self._output_value(value, name in verbatim) for name, value in outputs.items()}
        if not self.output_path:
            for name, value in values.items():  # already bounded: a cut list would not be JSON
                self._write(f"{name}={value}", capped=False)
            return
        append_text(self.output_path, "".join(format_output(name, value) for name, value in values.items()))

    def _output_value(self, value: str | Sequence[str], verbatim: bool) -> str:
        if not isinstance(value, str):
            return bounded_json_list([self.redact(writable(item)) for item in value])
        return writable(value) if verbatim else cap_line(self.redact(writable(value)), OUTPUT_TEXT_LIMIT)

    def write_summary(self, markdown: str, redacted: bool = False) -> None:
        """Append the job summary, truncated under the runner's 1 MiB limit.

        ``redacted``: the caller redacted every value it put in, so the Markdown around them is
        left alone (a short secret must not break a table's syntax).
        """
        if not self.summary_path:
            return
        markdown = writable(markdown)
        append_text(self.summary_path, truncate_utf8(markdown if redacted else self.redact(markdown),
                                                     SUMMARY_LIMIT_BYTES))


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
