"""analysis-query lines: split at the last top-level comparison, {tenants} escaped for RE2 and its string."""

from __future__ import annotations

import re

import pytest

from deploy import promql
from deploy.settings import Comparison

ERRORS = ('errors: sum(rate(http_requests_total{tenant=~"{tenants}",code=~"5.."}[2m])) '
          '/ sum(rate(http_requests_total{tenant=~"{tenants}"}[2m])) < 0.01')


def one(line: str):
    queries, problems = promql.parse_queries(line)
    assert not problems, problems
    (query,) = queries
    return query


@pytest.mark.parametrize(
    ("line", "name", "expr", "op", "threshold"),
    [
        (ERRORS, "errors", ERRORS[len("errors: "):-len(" < 0.01")], "<", 0.01),
        ("p99: histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) <= 0.5", "p99",
         "histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))", "<=", 0.5),
        # comparisons inside parentheses, braces and strings belong to the expression
        ('up_ratio: sum(up{code!="500", le=">"} > 0) / count(up < 2) >= 0.9', "up_ratio",
         'sum(up{code!="500", le=">"} > 0) / count(up < 2)', ">=", 0.9),
        # top-level comparisons in the expression: the last one is the line's
        ("chained: rate(x[1m]) > bool 0 == 1", "chained", "rate(x[1m]) > bool 0", "==", 1.0),
        ("ne: x != -2", "ne", "x", "!=", -2.0),
        ("gt: x > 1e3", "gt", "x", ">", 1000.0),
        ("_under_9: x{a=~'b>c'} < +3", "_under_9", "x{a=~'b>c'}", "<", 3.0),
        # a recording rule's colons and a subquery's colon after the name are PromQL
        ("rec: job:http_errors:ratio_rate5m[10m:1m] < 1", "rec", "job:http_errors:ratio_rate5m[10m:1m]", "<", 1.0),
        # a comment ends the line, comparisons in it included
        ("c: x < 0.5 # not > 3", "c", "x", "<", 0.5),
        ("raw: x{a=~`<\\`} > 0", "raw", "x{a=~`<\\`}", ">", 0.0),
        ('esc: x{a="\\"<"} > 0', "esc", 'x{a="\\"<"}', ">", 0.0),
    ],
)
def test_a_line_splits_at_its_last_top_level_comparison(line, name, expr, op, threshold):
    query = one(line)
    assert (query.name, query.expr, query.op, query.threshold) == (name, expr, Comparison(op), threshold)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("no name here", "expected NAME: EXPR <op> THRESHOLD"),
        (": x < 1", "expected NAME: EXPR <op> THRESHOLD"),
        ("1st: x < 1", "simple identifier"),
        ("my-query: x < 1", "simple identifier"),
        ("q: sum(rate(x[1m]))", "no comparison at the top level"),
        ("q: sum(x < 1)", "no comparison at the top level"),
        ('q: x{a=">"}', "no comparison at the top level"),
        ("q: < 1", "no expression"),
        ("q: x <", "no threshold"),
        ("q: x < y", "'y' after '<' is not a number"),
        ("q: x < 0.01 ms", "is not a number"),
        ("q: x < NaN", "finite"),
        ("q: x < Inf", "finite"),
        ("q: x < 1e999", "finite"),
        ("q: x < 1_000", "is not a number"),
        ("q: x < ١", "is not a number"),
        ("q: sum(x < 1", "unclosed '('"),
        ("q: x) < 1", "unmatched ')'"),
        ("q: x{a=\"b} < 1", "not closed"),
        ('q: x{tenant="{tenants}"} < 1', "match it with =~"),
        ('q: x{tenant=~"prod-{tenants}"} < 1', "must be the whole string"),
        ('q: x{tenant=~"{tenants}.*"} < 1', "must be the whole string"),
        ("q: x{tenant=~{tenants}} < 1", "must be a quoted string"),
    ],
)
def test_a_bad_line_is_named_with_its_number_and_the_problem(line, words):
    queries, problems = promql.parse_queries(f"ok: up < 2\n\n{line}")
    assert [q.name for q in queries] == ["ok"]
    assert len(problems) == 1 and problems[0].startswith("line 3 ("), problems
    assert words in problems[0]


def test_blank_and_comment_lines_are_skipped_and_counted():
    queries, problems = promql.parse_queries("\n# error rate\nerrors: x < 1\n   \nlatency: y <= 2\r\n")
    assert not problems
    assert [(q.name, q.line) for q in queries] == [("errors", 3), ("latency", 5)]


def test_a_name_used_twice_is_an_error_naming_both_lines():
    _, problems = promql.parse_queries("a: x < 1\na: y < 2")
    assert problems == ["line 2: the name 'a' is already used on line 1"]


def test_too_many_queries_and_too_long_lines_are_errors():
    _, problems = promql.parse_queries("\n".join(f"q{i}: x < {i}" for i in range(promql.MAX_QUERIES + 1)))
    assert problems == [f"has {promql.MAX_QUERIES + 1} queries; at most {promql.MAX_QUERIES}"]
    _, problems = promql.parse_queries("q: " + "x" * promql.MAX_LINE + " < 1")
    assert "at most" in problems[0] and problems[0].startswith("line 1")


def test_scanning_a_long_line_of_brackets_is_linear():
    import time

    line = "q: " + "(" * 4000 + "x" + ")" * 4000 + " < 1"
    started = time.process_time()
    assert one(line).threshold == 1
    assert time.process_time() - started < 0.5


def test_tenants_become_an_anchored_escaped_alternation():
    assert promql.tenants_regex(["t01", "a.b", "c-d_e", "t01"]) == r"^(?:t01|a\.b|c-d_e)$"
    assert promql.tenants_regex(["x+y(z)|w"]) == r"^(?:x\+y\(z\)\|w)$"
    with pytest.raises(ValueError, match="no tenants"):
        promql.tenants_regex([])


@pytest.mark.parametrize(
    ("matcher", "sent"),
    [
        ('"{tenants}"', r'"^(?:t01|a\\.b|c-d_e)$"'),  # a double-quoted PromQL string: the backslash doubled
        ("'{tenants}'", r"'^(?:t01|a\\.b|c-d_e)$'"),
        ("`{tenants}`", r"`^(?:t01|a\.b|c-d_e)$`"),  # a raw string: as it is
    ],
)
def test_tenants_are_escaped_for_the_string_literal_they_stand_in(matcher, sent):
    query = one(f"q: sum(rate(x{{tenant=~{matcher},code!~\"2..\"}}[1m])) < 1")
    assert promql.render(query, ["t01", "a.b", "c-d_e"]) == f'sum(rate(x{{tenant=~{sent},code!~"2.."}}[1m]))'


def test_the_rendered_regex_matches_exactly_the_tenants():
    query = one('q: x{tenant=~"{tenants}"} < 1')
    text = promql.render(query, ["t-one.x", "t_2"])
    literal = re.search(r'"(.*)"', text).group(1).encode().decode("unicode_escape")  # the string's value
    pattern = re.compile(literal)
    assert pattern.fullmatch("t-one.x") and pattern.fullmatch("t_2")
    assert not pattern.fullmatch("t-one-x") and not pattern.fullmatch("t-one.xy") and not pattern.fullmatch("t")


def test_a_query_without_tenants_is_sent_as_written():
    query = one("global: sum(rate(http_requests_total[5m])) > 0")
    assert promql.render(query, ["a"]) == "sum(rate(http_requests_total[5m]))"


def test_a_quote_in_a_tenant_name_cannot_end_the_string():
    query = one('q: x{tenant=~"{tenants}"} < 1')
    assert promql.render(query, ['a"b']) == 'x{tenant=~"^(?:a\\"b)$"}'


@pytest.mark.parametrize("line", ["job:errors:rate5m < 0.01", "  instance:cpu:ratio{tenant=~\"{tenants}\"} < 0.9"])
def test_a_line_that_starts_with_a_recording_rule_is_not_read_as_its_name(line):
    with pytest.raises(ValueError, match=r"starts with the recording rule .*, not a name: write NAME: "):
        promql.parse_query_line(line)


def test_a_recording_rule_after_the_name_is_the_expression():
    query = promql.parse_query_line("errors: job:errors:rate5m < 0.01")
    assert (query.name, query.expr) == ("errors", "job:errors:rate5m")
