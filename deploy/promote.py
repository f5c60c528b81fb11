"""Promote: move the moving tag (``latest``) to the verified build, by digest, every image or none.

For each image: resolve the source (a tag, or a ``sha256:`` digest for a rollback), remember what
the tag pointed at, put the source's exact bytes under the tag with their own media type, and
read the tag back and require that it hashes to the source digest. A multi-arch index moves whole; replacing
a multi-arch tag with a single-arch manifest is refused unless ``allow-single-arch`` says so.

All or nothing: when an image fails, the images already moved are put back on their previous
manifests (same bytes again). A tag that did not exist before is left on the new digest and said
so, because deleting a tag is not portable across registries. The put-back may overrun the
overall deadline by :data:`PUT_BACK_GRACE` (half the images moved is worse than a late finish, but
the run must still end by ``timeout`` + 5 s), and its requests, retries included, live by that
grace deadline, not by the overall one; after a cancel, the HTTP layer allows it about a second.

The record says where each tag *is*, read from the registry, never where it should be: a put-back
whose answer was lost, or whose read-back failed, may well have been applied, so the tag is read
once more within the grace before anything is recorded. When nothing can read it, the image's
state is ``unknown`` and its detail names both digests the tag can be on; ``promoted-digest`` is
then empty for it and the ``reason`` says so.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from deploy import http
from deploy.clock import Deadline
from deploy.context import Context
from deploy.domain import ImageRef, sha_matches
from deploy.errors import DeployFailed
from deploy.registry import MANIFEST_CAP, REVISION_LABEL, Manifest, RegistryError, Repository
from deploy.runner import Runner
from deploy.settings import HttpSettings, PromoteSettings

PUT_BACK_GRACE = 4.0  # seconds past the overall deadline the put-back may take: the run still ends by timeout + 5 s


class PromotionState(StrEnum):
    """Where one image's promote tag was left."""

    PROMOTED = "promoted"  # on the source, read back
    PUT_BACK = "put-back"  # left or put back where it was, because another image failed
    FAILED = "failed"  # this image's promotion failed, and its tag is where it was
    NOT_STARTED = "not-started"  # an earlier image failed first
    PUT_BACK_FAILED = "put-back-failed"  # moved, and could not be put back: both digests say where it is
    UNKNOWN = "unknown"  # a put-back was sent and the tag could not be read since: on one of two digests


@dataclass(frozen=True, kw_only=True)
class Promotion:
    image: str  # host/repository
    source: str  # the tag or digest promoted from
    promoted_digest: str  # digest under the tag after this run ('' if the run never moved it)
    previous_digest: str  # digest under the tag before ('' if the tag did not exist, or was never read)
    media_type: str
    state: PromotionState
    detail: str  # one line for humans


@dataclass(frozen=True, kw_only=True)
class PromoteResult:
    tag: str
    promotions: tuple[Promotion, ...]
    error: str  # '' when every image promoted

    @property
    def ok(self) -> bool:
        return not self.error and all(p.state == PromotionState.PROMOTED for p in self.promotions)

    @property
    def promoted_digest_output(self) -> str:
        return self._per_image({p.image: p.promoted_digest for p in self.promotions})

    @property
    def previous_digest_output(self) -> str:
        return self._per_image({p.image: p.previous_digest for p in self.promotions})

    @staticmethod
    def _per_image(digests: dict[str, str]) -> str:
        """A plain digest for one image, a JSON object keyed by image for several."""
        if len(digests) == 1:
            return next(iter(digests.values()))
        return json.dumps(digests) if digests else ""


@dataclass
class _Attempt:
    """What one image's promotion learned so far, so a failure can still report and undo it."""

    repository: Repository
    source: Manifest | None = None
    previous: Manifest | None = None
    pushed: bool = False  # a PUT was sent: the tag may have moved even if the step failed

    @property
    def image(self) -> str:
        return self.repository.image


def registry_client(http_settings: HttpSettings, ctx: Context) -> http.Client:
    """One session for every image, shared by the preflight and the move (the caller closes it)."""
    return ctx.client(http_settings.policy(cap=MANIFEST_CAP), on_retry=ctx.runner.log)


def check_sources(settings: PromoteSettings, client: http.Client, ctx: Context, sha: str) -> dict[str, Manifest]:
    """Before the fleet moves, read every image's source: read-only, and it fails fast. Returns
    each image's source manifest, by image: what promote moves ``latest`` to (:func:`promote_images`).

    A wrong registry password or a build pushed under another tag would otherwise surface only
    after the whole fleet was rolled out and verified, with ``latest`` left behind. An image whose
    :data:`~deploy.registry.REVISION_LABEL` names another commit than ``sha`` stops the run here:
    the fleet would be proven on one build and ``latest`` moved to another.
    """
    pinned: dict[str, Manifest] = {}
    unlabelled = []
    for image in settings.images:
        repository = _repository(image, settings, client, ctx.runner)
        try:
            source = repository.find_manifest(settings.source, ctx.deadline)
            revision = repository.revision(source, ctx.deadline) if source else None
        except RegistryError as exc:
            raise DeployFailed(f"promote preflight, before any deploy: {exc}") from None
        if source is None:
            raise DeployFailed(f"promote preflight, before any deploy: {image} has no {settings.source} "
                               "(was the build pushed under that name?)")
        ctx.runner.public(source.digest)
        if revision is not None and not sha_matches(revision, sha):
            raise DeployFailed(
                f"promote preflight, before any deploy: {image}:{settings.source} was built from "
                f"{http.compact_json(revision, 60)} (its {REVISION_LABEL} label), not sha {sha[:12]}: the fleet would "
                "be proven on one build and latest moved to another. Point target-tag at the image built from sha")
        unlabelled += [] if revision else [str(image)]
        built = f", built from {revision[:12]}" if revision else ""
        ctx.runner.log(f"promote preflight: {image}:{settings.source} is {source.digest} ({source.describe()}{built})")
        pinned[str(image)] = source
    if unlabelled:
        ctx.runner.log(f"promote preflight: no {REVISION_LABEL} label on {', '.join(unlabelled)}: only the tag ties "
                       f"the image to {sha[:12]} (docker/metadata-action sets the label)")
    return pinned


def check_rollback_tag(settings: PromoteSettings, tag: str, client: http.Client, ctx: Context) -> str:
    """Before the fleet moves (``on-failure: rollback``): the build a rollback would go back to,
    read from every image's ``tag``, so that a typo is found while nothing has moved yet. Returns
    the commit the images say they were built from (:data:`~deploy.registry.REVISION_LABEL`), or ''."""
    builds: dict[str, str] = {}
    for image in settings.images:
        repository = _repository(image, settings, client, ctx.runner)
        try:
            found = repository.find_manifest(tag, ctx.deadline)
            revision = repository.revision(found, ctx.deadline) if found else None
        except RegistryError as exc:
            raise DeployFailed(f"rollback-tag check, before any deploy: {exc}") from None
        if found is None:
            raise DeployFailed(f"rollback-tag check, before any deploy: {image} has no tag {tag!r}, so on-failure: "
                               "rollback could not put the fleet back. Set rollback-tag to the tag of the build to go "
                               "back to (the default is promote-tag's value), or on-failure: hold")
        ctx.runner.public(found.digest)
        if revision:
            builds[str(image)] = revision
        built = f", built from {revision[:12]}" if revision else ", no revision label"
        ctx.runner.log(f"rollback-tag check: {image}:{tag} is {found.digest}{built}")
    if len({build.lower() for build in builds.values()}) > 1:
        raise DeployFailed(f"rollback-tag check, before any deploy: {tag!r} names different commits in different "
                           f"images ({', '.join(f'{image}: {build[:12]}' for image, build in builds.items())}): a "
                           "rollback could not be proven on one build")
    return next(iter(builds.values()), "")


def promote_images(settings: PromoteSettings, client: http.Client, ctx: Context,
                   pinned: Mapping[str, Manifest] | None = None) -> PromoteResult:
    """Move ``settings.tag`` to ``settings.source`` in every image, or in none of them.

    ``pinned``: each image's source as the preflight read it, before the fleet moved — the build
    the tenants were proven on. It is what moves; a source tag that has moved since fails the image.
    """
    attempts: list[_Attempt] = []
    runner, deadline = ctx.runner, ctx.deadline
    for image in settings.images:
        attempt = _Attempt(_repository(image, settings, client, runner))
        attempts.append(attempt)
        try:
            _promote(attempt, settings, runner, deadline, (pinned or {}).get(str(image)))
        except Exception as exc:  # noqa: BLE001 - whatever broke (a cancellation too), moved tags go back
            grace_seconds = deadline.remaining() + min(client.policy.budget, PUT_BACK_GRACE)
            grace = Deadline.starting_now(ctx.clock, grace_seconds)
            error = str(exc) if isinstance(exc, RegistryError) else f"{image}: {type(exc).__name__}: {exc}"
            result = _undo(attempts, settings, runner, grace, error)  # first: nothing may stand before it
            if not isinstance(exc, DeployFailed):  # a bug: its traceback, for the report to the maintainers
                runner.log("".join(traceback.format_exception(exc)))
            return result
    return PromoteResult(tag=settings.tag, promotions=tuple(_promoted(a, settings) for a in attempts), error="")


def _repository(image: ImageRef, settings: PromoteSettings, client: http.Client, runner: Runner) -> Repository:
    return Repository(image, client=client, username=settings.username, password=settings.password,
                      mask=runner.mask)


def _promote(attempt: _Attempt, settings: PromoteSettings, runner: Runner, deadline: Deadline,
             pinned: Manifest | None) -> None:
    repository, image, tag = attempt.repository, attempt.image, settings.tag
    source = repository.find_manifest(settings.source, deadline)
    if source is None:
        raise RegistryError(f"{image}: source {settings.source} not found (was the build pushed under that name?)")
    runner.public(source.digest)  # digests are the run's own facts: a token must not censor them
    if pinned is not None and source.digest != pinned.digest:
        raise RegistryError(f"{image}: {settings.source} moved during the run: it was {pinned.digest} before the fleet "
                            f"was deployed (the build the tenants were proven on) and is {source.digest} now; "
                            f"{tag} moves to neither")
    source = attempt.source = pinned or source
    runner.log(f"{image}: source {settings.source} is {source.digest} ({source.describe()})")
    previous = attempt.previous = repository.find_manifest(tag, deadline)
    if previous is not None:
        runner.public(previous.digest)
    runner.log(f"{image}: {tag} was {previous.digest} ({previous.describe()})" if previous
               else f"{image}: {tag} does not exist yet")
    if previous and previous.is_index and not source.is_index and not settings.allow_single_arch:
        raise RegistryError(
            f"{image}: refusing to replace multi-arch {tag} ({previous.describe()}) with the single-arch "
            f"{source.digest} ({source.media_type}); set allow-single-arch: true to do it on purpose")
    if previous and previous.digest == source.digest:
        runner.log(f"{image}: {tag} is already on {source.digest}; nothing to push")
    else:
        attempt.pushed = True
        repository.put_manifest(tag, source, deadline)
        runner.log(f"{image}: pushed {source.digest} as {tag}")
    _read_back(repository, tag, source.digest, deadline)
    runner.log(f"{image}: read back {tag}: {source.digest} OK")


def _read_back(repository: Repository, tag: str, expected: str, deadline: Deadline) -> None:
    found = repository.find_manifest(tag, deadline)
    if found is None or found.digest != expected:
        now = found.digest if found else "nothing"
        raise RegistryError(f"{repository.image}: read back {tag}: expected {expected}, the registry serves {now}")


def _promoted(attempt: _Attempt, settings: PromoteSettings) -> Promotion:
    source, previous, tag = attempt.source, attempt.previous, settings.tag
    assert source is not None  # a finished attempt resolved its source
    was = previous.digest if previous else ""
    moved = f"{tag}: {was or '(new tag)'} → {source.digest}"
    detail = f"{tag} already on {source.digest}" if was == source.digest else moved
    return Promotion(image=attempt.image, source=settings.source, promoted_digest=source.digest, previous_digest=was,
                     media_type=source.media_type, state=PromotionState.PROMOTED, detail=detail)


def _undo(attempts: list[_Attempt], settings: PromoteSettings, runner: Runner, grace: Deadline,
          error: str) -> PromoteResult:
    """Put every moved tag back, and say per image what state it was left in."""
    *moved, failed = attempts
    runner.log(f"FAILED: {error}")  # the error names the image; the runner cannot raise on it
    promotions = []
    for attempt in moved:
        state, now, note = _restore(attempt, settings.tag, runner, grace, confirmed=True)
        promotions.append(_promotion(attempt, settings, now, state, f"{note} because {failed.image} failed"))
    now, detail, state = "", error, PromotionState.FAILED
    if failed.pushed:
        restored, now, note = _restore(failed, settings.tag, runner, grace, confirmed=False)
        now, detail = ("" if now == _digest(failed.previous) else now), f"{error}; {note}"
        if restored in (PromotionState.PUT_BACK_FAILED, PromotionState.UNKNOWN):
            state = restored
    promotions.append(_promotion(failed, settings, now, state, detail))
    promotions += [Promotion(image=str(image), source=settings.source, promoted_digest="", previous_digest="",
                             media_type="", state=PromotionState.NOT_STARTED,
                             detail=f"not started: {failed.image} failed")
                   for image in settings.images[len(attempts):]]
    # the one line every reader sees (the `reason` output) must say what is left half-moved, or unknown
    stuck = [f"{p.image} ({settings.tag} left on {p.promoted_digest or 'an unknown digest'})"
             for p in promotions if p.state == PromotionState.PUT_BACK_FAILED]
    if stuck:
        error += f"; put-back failed for {', '.join(stuck)}"
    unknown = [f"{a.image} ({settings.tag} on {_digest(a.previous) or 'no manifest'} or {_digest(a.source)})"
               for a, p in zip(attempts, promotions, strict=False) if p.state == PromotionState.UNKNOWN]
    if unknown:
        error += f"; where {settings.tag} is now is unknown for {', '.join(unknown)}: it could not be read back"
    return PromoteResult(tag=settings.tag, promotions=tuple(promotions), error=error)


def _restore(attempt: _Attempt, tag: str, runner: Runner, grace: Deadline,
             confirmed: bool) -> tuple[PromotionState, str, str]:
    """Put ``tag`` back where it was: (state, digest now under the tag — '' if absent or unknown —, note).

    The state is what the registry says, never a guess: a put-back whose answer was lost or whose
    read-back failed is followed by one more read (:func:`_settle`). ``confirmed``: the tag was
    read back on the source when it moved (an image that promoted before another one failed).
    """
    repository, previous = attempt.repository, attempt.previous
    moved_to = _digest(attempt.source)
    try:
        current = repository.find_manifest(tag, grace)
    except Exception as exc:  # noqa: BLE001 - anything at all: record the state, never lose the record
        if previous is not None:  # put it back all the same: the put-back reads where it ends up
            state, now, note = _put_back(repository, tag, previous, moved_to, grace)
        elif confirmed:  # read back on the source when it moved, and there is nothing to put back
            state, now, note = PromotionState.PUT_BACK_FAILED, moved_to, (
                f"{tag} did not exist before and was left on {moved_to} (it could not be read now: {_why(exc)})")
        else:
            state, now, note = _unreadable(tag, previous, moved_to, "the failed push", exc)
    else:
        now = current.digest if current else ""
        if previous is None and current is None:
            state, note = PromotionState.PUT_BACK, f"{tag} still does not exist"
        elif previous is None:
            state, note = PromotionState.PUT_BACK_FAILED, (
                f"{tag} did not exist before and is left on {now} (deleting a tag is not portable across "
                "registries: delete it by hand if it must go)")
        elif now == previous.digest:
            state, note = PromotionState.PUT_BACK, f"{tag} is still on the previous {now}"
        else:
            state, now, note = _put_back(repository, tag, previous, moved_to, grace)
    runner.log(f"{attempt.image}: put-back: {note}")  # after the put-back: it never waits on this line
    return state, now, note


def _put_back(repository: Repository, tag: str, previous: Manifest, moved_to: str,
              grace: Deadline) -> tuple[PromotionState, str, str]:
    try:
        repository.put_manifest(tag, previous, grace)
        _read_back(repository, tag, previous.digest, grace)
    except Exception as exc:  # noqa: BLE001 - applied or not, the registry is asked where the tag is
        return _settle(repository, tag, previous, moved_to, grace, exc)
    return PromotionState.PUT_BACK, previous.digest, f"{tag} put back on the previous {previous.digest}"


def _settle(repository: Repository, tag: str, previous: Manifest, moved_to: str, grace: Deadline,
            failure: BaseException) -> tuple[PromotionState, str, str]:
    """After a put-back that failed as far as we could see: read the tag once more and record what it is."""
    why = _why(failure)
    try:
        found = repository.find_manifest(tag, grace)
    except Exception as exc:  # noqa: BLE001 - not even that: the record says unknown, with both digests
        return _unreadable(tag, previous, moved_to, f"the put-back ({why}), then reading it again", exc)
    now = found.digest if found else ""
    if now == previous.digest:
        return PromotionState.PUT_BACK, now, (
            f"{tag} put back on the previous {now} (the put-back reported {why}; read again, it is there)")
    return PromotionState.PUT_BACK_FAILED, now, (
        f"could not put {tag} back on {previous.digest}: {why}; read again, it is on {now or 'no manifest'}")


def _unreadable(tag: str, previous: Manifest | None, moved_to: str, doing: str,
                failure: BaseException) -> tuple[PromotionState, str, str]:
    was = previous.digest if previous else "no manifest (the tag did not exist)"
    return PromotionState.UNKNOWN, "", (
        f"{tag} could not be read after {doing}: {_why(failure)}; it is on {was} or on {moved_to}, unknown which")


def _why(failure: BaseException) -> str:
    return str(failure) if isinstance(failure, DeployFailed) else f"{type(failure).__name__}: {failure}"


def _promotion(attempt: _Attempt, settings: PromoteSettings, now: str, state: PromotionState,
               detail: str) -> Promotion:
    media_type = attempt.source.media_type if attempt.source else ""
    return Promotion(image=attempt.image, source=settings.source, promoted_digest=now,
                     previous_digest=_digest(attempt.previous), media_type=media_type, state=state, detail=detail)


def _digest(manifest: Manifest | None) -> str:
    return manifest.digest if manifest else ""
