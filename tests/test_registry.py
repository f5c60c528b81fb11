"""The registry client: headers, digests and auth pinned with requests-mock; reads against a real registry."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from typing import TYPE_CHECKING

import pytest
import requests

from deploy import http
from deploy.clock import Deadline, FakeClock
from deploy.domain import parse_image
from deploy.registry import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    RegistryError,
    Repository,
    digest_of,
    parse_challenge,
)
from deploy.runner import Runner

if TYPE_CHECKING:
    from tests.registry_fixture import RunningRegistry


BASE = "https://ghcr.io/v2/acme/app/manifests"
TOKEN_URL = "https://ghcr.io/token"
BODY = b'{"schemaVersion": 2,  "mediaType": "application/vnd.oci.image.manifest.v1+json"}\n'
BEARER = 'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:acme/app:pull"'
PASSWORD = "s3cret-registry-password"


DEADLINE = Deadline.starting_now(FakeClock(), 3600)


def make_repository(image: str = "ghcr.io/acme/app", runner: Runner | None = None, allow_insecure_http: bool = False,
                    **kwargs: str) -> Repository:
    runner = runner or Runner(stream=io.StringIO())
    client = http.Client(http.Policy(budget=30), DEADLINE.clock, DEADLINE)
    return Repository(parse_image(image, allow_insecure_http), client=client, mask=runner.mask, **kwargs)


def manifest_response(body: bytes = BODY, media_type: str = OCI_MANIFEST, **headers: str) -> dict:
    return {"status_code": 200, "content": body, "headers": {"Content-Type": media_type, **headers}}


def challenge(header: str = BEARER) -> dict:
    return {"status_code": 401, "json": {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
            "headers": {"WWW-Authenticate": header}}


# -- manifests: headers, bytes, digests ----------------------------------------------------


def test_accept_header_names_all_four_manifest_media_types(requests_mock):
    requests_mock.get(f"{BASE}/v1", **manifest_response())
    make_repository().find_manifest("v1", DEADLINE)
    accept = [part.strip() for part in requests_mock.last_request.headers["Accept"].split(",")]
    assert sorted(accept) == sorted([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])


def test_digest_is_computed_over_the_exact_bytes_received(requests_mock):
    requests_mock.get(f"{BASE}/v1", **manifest_response(media_type=f"{OCI_MANIFEST}; charset=utf-8"))
    manifest = make_repository().find_manifest("v1", DEADLINE)
    assert manifest.body == BODY
    assert manifest.digest == digest_of(BODY) == "sha256:" + hashlib.sha256(BODY).hexdigest()
    assert manifest.media_type == OCI_MANIFEST


def test_docker_content_digest_that_disagrees_with_the_bytes_is_an_error(requests_mock):
    wrong = "sha256:" + "0" * 64
    requests_mock.get(f"{BASE}/v1", **manifest_response(**{"Docker-Content-Digest": wrong}))
    with pytest.raises(RegistryError, match=f"Docker-Content-Digest says {wrong} but the bytes hash to"):
        make_repository().find_manifest("v1", DEADLINE)


def test_manifest_fetched_by_digest_must_hash_to_that_digest(requests_mock):
    asked = "sha256:" + "a" * 64
    requests_mock.get(f"{BASE}/{asked}", **manifest_response())
    with pytest.raises(RegistryError, match=f"hash to {digest_of(BODY)}"):
        make_repository().find_manifest(asked, DEADLINE)


def test_missing_manifest_is_none_not_an_error(requests_mock):
    requests_mock.get(f"{BASE}/latest", status_code=404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
    assert make_repository().find_manifest("latest", DEADLINE) is None


def test_media_type_falls_back_to_the_manifest_body_when_the_header_is_generic(requests_mock):
    requests_mock.get(f"{BASE}/v1", **manifest_response(media_type="application/json"))
    assert make_repository().find_manifest("v1", DEADLINE).media_type == OCI_MANIFEST


def test_schema1_manifest_is_refused_as_unsupported(requests_mock):
    requests_mock.get(f"{BASE}/v1", **manifest_response(b'{"schemaVersion": 1}',
                                                        "application/vnd.docker.distribution.manifest.v1+prettyjws"))
    with pytest.raises(RegistryError, match=r"unsupported manifest media type .*v1\+prettyjws"):
        make_repository().find_manifest("v1", DEADLINE)


def test_put_sends_the_same_bytes_with_the_manifests_own_media_type(requests_mock):
    requests_mock.put(f"{BASE}/latest", status_code=201, headers={"Docker-Content-Digest": digest_of(BODY)})
    make_repository().put_manifest("latest", Manifest.of(BODY, DOCKER_LIST), DEADLINE)
    assert requests_mock.last_request.body == BODY
    assert requests_mock.last_request.headers["Content-Type"] == DOCKER_LIST


def test_put_answer_with_another_digest_is_an_error(requests_mock):
    requests_mock.put(f"{BASE}/latest", status_code=201, headers={"Docker-Content-Digest": "sha256:" + "b" * 64})
    with pytest.raises(RegistryError, match="PUT manifest latest: Docker-Content-Digest says"):
        make_repository().put_manifest("latest", Manifest.of(BODY, OCI_MANIFEST), DEADLINE)


def test_403_names_the_registry_and_the_step(requests_mock):
    requests_mock.put(f"{BASE}/latest", status_code=403,
                      json={"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]})
    with pytest.raises(RegistryError) as caught:
        make_repository().put_manifest("latest", Manifest.of(BODY, OCI_MANIFEST), DEADLINE)
    assert str(caught.value) == ("ghcr.io/acme/app: registry refused PUT manifest latest: "
                                 "403 denied: requested access to the resource is denied")


def test_connection_failure_names_the_host_and_step(requests_mock):
    requests_mock.get(f"{BASE}/v1", exc=requests.ConnectionError("boom"))
    with pytest.raises(RegistryError, match=r"GET manifest v1 failed: ghcr.io: connection failed: boom"):
        make_repository().find_manifest("v1", DEADLINE)


@pytest.mark.parametrize(("image", "allow_insecure", "url"), [
    ("ghcr.io/acme/app", False, "https://ghcr.io"),
    ("registry.example.com:5000/app", False, "https://registry.example.com:5000"),
    ("127.0.0.1:5000/app", False, "http://127.0.0.1:5000"),
    ("localhost:5000/team/app", False, "http://localhost:5000"),
    ("[::1]:5000/app", False, "http://[::1]:5000"),
    ("registry.lan:5000/app", True, "https://registry.lan:5000"),  # the flag alone never downgrades
    ("ghcr.io/acme/app", True, "https://ghcr.io"),
    ("http://registry.lan:5000/app", True, "http://registry.lan:5000"),  # an explicit http:// entry does
    ("https://127.0.0.1:5000/app", False, "https://127.0.0.1:5000"),
    ("docker.io/acme/app", False, "https://registry-1.docker.io"),
])
def test_https_except_loopback_or_an_explicit_http_entry(image, allow_insecure, url):
    assert make_repository(image, allow_insecure_http=allow_insecure).base_url == url


# -- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [
    'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:acme/app:pull,push"',
    'bearer realm = "https://ghcr.io/token" , service=ghcr.io, scope="repository:acme/app:pull,push"',
])
def test_challenge_parsing_keeps_commas_inside_quoted_params(header):
    parsed = parse_challenge(header)
    assert parsed.scheme == "bearer"
    assert dict(parsed.params) == {"realm": "https://ghcr.io/token", "service": "ghcr.io",
                                   "scope": "repository:acme/app:pull,push"}


def test_challenge_parsing_unescapes_quoted_characters():
    assert parse_challenge(r'Basic realm="the \"secure\" one"').params["realm"] == 'the "secure" one'


def test_bearer_challenge_exchanges_basic_credentials_for_a_push_scoped_token(requests_mock):
    requests_mock.get(f"{BASE}/v1", [challenge(), manifest_response()])
    token = requests_mock.get(TOKEN_URL, json={"token": "tok-abc123"})
    manifest = make_repository(username="bot", password=PASSWORD).find_manifest("v1", DEADLINE)
    assert manifest.digest == digest_of(BODY)
    asked = token.last_request
    assert asked.qs == {"service": ["ghcr.io"], "scope": ["repository:acme/app:pull,push"]}
    assert asked.headers["Authorization"] == "Basic " + base64.b64encode(f"bot:{PASSWORD}".encode()).decode()
    assert requests_mock.last_request.headers["Authorization"] == "Bearer tok-abc123"


def test_anonymous_bearer_flow_sends_no_credentials_to_the_token_realm(requests_mock):
    requests_mock.get(f"{BASE}/v1", [challenge(), manifest_response()])
    token = requests_mock.get(TOKEN_URL, json={"token": "anon-tok"})
    make_repository().find_manifest("v1", DEADLINE)
    assert "Authorization" not in token.last_request.headers


def test_access_token_is_used_when_the_token_field_is_absent(requests_mock):
    requests_mock.get(f"{BASE}/v1", [challenge(), manifest_response()])
    requests_mock.get(TOKEN_URL, json={"access_token": "oauth-tok-9"})
    make_repository(username="bot", password=PASSWORD).find_manifest("v1", DEADLINE)
    assert requests_mock.last_request.headers["Authorization"] == "Bearer oauth-tok-9"


def test_obtained_token_is_masked_by_the_runner(requests_mock):
    requests_mock.get(f"{BASE}/v1", [challenge(), manifest_response()])
    requests_mock.get(TOKEN_URL, json={"token": "tok-to-hide-42"})
    out = io.StringIO()
    runner = Runner(stream=out, in_actions=True)
    make_repository(runner=runner, username="bot", password=PASSWORD).find_manifest("v1", DEADLINE)
    assert "::add-mask::tok-to-hide-42" in out.getvalue()
    assert runner.redact("Authorization: Bearer tok-to-hide-42") == "Authorization: Bearer ***"


def test_token_is_reused_for_later_calls_on_the_repository(requests_mock):
    requests_mock.get(f"{BASE}/v1", [challenge(), manifest_response()])
    requests_mock.put(f"{BASE}/latest", status_code=201)
    token = requests_mock.get(TOKEN_URL, json={"token": "tok-once"})
    repository = make_repository(username="bot", password=PASSWORD)
    repository.put_manifest("latest", repository.find_manifest("v1", DEADLINE), DEADLINE)
    assert token.call_count == 1
    assert requests_mock.last_request.headers["Authorization"] == "Bearer tok-once"


def test_401_after_the_token_names_the_registry_and_step_without_the_password(requests_mock):
    requests_mock.put(f"{BASE}/latest", [challenge(), challenge()])
    requests_mock.get(TOKEN_URL, json={"token": "tok-pull-only"})
    with pytest.raises(RegistryError) as caught:
        repository = make_repository(username="bot", password=PASSWORD)
        repository.put_manifest("latest", Manifest.of(BODY, OCI_MANIFEST), DEADLINE)
    message = str(caught.value)
    assert message.startswith("ghcr.io/acme/app: registry refused PUT manifest latest: 401 unauthorized:")
    assert "check registry-username and registry-password" in message
    assert PASSWORD not in message and "tok-pull-only" not in message


def test_token_service_refusal_names_the_token_service(requests_mock):
    requests_mock.get(f"{BASE}/v1", [challenge()])
    requests_mock.get(TOKEN_URL, status_code=401, json={"errors": [{"code": "UNAUTHORIZED", "message": "bad creds"}]})
    with pytest.raises(RegistryError) as caught:
        make_repository(username="bot", password=PASSWORD).find_manifest("v1", DEADLINE)
    assert "token service ghcr.io refused GET manifest v1: 401 unauthorized: bad creds" in str(caught.value)


def test_token_answer_without_a_token_is_an_error(requests_mock):
    requests_mock.get(f"{BASE}/v1", [challenge()])
    requests_mock.get(TOKEN_URL, json={"expires_in": 300})
    with pytest.raises(RegistryError, match="answered GET manifest v1 without a token"):
        make_repository().find_manifest("v1", DEADLINE)


def test_plain_http_token_realm_is_refused_for_a_remote_registry(requests_mock):
    requests_mock.get(f"{BASE}/v1", [challenge('Bearer realm="http://auth.example.com/token",service="x"')])
    with pytest.raises(RegistryError, match="refusing to send credentials to the plain-http token realm"):
        make_repository(username="bot", password=PASSWORD).find_manifest("v1", DEADLINE)
    assert not [r for r in requests_mock.request_history if "auth.example.com" in r.url]


def test_basic_challenge_without_credentials_asks_for_them(requests_mock):
    requests_mock.get(f"{BASE}/v1", [challenge('Basic realm="registry"')])
    with pytest.raises(RegistryError, match="registry wants credentials: set registry-username and registry-password"):
        make_repository().find_manifest("v1", DEADLINE)
    assert requests_mock.call_count == 1


def test_basic_challenge_is_answered_once_with_the_credentials(requests_mock):
    requests_mock.get(f"{BASE}/v1", [challenge('Basic realm="ecr"'), manifest_response()])
    make_repository(username="AWS", password=PASSWORD).find_manifest("v1", DEADLINE)
    sent = requests_mock.last_request.headers["Authorization"]
    assert sent == "Basic " + base64.b64encode(f"AWS:{PASSWORD}".encode()).decode()


# -- against the real docker-registry --------------------------------------------------------


def real_repository(registry: RunningRegistry, repository: str, password: str | None = None) -> Repository:
    return make_repository(registry.image(repository), username=registry.username,
                           password=registry.password if password is None else password)


@pytest.mark.parametrize("media_type", MANIFEST_TYPES)
def test_every_media_type_reads_back_byte_identical_from_a_real_registry(registry, repository, media_type):
    if media_type in (OCI_INDEX, DOCKER_LIST):
        seeded = registry.seed_index(repository, "v1", media_type=media_type)
    else:
        seeded = registry.seed_image(repository, "v1", media_type=media_type)
    manifest = real_repository(registry, repository).find_manifest("v1", DEADLINE)
    assert (manifest.body, manifest.media_type, manifest.digest) == (seeded.body, media_type, seeded.digest)
    assert manifest.is_index == (media_type in (OCI_INDEX, DOCKER_LIST))


def test_htpasswd_registry_answers_basic_credentials(secured_registry, repository):
    seeded = secured_registry.seed_image(repository, "v1")
    assert real_repository(secured_registry, repository).find_manifest("v1", DEADLINE).digest == seeded.digest


def test_htpasswd_registry_refusal_names_registry_and_step(secured_registry, repository):
    secured_registry.seed_image(repository, "v1")
    with pytest.raises(RegistryError) as caught:
        real_repository(secured_registry, repository, password="wrong-password").find_manifest("v1", DEADLINE)
    assert str(caught.value).startswith(
        f"{secured_registry.image(repository)}: registry refused GET manifest v1: 401 unauthorized:")
    assert json.dumps(str(caught.value)).count("wrong-password") == 0


def test_a_huge_challenge_header_is_parsed_in_linear_time() -> None:
    """SECURITY.md § Parsing: a backtracking name pattern took 26 s on 65,000 letters without '='."""
    assert parse_challenge("Bearer " + "a" * 200_000).params == {}
    header = 'Bearer junk, realm="https://t.example/token" , service=reg,scope="repository:a/b:pull"'
    assert parse_challenge(header).params == {
        "realm": "https://t.example/token", "service": "reg", "scope": "repository:a/b:pull"}
    assert parse_challenge('Basic realm="a \\"quoted\\" name"').params == {"realm": 'a "quoted" name'}


# -- the commit an image was built from (org.opencontainers.image.revision) -------------------------


def labelled_image(requests_mock, labels: dict, storage: str = "") -> Manifest:
    """An OCI manifest on ghcr.io whose config carries ``labels``; its blob served from ``storage`` when given."""
    config = json.dumps({"config": {"Labels": labels}}).encode()
    config_digest = digest_of(config)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                                  "size": len(config)}, "layers": []}).encode()
    blob = f"https://ghcr.io/v2/acme/app/blobs/{config_digest}"
    if storage:
        requests_mock.get(blob, status_code=307, headers={"Location": storage})
        requests_mock.get(storage, content=config)
    else:
        requests_mock.get(blob, content=config)
    return Manifest.of(body, OCI_MANIFEST)


def test_the_revision_label_is_read_from_the_image_config(requests_mock):
    manifest = labelled_image(requests_mock, {"org.opencontainers.image.revision": "8ddce85f3b2a", "other": "x"})
    assert make_repository().revision(manifest, DEADLINE) == "8ddce85f3b2a"


def test_an_image_without_the_label_has_no_revision(requests_mock):
    manifest = labelled_image(requests_mock, {"org.opencontainers.image.title": "app"})
    assert make_repository().revision(manifest, DEADLINE) is None


def test_a_config_blob_on_storage_elsewhere_is_read_without_the_registrys_credentials(requests_mock):
    storage = "https://pkg-containers.example.net/blob?signature=abc"
    manifest = labelled_image(requests_mock, {"org.opencontainers.image.revision": "abc1234"}, storage=storage)
    repository = make_repository()
    repository._authorization = "Bearer registry-token-abcdef"  # as after a token exchange
    assert repository.revision(manifest, DEADLINE) == "abc1234"
    blob, stored = requests_mock.request_history[-2:]
    assert blob.headers["Authorization"] == "Bearer registry-token-abcdef"
    assert stored.url == storage and "Authorization" not in stored.headers


def test_a_config_blob_that_does_not_hash_to_its_digest_is_an_error(requests_mock):
    manifest = labelled_image(requests_mock, {"org.opencontainers.image.revision": "abc1234"})
    requests_mock.get(manifest_config_url(manifest), content=b'{"other": 1}')
    with pytest.raises(RegistryError, match="the bytes served hash to"):
        make_repository().revision(manifest, DEADLINE)


def manifest_config_url(manifest: Manifest) -> str:
    return f"https://ghcr.io/v2/acme/app/blobs/{json.loads(manifest.body)['config']['digest']}"


def test_an_index_annotation_wins_and_an_index_without_one_reads_its_first_platform_image(requests_mock):
    annotated = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
                            "annotations": {"org.opencontainers.image.revision": "fedcba9"}}).encode()
    assert make_repository().revision(Manifest.of(annotated, OCI_INDEX), DEADLINE) == "fedcba9"

    child = labelled_image(requests_mock, {"org.opencontainers.image.revision": "abc1234"})
    attestation = "sha256:" + "a" * 64
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": attestation, "size": 1, "platform": {"os": "unknown",
                                                                                "architecture": "unknown"}},
        {"mediaType": OCI_MANIFEST, "digest": child.digest, "size": len(child.body),
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    requests_mock.get(f"{BASE}/{child.digest}", **manifest_response(child.body))
    assert make_repository().revision(Manifest.of(index, OCI_INDEX), DEADLINE) == "abc1234"
    assert not any(attestation in request.url for request in requests_mock.request_history)
