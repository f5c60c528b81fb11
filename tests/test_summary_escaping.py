"""Server text in the job summary renders as text: never a link, an image, HTML or a table break."""

from __future__ import annotations

import re

import pytest

from deploy.pipeline import Run
from deploy.report import summary
from deploy.runner import escape_markdown

HOSTILE = [
    "[click](https://evil.test)",
    "![x](https://evil.test/p.png)",
    "<img src=x onerror=alert(1)>",
    "see https://evil.test/login now",
    "see www.evil.test now",
    "a | b",
    "**bold** _it_ `code` ~~gone~~ # head {x}",
    "&lt;script&gt;",
]


def rendered_dangers(markdown: str) -> list[str]:
    """What a Markdown renderer would turn into something other than plain text."""
    patterns = {
        "link or image": r"(?<!\\)\[[^\]]*(?<!\\)\]\(",
        "raw HTML": r"<[A-Za-z/!]",
        "autolink": r"(?<![\\\w])(https?://|www\.)",
        "unescaped pipe in a cell": r"(?<!\\)\|(?! ---)(?=[^|\n]*\|[^|\n]*$)",
        "entity that decodes": r"&(?!amp;|lt;|gt;)[A-Za-z]+;",
    }
    return [name for name, pattern in patterns.items() if re.search(pattern, markdown)]


@pytest.mark.parametrize("text", HOSTILE)
def test_escaped_server_text_renders_nothing_but_text(text):
    escaped = escape_markdown(text)
    assert rendered_dangers(escaped) == []
    assert "\n" not in escape_markdown(text + "\nnext | line")


@pytest.mark.parametrize("slug", ["dead", "a", "tenant-1", "acme42", "eu-west-tenant-07"])
def test_plain_slugs_render_unchanged(slug):
    assert escape_markdown(slug) == slug


@pytest.mark.parametrize("slug", HOSTILE[:5])
def test_a_hostile_slug_in_the_tenant_table_is_inert(slug):
    run = Run(outcome="failed", reason="tenant unreachable", fleet=(slug, "dead"))
    text = summary(run)
    table = text.split("### Tenants", 1)[1]
    assert "| dead |" in table
    assert rendered_dangers(table) == []
    assert "evil.test" in table or "img" in table  # shown, only escaped


def test_the_reason_line_cannot_carry_a_link_image_or_html():
    reason = "CP said: ![x](https://evil.test/p.png) <img src=x> [click](https://evil.test) www.evil.test"
    text = summary(Run(outcome="failed", reason=reason))
    line = next(line for line in text.splitlines() if line.startswith("**Reason:**"))
    assert rendered_dangers(line.removeprefix("**Reason:**")) == []


def test_summary_values_are_redacted_before_they_are_escaped():
    secret = "cpt_[9f8e7d6c5b4a]_xyz"
    run = Run(outcome="failed", reason=f"401 for {secret}", fleet=(secret,))
    text = summary(run, redact=lambda value: value.replace(secret, "***"))
    assert "9f8e7d6c5b4a" not in text
    assert "**Reason:** 401 for \\*\\*\\*" in text
