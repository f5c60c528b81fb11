"""The runner protocol: output file syntax, annotations, escaping, masking, summary size."""

from __future__ import annotations

import io

from deploy.runner import SUMMARY_LIMIT_BYTES, Runner, format_output, parse_output_file


def runner(tmp_path=None, **kw) -> tuple[Runner, io.StringIO]:
    stream = io.StringIO()
    kw.setdefault("in_actions", True)
    return Runner(stream=stream, **kw), stream


def test_outputs_use_the_heredoc_syntax_and_survive_multiline_values(tmp_path):
    path = tmp_path / "output"
    r, _ = runner(output_path=str(path))
    r.write_outputs({"reason": "line one\nline two", "ok": "true", "empty": ""})
    text = path.read_text()
    assert text.endswith("\n")
    assert parse_output_file(text) == {"reason": "line one\nline two", "ok": "true", "empty": ""}
    first = text.splitlines()[0]
    assert first.startswith("reason<<ghadelimiter_")


def test_a_value_containing_the_delimiter_gets_another_one(monkeypatch):
    import deploy.runner as module

    ids = iter(["clash", "fresh"])
    monkeypatch.setattr(module.uuid, "uuid4", lambda: next(ids))
    text = format_output("x", "a\nghadelimiter_clash\nb")
    assert text.startswith("x<<ghadelimiter_fresh\n")
    assert parse_output_file(text) == {"x": "a\nghadelimiter_clash\nb"}


def test_without_github_output_outputs_are_printed_as_name_value_lines():
    r, stream = runner(in_actions=False)
    r.write_outputs({"ok": "false", "outcome": "failed"})
    assert stream.getvalue() == "ok=false\noutcome=failed\n"


def test_the_runs_verdict_is_annotated_however_many_tenant_errors_came_first():
    r, stream = runner()
    for i in range(12):
        r.error(f"tenant-{i} unreachable")
    r.error("verify failed: 12 unreachable", title="fleet-rollout failed", final=True)
    r.finish()
    lines = stream.getvalue().splitlines()
    annotated = [line for line in lines if line.startswith("::error")]
    assert len(annotated) == 10  # GitHub's limit per step
    assert "::error title=fleet-rollout failed::verify failed: 12 unreachable" in annotated
    assert annotated[-1].startswith("::error::4 more errors not annotated")


def test_the_same_annotation_twice_is_said_once():
    r, stream = runner()
    for _ in range(3):
        r.warning("branch head unreadable; deploying without the guard", title="Superseded guard off")
    r.warning("branch head unreadable: 502; deploying without the guard", title="Superseded guard off")
    lines = stream.getvalue().splitlines()
    assert lines == ["::warning title=Superseded guard off::branch head unreadable; deploying without the guard",
                     "::warning title=Superseded guard off::branch head unreadable: 502; deploying without the guard"]
    assert r.has_said("warning", "branch head unreadable; deploying without the guard", "Superseded guard off")


def test_annotation_messages_and_titles_are_escaped():
    r, stream = runner()
    r.error("100% down\r\nnext line", title="tenant a:b,c")
    assert stream.getvalue() == "::error title=tenant a%3Ab%2Cc::100%25 down%0D%0Anext line\n"


def test_nine_annotations_per_kind_then_one_that_counts_the_rest():
    r, stream = runner()
    for i in range(12):
        r.warning(f"tenant-{i} lagging")
    r.error("one failure")
    r.finish()
    lines = stream.getvalue().splitlines()
    assert sum(line.startswith("::warning::") for line in lines) == 10
    assert "warning: tenant-11 lagging" in lines  # still in the log, just not annotated
    assert lines[-1] == (
        "::warning::3 more warnings not annotated (GitHub shows 10 per step); see the log and the job summary"
    )
    assert sum(line.startswith("::error::") for line in lines) == 1


def test_secrets_are_redacted_everywhere_and_masked_only_inside_actions(tmp_path):
    r, stream = runner(output_path=str(tmp_path / "o"), summary_path=str(tmp_path / "s"), in_actions=True)
    r.mask("s3cr3t-token", "")
    r.log("auth with s3cr3t-token failed")
    r.error("s3cr3t-token", title="s3cr3t-token")
    r.write_outputs({"reason": "s3cr3t-token"})
    r.write_summary("s3cr3t-token")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "::add-mask::s3cr3t-token"
    assert all("s3cr3t-token" not in line for line in lines[1:])
    assert "s3cr3t-token" not in (tmp_path / "o").read_text() + (tmp_path / "s").read_text()

    laptop, out = runner(in_actions=False)
    laptop.mask("s3cr3t-token")
    assert out.getvalue() == ""  # outside a runner, add-mask would itself print the secret


def test_a_log_line_from_a_server_cannot_inject_a_workflow_command():
    r, stream = runner()
    r.log("CP said:\n::set-env name=PATH::/evil\n  ::error::fake")
    r.log("upstream reset ##[stop-commands]token")
    r.warning("tenant ##[add-mask]x is odd", title="straggler ##[group]x")
    lines = stream.getvalue().splitlines()
    assert all(not line.lstrip().startswith("::") for line in lines[:3])
    assert all("##[" not in line for line in lines)


def test_outside_a_runner_groups_and_annotations_are_plain_lines():
    r, stream = runner(in_actions=False)
    with r.group("Rollout"):
        r.warning("tenant-3 lagging", title="straggler tenant-3")
        r.error("boom")
    r.finish()
    assert stream.getvalue() == "== Rollout ==\nwarning: straggler tenant-3: tenant-3 lagging\nerror: boom\n"


def test_groups_open_and_close_even_when_the_body_raises():
    r, stream = runner()
    try:
        with r.group("Rollout"):
            raise RuntimeError
    except RuntimeError:
        pass
    assert stream.getvalue() == "::group::Rollout\n::endgroup::\n"


def test_the_summary_is_truncated_below_the_runner_limit(tmp_path):
    path = tmp_path / "summary"
    r, _ = runner(summary_path=str(path))
    r.write_summary("| tenant-é | ok |\n" * 200_000)
    data = path.read_bytes()
    assert len(data) <= SUMMARY_LIMIT_BYTES < 1024 * 1024
    assert data.decode("utf-8").endswith("see the JSON report.\n")


def test_the_summary_opens_with_a_gantt_of_real_durations():
    from deploy.controlplane import CallResult
    from deploy.pipeline import Run, Span
    from deploy.report import summary
    from deploy.rollout import RolloutResult, Soak

    canary = CallResult(label="canary", slugs=("a",), ok=True, rows=(), status=200, error="", started=1.0, seconds=2.5)
    batch = CallResult(label="batch 1/1", slugs=("b",), ok=True, rows=(), status=200, error="", started=4.0,
                       seconds=3.0)
    calls = (canary, batch)
    run = Run(outcome="deployed", fleet=("a", "b"), spans=[Span("verify", 7.5, 1.25)],
              rollout=RolloutResult(fleet=("a", "b"), max_stragglers=0, calls=calls,
                                    soak=Soak(started=3.5, seconds=0.5)))
    text = summary(run)
    gantt = text.split("```mermaid\n", 1)[1].split("```", 1)[0].splitlines()
    assert gantt[:3] == ["gantt", "    dateFormat x", "    axisFormat %M:%S"]
    assert gantt[3:] == [
        "    section Rollout", "    canary (1) 2.5 s :1000, 3500", "    soak 0.5 s :3500, 4000",
        "    batch 1/1 (1) 3.0 s :4000, 7000", "    section Verify", "    verify 1.2 s :7500, 8750",
    ]
    assert text.index("### Timeline") < text.index("| Fleet |") < text.index("### Tenants")


def test_a_secret_is_redacted_when_cut_short_or_escaped_for_json_or_markdown():
    r, _ = runner(in_actions=False)
    token = 'cpt_9f8e7d6c5b4a3928"1706|xyz'
    r.mask(token)
    assert r.redact("401: bad token cpt_9f8e7d6c5b4a…") == "401: bad token ***…"  # an error text shortened
    assert r.redact('{"reason": "cpt_9f8e7d6c5b4a3928\\"1706|xyz"}') == '{"reason": "***"}'
    assert r.redact("| cpt_9f8e7d6c5b4a3928\"1706\\|xyz |") == "| *** |"
    assert r.redact("cpt_9f8e7d6c5b4 is only 15 chars of it") == "*** is only 15 chars of it"
    assert r.redact("cpt_9f (6 chars) is a piece of it") == "*** (6 chars) is a piece of it"
    assert r.redact("…1706|xyz is its tail") == "…*** is its tail"
    assert r.redact("cpt_9 (5 chars) proves nothing") == "cpt_9 (5 chars) proves nothing"


def test_each_line_of_a_multi_line_secret_is_masked_on_its_own():
    r, stream = runner()
    r.mask('{\n  "private_key": "-----BEGIN KEY-----abc"\n}')
    assert '::add-mask::"private_key": "-----BEGIN KEY-----abc"' in stream.getvalue().splitlines()
    assert r.redact('found "private_key": "-----BEGIN KEY-----abc" in a log') == "found *** in a log"
