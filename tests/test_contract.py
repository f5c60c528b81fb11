"""The contract check (``python -m deploy.contract URL``, ``fleet-rollout contract URL``) a CP author
runs against their endpoint: the simulator passes it with dry runs only, a deploy is sent only for
the tenant the author names, and each way a CP can break the contract gets its own named FAIL.

The broken CP below is a real HTTP component on the simulator's server: correct until told which
flaw to have, so every FAIL here is caused by that flaw alone (the flawless case passes).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from deploy import contract
from deploy.sim.fleet import FleetSim, TenantSpec
from deploy.sim.server import Request, Response, SimServer
from tests.actions_runner import ROOT
from tests.support import CP_TOKEN

PATH = "/cp/admin/tenants/redeploy-fleet"
CHECKS = ["auth", "enumerate", "enumerate-time", "confirm", "unknown-tenant", "empty-scope", "scope", "deploy",
          "idempotency"]
LINE = re.compile(r"^(PASS|FAIL|WARN|SKIP) ([a-z-]+): (.+)$")


def check(url: str, *args: str, token: str = CP_TOKEN) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Run the check in this process: (exit code, check → (verdict, reason), everything printed)."""
    out = io.StringIO()
    code = contract.main([url, *args], {"FLEET_CP_TOKEN": token}, out)
    return code, verdicts(out.getvalue()), out.getvalue()


def verdicts(text: str) -> dict[str, tuple[str, str]]:
    found = {m[2]: (m[1], m[3]) for m in map(LINE.match, text.splitlines()) if m}
    assert list(found) == CHECKS, text  # one line per check, in order
    return found


def bodies(server: SimServer) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in server.seen(PATH, "POST") if r.body]


@pytest.fixture
def sim(fleet):
    """Three tenants; a deploy of ``a`` takes 1 s of real time, enough to tell a replay from a deploy."""
    return fleet([TenantSpec("a", deploy_seconds=100), TenantSpec("b"), TenantSpec("c")], time_scale=0.01,
                 builds={"latest": "0" * 40})


# -- the simulator keeps the contract --------------------------------------------------------------


def test_the_simulator_passes_every_dry_run_check_and_nothing_is_deployed(sim):
    fleet, server = sim
    code, found, text = check(server.url)

    assert code == 0, text
    assert {name: verdict for name, (verdict, _) in found.items()} == {
        **dict.fromkeys(CHECKS[:7], "PASS"), "deploy": "SKIP", "idempotency": "SKIP"}
    assert "--test-tenant" in found["deploy"][1]
    assert fleet.deploy_calls() == []
    assert all(body.get("dry_run") is True for body in bodies(server)), "dry runs only"
    assert text.splitlines()[-1] == "# 7 PASS, 0 FAIL, 0 WARN, 2 SKIP"


def test_with_a_test_tenant_only_that_tenant_is_deployed_under_one_idempotency_key(sim):
    fleet, server = sim
    code, found, text = check(server.url, "--test-tenant", "a")

    assert code == 0, text
    assert found["deploy"][0] == "PASS" and "latest on a" in found["deploy"][1]
    assert found["idempotency"][0] in ("PASS", "WARN")  # the simulator may or may not replay
    deploys = [r for r in server.seen(PATH, "POST") if json.loads(r.body).get("dry_run") is False]
    assert len(deploys) == 2
    assert [json.loads(r.body)["only_slugs"] for r in deploys] == [["a"], ["a"]]
    keys = {r.headers.get("idempotency-key") for r in deploys}
    assert len(keys) == 1 and re.fullmatch(r'"fleet-rollout-contract:[0-9a-f]+:test-tenant"', keys.pop() or "")
    assert 1 <= len(fleet.deploy_calls()) <= 2


@dataclass
class KeyedCP:
    """The simulator's CP in front of which the ``Idempotency-Key`` is either honoured (``replay``:
    the first answer is kept per key and sent again) or stripped (the CP never sees it)."""

    fleet: FleetSim
    replay: bool
    answers: dict[str, Response] = field(default_factory=dict)

    def handle(self, request: Request) -> Response | None:
        key = request.headers.get("idempotency-key", "")
        if not key:
            return self.fleet.handle(request)
        if not self.replay:
            return self.fleet.handle(replace(request, headers={k: v for k, v in request.headers.items()
                                                               if k != "idempotency-key"}))
        if key not in self.answers:
            self.answers[key] = self.fleet.handle(request) or Response.json({}, 404)
        return self.answers[key]


@pytest.mark.parametrize(("replay", "verdict", "deploys", "said"), [
    (True, "PASS", 1, "replayed the first answer"),
    (False, "WARN", 2, "it deployed again"),
])
def test_a_replay_passes_and_a_second_deploy_under_the_same_key_is_only_a_warning(replay, verdict, deploys, said):
    fleet = FleetSim([TenantSpec("a", deploy_seconds=100), TenantSpec("b")], builds={"latest": "0" * 40},
                     token=CP_TOKEN, time_scale=0.01)
    with SimServer([KeyedCP(fleet, replay)]) as server:
        code, found, text = check(server.url, "--test-tenant", "a")

    assert code == 0, text  # a CP that deploys again still works with the action: not a FAIL
    assert found["deploy"][0] == "PASS"
    assert found["idempotency"][0] == verdict and said in found["idempotency"][1], text
    assert len(fleet.deploy_calls()) == deploys


# -- a broken CP: each flaw, its FAIL ----------------------------------------------------------------


BROKEN_TOKEN = "broken-cp-token-77d1"
TENANTS = ["t1", "t2", "t3"]


@dataclass
class BrokenCP:
    """A CP that keeps the contract except for its ``flaws``."""

    flaws: set[str]
    seen_keys: set[str] = field(default_factory=set)

    def handle(self, request: Request) -> Response | None:
        if request.method != "POST" or request.path != PATH:
            return None
        flaws = self.flaws
        if request.headers.get("authorization") != f"Bearer {BROKEN_TOKEN}" and "no-auth" not in flaws:
            return Response.json({"ok": False, "error": "unauthorized"}, 409 if "409-for-auth" in flaws else 401)
        body = request.json()
        refused = 409 if "409-for-refusals" in flaws else 400  # 409 is "still in progress" to the action
        if body.get("confirm") is not True and "no-confirm-needed" not in flaws:
            said = f"confirm must be true (sent with {request.headers.get('authorization')})" \
                if "echoes-token" in flaws else "confirm must be true"
            return Response.json({"ok": False, "error": said}, refused)
        scope = body.get("only_slugs")
        if scope is not None and "ignores-scope" not in flaws:
            if not scope:
                return Response.json({"ok": False, "error": "only_slugs must be a non-empty list"}, refused)
            if set(scope) - set(TENANTS):
                status = 500 if "500-for-unknown-tenant" in flaws else refused
                return Response.json({"ok": False, "error": "unknown tenant"}, status)
        targets = TENANTS if scope is None or "ignores-scope" in flaws else scope
        if body.get("dry_run"):
            if "slow-dry-run" in flaws:
                time.sleep(1.0)
            rows = [{"slug": slug, "phase": "planned", "ssm_status": "DryRun", "ssm_exit_code": None}
                    for slug in targets]
        else:
            key = request.headers.get("idempotency-key", "")
            if key in self.seen_keys and "refuses-reused-key" in flaws:
                return Response.json({"ok": False, "error": "Idempotency-Key is already used"}, 422)
            if key in self.seen_keys and "409-for-reused-key" in flaws:
                return Response.json({"ok": False, "error": "conflict"}, 409)
            self.seen_keys.add(key)
            rows = [{"slug": slug, "phase": "done", "ssm_status": "Success", "ssm_exit_code": 0, "healthz_ok": True,
                     "verified_on_target": True, "running_image": f"acme/tenant:{body['target_tag']}"}
                    for slug in targets]
        if "rows-without-slug" in flaws:
            del rows[0]["slug"]
        if "untyped-rows" in flaws:
            rows[0].update(ssm_exit_code="0", healthz_ok="yes")
        if "dry-run-says-success" in flaws and body.get("dry_run"):
            rows[-1]["ssm_status"] = "Success"
        doc: dict[str, Any] = {"ok": True, "results": rows}
        if "no-ok" in flaws:
            del doc["ok"]
        return Response.json(doc)


def broken(*flaws: str, args: tuple[str, ...] = ()) -> tuple[int, dict[str, tuple[str, str]], str]:
    with SimServer([BrokenCP(set(flaws))]) as server:
        return check(server.url, *args, token=BROKEN_TOKEN)


def test_the_broken_cp_without_a_flaw_passes():
    code, found, text = broken(args=("--test-tenant", "t2", "--request-timeout", "0.5"))
    assert code == 0, text
    assert {verdict for verdict, _ in found.values()} == {"PASS", "WARN"}, text
    assert found["idempotency"][0] == "WARN"  # it deploys again: allowed


@pytest.mark.parametrize(("flaw", "failed", "said"), [
    ("no-ok", "enumerate", "'ok' is missing, not a boolean"),
    ("rows-without-slug", "enumerate", "results[0] has no usable 'slug'"),
    ("untyped-rows", "enumerate", 'results[0].healthz_ok is "yes", not a boolean'),
    ("dry-run-says-success", "enumerate", 'not "DryRun"'),
    ("no-confirm-needed", "confirm", "accepted a request without confirm: true"),
    ("ignores-scope", "scope", "answered rows for other tenants too (t2)"),
    ("ignores-scope", "unknown-tenant", "accepted a tenant it does not have"),
    ("ignores-scope", "empty-scope", "an empty scope read as the whole fleet"),
    ("500-for-unknown-tenant", "unknown-tenant", "500 (unknown tenant)"),
    ("no-auth", "auth", "accepted a dry run without a token and with a wrong token"),
    ("slow-dry-run", "enumerate-time", "no complete answer within 0.5 s"),
    ("refuses-reused-key", "idempotency", "422 (Idempotency-Key is already used)"),
    ("409-for-reused-key", "idempotency", "got 409 (conflict) — the action reads 409 as"),
])
def test_each_broken_behaviour_is_its_own_named_failure(flaw, failed, said):
    code, found, text = broken(flaw, args=("--test-tenant", "t2", "--request-timeout", "0.5"))

    assert code == 1, text
    verdict, reason = found[failed]
    assert verdict == "FAIL" and said in reason, text
    assert text.splitlines()[-1].split(", ")[1] != "0 FAIL"


IN_PROGRESS = "the action reads 409 as \"a request with this Idempotency-Key is still in progress\""


@pytest.mark.parametrize(("failed", "said"), [
    ("confirm", "confirm left out: 409 (confirm must be true); confirm: false: 409 (confirm must be true)"),
    ("unknown-tenant", "409 (unknown tenant)"),
    ("empty-scope", "only_slugs: []: 409 (only_slugs must be a non-empty list)"),
])
def test_a_refusal_answered_409_fails_because_the_action_would_wait_and_ask_again(failed, said):
    """409 is the one 4xx the action does not read as refused: used for a refusal, a rollout would
    wait one CP worst case and retry where it must halt."""
    code, found, text = broken("409-for-refusals")

    assert code == 1, text
    verdict, reason = found[failed]
    assert verdict == "FAIL" and said in reason and IN_PROGRESS in reason, text
    assert reason.endswith("refuse it with 400, 404 or 422"), reason
    assert found["enumerate"][0] == found["scope"][0] == "PASS", text  # the flaw alone fails


def test_an_auth_refusal_answered_409_fails_naming_401_or_403():
    code, found, text = broken("409-for-auth")

    assert code == 1, text
    verdict, reason = found["auth"]
    assert verdict == "FAIL" and IN_PROGRESS in reason and reason.endswith("answer 401 or 403"), text


def test_a_cp_that_ignores_only_slugs_is_never_sent_the_test_deploy():
    """It would redeploy every tenant for one test tenant: the scope check's FAIL stops the deploy."""
    with SimServer([BrokenCP({"ignores-scope"})]) as server:
        code, found, text = check(server.url, "--test-tenant", "t2", token=BROKEN_TOKEN)
        sent = bodies(server)

    assert code == 1 and found["scope"][0] == "FAIL", text
    assert found["deploy"] == ("SKIP", "not run: a deploy is sent only once the scope check passed")
    assert sent and all(body.get("dry_run") is True for body in sent)


def test_a_test_tenant_the_cp_does_not_list_fails_without_a_deploy(sim):
    fleet, server = sim
    code, found, text = check(server.url, "--test-tenant", "zed")

    assert code == 1, text
    assert found["deploy"] == ("FAIL", "--test-tenant zed is not a tenant the enumeration listed")
    assert fleet.deploy_calls() == []


def test_the_token_is_never_printed_even_when_the_cp_echoes_it():
    code, found, text = broken("echoes-token")
    assert code == 0, text
    assert "Bearer ***" in found["confirm"][1]
    assert BROKEN_TOKEN not in text


# -- the command line -----------------------------------------------------------------------------------


def run_cli(*args: str, token: str | None = CP_TOKEN, module: bool = False) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "CP_TOKEN_FOR_CHECK": token or ""}
    command = [sys.executable, "-m", "deploy.contract"] if module else [sys.executable, "-m", "deploy", "contract"]
    return subprocess.run([*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("module", [False, True], ids=["fleet-rollout contract", "python -m deploy.contract"])
def test_the_command_takes_the_token_from_the_named_variable_and_exits_0_without_a_fail(sim, module):
    _fleet, server = sim
    proc = run_cli(server.url, "--token-env", "CP_TOKEN_FOR_CHECK", "--redeploy-path", PATH, "--target-tag",
                   "latest", "--request-timeout", "5", module=module)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines()[0] == f"# fleet-rollout contract: POST {server.url}{PATH}, dry runs only"
    assert verdicts(proc.stdout)["scope"][0] == "PASS"
    assert CP_TOKEN not in proc.stdout


@pytest.mark.parametrize(("args", "error"), [
    ((), "the following arguments are required: URL"),
    (("{url}", "--token-env", "NOT_SET_ANYWHERE"), "no token: set NOT_SET_ANYWHERE"),
    (("{url}", "--token-env", "CP_TOKEN_FOR_CHECK", "--request-timeout", "soon"), "expected a number of seconds"),
    (("{url}", "--token-env", "CP_TOKEN_FOR_CHECK", "--test-tenant", "a/b"), "cannot be a tenant name"),
    (("{url}", "--token-env", "CP_TOKEN_FOR_CHECK", "--redeploy-path", "cp/redeploy"), "must start with '/'"),
    (("http://cp.example.com", "--token-env", "CP_TOKEN_FOR_CHECK"), "--allow-insecure-http"),
    (("{url}", "--token", "cp-secret-token-5a1c9e"), "unrecognized arguments"),
])
def test_a_bad_command_line_exits_2_and_sends_nothing(sim, args, error):
    _fleet, server = sim
    proc = run_cli(*(arg.format(url=server.url) for arg in args))

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert error in proc.stderr and proc.stdout == ""
    assert server.requests == []


# -- the README says what the code does -----------------------------------------------------------------


def readme_table(heading: str) -> list[str]:
    """The first column of the first table under ``heading`` in the README, backticks removed."""
    section = (ROOT / "README.md").read_text().split(f"\n{heading}\n", 1)[1]
    rows = [line for line in section.split("\n\n| ", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
            if not line.startswith("| ---")]
    return [row.strip("| ").split(" |", 1)[0].strip("`") for row in rows]


def test_the_readme_lists_every_check_in_order():
    assert readme_table("### Check your endpoint") == CHECKS


def test_the_readme_names_every_body_field_the_action_sends(fleet, action):
    """A real run (canary and batches) against the simulator: the fields it sent are the README's."""
    _sim, server = fleet([TenantSpec("a"), TenantSpec("b"), TenantSpec("c")])
    result = action(server, canary="a", batch_size="2", verify_url="")
    assert result.code == 0, result.stdout

    sent = {key for body in bodies(server) for key in body}
    assert sent == set(readme_table("### The request"))
