"""PromQL text as ``analysis-query`` needs it: each line split into a named check, and
``{tenants}`` turned into a regex of the tenants a step moved.

A line is ``NAME: EXPR <op> THRESHOLD``. PromQL has comparison operators of its own (``rate(x) >
0``, ``code!="200"``, ``x > bool 1``) and ``{…}`` label matchers, so the line is split at the *last*
comparison operator at the top level: outside every string literal (``"…"``, ``'…'``, raw
`````…`````), every ``(…)``, ``[…]`` and ``{…}``, and before a ``#`` comment. ``=~`` and ``!~``
are regex matchers, never comparisons. One left-to-right pass, no regex over the line: linear
whatever the user (or a templated workflow) wrote.

``{tenants}`` must be a whole string literal after a regex matcher — ``tenant=~"{tenants}"`` — so
the anchors it brings cannot be defeated by text around it (``"prod-{tenants}"``), and an equality
matcher (``tenant="{tenants}"``, which would compare with the regex's text) is refused at start.
It becomes ``^(?:a|b\\.c)$``: each slug escaped for RE2, then the whole escaped again for the
string literal it stands in — in ``"…"`` and ``'…'`` a backslash is itself escaped (``\\.`` becomes
``\\\\.`` in the query text), in a raw `````…````` string it is not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from deploy.settings import AnalysisQuery, Comparison

PLACEHOLDER = "{tenants}"
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
RECORDING_RULE_RE = re.compile(r"\s*[A-Za-z_]\w*:[A-Za-z_]\w*:[\w:]*")  # a metric name with colons, at a line's start
MAX_QUERIES = 32  # every step sends each query every analysis-interval: more is a typo or a template loop
MAX_LINE = 8192  # characters of one line; the rendered query may be far longer (a large fleet)
SHOWN = 80  # characters of a bad line quoted in its error
RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")
QUOTES = "\"'`"
COMPARISONS = ("<=", ">=", "==", "!=")  # two-character ones, looked for before "<" and ">"
MATCHERS = ("=~", "!~")
CLOSERS = {")": "(", "]": "[", "}": "{"}
EXAMPLE = 'errors: sum(rate(http_requests_total{tenant=~"{tenants}",code=~"5.."}[2m])) < 0.5'


def parse_queries(text: str) -> tuple[tuple[AnalysisQuery, ...], list[str]]:
    """Every query of the input and every problem, each problem naming its line (``line 3 …``).

    Blank lines and lines starting with ``#`` are skipped; line numbers count them, so an error
    points at the line the user sees in the workflow file.
    """
    queries: list[AnalysisQuery] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            query = parse_query_line(line, number)
        except ValueError as exc:
            problems.append(f"line {number} ({_shown(line)}): {exc}")
            continue
        if query.name in seen:
            problems.append(f"line {number}: the name {query.name!r} is already used on line {seen[query.name]}")
            continue
        seen[query.name] = number
        queries.append(query)
    if len(queries) > MAX_QUERIES:
        problems.append(f"has {len(queries)} queries; at most {MAX_QUERIES}")
    return tuple(queries), problems


def parse_query_line(line: str, number: int = 1) -> AnalysisQuery:
    """``NAME: EXPR <op> THRESHOLD``, or :class:`ValueError` saying what is wrong."""
    if len(line) > MAX_LINE:
        raise ValueError(f"is {len(line)} characters long; at most {MAX_LINE}")
    name, colon, rest = line.partition(":")
    name = name.strip()
    if not colon or not name:
        raise ValueError(f"expected NAME: EXPR <op> THRESHOLD, e.g. {EXAMPLE}")
    if not NAME_RE.match(name):
        raise ValueError(f"the name {name[:SHOWN]!r} must be a simple identifier (letters, digits, _; "
                         "not starting with a digit)")
    rule = RECORDING_RULE_RE.match(line)
    if rule:  # level:metric:operations read as NAME: EXPR would send half a metric name
        raise ValueError(f"starts with the recording rule {rule.group(0)[:SHOWN]!r}, not a name: write "
                         f"NAME: {rule.group(0)[:SHOWN]} <op> THRESHOLD")
    comparisons, holes, end = _scan(line, len(line) - len(rest))
    if not comparisons:
        raise ValueError("has no comparison at the top level: end it with <, <=, >, >=, == or != and a number")
    at, op = comparisons[-1]
    expr, threshold = line[len(line) - len(rest):at].strip(), line[at + len(op):end].strip()
    if not expr:
        raise ValueError(f"has no expression before {op!r}")
    return AnalysisQuery(name=name, expr=expr, op=Comparison(op), threshold=_threshold(threshold, op), line=number,
                         quotes=tuple(quote for position, quote in holes if position < at))


def _scan(text: str, start: int) -> tuple[list[tuple[int, str]], list[tuple[int, str]], int]:
    """``(top-level comparisons, {tenants} holes, end)`` of ``text`` from ``start``: each comparison
    as ``(position, op)``, each hole as ``(position, quote)``, and where the expression ends (a
    ``#`` comment starts). Positions index ``text``, so errors count characters of the line."""
    comparisons: list[tuple[int, str]] = []
    holes: list[tuple[int, str]] = []
    stack: list[str] = []
    i, n = start, len(text)
    while i < n:
        char = text[i]
        if char in QUOTES:
            i = _skip_string(text, i, holes)
            continue
        if text.startswith(PLACEHOLDER, i):
            raise ValueError(f'{PLACEHOLDER} must be a quoted string after =~, as in tenant=~"{PLACEHOLDER}"')
        if char == "#":
            return _closed(comparisons, stack), holes, i
        if char in "([{":
            stack.append(char)
        elif char in CLOSERS:
            if not stack or stack[-1] != CLOSERS[char]:
                raise ValueError(f"has an unmatched {char!r} at character {i + 1}")
            stack.pop()
        elif not stack:
            pair = text[i:i + 2]
            if pair in COMPARISONS:
                comparisons.append((i, pair))
                i += 2
                continue
            if pair in MATCHERS:
                i += 2
                continue
            if char in "<>":
                comparisons.append((i, char))
        i += 1
    return _closed(comparisons, stack), holes, n


def _closed(comparisons: list[tuple[int, str]], stack: list[str]) -> list[tuple[int, str]]:
    if stack:
        raise ValueError(f"has an unclosed {stack[-1]!r}")
    return comparisons


def _skip_string(text: str, start: int, holes: list[tuple[int, str]]) -> int:
    """The index after the string literal opening at ``start``; its ``{tenants}`` go to ``holes``."""
    quote, i, n = text[start], start + 1, len(text)
    while i < n and text[i] != quote:
        if text.startswith(PLACEHOLDER, i):
            if i != start + 1 or not text.startswith(quote, i + len(PLACEHOLDER)):
                raise ValueError(f"{PLACEHOLDER} must be the whole string, as in tenant=~\"{PLACEHOLDER}\" "
                                 "(it brings its own anchors)")
            if text[:start].rstrip()[-2:] not in MATCHERS:
                raise ValueError(f"{PLACEHOLDER} is a regex: match it with =~ (or !~), as in "
                                 f"tenant=~\"{PLACEHOLDER}\"")
            holes.append((i, quote))
            i += len(PLACEHOLDER)
            continue
        i += 2 if text[i] == "\\" and quote != "`" else 1
    if i >= n:
        raise ValueError(f"has a string opened with {quote} at character {start + 1} that is not closed")
    return i + 1


def _threshold(text: str, op: str) -> float:
    """A finite number: ``0.01``, ``-2``, ``1e3``. Not ``NaN``/``Inf`` (nothing compares with
    NaN), nor ``1_000`` or other scripts' digits that ``float()`` would also take."""
    if not text:
        raise ValueError(f"has no threshold after {op!r}")
    try:
        if not text.isascii() or "_" in text:
            raise ValueError
        value = float(text)
    except ValueError:
        raise ValueError(f"the threshold {text[:SHOWN]!r} after {op!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"the threshold {text[:SHOWN]!r} must be a finite number")
    return value


def tenants_regex(tenants: Sequence[str]) -> str:
    """``^(?:a|b\\.c)$``: the tenants, each escaped for RE2, as one anchored alternation.

    Prometheus anchors ``=~`` itself; the explicit anchors keep the meaning if the regex is ever
    used elsewhere. Duplicates are dropped, order kept. No tenants is an error: an empty
    alternation would match the empty label, i.e. every series *without* a tenant label.
    """
    names = list(dict.fromkeys(tenants))
    if not names:
        raise ValueError("no tenants to analyse")
    for name in names:
        if not name or not name.isprintable():
            raise ValueError(f"{name!r} cannot be a tenant name in a query")
    return "^(?:" + "|".join("".join("\\" + c if c in RE2_SPECIAL else c for c in name) for name in names) + ")$"


def string_body(text: str, quote: str) -> str:
    """``text`` as the inside of a PromQL string literal opened with ``quote``."""
    if quote == "`":
        if "`" in text:
            raise ValueError("a tenant name with a backtick cannot go in a raw string")
        return text
    return text.replace("\\", "\\\\").replace(quote, "\\" + quote)


def render(query: AnalysisQuery, tenants: Sequence[str]) -> str:
    """The query as sent: every ``{tenants}`` replaced by :func:`tenants_regex`, escaped for its string."""
    pieces = query.expr.split(PLACEHOLDER)
    if len(pieces) == 1:
        return query.expr
    regex = tenants_regex(tenants)
    parts = [pieces[0]]
    for quote, piece in zip(query.quotes, pieces[1:], strict=True):
        parts += [string_body(regex, quote), piece]
    return "".join(parts)


def _shown(line: str) -> str:
    line = line.strip()
    return repr(line) if len(line) <= SHOWN else repr(line[:SHOWN]) + f"… ({len(line)} characters)"
