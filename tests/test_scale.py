"""Large fleets: what the runner shows stays bounded, and what the report keeps stays complete.

The client's cost per tenant is measured by ``bench/scale_bench.py``; these tests pin the
shapes that make it possible to show a 50,000-tenant run at all: a job summary under the runner's
1 MiB, a timeline of a few dozen bars, output lines far under 64 KiB, and a report that keeps
every tenant and still parses as JSON.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest

from deploy import http
from deploy.clock import Clock, Deadline
from deploy.controlplane import CallResult, TenantRow
from deploy.pipeline import Outcome, Run
from deploy.proof import ProofSpan
from deploy.report import TABLE_ROWS, TIMELINE_BARS, publish, report, report_text, summary
from deploy.rollout import RolloutResult, plan_batches
from deploy.runner import Runner
from deploy.verify import TenantVerdict, Verdict, VerifyResult
from tests.report_schema import check_report
from tests.support import SHA


def large_run(tenants: int, stale: int = 0, batch_size: int = 25) -> Run:
    """A run that shipped every tenant in batches; the last ``stale`` tenants failed verify."""
    fleet = tuple(f"tenant-{i:05d}" for i in range(tenants))
    calls = tuple(
        CallResult(label=f"batch {number}/{-(-tenants // batch_size)}", slugs=slugs, ok=True, status=200, error="",
                   rows=tuple(TenantRow(slug, phase="done", ssm_status="Success", healthz_ok=True,
                                        verified_on_target=True) for slug in slugs),
                   started=float(number), seconds=1.0)
        for number, slugs in enumerate(plan_batches(fleet, "", batch_size), start=1)
    )
    rollout = RolloutResult(fleet=fleet, max_stragglers=0, calls=calls, planned=plan_batches(fleet, "", batch_size))
    verdicts = tuple(
        TenantVerdict(slug=slug, state=Verdict.STALE, running="0" * 40, detail="still runs 000000000000", seconds=9.0)
        if index >= tenants - stale else
        TenantVerdict(slug=slug, state=Verdict.VERIFIED, running=SHA, detail="", seconds=1.0)
        for index, slug in enumerate(fleet)
    )
    verify = VerifyResult(verdicts=verdicts, rounds=2, started=float(len(calls) + 1), seconds=9.0)
    outcome = Outcome.FAILED if stale else Outcome.DEPLOYED
    return Run(outcome=outcome, exit_code=1 if stale else 0, fleet=fleet, rollout=rollout, verify=verify,
               seconds=float(len(calls) + 10))


def table_rows(markdown: str) -> list[str]:
    section = markdown.split("### Tenants", 1)[1]
    return [line for line in section.splitlines() if line.startswith("| tenant-")]


def test_a_few_hundred_tenants_are_all_in_the_summary_table():
    run = large_run(TABLE_ROWS, stale=1)
    rows = table_rows(summary(run))
    assert len(rows) == TABLE_ROWS
    assert "have a problem" not in summary(run)


def test_above_a_few_hundred_the_table_shows_the_tenants_that_need_attention_and_counts_them():
    run = large_run(2000, stale=3)
    markdown = summary(run)
    rows = table_rows(markdown)
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == ["tenant-01997", "tenant-01998", "tenant-01999"]
    assert "3 of 2000 tenants have a problem, below." in markdown


def test_when_more_tenants_need_attention_than_the_table_holds_it_says_how_many_it_shows():
    run = large_run(2000, stale=1500)
    markdown = summary(run)
    assert len(table_rows(markdown)) == TABLE_ROWS
    assert f"1500 of 2000 tenants have a problem, the first {TABLE_ROWS} below." in markdown


def test_a_healthy_large_fleet_has_no_table_only_the_count():
    markdown = summary(large_run(2000))
    assert table_rows(markdown) == []
    assert "0 of 2000 tenants have a problem." in markdown


def test_the_timeline_merges_thousands_of_batches_into_a_few_dozen_bars():
    markdown = summary(large_run(50_000))
    chart = markdown.split("```mermaid", 1)[1].split("```", 1)[0]
    bars = [line for line in chart.splitlines() if line.strip().startswith("batch")]
    assert len(bars) == TIMELINE_BARS
    assert bars[0].strip().startswith("batches 1–50/2000") and bars[-1].strip().startswith("batches 1951–2000/2000")


def test_each_batchs_proof_is_a_bar_of_its_own_and_thousands_of_them_are_merged_too():
    run = large_run(50_000)
    assert run.rollout is not None
    proofs = tuple(ProofSpan(label=f"proof {call.label}", started=call.started + call.seconds, seconds=0.5, ok=True)
                   for call in run.rollout.calls)
    run.rollout = replace(run.rollout, proofs=proofs)
    chart = summary(run).split("```mermaid", 1)[1].split("```", 1)[0]
    assert sum(line.strip().startswith("proof batches ") for line in chart.splitlines()) == TIMELINE_BARS
    small = large_run(50)
    assert small.rollout is not None
    small.rollout = replace(small.rollout, proofs=(ProofSpan(label="proof batch 1/2", started=1.5, seconds=0.5,
                                                              ok=True),))
    assert "    proof batch 1/2 0.5 s :1500, 2000" in summary(small)


def test_a_few_more_batches_than_bars_still_make_as_many_bars():
    bars = [line for line in summary(large_run(41 * 25)).splitlines() if line.strip().startswith("batch")]
    assert len(bars) == TIMELINE_BARS and bars[-1].strip().startswith("batches 40–41/41")


def test_a_halt_early_in_a_large_rollout_keeps_the_tenant_that_caused_it_in_the_table():
    fleet = tuple(f"tenant-{i:05d}" for i in range(2000))
    dead = CallResult(label="canary", slugs=(fleet[-1],), ok=False, status=200, error="halted: crashloop",
                      rows=(TenantRow(fleet[-1], phase="failed", healthz_ok=False, verified_on_target=False,
                                      error="crashloop"),), started=0.0, seconds=1.0)
    rollout = RolloutResult(fleet=fleet, max_stragglers=0, calls=(dead,), halted="canary failed",
                            planned=plan_batches(fleet, fleet[-1], 25))
    markdown = summary(Run(outcome=Outcome.FAILED, exit_code=1, fleet=fleet, rollout=rollout))
    assert [row.split(" | ")[0] for row in table_rows(markdown)] == [f"| {fleet[-1]}"]
    assert "1 of 2000 tenants has a problem, below; 1999 not started (the rollout halted first)." in markdown


def test_an_unhealthy_row_is_a_problem_even_when_verify_never_ran():
    run = large_run(400)
    rollout = run.rollout
    assert rollout is not None
    sick = replace(rollout.calls[0], rows=(replace(rollout.calls[0].rows[0], healthz_ok=False),
                                           *rollout.calls[0].rows[1:]))
    run.rollout, run.verify = replace(rollout, calls=(sick, *rollout.calls[1:])), None
    assert [row.split(" | ")[0] for row in table_rows(summary(run))] == ["| tenant-00000"]


def test_a_long_error_text_is_shortened_in_the_summary_and_kept_whole_in_the_report():
    run = large_run(2)
    rollout = run.rollout
    assert rollout is not None
    long = replace(rollout.calls[0].rows[0], verified_on_target=False, error="e" * 5000)
    run.rollout = replace(rollout, calls=(replace(rollout.calls[0], rows=(long, rollout.calls[0].rows[1])),))
    assert max(len(line) for line in summary(run).splitlines()) < 1000
    assert report(run)["rollout"]["calls"][0]["rows"][0]["error"] == "e" * 5000


def test_at_50000_tenants_the_summary_and_every_output_line_stay_far_under_the_runners_limits(tmp_path):
    run = large_run(50_000, stale=20_000)
    runner = Runner(io.StringIO(), str(tmp_path / "output"), str(tmp_path / "summary.md"), in_actions=True)
    publish(run, runner, tmp_path / "report.json", tmp_path)
    assert (tmp_path / "summary.md").stat().st_size < 256 * 1024
    assert max(len(line) for line in (tmp_path / "output").read_bytes().splitlines()) < 32 * 1024
    assert len(json.loads((tmp_path / "report.json").read_text())["verify"]["stale"]) == 20_000


def test_the_report_keeps_every_tenant_and_its_text_is_json():
    run = large_run(5000, stale=10)
    document = report(run)
    parsed = json.loads(report_text(document))
    assert parsed == json.loads(json.dumps(document))
    assert len(parsed["verify"]["tenants"]) == 5000 and len(parsed["verify"]["stale"]) == 10
    check_report(parsed)


def test_the_report_text_puts_each_call_and_each_verdict_on_a_line_of_its_own():
    text = report_text(report(large_run(100)))
    assert sum(line.lstrip().startswith('{"slug": "tenant-') for line in text.splitlines()) == 100
    assert sum(line.lstrip().startswith('{"label": "batch ') for line in text.splitlines()) == 4


# -- the environment is read once per client ------------------------------------------------


def client() -> http.Client:
    clock = Clock()
    return http.Client(http.Policy(), clock, Deadline.starting_now(clock, 30))


def test_without_a_proxy_in_the_environment_no_proxy_is_used(no_proxy_settings):
    assert client()._proxies_for("https://t1.example.com/buildinfo") == {}


@pytest.mark.parametrize("url, expected", [
    ("https://t1.example.com/buildinfo", "http://proxy.internal:3128"),
    ("https://cp.corp.example/redeploy", None),  # NO_PROXY
])
def test_a_proxy_and_no_proxy_from_the_environment_are_honoured_per_origin(monkeypatch, no_proxy_settings, url,
                                                                           expected):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "corp.example")
    assert client()._proxies_for(url).get("https") == expected


def test_a_netrc_credential_is_never_sent(monkeypatch, tmp_path, tenant_stub):
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login robot password netrc-Secret-42\n")
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    tenant_stub.get("/buildinfo", json={"git_sha": SHA})
    client().request("GET", tenant_stub.url("/buildinfo"))
    assert "Authorization" not in tenant_stub.last_request.headers

