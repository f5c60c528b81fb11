"""Hostile servers, end to end: every client of the action against a server that misbehaves on purpose.

Each row of :data:`ROWS` puts a :class:`~tests.hostile.HostileServer` in front of the simulator
(CP and tenants, forge, registry: one :class:`~deploy.sim.server.SimServer`), tells it how to
misbehave for one client, runs ``entrypoint.py`` as the runner would (a subprocess, killed if it
outlives its bound), and checks the same things every time:

(a) the run ends within its budget and within ``timeout`` + 5 s of wall time;
(b) outputs ``ok``/``outcome``/``reason`` are written and the JSON report exists and parses;
(c) no Python traceback in stdout or stderr, and no log line over 64 KiB;
(d) no secret in any form (raw, URL-quoted, base64 — also of ``Bearer …`` and ``user:password`` —
    HTML-escaped, JSON-escaped, or any 6-character piece) in the log, stderr, outputs, summary or
    report, and the "other origin" marker nowhere;
(e) the row's own outcome (the client's default, or the row's check).

Every row names the paragraph of SECURITY.md § "Threat model: hostile servers" it checks.
Run one row with ``python -m pytest -q tests/test_hostile.py -k 'cp-enumerate-drip-headers'``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import os
import posixpath
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import pytest

from deploy import http as deploy_http
from deploy.clock import Clock, Deadline
from deploy.domain import parse_image
from deploy.errors import DeployFailed
from deploy.registry import OCI_MANIFEST, Repository
from deploy.runner import parse_output_file
from deploy.sim.fleet import FleetSim, TenantSpec
from deploy.sim.forge import ForgeSim
from deploy.sim.registry import SimRegistry
from deploy.sim.server import SimServer
from tests.actions_runner import ROOT, ActionResult, container_env
from tests.hostile import (
    Behaviour,
    HostileServer,
    Seen,
    applied_then_reset,
    drip_body,
    drip_headers,
    echo_auth,
    gzip_bomb,
    hang,
    html_titles,
    huge_body,
    json_answer,
    nested_json,
    redirect,
    respond,
    truncated,
)
from tests.report_schema import check_report
from tests.support import SHA, TAG

# Secrets with characters that every encoding changes, so each form is a different string.
CP_SECRET = 'cpK7+Vq/Xw9=Lr&<m>"Tz4'
REGISTRY_USER = "ci-bot"
REGISTRY_PASSWORD = 'rgJ3+Pd/Ys8=Hk&<n>"Wb6'
GITHUB_SECRET = 'ghQ5+Nf/Cu2=Me&<o>"Ra1'
SECRETS = (CP_SECRET, REGISTRY_PASSWORD, GITHUB_SECRET)
MARKER = "HOSTILE-MARKER-51f0c3"  # only another origin ever serves it

REDEPLOY = "/cp/admin/tenants/redeploy-fleet"
FORGE_BRANCH = "/api/v3/repos/acme/platform/branches/main"
REPO, REPO2 = "acme/app", "acme/other"
TENANTS = ("a", "b", "c", "d")  # batch-size 2: batch 1 is a, b; batch 2 is c, d
LOG_LINE_LIMIT = 64 * 1024
RSS_LIMIT_MIB = 300

BASE_INPUTS = {
    "request-timeout": "1",
    "rollout-timeout": "2.5",
    "cp-tenant-timeout": "1",
    "cp-settle-seconds": "0.2",
    "retry-delays": "0.05",
    "soak-seconds": "0",
    "batch-size": "2",
    "max-stragglers": "0",
    "verify-url": "",
    "verify-budget": "2",
    "verify-interval": "0.2",
    "timeout": "4",
}


# -- the world a row runs against ----------------------------------------------------------


@dataclass
class World:
    """The simulator behind ``hostile``, and ``other``: a second server that stands for another origin."""

    sim: FleetSim
    forge: ForgeSim
    registry: SimRegistry
    upstream: SimServer
    hostile: HostileServer
    other: HostileServer
    digests: dict[str, tuple[str, str]] = field(default_factory=dict)  # repository → (latest before, target)

    @property
    def buildinfo(self) -> str:
        return f"{self.hostile.url}/tenants/{{slug}}/buildinfo"

    def image(self, repository: str = REPO) -> str:
        return f"{self.hostile.host}/{repository}"

    def latest(self, repository: str = REPO) -> str:
        return self.registry.tag_digest(repository, "latest")

    def substitute(self, value: str) -> str:
        return (value.replace("$buildinfo", self.buildinfo).replace("$image2", self.image(REPO2))
                .replace("$image", self.image(REPO)).replace("$host", self.hostile.host))

    def cp_posts(self, dry_run: bool, slugs: tuple[str, ...] | None = None) -> list[Seen]:
        return [s for s in self.hostile.seen(REDEPLOY, "POST") if cp_call(dry_run, slugs)(s)]


def manifest_body(repository: str, variant: str) -> bytes:
    config = "sha256:" + hashlib.sha256(f"{repository} {variant}".encode()).hexdigest()
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2}}
    return json.dumps(doc, indent=1).encode()


@pytest.fixture
def world(fleet) -> Iterator[World]:
    with open_world(fleet) as opened:
        yield opened


@contextlib.contextmanager
def open_world(fleet) -> Iterator[World]:
    """The world a row runs against, for the ``world`` fixture of this module and of others."""
    forge = ForgeSim("github", repository="acme/platform")
    forge.branches["main"] = SHA
    registry = SimRegistry(REGISTRY_USER, REGISTRY_PASSWORD)
    digests = {}
    for repository in (REPO, REPO2):
        old = registry.seed(repository, "latest", manifest_body(repository, "previous"), OCI_MANIFEST)
        new = registry.seed(repository, TAG, manifest_body(repository, "new"), OCI_MANIFEST)
        digests[repository] = (old, new)
    sim, upstream = fleet([TenantSpec(slug, deploy_seconds=20) for slug in TENANTS], forge, registry, token=CP_SECRET)
    hostile = HostileServer(upstream.url).start()
    other = HostileServer(None).start()
    try:
        yield World(sim, forge, registry, upstream, hostile, other, digests)
    finally:
        hostile.stop()
        other.stop()


# -- running the entrypoint ----------------------------------------------------------------


@dataclass
class Outcome(ActionResult):
    """An :class:`ActionResult` with how long the run took and whether it had to be killed."""

    report_text: str = ""
    seconds: float = 0.0
    timed_out: bool = False
    peak_rss_mib: float | None = None

    def tail(self, lines: int = 25) -> str:
        shown = [line if len(line) < 400 else line[:400] + f"… ({len(line)} chars)"
                 for line in self.visible_log().splitlines()[-lines:]]
        return "\n".join(["--- log tail ---", *shown, "--- stderr tail ---", self.stderr[-1500:]])


# Runs entrypoint.py as its child and records the child's peak RSS: RUSAGE_CHILDREN of a fresh
# process covers that one run only, not every run the test process ever waited for.
RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call([sys.executable, 'entrypoint.py'])\n"
    "with open(sys.argv[1], 'w') as out:\n"
    "    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def action_inputs(world: World, inputs: Mapping[str, str]) -> dict[str, str]:
    with_ = {
        **BASE_INPUTS,
        "cp-url": world.hostile.url, "cp-token": CP_SECRET, "github-token": GITHUB_SECRET,
        "registry-username": REGISTRY_USER, "registry-password": REGISTRY_PASSWORD,
    }
    with_.update({name: world.substitute(value) for name, value in inputs.items()})
    return with_


def action_env(world: World, workdir: Path, inputs: Mapping[str, str]) -> dict[str, str]:
    github = {"sha": SHA, "token": GITHUB_SECRET, "api_url": f"{world.hostile.url}/api/v3"}
    env = container_env(action_inputs(world, inputs), github, workdir)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_", "FLEET_", "GITEA_"))}
    return {**base, **env}


def read_text(path: Path) -> str:
    """A file the run wrote, as text: '' unless it is a regular file (a FIFO would block the test), and any
    byte that is not UTF-8 kept as a lone surrogate, which :func:`assert_common` then finds."""
    if not path.is_file():
        return ""
    return path.read_bytes().decode("utf-8", "surrogateescape")


def read_results(env: Mapping[str, str]) -> tuple[dict[str, str], str, str, dict[str, Any] | None]:
    """(outputs, summary, report text, report) as the run left them; a report that does not parse is None."""
    outputs_text = read_text(Path(env["GITHUB_OUTPUT"]))
    summary = read_text(Path(env["GITHUB_STEP_SUMMARY"]))
    report_text = read_text(Path(env["GITHUB_WORKSPACE"]) / env["FLEET_REPORT_PATH"])
    try:
        report = json.loads(report_text) if report_text else None
    except ValueError:
        report = None
    try:
        outputs = parse_output_file(outputs_text)
    except ValueError:
        outputs = {}
    return outputs, summary, report_text, report


def run_entrypoint(world: World, workdir: Path, inputs: Mapping[str, str], kill_after: float,
                   measure_rss: bool = False, command: list[str] | None = None) -> Outcome:
    """Run once; past ``kill_after`` seconds the whole process group is killed (and the row fails).

    ``command`` replaces ``python entrypoint.py`` (a wrapper that breaks something first). The log is
    decoded as the runner shows it, a byte that is not UTF-8 kept as a lone surrogate (see :func:`read_text`).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    env = action_env(world, workdir, inputs)
    rss_file = workdir / "peak-rss-kib"
    if command is None:
        command = [sys.executable, "entrypoint.py"]
        if measure_rss:
            command = [sys.executable, "-c", RSS_WRAPPER, str(rss_file)]
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=kill_after)
        timed_out = False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    seconds = time.monotonic() - started
    stdout, stderr = (data.decode("utf-8", "surrogateescape") for data in (out, err))
    outputs, summary, report_text, report = read_results(env)
    peak = int(rss_file.read_text()) / 1024 if measure_rss and rss_file.exists() else None
    files_text = "\n".join([read_text(Path(env["GITHUB_OUTPUT"])), summary, report_text])
    return Outcome(proc.returncode, stdout, stderr, outputs, summary, report, files_text,
                   report_text=report_text, seconds=seconds, timed_out=timed_out, peak_rss_mib=peak)


# -- what every row asserts ----------------------------------------------------------------


def secret_forms(secret: str) -> dict[str, str]:
    """Every form in which a secret could leak, by name."""
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    forms = {
        "raw": secret,
        "url-quoted": quote(secret, safe=""),
        "url-quoted (plus)": quote_plus(secret),
        "base64": b64(secret),
        "base64 of 'Bearer <secret>'": b64(f"Bearer {secret}"),
        "base64 of 'token <secret>'": b64(f"token {secret}"),
        "base64 of 'user:password'": b64(f"{REGISTRY_USER}:{secret}"),
        "html-escaped": html.escape(secret),
        "json-escaped": json.dumps(secret)[1:-1],
    }
    forms.update({f"6-character piece {secret[i:i + 6]!r}": secret[i:i + 6] for i in range(len(secret) - 5)})
    return forms


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def assert_no_secret_forms(result: ActionResult, *secrets: str) -> None:
    """No form of any secret in the log (``::add-mask::`` lines are the runner's, never shown), stderr,
    outputs, summary, the report file, or the report's decoded strings.

    SECURITY.md § Threat model: hostile servers → Redaction.
    """
    places = {
        "log": result.visible_log(),
        "stderr": result.stderr,
        "outputs": "\n".join(result.outputs.values()),
        "summary": result.summary,
        "files": result.files_text,
        "report (decoded)": "\n".join(_strings(result.report)) if result.report is not None else "",
    }
    leaks = []
    for secret in secrets:
        for form_name, form in secret_forms(secret).items():
            for place, text in places.items():
                at = text.find(form)
                if at != -1:
                    leaks.append(f"{form_name} of secret {secret[:2]}… in {place}: …{text[max(at - 60, 0):at + 60]!r}…")
    assert not leaks, "secret leaked:\n" + "\n".join(leaks[:10])


SURROGATE = re.compile("[\ud800-\udfff]")


def assert_writable(result: ActionResult) -> None:
    """Everything the run wrote is UTF-8: no byte that is not (read back as a lone surrogate), anywhere.

    SECURITY.md § Threat model: hostile servers → Unwritable text.
    """
    for place, text in (("log", result.stdout), ("stderr", result.stderr), ("files", result.files_text)):
        found = SURROGATE.search(text)
        assert found is None, f"not UTF-8 in the {place}: …{text[max(found.start() - 80, 0):found.end() + 40]!r}…"


def assert_common(result: Outcome, timeout: float, within: float) -> None:
    """(a)–(d) of the module doc, plus the marker of the other origin appearing nowhere."""
    assert not result.timed_out, f"still running after {result.seconds:.1f} s: killed\n{result.tail()}"
    assert result.seconds <= within, f"ran {result.seconds:.1f} s, bound {within:g} s\n{result.tail()}"
    assert result.seconds <= timeout + 5, f"ran {result.seconds:.1f} s, past timeout {timeout:g} + 5 s"
    missing = [name for name in ("ok", "outcome", "reason") if name not in result.outputs]
    assert not missing, f"outputs not written: {missing}\n{result.tail()}"
    assert result.report_text, f"no JSON report\n{result.tail()}"
    assert result.report is not None, f"the report does not parse: {result.report_text[:300]!r}"
    check_report(result.report)
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        assert "Traceback (most recent call last)" not in text, f"a traceback in {name}\n{result.tail(60)}"
    assert_writable(result)
    long = [len(line.encode()) for line in result.stdout.splitlines() if len(line.encode()) > LOG_LINE_LIMIT]
    assert not long, f"log lines over 64 KiB: {long[:5]} bytes (SECURITY.md § Body caps)"
    assert_no_secret_forms(result, *SECRETS)
    assert MARKER not in result.everything(), "a body from another origin reached the output (§ Redirects)"


# -- rows: how each client is attacked, and what it must do then ----------------------------


def cp_call(dry_run: bool, slugs: tuple[str, ...] | None = None) -> Callable[[Seen], bool]:
    """A redeploy call: the enumeration (``dry_run`` true) or a deploy, optionally of exactly ``slugs``."""
    def matches(seen: Seen) -> bool:
        doc = seen.json()
        return (isinstance(doc, dict) and doc.get("dry_run") is dry_run
                and (slugs is None or doc.get("only_slugs") == list(slugs)))

    return matches


def token_challenge(world: World) -> Behaviour:
    header = f'Bearer realm="{world.hostile.url}/token",service="x"'
    doc = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
    return respond(401, json.dumps(doc), {"WWW-Authenticate": header})


def fleet_answer(*slugs: str) -> Behaviour:
    rows = [{"slug": s, "phase": "planned", "ssm_status": "DryRun", "ssm_exit_code": None} for s in slugs]
    return json_answer({"ok": True, "results": rows})


def _outputs_list(result: Outcome, name: str) -> list[str]:
    return json.loads(result.outputs.get(name) or "[]")


def enumeration_failed(result: Outcome, world: World) -> None:
    """Without a readable fleet nothing may move: failed, exit 1, zero deploy calls."""
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    assert world.sim.deploy_calls() == [] and world.cp_posts(dry_run=False) == []


def deploy_failed(result: Outcome, world: World) -> None:
    """Batch 1 got no usable answer: failed, and its tenants are stragglers."""
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    assert {"a", "b"} <= set(_outputs_list(result, "stragglers")), result.outputs


def tenant_unreachable(result: Outcome, world: World) -> None:
    """Tenant b never answered usefully: unreachable; batch 1's proof halts the rollout (a verified,
    c and d never deployed); latest not promoted."""
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    assert _outputs_list(result, "unreachable") == ["b"], result.outputs
    assert result.outputs["verified"] == "1" and result.outputs["aborted-at"] == "batch 1/2", result.outputs
    assert [call["only_slugs"] for call in world.sim.deploy_calls()] == [["a", "b"]]
    assert world.latest() == world.digests[REPO][0], "latest moved without proof"
    assert result.outputs["promoted-digest"] == ""


def guard_fails_open(result: Outcome, world: World) -> None:
    """An unreadable branch head is not "superseded": warn, and deploy."""
    assert (result.code, result.outputs["outcome"]) == (0, "deployed"), result.tail()
    warnings = [line.lower() for line in result.stdout.splitlines() if line.startswith("::warning")]
    assert any("guard" in line or "superseded" in line for line in warnings), result.tail()


def latest_unmoved(result: Outcome, world: World) -> None:
    """The source could not be read: failed, latest where it was, no PUT ever sent."""
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    assert world.latest() == world.digests[REPO][0], "latest moved"
    assert world.hostile.seen(method="PUT") == [], "a manifest was pushed"


@dataclass(frozen=True)
class Client:
    attach: Callable[[World, Behaviour, dict[str, Any]], None]
    inputs: Mapping[str, str]
    expect: Callable[[Outcome, World], None]
    within: float | None  # the client's own budget bound in wall seconds (None: timeout + 5)


def _attach_cp(dry_run: bool) -> Callable[[World, Behaviour, dict[str, Any]], None]:
    def attach(world: World, behaviour: Behaviour, rule: dict[str, Any]) -> None:
        slugs = rule.pop("slugs", None)
        world.hostile.add(behaviour, method="POST", path=REDEPLOY, when=cp_call(dry_run, slugs), **rule)

    return attach


def _attach_token(world: World, behaviour: Behaviour, rule: dict[str, Any]) -> None:
    world.hostile.add(behaviour, path="/token", **rule)
    world.hostile.add(token_challenge(world), prefix="/v2/")


CLIENTS: dict[str, Client] = {
    # 2 attempts of request-timeout (1 s) + 0.05 s, plus start-up and slack
    "cp-enumerate": Client(_attach_cp(True), {}, enumeration_failed, within=5.0),
    "cp-deploy": Client(_attach_cp(False), {}, deploy_failed, within=None),
    "tenant": Client(
        lambda w, b, rule: w.hostile.add(b, method="GET", path="/tenants/b/buildinfo", **rule),
        {"verify-url": "$buildinfo", "promote-images": "$image", "verify-budget": "1"}, tenant_unreachable,
        within=None),
    "forge": Client(
        lambda w, b, rule: w.hostile.add(b, method="GET", path=FORGE_BRANCH, **rule),
        {"timeout": "6"}, guard_fails_open, within=None),
    "registry": Client(
        lambda w, b, rule: w.hostile.add(b, method="GET", path=f"/v2/{REPO}/manifests/{TAG}", **rule),
        {"stages": "promote", "promote-images": "$image"}, latest_unmoved, within=5.0),
    "token": Client(_attach_token, {"stages": "promote", "promote-images": "$image"}, latest_unmoved, within=5.0),
}


@dataclass(frozen=True, repr=False)
class Row:
    id: str
    paragraph: str  # the SECURITY.md § "Threat model: hostile servers" paragraph it checks
    arrange: Callable[[World], None]
    inputs: Mapping[str, str] = field(default_factory=dict)
    check: Callable[[Outcome, World], None] | None = None
    within: float | None = None
    measure_rss: bool = False

    def __repr__(self) -> str:
        return f"<row {self.id}>"


Late = Callable[[World], Behaviour]  # a behaviour that needs the world's addresses


def on(client: str, name: str, behaviour: Behaviour | Late, paragraph: str, *,
       inputs: Mapping[str, str] | None = None, check: Callable[[Outcome, World], None] | None = None,
       within: float | None = None, measure_rss: bool = False, also: Callable[[World], None] | None = None,
       **rule: Any) -> Row:
    """A row attacking ``client`` with ``behaviour``; ``also`` arranges more (e.g. the other origin)."""
    spec = CLIENTS[client]

    def arrange(world: World) -> None:
        if also is not None:
            also(world)
        spec.attach(world, behaviour if isinstance(behaviour, Behaviour) else behaviour(world), dict(rule))

    return Row(f"{client}-{name}", paragraph, arrange, {**spec.inputs, **(inputs or {})}, check or spec.expect,
               within if within is not None else spec.within, measure_rss)


def both(*checks: Callable[[Outcome, World], None]) -> Callable[[Outcome, World], None]:
    def check(result: Outcome, world: World) -> None:
        for one in checks:
            one(result, world)

    return check


# [4] a deploy answer that cannot be parsed must not throw away the batches before it


def batch_1_rows_kept(result: Outcome, world: World) -> None:
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    assert result.outputs["result_count"] == "2", "batch 1's rows were thrown away"
    stragglers = set(_outputs_list(result, "stragglers"))
    assert {"c", "d"} <= stragglers and not {"a", "b"} & stragglers, result.outputs


# [8] a call the CP received but never answered usably is recorded, its outcome unknown


def _calls(result: Outcome) -> list[dict[str, Any]]:
    rollout = (result.report or {}).get("rollout") or {}
    return rollout.get("calls") or []


def find_call(calls: list[dict[str, Any]], slugs: tuple[str, ...]) -> dict[str, Any] | None:
    return next((c for c in calls if sorted(c.get("slugs") or []) == sorted(slugs)), None)


def says_unknown(call: dict[str, Any]) -> bool:
    return call.get("ok") is not True and call.get("state") == "unknown" and not call.get("rows")


def batch_2_outcome_unknown(result: Outcome, world: World) -> None:
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    assert world.cp_posts(dry_run=False, slugs=("c", "d")), "batch 2 never reached the CP"
    call = find_call(_calls(result), ("c", "d"))
    assert call is not None, f"the batch 2 call the CP received is not in the report: {_calls(result)}"
    assert says_unknown(call), f"batch 2's outcome should be recorded as unknown: {call}"
    assert {"c", "d"} <= set(_outputs_list(result, "stragglers")), result.outputs
    assert result.outputs["result_count"] == "2", result.outputs
    assert "| c |" in result.summary and "outcome unknown" in result.summary, result.summary


# [10] the other origin is never contacted


def other_origin_untouched(result: Outcome, world: World) -> None:
    assert world.other.seen() == [], [s.target for s in world.other.seen()]
    assert world.hostile.seen("/internal") == [], "a redirect to another host was followed"


def serve_other(behaviour: Behaviour) -> Callable[[World], None]:
    return lambda world: world.other.add(behaviour, path="/internal")


# [11] memory


def peak_rss_bounded(result: Outcome, world: World) -> None:
    assert result.peak_rss_mib is not None, "the peak RSS was not recorded"
    assert result.peak_rss_mib < RSS_LIMIT_MIB, f"peak RSS {result.peak_rss_mib:.0f} MiB (§ Body caps)"


# [12] slugs that are path segments


DOT_SLUGS = ("..", ".", "a/../b")
OUTSIDE = {"/buildinfo", "/tenants/buildinfo"}


def reported(result: Outcome, slug: str) -> bool:
    """The slug is named somewhere a person looks: an element of the report or of an output list, or
    quoted in the log, the summary or an output (a bare ``..`` would match too much to count)."""
    if slug in set(_strings(result.report)):
        return True
    text = "\n".join([result.stdout, result.summary, *result.outputs.values()])
    return any(form in text for form in (json.dumps(slug), repr(slug), f"`{slug}`", f"| {slug} |"))


def dot_slugs_stay_inside(result: Outcome, world: World) -> None:
    for seen in world.hostile.seen(method="GET"):
        for path in (seen.path, posixpath.normpath(unquote(seen.path))):
            assert path not in OUTSIDE, f"polled {seen.target!r}: a slug left /tenants/<slug>/"
    for slug in DOT_SLUGS:
        assert reported(result, slug), f"slug {slug!r} is not reported\n{result.tail()}"


# [14] markup in slugs


MARKUP_SLUGS = ("[click](https://evil.test)", "![x](https://evil.test/p.png)", "<img src=x>")


def summary_markup_escaped(result: Outcome, world: World) -> None:
    link = re.search(r"(?<!\\)\]\(https://evil\.test", result.summary)
    shown = result.summary[link.start() - 40 : link.end() + 20] if link else ""
    assert link is None, f"unescaped link syntax in the summary: …{shown!r}…"
    assert "<img" not in result.summary.lower(), "a raw <img> tag in the summary"


# [15] retries claimed vs requests seen


def retries_claimed_honestly(result: Outcome, world: World) -> None:
    posts = len(world.cp_posts(dry_run=False, slugs=("a", "b")))
    text = result.stdout + result.report_text
    for claimed in re.findall(r"after (\d+) retr", text):
        assert int(claimed) <= posts - 1, f"claims {claimed} retries, the CP saw {posts} POST(s)"
    for attempt in re.findall(r"attempt (\d+)/\d+", text):
        assert int(attempt) <= posts, f"claims attempt {attempt}, the CP saw {posts} POST(s)"


def cut_body_retried_to_the_end(result: Outcome, world: World) -> None:
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    posts = len(world.cp_posts(dry_run=False, slugs=("a", "b")))
    assert posts == 3, f"a body cut by a reset is retried like a dropped connection: 3 POSTs expected, saw {posts}"
    retries_claimed_honestly(result, world)


def cut_body_retried_once(result: Outcome, world: World) -> None:
    assert (result.code, result.outputs["outcome"]) == (0, "deployed"), result.tail()
    assert len(world.cp_posts(dry_run=False, slugs=("a", "b"))) == 2
    retries_claimed_honestly(result, world)


# [3] half-promote with a put-back that fails on an unparseable error body


def half_promote_recorded(result: Outcome, world: World) -> None:
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    promote = result.report.get("promote")
    assert promote is not None, f"promote is null in the report\n{result.tail()}"
    by_image = {p["image"]: p for p in promote["promotions"]}
    first, second = by_image[world.image(REPO)], by_image[world.image(REPO2)]
    (old1, new1), (old2, _new2) = world.digests[REPO], world.digests[REPO2]
    assert first["state"] == "put-back-failed", first
    assert (first["promoted_digest"], first["previous_digest"]) == (new1, old1), first
    assert second["state"] == "failed" and second["previous_digest"] == old2, second
    assert (world.latest(REPO), world.latest(REPO2)) == (new1, old2)  # what the registry really holds
    assert json.loads(result.outputs["promoted-digest"])[world.image(REPO)] == new1, result.outputs
    assert json.loads(result.outputs["previous-digest"])[world.image(REPO)] == old1, result.outputs
    assert f"put-back failed for {world.image(REPO)} (latest left on {new1})" in result.outputs["reason"]


def baseline_deployed(result: Outcome, world: World) -> None:
    assert (result.code, result.outputs["outcome"]) == (0, "deployed"), result.tail()
    assert result.outputs["verified"] == "4"
    assert world.latest() == world.digests[REPO][1]


def a_is_a_straggler(result: Outcome, world: World) -> None:
    """The row of a says it missed the target (with a 1 MB error text): failed, a a straggler."""
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    assert "a" in _outputs_list(result, "stragglers"), result.outputs


def mark_a_deployed(world: World) -> None:
    world.sim.mark_deployed("a", SHA)


def _registry_error(status: int = 500) -> Behaviour:
    return json_answer({"errors": [{"code": "UNKNOWN", "message": "injected failure"}]}, status)


def _half_promote(world: World) -> None:
    world.hostile.add(_registry_error(), method="PUT", path=f"/v2/{REPO2}/manifests/latest")
    world.hostile.add(nested_json(100_000, 500), method="PUT", path=f"/v2/{REPO}/manifests/latest", skip=1)


HUGE_ROW_ERROR = {
    "ok": False, "error": "E" * 1_000_000,
    "results": [{"slug": "a", "verified_on_target": False, "healthz_ok": True, "error": "R" * 1_000_000},
                {"slug": "b", "verified_on_target": True, "healthz_ok": True}],
}

MANIFEST_START = b'{"schemaVersion": 2, "padding": "'
DEADLINES = "Deadlines"
DRIPS = {"drip-headers": drip_headers(), "drip-body": drip_body(200), "drip-502-body": drip_body(502)}
TITLES = {"cp-enumerate": 2_000_000, "cp-deploy": 300_000, "tenant": 60_000, "forge": 300_000,
          "registry": 300_000, "token": 300_000}

ROWS: list[Row] = [
    Row("baseline-forward-only", "(control: the hostile server forwarding everything is harmless)",
        lambda world: None, {"verify-url": "$buildinfo", "promote-images": "$image"}, baseline_deployed),
    # [1] slow drips: headers, body, a 502's error body — every client
    *[on(client, kind, behaviour, DEADLINES) for client in CLIENTS for kind, behaviour in DRIPS.items()],
    on("tenant", "hang", hang(), DEADLINES),
    # [2] quadratic <title> search on error bodies
    *[on(client, f"html-title-{size // 1000}k" if size < 1_000_000 else f"html-title-{size // 1_000_000}mb",
         html_titles(500, size), "Parsing", inputs={"timeout": "5"} if client == "cp-enumerate" else None,
         within=10.0 if client == "cp-enumerate" else None)
      for client, size in TITLES.items()],
    # [3] half-promote: the put-back of the first image meets an unparseable error body
    Row("registry-half-promote-nested-putback", "All-or-nothing promote", _half_promote,
        {"stages": "promote", "promote-images": "$image,$image2"}, half_promote_recorded),
    # [4] deeply nested JSON
    on("cp-deploy", "nested-json-batch-2", nested_json(), "Parsing", check=batch_1_rows_kept, slugs=("c", "d")),
    on("cp-enumerate", "nested-json", nested_json(), "Parsing"),
    on("tenant", "nested-json", nested_json(20_000), "Parsing"),  # 40 KB: under the 64 KiB /buildinfo cap
    on("forge", "nested-json", nested_json(), "Parsing"),
    on("registry", "nested-json-200", nested_json(content_type="application/json"), "Parsing"),
    on("registry", "nested-json-500", nested_json(status=500), "Parsing"),
    on("token", "nested-json", nested_json(), "Parsing"),
    # [6]/[7] a 401 or 500 that echoes the Authorization header and the query in many encodings
    on("cp-enumerate", "echo-401", echo_auth(401), "Redaction"),
    on("cp-deploy", "echo-500", echo_auth(500), "Redaction"),
    on("forge", "echo-401", echo_auth(401), "Redaction"),
    on("registry", "echo-401", echo_auth(401, {"WWW-Authenticate": 'Basic realm="hostile"'}), "Redaction"),
    on("token", "echo-401", echo_auth(401), "Redaction"),
    # [8] the overall deadline runs out in a retry wait, after POSTs of batch 2 reached the CP
    on("cp-deploy", "deadline-in-retry-wait", json_answer({"ok": False, "error": "upstream connect error"}, 502),
       "Unknown outcomes", inputs={"retry-delays": "0.05,5", "timeout": "3"}, check=batch_2_outcome_unknown,
       slugs=("c", "d")),
    # [10] redirects to another origin
    on("tenant", "redirect-other-port", lambda w: redirect(f"{w.other.url}/internal"), "Redirects",
       check=both(tenant_unreachable, other_origin_untouched),
       also=serve_other(json_answer({"git_sha": SHA, "note": MARKER}))),
    on("tenant", "redirect-other-host", lambda w: redirect(f"http://localhost:{w.hostile.port}/internal"), "Redirects",
       check=both(tenant_unreachable, other_origin_untouched),
       also=lambda w: w.hostile.add(respond(500, MARKER, content_type="text/plain"), path="/internal")),
    on("cp-enumerate", "redirect-other-origin", lambda w: redirect(f"{w.other.url}/internal"), "Redirects",
       check=both(enumeration_failed, other_origin_untouched),
       also=serve_other(fleet_answer("a", MARKER))),
    on("forge", "redirect-other-origin", lambda w: redirect(f"{w.other.url}/internal"), "Redirects",
       check=both(guard_fails_open, other_origin_untouched),
       also=serve_other(json_answer({"name": "main", "commit": {"sha": "f" * 40}, "note": MARKER}))),
    # [11] size caps
    on("cp-enumerate", "gzip-bomb", gzip_bomb(), "Body caps", check=both(enumeration_failed, peak_rss_bounded),
       measure_rss=True, within=8.0),
    on("cp-enumerate", "huge-body-no-length", huge_body(128, content_length=False), "Body caps",
       check=both(enumeration_failed, peak_rss_bounded), measure_rss=True, within=8.0),
    on("registry", "huge-manifest-200mb", huge_body(200, content_type=OCI_MANIFEST, prefix=MANIFEST_START), "Body caps",
       check=both(latest_unmoved, peak_rss_bounded), measure_rss=True, within=8.0),
    on("cp-deploy", "huge-row-error", json_answer(HUGE_ROW_ERROR), "Body caps", check=a_is_a_straggler),
    # [12] slugs that are dot segments
    Row("cp-enumerate-dot-slugs", "Tenant paths",
        lambda w: (mark_a_deployed(w), w.hostile.add(fleet_answer("a", *DOT_SLUGS), method="POST", path=REDEPLOY)),
        {"stages": "verify", "verify-url": "$buildinfo", "verify-budget": "1"}, dot_slugs_stay_inside),
    # [14] markup in slugs
    Row("cp-enumerate-markup-slugs", "Summary markup",
        lambda w: (mark_a_deployed(w), w.hostile.add(fleet_answer("a", *MARKUP_SLUGS), method="POST", path=REDEPLOY)),
        {"stages": "verify", "verify-url": "$buildinfo", "verify-budget": "0.6"}, summary_markup_escaped),
    # [15] a 200 whose body is cut by a reset
    on("cp-deploy", "truncated-200", truncated(200), "Unknown outcomes", inputs={"retry-delays": "0.05,0.05"},
       check=cut_body_retried_to_the_end, slugs=("a", "b")),
    on("cp-deploy", "truncated-200-once", truncated(200), "Unknown outcomes", inputs={"retry-delays": "0.05,0.05"},
       check=cut_body_retried_once, slugs=("a", "b"), times=1),
]


# -- second round (issue 21): text nobody can write, records that must be true, rows about others ---

LONE = "\ud800"  # a lone high surrogate: JSON may escape one, UTF-8 cannot encode it
RAW_BYTES = "\udc80\udcff"  # the low range, what a raw non-UTF-8 byte decodes to under surrogateescape
UNWRITABLE = f"upstream {LONE} broke {RAW_BYTES} here"  # json.dumps writes it as \ud800 … \udc80\udcff escapes
SHOWN_UNWRITABLE = "upstream \ufffd broke \ufffd\ufffd here"  # what the run shows of it
VARIABLE_PATH = "/api/v3/repos/acme/platform/actions/variables/FREEZE"


def server_words_kept(result: Outcome, world: World) -> None:
    """The server's words reach the record, their unwritable code points replaced by U+FFFD."""
    assert SHOWN_UNWRITABLE in result.stdout, result.tail()
    assert SHOWN_UNWRITABLE in result.outputs["reason"] + result.summary + result.report_text, result.tail()


def tenant_b_stale(result: Outcome, world: World) -> None:
    """Tenant b reports something that is not the build: stale, with what it reported shown; nothing promoted."""
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    assert _outputs_list(result, "stale") == ["b"], result.outputs
    assert world.latest() == world.digests[REPO][0], "latest moved without proof"


def kill_switch_failed_closed(result: Outcome, world: World) -> None:
    """The live kill switch could not be read: failed (exit 1) before any deploy call."""
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    assert world.cp_posts(dry_run=False) == []


def _putback_states(result: Outcome, world: World) -> tuple[dict[str, Any], dict[str, Any]]:
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    promote = result.report.get("promote")
    assert promote is not None, f"promote is null in the report\n{result.tail()}"
    by_image = {p["image"]: p for p in promote["promotions"]}
    return by_image[world.image(REPO)], by_image[world.image(REPO2)]


def put_back_and_recorded(result: Outcome, world: World) -> None:
    """Image 1 was moved and is back on its previous digest: the registry, the record, the outputs and
    the reason all say so (image 2 failed and never moved)."""
    first, second = _putback_states(result, world)
    (old1, _new1), (old2, _new2) = world.digests[REPO], world.digests[REPO2]
    assert (world.latest(REPO), world.latest(REPO2)) == (old1, old2), "the registry is not where it was"
    assert first["state"] == "put-back" and first["promoted_digest"] == old1, first
    assert second["state"] == "failed" and second["previous_digest"] == old2, second
    assert json.loads(result.outputs["promoted-digest"])[world.image(REPO)] == old1, result.outputs
    assert "rollback failed" not in result.outputs["reason"], result.outputs["reason"]


def put_back_unknown_recorded(result: Outcome, world: World) -> None:
    """The put-back was sent and nothing could read the tag since: the record says `unknown`, with both
    digests, never a guess; the output and the reason follow it."""
    first, _second = _putback_states(result, world)
    old1, new1 = world.digests[REPO]
    assert first["state"] == "unknown", first
    assert first["promoted_digest"] == "" and first["previous_digest"] == old1, first
    assert old1 in first["detail"] and new1 in first["detail"], first
    assert json.loads(result.outputs["promoted-digest"])[world.image(REPO)] == "", result.outputs
    reason = result.outputs["reason"]
    assert "unknown" in reason and old1 in reason and new1 in reason, reason
    assert f"left on {new1}" not in reason, reason


def _half_promote_unwritable(world: World) -> None:
    world.hostile.add(json_answer({"errors": [{"code": "DENIED", "message": UNWRITABLE}]}, 500), method="PUT",
                      path=f"/v2/{REPO2}/manifests/latest")


def _putback_after_a_hang(world: World) -> None:
    """Image 2's PUT hangs to the overall timeout; image 1's put-back PUT then meets one 503."""
    world.hostile.add(hang(), method="PUT", path=f"/v2/{REPO2}/manifests/latest")
    world.hostile.add(_registry_error(503), method="PUT", path=f"/v2/{REPO}/manifests/latest", skip=1, times=1)


def _putback_answer_lost(world: World) -> None:
    world.hostile.add(_registry_error(), method="PUT", path=f"/v2/{REPO2}/manifests/latest")
    world.hostile.add(applied_then_reset(), method="PUT", path=f"/v2/{REPO}/manifests/latest", skip=1)


def _putback_read_back_500(times: int | None) -> Callable[[World], None]:
    """Image 2 fails; image 1's tag reads fail after the promote's two (before, read back) and the
    put-back's first (where it is now): the read-back of the put-back, and ``times - 1`` more."""
    def arrange(world: World) -> None:
        world.hostile.add(_registry_error(), method="PUT", path=f"/v2/{REPO2}/manifests/latest")
        world.hostile.add(_registry_error(500), method="GET", path=f"/v2/{REPO}/manifests/latest", skip=3,
                          times=times)

    return arrange


PROMOTE_BOTH = {"stages": "promote", "promote-images": "$image,$image2"}

# verify-url credentials: in userinfo (sent as Basic base64(user:password)), or a token as the username
VU_USER, VU_PASSWORD = "vu-reader", "vuPass-7f3k9q2wX"
VU_TOKEN = "ghp_VuT0ken9c3e7a1b5d2f8h4j6k0m"


def verify_url_credential_hidden(user: str, password: str) -> Callable[[Outcome, World], None]:
    """No form of the credential the tenants were sent: the password, the token used as a username,
    and ``base64(user:password)`` (what a 401 page echoes back of a Basic header)."""
    def check(result: Outcome, world: World) -> None:
        tenant_unreachable(result, world)
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        assert_no_secret_forms(result, user if password == "x-oauth-basic" else password, basic)

    return check


# rows about tenants outside the call


def rollback_call(slugs: tuple[str, ...]) -> Callable[[Seen], bool]:
    def matches(seen: Seen) -> bool:
        doc = seen.json()
        return isinstance(doc, dict) and doc.get("target_tag") == "latest" and doc.get("only_slugs") == list(slugs)

    return matches


def _on_target(*slugs: str) -> list[dict[str, Any]]:
    return [{"slug": s, "phase": "done", "ssm_status": "Success", "healthz_ok": True, "verified_on_target": True}
            for s in slugs]


def _rollback_answers_for_others(world: World) -> None:
    """Batch 2 halts (ok: false) after c and d shipped; the rollback call for a, b answers with rows for
    a, b, c, d, and the rollback call for c, d gets a 500."""
    world.sim.builds["latest"] = "0" * 40
    world.hostile.add(json_answer({"ok": False, "error": "halted", "results": _on_target("c", "d")}), method="POST",
                      path=REDEPLOY, when=cp_call(False, ("c", "d")), times=1)
    world.hostile.add(json_answer({"ok": True, "results": _on_target("a", "b", "c", "d")}), method="POST",
                      path=REDEPLOY, when=rollback_call(("a", "b")))
    world.hostile.add(json_answer({"error": "fleet lock held"}, 500), method="POST", path=REDEPLOY,
                      when=rollback_call(("c", "d")))


def only_own_rows_rolled_back(result: Outcome, world: World) -> None:
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    rollback = result.report["rollback"]
    assert rollback is not None, result.tail()
    assert _outputs_list(result, "rolled-back") == ["a", "b"], result.outputs
    assert set(rollback["not_rolled_back"]) == {"c", "d"}, rollback
    assert "rollback failed" in result.outputs["reason"], result.outputs["reason"]


def own_rows_only(result: Outcome, world: World) -> None:
    """Batch 1 answered ok: false with rows for a, b, c, d: c and d were never asked, so they did not ship."""
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    shipped, not_started = _outputs_list(result, "shipped"), result.report["rollout"]["not_started"]
    assert shipped == ["a", "b"] and not_started == ["c", "d"], (shipped, not_started)
    assert result.outputs["result_count"] == "2", result.outputs
    assert "2 rows about tenants outside the call" in result.stdout, result.tail()


def canary_duplicate_worst_row(result: Outcome, world: World) -> None:
    """The canary's rows say on target, then not: the worst row counts, so the run stops at the canary."""
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    assert result.outputs["aborted-at"] == "canary", result.outputs
    assert len(world.cp_posts(dry_run=False)) == 1, "a batch started after a canary that was not on target"
    assert "a" in _outputs_list(result, "stragglers"), result.outputs


_MANY_ROWS: bytes | None = None


def many_rows_answer() -> bytes:
    """27.7 MiB: the rows of a and b, then 1.45 million rows about tenants nobody asked for."""
    global _MANY_ROWS
    if _MANY_ROWS is None:
        own = json.dumps(_on_target("a", "b"))[1:-1].encode()
        others = b",".join(b'{"slug":"u%07d"}' % i for i in range(1_450_000))
        _MANY_ROWS = b'{"ok": true, "results": [' + own + b"," + others + b"]}"
    return _MANY_ROWS


_REPEATED_ROWS: bytes | None = None


def repeated_rows_answer() -> bytes:
    """31.5 MiB, just under the cap: 1.1 million rows about a (each a little different), then the row of b."""
    global _REPEATED_ROWS
    if _REPEATED_ROWS is None:
        repeats = b",".join(b'{"slug":"a","phase":"%d"}' % i for i in range(1_100_000))
        _REPEATED_ROWS = b'{"ok": true, "results": [' + repeats + b"," + json.dumps(_on_target("b")[0]).encode() + b"]}"
    return _REPEATED_ROWS


def many_rows_cost_nothing(result: Outcome, world: World) -> None:
    assert (result.code, result.outputs["outcome"]) == (0, "deployed"), result.tail()
    assert result.outputs["result_count"] == "4", result.outputs
    assert len(result.report_text) < 256 * 1024, f"a report of {len(result.report_text)} bytes"
    peak_rss_bounded(result, world)


# the redirect of one tenant to another tenant's path


def redirect_refused_as_another_tenants(result: Outcome, world: World) -> None:
    tenant_unreachable(result, world)
    assert "leaves the tenant's own path" in result.stdout, result.tail()


# a token service that hands out a piece of the run's own facts


def facts_intact(result: Outcome, world: World) -> None:
    """A bearer token equal to the SHA's first 12 characters censors nothing: the report's sha and
    target_tag, the summary's headline and the log keep them, and a warning says why."""
    assert result.report["sha"] == SHA and result.report["target_tag"] == TAG, result.report
    assert f"({SHA[:12]})" in result.summary, result.summary[:400]
    assert SHA[:12] in result.visible_log(), result.tail()
    warnings = [line for line in result.stdout.splitlines() if line.startswith("::warning")]
    assert any("not redacted" in line for line in warnings), warnings


def _token_is_the_sha(world: World) -> None:
    world.hostile.add(token_challenge(world), prefix="/v2/", times=1)
    world.hostile.add(json_answer({"token": SHA[:12]}), path="/token")


def rolled_back_all(result: Outcome, world: World) -> None:
    """The failure's text is unwritable, and the rollback still runs and is recorded."""
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    assert result.report["rollback"] is not None, result.tail()
    assert _outputs_list(result, "rolled-back") == ["a", "b", "c", "d"], result.outputs
    assert "rolled back 4 tenants" in result.outputs["reason"], result.outputs["reason"]
    assert SHOWN_UNWRITABLE in result.outputs["reason"], result.outputs["reason"]



ROWS += [
    # [1] a lone surrogate (or the raw-byte range) in any server's JSON: the record is written, the words kept
    on("cp-deploy", "unwritable-500", json_answer({"error": UNWRITABLE}, 500), "Unwritable text",
       check=both(deploy_failed, server_words_kept)),
    on("cp-deploy", "unwritable-ok-false", json_answer({"ok": False, "error": UNWRITABLE, "results": []}),
       "Unwritable text", check=both(deploy_failed, server_words_kept)),
    on("cp-deploy", "unwritable-row-error", json_answer({"ok": True, "results": [
        {"slug": "a", "verified_on_target": False, "healthz_ok": True, "error": UNWRITABLE},
        {"slug": "b", "verified_on_target": True, "healthz_ok": True}]}), "Unwritable text",
       check=both(a_is_a_straggler, server_words_kept)),
    on("cp-enumerate", "unwritable-500", json_answer({"error": UNWRITABLE}, 500), "Unwritable text",
       check=both(enumeration_failed, server_words_kept)),
    on("tenant", "unwritable-git-sha", json_answer({"git_sha": LONE + SHA[1:] + RAW_BYTES}), "Unwritable text",
       check=tenant_b_stale),
    on("registry", "unwritable-error", json_answer({"errors": [{"code": "DENIED", "message": UNWRITABLE}]}, 500),
       "Unwritable text", check=both(latest_unmoved, server_words_kept)),
    on("token", "unwritable-token", json_answer({"token": f"tok{LONE}en-0123456789"}), "Unwritable text"),
    Row("forge-kill-switch-unwritable-500", "Unwritable text",
        lambda w: w.hostile.add(json_answer({"message": UNWRITABLE}, 500), method="GET", path=VARIABLE_PATH),
        {"disabled-variable": "FREEZE"}, both(kill_switch_failed_closed, server_words_kept)),
    Row("registry-unwritable-error-puts-image-1-back", "Unwritable text", _half_promote_unwritable, PROMOTE_BOTH,
        both(put_back_and_recorded, server_words_kept)),
    Row("cp-deploy-unwritable-ok-false-then-rollback", "Unwritable text",
        lambda w: (w.sim.builds.update(latest="0" * 40), w.hostile.add(
            json_answer({"ok": False, "error": UNWRITABLE, "results": _on_target("c", "d")}), method="POST",
            path=REDEPLOY, when=cp_call(False, ("c", "d")), times=1)),
        {"on-failure": "rollback", "timeout": "8"}, rolled_back_all),
    # [2] the put-back retries within its own grace, not the overall deadline it was granted after
    Row("registry-putback-retried-within-its-grace", "All-or-nothing promote", _putback_after_a_hang,
        {**PROMOTE_BOTH, "request-timeout": "20", "rollout-timeout": "30"}, put_back_and_recorded),
    # [3] a put-back applied whose confirmation was lost: re-read, record what the tag is (or unknown)
    Row("registry-putback-applied-answer-lost", "All-or-nothing promote", _putback_answer_lost, PROMOTE_BOTH,
        put_back_and_recorded),
    Row("registry-putback-read-back-500", "All-or-nothing promote", _putback_read_back_500(1), PROMOTE_BOTH,
        put_back_and_recorded),
    Row("registry-putback-unreadable-is-unknown", "All-or-nothing promote", _putback_read_back_500(None),
        PROMOTE_BOTH, put_back_unknown_recorded),
    # [4] a tenant echoing the credential verify-url carries, as a password or as a token-username
    on("tenant", "echo-verify-url-userinfo", echo_auth(401), "Redaction",
       inputs={"verify-url": f"http://{VU_USER}:{VU_PASSWORD}@$host/tenants/{{slug}}/buildinfo"},
       check=verify_url_credential_hidden(VU_USER, VU_PASSWORD)),
    on("tenant", "echo-verify-url-token-username", echo_auth(401), "Redaction",
       inputs={"verify-url": f"http://{VU_TOKEN}:x-oauth-basic@$host/tenants/{{slug}}/buildinfo"},
       check=verify_url_credential_hidden(VU_TOKEN, "x-oauth-basic")),
    # [5] rows about tenants outside the call are ignored; a tenant's duplicate rows: the worst counts
    Row("cp-rollback-rows-outside-the-call", "Out-of-call rows", _rollback_answers_for_others,
        {"on-failure": "rollback", "timeout": "8"}, only_own_rows_rolled_back),
    on("cp-deploy", "rows-outside-the-call", json_answer({"ok": False, "error": "halted by the CP",
                                                          "results": _on_target("a", "b", "c", "d")}),
       "Out-of-call rows", check=own_rows_only, slugs=("a", "b")),
    on("cp-deploy", "canary-duplicate-rows", json_answer({"ok": True, "results": [
        *_on_target("a"), {"slug": "a", "verified_on_target": False, "healthz_ok": True, "error": "rolled over"}]}),
       "Out-of-call rows", inputs={"canary": "a"}, check=canary_duplicate_worst_row, slugs=("a",)),
    # [6] 1.45 million rows about unknown tenants cost nothing kept
    on("cp-deploy", "1.45m-rows-outside-the-call", lambda w: respond(200, many_rows_answer()), "Out-of-call rows",
       inputs={"timeout": "30"}, check=many_rows_cost_nothing, measure_rss=True, within=25.0, slugs=("a", "b")),
    on("cp-deploy", "1.1m-rows-about-one-tenant", lambda w: respond(200, repeated_rows_answer()), "Out-of-call rows",
       inputs={"timeout": "30"}, check=many_rows_cost_nothing, measure_rss=True, within=25.0, slugs=("a", "b")),
    # [9] a same-origin redirect from one tenant's path to another's
    on("tenant", "redirect-to-another-tenant", redirect("/tenants/a/buildinfo"), "Redirects",
       check=redirect_refused_as_another_tenants),
    # [10] a bearer token equal to a piece of the run's own facts
    Row("token-equal-to-the-sha-prefix", "Redaction", _token_is_the_sha,
        {"verify-url": "$buildinfo", "promote-images": "$image"}, facts_intact),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_hostile_server(row: Row, world: World, tmp_path: Path) -> None:
    """Each row checks the SECURITY.md § "Threat model: hostile servers" paragraph in ``row.paragraph``
    (Deadlines, Body caps, Parsing, Redirects, Redaction, All-or-nothing promote, Unknown outcomes,
    Tenant paths, Summary markup), plus (a)–(d) of the module doc for every row."""
    row.arrange(world)
    inputs = dict(row.inputs)
    timeout = float(action_inputs(world, inputs)["timeout"])
    within = min(row.within, timeout + 5) if row.within is not None else timeout + 5
    result = run_entrypoint(world, tmp_path / "run", inputs, kill_after=max(within, timeout + 5) + 2,
                            measure_rss=row.measure_rss)
    try:
        assert_common(result, timeout, within)
        if row.check is not None:
            row.check(result, world)
    except AssertionError as exc:
        exc.add_note(f"checks SECURITY.md § Threat model: hostile servers → {row.paragraph}")
        raise


# -- cancellation: the entrypoint as a live process ----------------------------------------


class Live:
    """``entrypoint.py`` running, its output collected line by line, killable."""

    def __init__(self, world: World, workdir: Path, inputs: Mapping[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.env = action_env(world, workdir, inputs)
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "entrypoint.py"], cwd=ROOT, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def logged(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for line in list(self.lines))

    def written(self) -> bool:
        """Outputs (with an outcome) and a report that parses are on disk."""
        outputs, _summary, _text, report = read_results(self.env)
        return "outcome" in outputs and report is not None

    def result(self) -> Outcome:
        self._reader.join(timeout=5)
        outputs, summary, report_text, report = read_results(self.env)
        files_text = "\n".join([read_text(Path(self.env["GITHUB_OUTPUT"])), summary, report_text])
        return Outcome(self.proc.returncode if self.proc.returncode is not None else -1, "\n".join(self.lines), "",
                       outputs, summary, report, files_text, report_text=report_text)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_sigterm_while_batch_2_is_in_flight_records_the_call_as_unknown(world: World, tmp_path: Path) -> None:
    """[8] SECURITY.md § Threat model: hostile servers → Unknown outcomes (and Cancellation).

    The CP has received batch 2 and is slow to answer when the job is cancelled: the report must
    still show that call, its outcome unknown, and count its tenants as stragglers.
    """
    world.hostile.add(hang(), method="POST", path=REDEPLOY, when=cp_call(False, ("c", "d")))
    live = Live(world, tmp_path / "run", {"timeout": "30", "rollout-timeout": "10"})
    try:
        assert wait_until(lambda: bool(world.cp_posts(dry_run=False, slugs=("c", "d"))), 15), "\n".join(live.lines)
        live.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            live.proc.wait(timeout=5)
        assert live.proc.poll() is not None, "still running 5 s after SIGTERM\n" + "\n".join(live.lines[-20:])
    finally:
        live.kill()
    result = live.result()
    assert_common(result, timeout=30, within=30)
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    assert result.outputs["result_count"] == "2", result.outputs
    call = find_call(_calls(result), ("c", "d"))
    assert call is not None, f"the in-flight batch 2 call is not in the report: {_calls(result)}"
    assert says_unknown(call), f"batch 2's outcome should be recorded as unknown: {call}"
    assert {"c", "d"} <= set(_outputs_list(result, "stragglers")), result.outputs


def test_sigterm_mid_rollout_with_on_failure_rollback_sends_no_rollback_call(world: World, tmp_path: Path) -> None:
    """README § Fleet state: a cancelled job is never rolled back; it must end within seconds."""
    world.hostile.add(hang(), method="POST", path=REDEPLOY, when=cp_call(False, ("c", "d")))
    live = Live(world, tmp_path / "run", {"timeout": "60", "rollout-timeout": "10", "on-failure": "rollback"})
    try:
        assert wait_until(lambda: bool(world.cp_posts(dry_run=False, slugs=("c", "d"))), 15), "\n".join(live.lines)
        live.proc.send_signal(signal.SIGTERM)
        live.proc.wait(timeout=10)
    finally:
        live.kill()
    result = live.result()
    assert_common(result, timeout=60, within=60)
    assert "SIGTERM" in result.outputs["reason"] and "roll" not in result.outputs["reason"], result.outputs["reason"]
    assert result.report is not None and result.report["rollback"] is None
    tags = [json.loads(seen.body)["target_tag"] for seen in world.cp_posts(dry_run=False)]
    assert "latest" not in tags, tags


@dataclass(frozen=True)
class Stage:
    """Where a cancellation lands: how to hold the run there, and how to know it is there."""

    hold: Callable[[World], None]
    inputs: Mapping[str, str]
    there: Callable[[World, Live], bool]


STAGES = {
    "gates": Stage(lambda w: None, {"required-checks": "ci/never-reported", "checks-timeout": "60",
                                    "checks-interval": "0.2"},
                   lambda w, live: live.logged("Waiting for required checks")),
    "enumerate": Stage(lambda w: w.hostile.add(hang(), method="POST", path=REDEPLOY, when=cp_call(True)), {},
                       lambda w, live: bool(w.cp_posts(dry_run=True))),
    "rollout-call": Stage(lambda w: w.hostile.add(hang(), method="POST", path=REDEPLOY, when=cp_call(False)),
                          {"rollout-timeout": "20"}, lambda w, live: bool(w.cp_posts(dry_run=False))),
    "soak": Stage(lambda w: None, {"canary": "a", "soak-seconds": "40"}, lambda w, live: live.logged("soak: waiting")),
    # tenant b never answers and each poll may wait up to 3 s: the signal must not wait for it
    "proof": Stage(lambda w: w.hostile.add(hang(), method="GET", path="/tenants/b/buildinfo"),
                   {"verify-url": "$buildinfo", "verify-budget": "20", "verify-interval": "3", "request-timeout": "3",
                    "rollout-timeout": "4"},
                   lambda w, live: live.logged("batch 1/2: proof: ") and bool(w.hostile.seen("/tenants/b/buildinfo"))),
    "verify": Stage(lambda w: w.hostile.add(hang(), method="GET", path="/tenants/b/buildinfo"),
                    {"verify-url": "$buildinfo", "verify-budget": "20", "verify-interval": "3", "request-timeout": "3",
                     "rollout-timeout": "4", "verify-each-batch": "false"},
                    lambda w, live: live.logged("verify: ") and bool(w.hostile.seen("/tenants/b/buildinfo"))),
    "promote": Stage(lambda w: w.hostile.add(hang(), method="PUT", prefix=f"/v2/{REPO}/manifests/"),
                     {"stages": "promote", "promote-images": "$image", "request-timeout": "20",
                      "rollout-timeout": "30"},
                     lambda w, live: bool(w.hostile.seen(f"/v2/{REPO}/manifests/latest", "PUT"))),
}


@pytest.mark.parametrize("stage", STAGES)
def test_sigterm_in_every_stage_writes_outputs_and_report_within_2_s(world: World, tmp_path: Path, stage: str) -> None:
    """[9] SECURITY.md § Threat model: hostile servers → Cancellation, in every stage."""
    where = STAGES[stage]
    where.hold(world)
    live = Live(world, tmp_path / "run", {"timeout": "60", **where.inputs})
    try:
        assert wait_until(lambda: where.there(world, live), 15), "\n".join(live.lines[-30:])
        signalled = time.monotonic()
        live.proc.send_signal(signal.SIGTERM)
        written = wait_until(live.written, 2.0)
        took = time.monotonic() - signalled
        live.proc.wait(timeout=10)
    finally:
        live.kill()
    assert written, f"outputs and report not written within 2 s of SIGTERM ({took:.1f} s)\n" + "\n".join(live.lines)
    result = live.result()
    assert_common(result, timeout=60, within=60)
    assert result.outputs["outcome"] == "failed" and "SIGTERM" in result.outputs["reason"], result.outputs
    if stage == "promote":  # the tag the PUT may have moved is checked and put back, never left unknown
        assert world.latest(REPO) == world.digests[REPO][0]
        assert result.report["promote"]["promotions"][0]["state"] in ("put-back", "failed")


# -- token realms: a unit test (an https registry on loopback would need a trusted certificate) ----


def test_allow_insecure_http_never_sends_the_password_to_an_http_realm_of_an_https_registry(requests_mock) -> None:
    """[5] SECURITY.md § Threat model: hostile servers → Token realms.

    ``allow-insecure-http: true`` allows http:// where the user wrote it; it must not let an
    https:// registry's challenge pull the password over plain http.
    """
    requests_mock.get(
        "https://registry.example.com/v2/acme/app/manifests/latest", status_code=401,
        json={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
        headers={"WWW-Authenticate": 'Bearer realm="http://auth.example.com/token",service="registry.example.com"'})
    requests_mock.get("http://auth.example.com/token", json={"token": "token-from-plain-http"})
    deadline = Deadline.starting_now(Clock(), 30)
    client = deploy_http.Client(deploy_http.Policy(budget=5), Clock(), deadline)
    repository = Repository(parse_image("registry.example.com/acme/app", True), client=client,
                            username=REGISTRY_USER, password=REGISTRY_PASSWORD)
    with contextlib.suppress(DeployFailed):
        repository.find_manifest("latest", deadline)
    assert requests_mock.request_history, "the registry was never asked"
    for request in requests_mock.request_history:
        if request.scheme != "http":
            continue
        assert "Authorization" not in request.headers, f"credentials sent over plain http to {request.url}"
        sent = request.url + (request.body.decode() if isinstance(request.body, bytes) else str(request.body or ""))
        leaked = [name for name, form in secret_forms(REGISTRY_PASSWORD).items() if form in sent]
        assert not leaked, f"the password went over plain http to {request.netloc}: {leaked[:3]}"


# -- an unexpected exception in a tenant read or a proof: an internal error, never a verdict ---------

# requests before 2.32.2 has no HTTPAdapter.get_connection_with_tls_context, which the tenant read path
# (the lean GET, and it alone) calls: what a machine ran when pyproject.toml allowed requests 2.31.
WITHOUT_ADAPTER_METHOD = (
    "import runpy, sys\n"
    "import deploy.http\n"
    "def route(self, url, origin):\n"
    "    return self._adapter.get_connection_as_in_requests_2_31(url)\n"
    "deploy.http.Client._route = route\n"
    "sys.argv = ['entrypoint.py']\n"
    "runpy.run_path('entrypoint.py', run_name='__main__')\n"
)
# A bug in reading an answer after the first N reads (the snapshot's), so it strikes in a proof.
BUG_AFTER_READS = (
    "import runpy, sys\n"
    "import deploy.buildinfo as buildinfo\n"
    "real, reads, after = buildinfo._parse, [], int(sys.argv[1])\n"
    "def broken(*args, **kwargs):\n"
    "    reads.append(1)\n"
    "    if len(reads) > after:\n"
    "        raise KeyError('a bug in reading an answer')\n"
    "    return real(*args, **kwargs)\n"
    "buildinfo._parse = broken\n"
    "sys.argv = ['entrypoint.py']\n"
    "runpy.run_path('entrypoint.py', run_name='__main__')\n"
)


def assert_internal_error(result: Outcome, kind: str) -> None:
    """Exit 1, `failed`, the reason says internal error, the traceback is in the log, and no tenant was
    given a verdict for it; outputs and the report written all the same."""
    assert not result.timed_out, result.tail()
    assert (result.code, result.outputs.get("outcome")) == (1, "failed"), result.tail()
    assert "internal error" in result.outputs["reason"] and kind in result.outputs["reason"], result.outputs
    assert "Traceback (most recent call last)" in result.stdout, result.tail()
    assert result.report is not None, result.tail()
    check_report(result.report)
    assert _outputs_list(result, "unreachable") == [] and _outputs_list(result, "stale") == [], result.outputs
    assert "probing it" not in result.everything(), "an internal error became a tenant's verdict"


def test_a_tenant_read_path_that_cannot_run_fails_the_run_as_an_internal_error(world: World, tmp_path: Path) -> None:
    """Issue 21 [11]: with requests 2.31 (allowed once) every tenant was "unreachable … internal error
    probing it: AttributeError". A programming error is the run's, not a tenant's: it fails the run
    before any deploy call (the snapshot is the first read)."""
    inputs = {"verify-url": "$buildinfo", "promote-images": "$image"}
    result = run_entrypoint(world, tmp_path / "run", inputs, kill_after=15,
                            command=[sys.executable, "-c", WITHOUT_ADAPTER_METHOD])
    assert_internal_error(result, "AttributeError")
    assert world.cp_posts(dry_run=False) == [], "a deploy call after the tenant reads broke"
    assert world.latest() == world.digests[REPO][0]


def test_a_bug_in_a_proof_fails_the_run_as_an_internal_error_and_rolls_nothing_back(world: World,
                                                                                    tmp_path: Path) -> None:
    """Issue 21 [11]: a bug while proving batch 1 is not evidence against the build: no rollback call,
    the call that was made still in the report."""
    world.sim.builds["latest"] = "0" * 40
    inputs = {"verify-url": "$buildinfo", "on-failure": "rollback", "timeout": "8"}
    result = run_entrypoint(world, tmp_path / "run", inputs, kill_after=15,
                            command=[sys.executable, "-c", BUG_AFTER_READS, str(len(TENANTS))])
    assert_internal_error(result, "KeyError")
    assert [seen.json()["target_tag"] for seen in world.cp_posts(dry_run=False)] == [TAG], "a rollback call was made"
    assert find_call(_calls(result), ("a", "b")) is not None, _calls(result)
    assert result.report["rollback"] is None


def test_a_bug_in_a_rollbacks_proof_fails_the_run_as_an_internal_error_with_the_rollback_recorded(
        world: World, tmp_path: Path) -> None:
    """Issue 21 [11]: the rollback's calls were made, then its proof hit a bug: an internal error, and
    the report still has the rollback and its calls (the snapshot and batch 1's proof read 6 times)."""
    world.sim.builds["latest"] = "0" * 40
    world.hostile.add(json_answer({"ok": False, "error": "halted", "results": _on_target("c", "d")}), method="POST",
                      path=REDEPLOY, when=cp_call(False, ("c", "d")), times=1)
    inputs = {"verify-url": "$buildinfo", "on-failure": "rollback", "timeout": "8"}
    result = run_entrypoint(world, tmp_path / "run", inputs, kill_after=15,
                            command=[sys.executable, "-c", BUG_AFTER_READS, str(len(TENANTS) + 2)])
    assert_internal_error(result, "KeyError")
    sent = [seen.json()["target_tag"] for seen in world.cp_posts(dry_run=False)]
    assert sent.count("latest") == 2, sent
    rollback = result.report["rollback"]
    assert rollback is not None and [call["label"] for call in rollback["calls"]] == ["rollback 1/2", "rollback 2/2"]
