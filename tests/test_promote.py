"""Promote against a real docker-registry: latest moves by digest, whole, all images or none."""

from __future__ import annotations

import io
import json
from contextlib import closing
from typing import TYPE_CHECKING

import pytest

from deploy import promote as promote_module
from deploy.clock import Deadline, FakeClock
from deploy.context import Context
from deploy.domain import parse_image
from deploy.promote import PromoteResult, promote_images, registry_client
from deploy.registry import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, digest_of
from deploy.report import as_json
from deploy.runner import Runner
from deploy.settings import HttpSettings, PromoteSettings
from deploy.sim.registry import SimRegistry
from deploy.sim.server import SimServer

if TYPE_CHECKING:
    from tests.registry_fixture import RunningRegistry


SOURCE = "staging-abc1234"


def make_settings(*images: str, source: str = SOURCE, username: str = "", password: str = "",
                  allow_single_arch: bool = False) -> PromoteSettings:
    return PromoteSettings(images=tuple(parse_image(image, False) for image in images), tag="latest", source=source,
                           username=username, password=password, allow_single_arch=allow_single_arch)


def promote(settings: PromoteSettings, seconds: float = 3600) -> tuple[PromoteResult, str]:
    out = io.StringIO()
    ctx = Context(Runner(stream=out), Deadline.starting_now(FakeClock(), seconds))
    with closing(registry_client(HttpSettings(request_timeout=30, retry_delays=()), ctx)) as client:
        result = promote_images(settings, client, ctx)
    return result, out.getvalue()


def credentials(registry: RunningRegistry) -> dict[str, str]:
    return {"username": registry.username, "password": registry.password}


# -- one image --------------------------------------------------------------------------------


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_new_latest_points_at_the_source_digest_on_an_anonymous_registry(registry, repository, media_type):
    seeded = registry.seed_image(repository, SOURCE, media_type=media_type)
    result, log = promote(make_settings(registry.image(repository)))
    assert result.ok and result.error == ""
    assert registry.read(repository, "latest") == (200, seeded.body, media_type)
    promotion = result.promotions[0]
    assert (promotion.state, promotion.promoted_digest, promotion.previous_digest) == ("promoted", seeded.digest, "")
    assert promotion.media_type == media_type and promotion.source == SOURCE
    assert (result.promoted_digest_output, result.previous_digest_output) == (seeded.digest, "")
    image = registry.image(repository)
    for line in (f"{image}: source {SOURCE} is {seeded.digest} ({media_type})",
                 f"{image}: latest does not exist yet",
                 f"{image}: pushed {seeded.digest} as latest",
                 f"{image}: read back latest: {seeded.digest} OK"):
        assert line in log.splitlines()


def test_previous_digest_is_reported_when_latest_existed(registry, repository):
    old = registry.seed_image(repository, "latest", "amd64-old")
    new = registry.seed_image(repository, SOURCE, "amd64-new")
    result, log = promote(make_settings(registry.image(repository)))
    assert result.ok
    assert (result.promoted_digest_output, result.previous_digest_output) == (new.digest, old.digest)
    assert registry.digest(repository, "latest") == new.digest
    assert f"{registry.image(repository)}: latest was {old.digest} ({OCI_MANIFEST})" in log


def test_latest_already_on_the_source_is_left_alone_and_reported_promoted(registry, repository):
    seeded = registry.seed_image(repository, SOURCE)
    registry.push_manifest(repository, "latest", seeded.body, seeded.media_type)
    result, log = promote(make_settings(registry.image(repository)))
    assert result.ok and result.promotions[0].previous_digest == seeded.digest
    assert "nothing to push" in log and "pushed" not in log


def test_htpasswd_registry_promotes_with_basic_credentials(secured_registry, repository):
    old = secured_registry.seed_image(repository, "latest", "amd64-old")
    new = secured_registry.seed_image(repository, SOURCE, "amd64-new")
    result, log = promote(make_settings(secured_registry.image(repository), **credentials(secured_registry)))
    assert result.ok, result.error
    assert (result.promoted_digest_output, result.previous_digest_output) == (new.digest, old.digest)
    assert secured_registry.digest(repository, "latest") == new.digest
    assert secured_registry.password not in log


def test_wrong_password_fails_naming_registry_and_step_and_leaves_latest(secured_registry, repository):
    old = secured_registry.seed_image(repository, "latest", "amd64-old")
    secured_registry.seed_image(repository, SOURCE, "amd64-new")
    image = secured_registry.image(repository)
    result, log = promote(make_settings(image, username=secured_registry.username, password="Wr0ng-pa55word"))
    assert not result.ok
    assert result.error.startswith(f"{image}: registry refused GET manifest {SOURCE}: 401 unauthorized:")
    assert "check registry-username and registry-password" in result.error
    assert result.promotions[0].state == "failed" and result.promotions[0].promoted_digest == ""
    assert secured_registry.digest(repository, "latest") == old.digest
    assert "Wr0ng-pa55word" not in log + json.dumps(as_json(result))


def test_missing_source_fails_clearly_and_touches_nothing(registry, repository):
    old = registry.seed_image(repository, "latest")
    result, _ = promote(make_settings(registry.image(repository), source="staging-nope"))
    assert not result.ok
    assert result.error == (f"{registry.image(repository)}: source staging-nope not found "
                            "(was the build pushed under that name?)")
    assert registry.digest(repository, "latest") == old.digest


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_LIST])
def test_multi_arch_index_moves_whole_byte_identical(registry, repository, media_type):
    registry.seed_index(repository, "latest", "old", media_type=media_type)
    index = registry.seed_index(repository, SOURCE, "new", media_type=media_type)
    result, log = promote(make_settings(registry.image(repository)))
    assert result.ok, result.error
    assert registry.read(repository, "latest") == (200, index.body, media_type)
    assert result.promotions[0].media_type == media_type
    assert f"({media_type}, index of 2 manifests)" in log


def test_single_arch_manifest_may_not_replace_a_multi_arch_latest(registry, repository):
    index = registry.seed_index(repository, "latest")
    single = registry.seed_image(repository, SOURCE, "amd64-single")
    result, _ = promote(make_settings(registry.image(repository)))
    assert not result.ok
    assert "refusing to replace multi-arch latest" in result.error
    assert "allow-single-arch: true" in result.error
    assert result.promotions[0].previous_digest == index.digest
    assert registry.digest(repository, "latest") == index.digest

    result, _ = promote(make_settings(registry.image(repository), allow_single_arch=True))
    assert result.ok and registry.digest(repository, "latest") == single.digest


def test_promoting_a_previous_digest_rolls_latest_back(registry, repository):
    old = registry.seed_image(repository, "latest", "amd64-old")
    new = registry.seed_image(repository, SOURCE, "amd64-new")
    assert promote(make_settings(registry.image(repository)))[0].ok
    result, _ = promote(make_settings(registry.image(repository), source=old.digest))
    assert result.ok
    assert (result.promoted_digest_output, result.previous_digest_output) == (old.digest, new.digest)
    assert registry.digest(repository, "latest") == old.digest


# -- several images: all or nothing ----------------------------------------------------------


def test_second_image_failing_puts_the_first_back_and_leaves_the_third_alone(registry, repository):
    first, second, third = (f"{repository}-{n}" for n in ("one", "two", "three"))
    old_first = registry.seed_image(first, "latest", "amd64-old")
    registry.seed_image(first, SOURCE, "amd64-new")
    registry.seed_image(second, "latest", "amd64-old")  # no source: it was never pushed here
    old_third = registry.seed_image(third, "latest", "amd64-old")
    registry.seed_image(third, SOURCE, "amd64-new")
    images = tuple(registry.image(r) for r in (first, second, third))

    result, log = promote(make_settings(*images))
    assert not result.ok and result.error.startswith(f"{images[1]}: source {SOURCE} not found")
    assert [p.state for p in result.promotions] == ["put-back", "failed", "not-started"]
    assert registry.digest(first, "latest") == old_first.digest
    assert registry.digest(third, "latest") == old_third.digest
    assert f"put back on the previous {old_first.digest} because {images[1]} failed" in result.promotions[0].detail
    assert f"{images[0]}: put-back: latest put back on the previous {old_first.digest}" in log
    assert json.loads(result.promoted_digest_output) == {images[0]: old_first.digest, images[1]: "", images[2]: ""}
    assert json.loads(result.previous_digest_output) == {images[0]: old_first.digest, images[1]: "", images[2]: ""}


def test_wrong_credentials_on_the_second_registry_roll_the_first_image_back(registry, secured_registry, repository):
    old = registry.seed_image(repository, "latest", "amd64-old")
    new = registry.seed_image(repository, SOURCE, "amd64-new")
    secured_registry.seed_image(repository, SOURCE)
    images = (registry.image(repository), secured_registry.image(repository))
    result, log = promote(make_settings(*images, username="ci-bot", password="not-the-password"))
    assert [p.state for p in result.promotions] == ["put-back", "failed"]
    assert f"{images[1]}: registry refused GET manifest {SOURCE}: 401" in result.error
    assert result.promotions[0].promoted_digest == old.digest  # what is under latest now
    assert f"{images[0]}: pushed {new.digest} as latest" in log
    assert registry.digest(repository, "latest") == old.digest
    assert "not-the-password" not in log + json.dumps(as_json(result))


def test_rollback_says_a_tag_that_did_not_exist_is_left_on_the_new_digest(registry, repository):
    first, second = f"{repository}-one", f"{repository}-two"
    new = registry.seed_image(first, SOURCE)
    result, _ = promote(make_settings(registry.image(first), registry.image(second)))
    assert [p.state for p in result.promotions] == ["put-back-failed", "failed"]
    promotion = result.promotions[0]
    assert promotion.promoted_digest == new.digest and promotion.previous_digest == ""
    assert f"did not exist before and is left on {new.digest}" in promotion.detail
    assert "deleting a tag is not portable" in promotion.detail
    assert registry.digest(first, "latest") == new.digest


def test_every_image_promoted_reports_json_digests_keyed_by_image(registry, repository):
    repositories = (f"{repository}-a", f"{repository}-b")
    seeded = {registry.image(r): registry.seed_image(r, SOURCE).digest for r in repositories}
    result, _ = promote(make_settings(*seeded))
    assert result.ok
    assert json.loads(result.promoted_digest_output) == seeded
    assert json.loads(result.previous_digest_output) == dict.fromkeys(seeded, "")
    report = as_json(result)
    assert report["ok"] is True and report["tag"] == "latest"
    assert [p["state"] for p in report["promotions"]] == ["promoted", "promoted"]


# -- edges pinned without a registry ----------------------------------------------------------


def test_failing_read_back_after_a_put_puts_that_image_back_too(requests_mock):
    base = "https://registry.example.com/v2/acme/app/manifests"
    old, new, other = (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "n": n}).encode() for n in range(3))
    headers = {"Content-Type": OCI_MANIFEST}
    requests_mock.get(f"{base}/{SOURCE}", content=new, headers=headers)
    requests_mock.get(f"{base}/latest", [{"content": body, "headers": headers} for body in (old, other, other, old)])
    put = requests_mock.put(f"{base}/latest", status_code=201)
    result, _ = promote(make_settings("registry.example.com/acme/app"))
    assert result.error == (f"registry.example.com/acme/app: read back latest: expected {digest_of(new)}, "
                            f"the registry serves {digest_of(other)}")
    assert [r.body for r in put.request_history] == [new, old]
    assert (result.promotions[0].state, result.promotions[0].promoted_digest) == ("failed", "")
    assert f"latest put back on the previous {digest_of(old)}" in result.promotions[0].detail


def test_overall_deadline_already_gone_fails_without_a_request(requests_mock):
    result, _ = promote(make_settings("registry.example.com/acme/app"), seconds=0)
    assert not result.ok and "overall timeout of 0 s reached" in result.error
    assert result.error.startswith("registry.example.com/acme/app: ")
    assert requests_mock.call_count == 0


def test_no_images_is_an_empty_success():
    result, _ = promote(make_settings())
    assert result.ok and result.promotions == ()
    assert (result.promoted_digest_output, result.previous_digest_output) == ("", "")


def test_the_simulator_registry_serves_a_promotion_with_basic_auth():
    sim = SimRegistry(username="demo", password="demo-pass")
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    digest = sim.seed("acme/app", SOURCE, body, OCI_INDEX)
    with SimServer([sim]) as server:
        image = server.url.removeprefix("http://") + "/acme/app"
        result, _ = promote(make_settings(image, username="demo", password="demo-pass"))
        refused, _ = promote(make_settings(image, username="demo", password="nope"))
    assert result.ok and sim.tag_digest("acme/app", "latest") == digest
    assert "registry refused GET manifest" in refused.error and "401" in refused.error


def test_an_unexpected_error_on_the_second_image_still_puts_the_first_back(monkeypatch):
    """All or nothing holds for any exception, not only the registry errors we foresaw."""
    sim = SimRegistry()
    old, new, odd = (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": m}).encode()
                     for m in ([], [{"n": 1}], 5))
    sim.seed("acme/one", "latest", old, OCI_INDEX)
    sim.seed("acme/one", SOURCE, new, OCI_INDEX)
    sim.seed("acme/two", SOURCE, odd, OCI_INDEX)  # "manifests": 5 is described, not a crash
    real_read_back = promote_module._read_back

    def read_back(repository, tag, expected, deadline):
        if repository.name == "acme/two":
            raise TypeError("a bug we did not foresee")
        real_read_back(repository, tag, expected, deadline)

    monkeypatch.setattr(promote_module, "_read_back", read_back)
    with SimServer([sim]) as server:
        host = server.url.removeprefix("http://")
        result, _ = promote(make_settings(f"{host}/acme/one", f"{host}/acme/two"))
    assert not result.ok and "TypeError: a bug we did not foresee" in result.error
    assert sim.tag_digest("acme/one", "latest") == digest_of(old)
    # acme/two's latest did not exist before and cannot be deleted portably: it is left moved, and says so
    assert [p.state for p in result.promotions] == ["put-back", "put-back-failed"]
