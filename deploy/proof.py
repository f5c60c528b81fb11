"""Progressive proof: each deploy call's tenants prove the build before the next call starts.

The CP's row is the CP's word. With ``verify-each-batch`` (the default) and a ``verify-url``,
the canary and then every batch is verified through ``/buildinfo`` right after its call returns,
by the verify stage's own rule and classification (:func:`deploy.verify.verify_tenants`), under a
``verify-budget`` counted from that return. A build that passes the CP's health check but serves
the wrong thing therefore stops at the canary, or at the first batch, instead of reaching every
tenant. During the soak the canary is watched: losing ``sha``, or going silent for longer than one
``verify-interval``, stops the run before any batch; with ``batch-soak-seconds`` each batch's
tenants are watched the same way after their proof (its bake), before the next call.

One :class:`~deploy.buildinfo.BuildinfoClient` serves the whole rollout, so its connections are
reused from call to call; the verify stage afterwards re-reads only what was not proven here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from deploy.analysis import StepWatch
from deploy.buildinfo import BuildinfoClient, buildinfo_url, format_seconds
from deploy.context import Context
from deploy.controlplane import TenantRow
from deploy.domain import sha_matches
from deploy.settings import HttpSettings, VerifySettings
from deploy.verify import SHOWN_DETAILS, TenantVerdict, Verdict, VerifyResult, described_failures, verify_tenants


@dataclass(frozen=True, kw_only=True)
class ProofSpan:
    """One call's proof on the timeline: seconds since the run started."""

    label: str  # "proof canary", "proof batch 2/5", "soak watch"
    started: float
    seconds: float
    ok: bool


class Prover:
    """Proves calls as the rollout makes them; remembers every verdict and when it came."""

    def __init__(self, settings: VerifySettings, http_settings: HttpSettings, sha: str, ctx: Context,
                 reader: BuildinfoClient | None = None) -> None:
        self.settings, self.http_settings, self.sha, self.ctx = settings, http_settings, sha, ctx
        self._owns_reader = reader is None
        self.reader = reader or BuildinfoClient(settings.field, settings.concurrency, ctx)
        self.verdicts: dict[str, TenantVerdict] = {}  # every tenant proven or failed so far, in call order
        self.spans: list[ProofSpan] = []

    def close(self) -> None:
        if self._owns_reader:
            self.reader.close()

    def prove(self, label: str, rows: Sequence[TenantRow]) -> str:
        """Verify the tenants ``label`` shipped; '' when every one reports the build, else why not
        (naming each failing tenant and its state)."""
        started = self.ctx.deadline.elapsed()
        result = verify_tenants(self.settings, self.http_settings, self.sha, rows, self.ctx, reader=self.reader,
                                label=f"{label}: proof", brief=bool(self.spans))
        for verdict in result.verdicts:
            self.verdicts[verdict.slug] = replace(verdict, call=label)
        self.spans.append(ProofSpan(label=f"proof {label}", started=started, seconds=result.seconds, ok=result.ok))
        return "" if result.ok else f"{label} not proven: {described_failures(result)}"

    def watch(self, label: str, slugs: Sequence[str], seconds: float, during: str,
              analysis: StepWatch | None = None) -> str:
        """Poll ``slugs`` together every ``verify-interval`` for ``seconds``: '' when each kept
        reporting the build, else what was seen (the canary's soak, a batch's bake).

        Another SHA fails at once (the tenant went back). Silence fails when it lasts longer than
        one interval: two polls in a row without an answer, or no answer at the last poll (the
        tenants must still be answering when the next call starts). On failure each failing
        tenant's verdict becomes what was seen, so the outputs and the summary agree with the reason.
        ``analysis``, the step's metric analysis, is evaluated whenever it is due between two
        polls; once it has decided, the watch ends (its caller reads the decision).
        """
        interval, clock, deadline = self.settings.interval, self.ctx.clock, self.ctx.deadline
        urls = [buildinfo_url(self.settings.url_template, slug) for slug in slugs]
        started, start = deadline.elapsed(), clock.now()
        end = start + seconds
        silent = dict.fromkeys(slugs, 0)
        seen: dict[str, tuple[str, str]] = {}  # slug → (what it runs, why it failed)
        while not seen and clock.now() < end and not (analysis and analysis.tick()):
            deadline.sleep(min(interval, end - clock.now()), during)
            answers = self.reader.read_all(urls, min(self.http_settings.request_timeout, interval), deadline)
            into = f"{format_seconds(clock.now() - start)} s into {during}"
            last = clock.now() >= end
            for slug, answer in zip(slugs, answers, strict=True):
                if answer is not None and answer.reported and sha_matches(answer.reported, self.sha):
                    silent[slug] = 0
                elif answer is not None and answer.reported:
                    seen[slug] = (answer.shown, f"{slug} went back to {answer.shown[:12]}, not {self.sha[:12]}, {into}")
                else:
                    silent[slug] += 1
                    why = answer.problem if answer is not None else "no time was left to ask"
                    if silent[slug] > 1 or last:
                        seen[slug] = ("", f"{slug} stopped answering for more than verify-interval, {into}: {why}")
        name = "soak watch" if label == "canary" else f"bake {label}"
        self.spans.append(ProofSpan(label=name, started=started, seconds=clock.now() - start, ok=not seen))
        for slug, (running, detail) in seen.items():
            self.verdicts[slug] = TenantVerdict(slug=slug, state=Verdict.STALE if running else Verdict.UNREACHABLE,
                                                running=running, detail=detail, seconds=clock.now() - start,
                                                call=label)
        if not seen:
            return ""
        details = [detail for _running, detail in seen.values()]
        shown = "; ".join(details[:SHOWN_DETAILS])
        more = f"; and {len(details) - SHOWN_DETAILS} more" if len(details) > SHOWN_DETAILS else ""
        return f"{label} {shown}{more}" if label == "canary" else f"{label}: {shown}{more}"

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
