"""Redaction of secrets in every form a hostile server may echo them, and log lines capped."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import time
from urllib.parse import quote, quote_plus

import pytest

from deploy.runner import LINE_LIMIT, MASK, Runner, parse_output_file

SECRET = "Sup3r$ecret/Tok=en+xyz<&>'\""


def runner(**kw) -> tuple[Runner, io.StringIO]:
    stream = io.StringIO()
    kw.setdefault("in_actions", True)
    return Runner(stream=stream, **kw), stream


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def urlsafe_b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def echoed_forms(secret: str) -> dict[str, tuple[str, int]]:
    """What a server may send back: the secret encoded, wrapped in an auth header, or cut short —
    each with how many of its characters do not depend on the secret (and so may stay)."""

    def around(prefix: str) -> int:  # base64 characters carrying bits of the prefix, and the tail group
        return -(-8 * len(prefix) // 6) + 4

    basic = "user:" + secret
    forms = {
        "raw": (secret, 0),
        "quote": (quote(secret, safe=""), 0),
        "quote_plus": (quote_plus(secret), 0),
        "quote lower-case hex": (lower_hex(quote(secret, safe="")), 0),
        "quote_plus lower-case hex": (lower_hex(quote_plus(secret)), 0),
        "base64": (b64(secret), around("")),
        "urlsafe base64": (urlsafe_b64(secret), around("")),
        "base64 of Bearer": (b64("Bearer " + secret), around("Bearer ")),
        "urlsafe base64 of Bearer": (urlsafe_b64("Bearer " + secret), around("Bearer ")),
        "Basic header": ("Basic " + b64(basic), len("Basic ") + around("user:")),
        "urlsafe Basic": ("Basic " + urlsafe_b64(basic), len("Basic ") + around("user:")),
        "html.escape": (html.escape(secret), 0),
        "html.escape no quotes": (html.escape(secret, quote=False), 0),
        "html &#39;": (html.escape(secret).replace("&#x27;", "&#39;"), 0),
        "json.dumps": (json.dumps(secret), 2),
        "json.dumps unicode": (json.dumps(secret, ensure_ascii=False), 2),
    }
    forms.update({f"piece {i}": (secret[i : i + 6], 0) for i in range(len(secret) - 5)})
    return forms


def leftover_pieces(text: str, form: str) -> list[str]:
    """Pieces of 6+ characters of ``form`` still in ``text``."""
    return [form[i : i + 6] for i in range(len(form) - 5) if form[i : i + 6] in text]


@pytest.mark.parametrize(("name", "case"), echoed_forms(SECRET).items())
def test_no_encoded_or_cut_form_of_a_secret_survives_redaction(name, case):
    form, independent = case
    r, _ = runner(in_actions=False)
    r.mask(SECRET)
    redacted = r.redact(f"upstream said: {form} (request 42)")
    assert redacted.startswith("upstream said: ") and redacted.endswith(" (request 42)")
    survivors = redacted.removeprefix("upstream said: ").removesuffix(" (request 42)").replace(MASK, "")
    assert MASK in redacted
    assert len(survivors) <= independent, (name, redacted)
    assert leftover_pieces(redacted, SECRET) == []


@pytest.mark.parametrize("cut", [6, 9, 14])
def test_a_cut_off_tail_or_head_of_an_encoded_secret_is_redacted(cut):
    r, _ = runner(in_actions=False)
    r.mask(SECRET)
    for form in (quote(SECRET, safe=""), b64(SECRET), html.escape(SECRET)):
        for piece in (form[:cut], form[-cut:]):
            assert r.redact(f"body: {piece}…") == f"body: {MASK}…", (form, piece)


def test_a_latin1_basic_credential_is_redacted_like_requests_sends_it():
    r, _ = runner(in_actions=False)
    password = "pässwörd-1234"
    r.mask(password)
    latin1 = base64.b64encode(b"bot:" + password.encode("latin-1")).decode()
    assert r.redact(f"Authorization: Basic {latin1}").count(MASK) == 1
    assert leftover_pieces(r.redact(f"Basic {latin1}"), latin1[6:]) == []


def test_ordinary_text_without_secrets_is_unchanged():
    r, _ = runner(in_actions=False)
    r.mask(SECRET, "cp-9f8e7d6c5b4a3928", "ghp_0123456789abcdefXYZ")
    text = (
        "tenant-7 phase ok status Success healthz true verified_on_target true; "
        "GET https://tenant-7.example.com/buildinfo -> 200 in 0.31 s; digest sha256:" + "ab" * 32
    )
    assert r.redact(text) == text


def test_redaction_is_fast_on_ordinary_log_lines():
    r, _ = runner(in_actions=False)
    r.mask(SECRET, "cp-9f8e7d6c5b4a3928", "ghp_0123456789abcdefXYZ")
    lines = [f"tenant-{i} phase ok status Success healthz true took {i % 97}.{i % 10} s" for i in range(100_000)]
    started = time.perf_counter()
    for line in lines:
        r.redact(line)
    assert time.perf_counter() - started < 2.0  # about 0.2 s on a laptop; the bound absorbs slow CI


def test_redaction_is_linear_in_the_text_length():
    r, _ = runner(in_actions=False)
    r.mask(SECRET)
    almost = SECRET[:5] + "#"  # every 6-window misses: the worst case for a naive scan
    started = time.perf_counter()
    assert MASK not in r.redact(almost * 200_000)
    assert time.perf_counter() - started < 5.0


def test_a_short_secret_does_not_rewrite_our_own_output_vocabulary(tmp_path):
    path = tmp_path / "output"
    r, _ = runner(output_path=str(path))
    r.mask("tru")
    r.write_outputs(
        {"ok": "true", "reason": "tru was refused", "quarantined": ["tru-tenant", "b"]}, verbatim={"ok"}
    )
    outputs = parse_output_file(path.read_text())
    assert outputs["ok"] == "true"
    assert outputs["reason"] == f"{MASK} was refused"
    assert json.loads(outputs["quarantined"]) == [f"{MASK}-tenant", "b"]


def test_a_json_list_output_stays_valid_json_when_a_secret_contains_quotes(tmp_path):
    path = tmp_path / "output"
    r, _ = runner(output_path=str(path))
    r.mask('ab"c", "d')
    r.write_outputs({"stale": ['x ab"c", "d y', "plain"]})
    assert json.loads(parse_output_file(path.read_text())["stale"]) == [f"x {MASK} y", "plain"]


def test_a_huge_server_line_is_capped_with_a_count_of_what_was_cut():
    r, stream = runner(in_actions=False)
    r.mask(SECRET)
    r.log("x" * 50_000 + SECRET)
    r.error("y" * 10_000)
    lines = stream.getvalue().splitlines()
    assert all(len(line) <= LINE_LIMIT + 20 for line in lines)  # "error: " prefix of the plain form
    assert lines[0].endswith(f"… ({50_000 + len(SECRET) - (LINE_LIMIT - 40)} more characters)")
    assert "more characters)" in lines[1]


def test_an_annotation_is_capped_and_an_add_mask_line_never_is():
    r, stream = runner()
    long_secret = "k" * 5000 + "-secret-tail"
    r.mask(long_secret)
    r.warning("z" * 9000)
    lines = stream.getvalue().splitlines()
    assert lines[0] == f"::add-mask::{long_secret}"
    assert lines[1].startswith("::warning::z") and len(lines[1]) <= LINE_LIMIT
    assert lines[1].endswith("more characters)")


def test_a_cut_that_splits_a_secret_leaves_no_piece_of_it():
    r, stream = runner(in_actions=False)
    secret = "cpt_0123456789abcdef0123456789"
    r.mask(secret)
    r.log("a" * (4 * LINE_LIMIT - 10) + secret)  # the scan window ends inside the secret
    assert leftover_pieces(stream.getvalue(), secret) == []


@pytest.mark.parametrize("encode", [
    lambda s: "".join(f"\\u{ord(c):04x}" for c in s),
    lambda s: "".join(f"\\u{ord(c):04X}" for c in s),
    lambda s: "".join(f"&#{ord(c)};" for c in s),
    lambda s: "".join(f"&#x{ord(c):x};" for c in s),
    lambda s: "".join(f"%{ord(c):02X}" for c in s),
    lambda s: "".join(f"%{ord(c):02x}" for c in s),
    lambda s: json.dumps(s)[1:-1].replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"),
], ids=["all-u", "all-U", "html-dec", "html-hex", "pct-all", "pct-all-lower", "go-json"])
def test_a_secret_escaped_more_than_it_must_be_is_redacted(encode):
    """Encoders that escape every character (or Go's JSON, which escapes & < >) echo a secret unchanged in meaning."""
    secret = 'cpK7+Vq/Xw9=Lr&<m>"Tz4'
    runner = Runner(io.StringIO())
    runner.mask(secret)
    assert runner.redact(f"denied {encode(secret)} end") == f"denied {MASK} end"


# -- the run's own facts are never censored (issue 21 [10]) --------------------------------------

SHA = "8ddce85f3b2a4c6d9e0f1a2b3c4d5e6f708192a3"


def test_a_secret_that_is_part_of_a_public_fact_is_not_redacted_and_is_warned_about():
    r, stream = runner()
    r.public(SHA, f"staging-{SHA[:7]}")
    r.mask(SHA[:12])  # a token service's "token"
    assert r.redact(f"deploying {SHA} as staging-{SHA[:7]} ({SHA[:12]})") == (
        f"deploying {SHA} as staging-{SHA[:7]} ({SHA[:12]})")
    assert f"::add-mask::{SHA[:12]}" not in stream.getvalue()
    assert "::warning title=secret not redacted::a secret of 12 characters is part of" in stream.getvalue()


def test_a_fact_learned_after_a_secret_takes_the_pieces_it_holds_back():
    r, _ = runner()
    token = "tok-" + "dd1e70" + "-9f8e7d6c"
    r.mask(token)
    assert "dd1e70" not in r.redact("tenant-dd1e70")  # a piece of the token, before it was a fact
    r.public("tenant-dd1e70")  # a tenant name the CP enumerated later
    assert r.redact("tenant-dd1e70 is verified") == "tenant-dd1e70 is verified"
    assert MASK in r.redact(f"echoed {token}") and "9f8e7d6c" not in r.redact(f"echoed {token}")


def test_a_fact_that_holds_a_whole_secret_says_so_once_registered():
    r, stream = runner()
    r.mask("dd1e70ab")
    r.public("sha256:00dd1e70ab11")
    assert r.redact("now sha256:00dd1e70ab11") == "now sha256:00dd1e70ab11"
    assert "secret not redacted" in stream.getvalue()


def test_a_verify_url_credential_is_registered_in_every_form_it_is_sent_in():
    from deploy.config import secrets_in

    token = "ghp_T0ken9c3e7a1b5d2f8h4j6k0m"
    user_token = secrets_in({"FLEET_VERIFY_URL": f"https://{token}:x-oauth-basic@h/{{slug}}"})
    assert token in user_token and b64(f"{token}:x-oauth-basic") in user_token
    assert token in secrets_in({"FLEET_VERIFY_URL": f"https://{token}@h/{{slug}}"})
    password = secrets_in({"FLEET_VERIFY_URL": "https://reader:p%40ss-w0rd-9@h/{slug}"})
    assert "p@ss-w0rd-9" in password and b64("reader:p@ss-w0rd-9") in password
    assert "reader" not in password  # a username beside a real password is no credential
