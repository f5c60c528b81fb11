"""Progressive proof: each deploy call's tenants prove the build before the next call starts.

The CP's row is the CP's word. With ``verify-each-batch`` (the default) and a ``verify-url``,
the canary and then every batch is verified through ``/buildinfo`` right after its call returns,
by the verify stage's own rule and classification (:func:`deploy.verify.verify_tenants`), under a
``verify-budget`` counted from that return. A build that passes the CP's health check but serves
the wrong thing therefore stops at the canary, or at the first batch, instead of reaching every
tenant. During the soak the canary is watched: losing ``sha``, or going silent for longer than one
``verify-interval``, stops the run before any batch.

One :class:`~deploy.buildinfo.BuildinfoClient` serves the whole rollout, so its connections are
reused from call to call; the verify stage afterwards re-reads only what was not proven here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from deploy.buildinfo import BuildinfoClient, buildinfo_url, format_seconds
from deploy.context import Context
from deploy.controlplane import TenantRow
from deploy.domain import sha_matches
from deploy.settings import HttpSettings, VerifySettings
from deploy.verify import FAILING, TenantVerdict, Verdict, VerifyResult, failing_listing, verify_tenants

SHOWN_DETAILS = 3  # failing tenants described one by one in a halt's reason; more are listed by state


@dataclass(frozen=True, kw_only=True)
class ProofSpan:
    """One call's proof on the timeline: seconds since the run started."""

    label: str  # "proof canary", "proof batch 2/5", "soak watch"
    started: float
    seconds: float
    ok: bool


class Prover:
    """Proves calls as the rollout makes them; remembers every verdict and when it came."""

    def __init__(self, settings: VerifySettings, http_settings: HttpSettings, sha: str, ctx: Context) -> None:
        self.settings, self.http_settings, self.sha, self.ctx = settings, http_settings, sha, ctx
        self.reader = BuildinfoClient(settings.field, settings.concurrency, ctx)
        self.verdicts: dict[str, TenantVerdict] = {}  # every tenant proven or failed so far, in call order
        self.spans: list[ProofSpan] = []

    def close(self) -> None:
        self.reader.close()

    def prove(self, label: str, rows: Sequence[TenantRow]) -> str:
        """Verify the tenants ``label`` shipped; '' when every one reports the build, else why not
        (naming each failing tenant and its state)."""
        started = self.ctx.deadline.elapsed()
        result = verify_tenants(self.settings, self.http_settings, self.sha, rows, self.ctx, reader=self.reader,
                                label=f"{label}: proof")
        for verdict in result.verdicts:
            self.verdicts[verdict.slug] = replace(verdict, call=label)
        self.spans.append(ProofSpan(label=f"proof {label}", started=started, seconds=result.seconds, ok=result.ok))
        return "" if result.ok else f"{label} not proven: {_failures(result)}"

    def watch(self, slug: str, seconds: float) -> str:
        """Poll the canary every ``verify-interval`` for ``seconds``: '' when it kept reporting the
        build, else what was seen.

        Another SHA fails at once (it went back). Silence fails when it lasts longer than one
        interval: two polls in a row without an answer, or no answer at the soak's last poll (the
        canary must still be answering when the batches start). On failure the canary's verdict
        becomes what was seen, so the outputs and the summary agree with the reason.
        """
        interval, clock, deadline = self.settings.interval, self.ctx.clock, self.ctx.deadline
        url = buildinfo_url(self.settings.url_template, slug)
        started, start = deadline.elapsed(), clock.now()
        end = start + seconds
        problem, silent, why, running = "", 0, "", ""
        while not problem and clock.now() < end:
            deadline.sleep(min(interval, end - clock.now()), "soaking the canary")
            answer = self.reader.read(url, min(self.http_settings.request_timeout, interval), deadline)
            into = f"{format_seconds(clock.now() - start)} s into the soak"
            if answer is not None and answer.reported and sha_matches(answer.reported, self.sha):
                silent = 0
            elif answer is not None and answer.reported:
                running = answer.shown
                problem = f"canary {slug} went back to {running[:12]}, not {self.sha[:12]}, {into}"
            else:
                silent += 1
                why = answer.problem if answer is not None else "no time was left to ask"
                if silent > 1 or clock.now() >= end:
                    problem = f"canary {slug} stopped answering for more than verify-interval, {into}: {why}"
        self.spans.append(ProofSpan(label="soak watch", started=started, seconds=clock.now() - start, ok=not problem))
        if problem:
            self.verdicts[slug] = TenantVerdict(slug=slug, state=Verdict.STALE if running else Verdict.UNREACHABLE,
                                                running=running, detail=problem, seconds=clock.now() - start,
                                                call="canary")
        return problem

    def result(self, order: Sequence[str]) -> VerifyResult:
        """The verdicts reached during the rollout, in ``order``, as the verify stage reports them:
        what the outputs and the summary show when a proof halted the rollout."""
        verdicts = tuple(self.verdicts[slug] for slug in order if slug in self.verdicts)
        proofs = [span for span in self.spans if span.label.startswith("proof")]
        started = proofs[0].started if proofs else 0.0
        seconds = sum(span.seconds for span in proofs)
        return VerifyResult(verdicts=verdicts, rounds=0, started=started, seconds=seconds)

    def proven(self) -> set[str]:
        return {slug for slug, verdict in self.verdicts.items() if verdict.state == Verdict.VERIFIED}


def _failures(result: VerifyResult) -> str:
    """``stale a, b; unreachable c``: each failing state with its tenants, and with what each was
    seen doing when there are only a few (a canary's proof names its one tenant)."""
    failing = [verdict for verdict in result.verdicts if verdict.state in FAILING]
    if len(failing) <= SHOWN_DETAILS:
        return "; ".join(f"{verdict.slug} is {verdict.state} ({verdict.detail})" for verdict in failing)
    return failing_listing(result)
