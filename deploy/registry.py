"""Just enough of the OCI distribution API to move a tag: read a manifest, put the same bytes back.

Why not ``docker buildx imagetools`` or ``crane``: the action has no Docker daemon and ships no
extra binary, and promote must control the exact bytes. Registry facts this module relies on:
- ``Accept`` lists all four manifest media types; a narrower one gets a 404 (OCI content on
  ``docker-registry``) or, on Docker Hub, silently the amd64 child of a multi-arch index, and
  re-pushing that would demote the tag to single-arch;
- a digest is the sha256 of the bytes received, which we compute ourselves; a
  ``Docker-Content-Digest`` header that disagrees is an error, never the tie-breaker;
- auth is negotiated from the ``401`` challenge: ``Basic`` (``docker-registry`` with htpasswd,
  ECR) or ``Bearer`` with a token realm (GHCR, Docker Hub, Gitea), asked once for
  ``pull,push`` and reused for every later call on the repository.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from deploy import http
from deploy.clock import Deadline
from deploy.domain import DIGEST_RE, ImageRef
from deploy.errors import DeployFailed
from deploy.http import error_text

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_ACCEPT = ", ".join(MANIFEST_TYPES)
MANIFEST_CAP = 4 * 1024 * 1024  # registries refuse larger manifests: more is not a manifest
CONFIG_CAP = 1024 * 1024  # an image config is a few KiB: its history and labels
REVISION_LABEL = "org.opencontainers.image.revision"  # the commit an image was built from (docker/metadata-action)
TOKEN_CAP = 64 * 1024  # a token answer: a JWT and a few fields
MAX_TOKEN = 8 * 1024  # a longer "token" is refused before it is registered as a secret (its forms cost memory)

CHALLENGE_LIMIT = 8192  # a WWW-Authenticate header longer than this is not a challenge we can use


class RegistryError(DeployFailed):
    """A registry refused or failed a step; the message names the image and the step."""


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A manifest exactly as the registry served it: bytes, media type, and their digest."""

    body: bytes = field(repr=False)
    media_type: str
    digest: str

    @classmethod
    def of(cls, body: bytes, media_type: str) -> Manifest:
        return cls(body, media_type, digest_of(body))

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def describe(self) -> str:
        if not self.is_index:
            return self.media_type
        try:
            manifests = http.parse_json(self.body).get("manifests")
        except (http.UnusableBody, AttributeError):
            manifests = None
        count = len(manifests) if isinstance(manifests, list) else "?"
        return f"{self.media_type}, index of {count} manifests"


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: scheme (lower case) and its parameters."""

    scheme: str
    params: Mapping[str, str]


def parse_challenge(header: str) -> Challenge:
    """``Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull,push"``.

    One pass over at most :data:`CHALLENGE_LIMIT` characters: a regex with a backtracking name
    pattern took quadratic time on a long run of letters without ``=``.
    """
    scheme, _, rest = header[:CHALLENGE_LIMIT].strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,\t":
            i += 1
        start = i
        while i < n and (rest[i].isalnum() or rest[i] in "_-"):
            i += 1
        name = rest[start:i].lower()
        while i < n and rest[i] in " \t":
            i += 1
        if not name or i >= n or rest[i] != "=":
            i = _skip_to_comma(rest, i + (i == start))
            continue
        i += 1
        while i < n and rest[i] in " \t":
            i += 1
        value, i = _challenge_value(rest, i)
        params.setdefault(name, value)
    return Challenge(scheme.lower(), params)


def _challenge_value(text: str, i: int) -> tuple[str, int]:
    """A quoted string (backslash escapes) or a token, and where it ends."""
    if i < len(text) and text[i] == '"':
        chars, i = [], i + 1
        while i < len(text) and text[i] != '"':
            if text[i] == "\\" and i + 1 < len(text):
                i += 1
            chars.append(text[i])
            i += 1
        return "".join(chars), i + 1
    end = i
    while end < len(text) and text[end] not in ", \t":
        end += 1
    return text[i:end], end


def _skip_to_comma(text: str, i: int) -> int:
    comma = text.find(",", i)
    return len(text) if comma == -1 else comma + 1


def registry_error_text(response: http.Reply) -> str:
    """The registry's ``errors`` list as ``code: message``, or whatever text it sent."""
    try:
        errors = response.json().get("errors")
    except (http.UnusableBody, AttributeError):
        errors = None
    if isinstance(errors, list) and errors:
        parts = [f"{_text(e.get('code', '')).lower()}: {_text(e.get('message', ''))}".strip(": ")
                 for e in errors[:10] if isinstance(e, dict)]
        return error_text("; ".join(parts))
    return response.error_text()


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = http.parse_json(body)
    except http.UnusableBody:
        return {}
    return doc if isinstance(doc, dict) else {}


def _annotation(doc: dict[str, Any]) -> str | None:
    annotations = doc.get("annotations")
    value = annotations.get(REVISION_LABEL) if isinstance(annotations, dict) else None
    return value if isinstance(value, str) else None


def _first_image(index: dict[str, Any]) -> str:
    """The digest of an index's first platform image ('' when there is none)."""
    entries = index.get("manifests")
    for entry in entries if isinstance(entries, list) else ():
        platform = entry.get("platform") if isinstance(entry, dict) else None
        digest = entry.get("digest") if isinstance(entry, dict) else None
        unknown = isinstance(platform, dict) and platform.get("os") == "unknown"
        if isinstance(digest, str) and DIGEST_RE.match(digest) and not unknown:
            return digest
    return ""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else http.compact_json(value, 200)


class Repository:
    """One repository on one registry, with the auth it negotiated (reused for every later call).

    Every call takes the deadline it must finish by: promote puts tags back under a grace
    deadline of its own, on the same repository and auth.
    """

    def __init__(self, image: ImageRef, *, client: http.Client, username: str = "", password: str = "",
                 mask: Callable[[str], None] = lambda secret: None) -> None:
        self.image = str(image)
        self.name = image.repository
        self.base_url = image.base_url
        self.client = client
        self.username, self._password = username, password
        self.mask = mask
        self._authorization = ""
        if username:  # what a token service receives as `Basic …`, as requests encodes it (latin-1)
            for encoding in ("latin-1", "utf-8"):
                with contextlib.suppress(UnicodeEncodeError):
                    mask(base64.b64encode(f"{username}:{password}".encode(encoding)).decode())

    def find_manifest(self, reference: str, deadline: Deadline) -> Manifest | None:
        """The manifest under a tag or digest, or None when the registry has none there."""
        step = f"GET manifest {reference}"
        response = self._send("GET", reference, step, deadline, {"Accept": MANIFEST_ACCEPT})
        if response.status == 404:
            return None
        self._expect_success(response, step)
        manifest = Manifest.of(response.body, self._media_type(response, step))
        self._check_digest(response, manifest.digest, step)
        if reference.startswith("sha256:") and manifest.digest != reference:
            raise RegistryError(f"{self.image}: {step}: the bytes served hash to {manifest.digest}")
        return manifest

    def revision(self, manifest: Manifest, deadline: Deadline) -> str | None:
        """The commit the image was built from: its :data:`REVISION_LABEL`, or ``None`` when it carries none.

        Looked up where builders put it: the index's or the manifest's annotations, then the image
        config's labels (``docker build --label``, docker/metadata-action). For a multi-arch index
        the first platform image is read (attestation manifests, platform ``unknown``, are not
        images); its platforms are one build. A config the registry does not serve counts as no
        label (:class:`RegistryError` is for what the registry refuses or breaks on the way).
        """
        doc = _json_object(manifest.body)
        found = _annotation(doc)
        if found is not None:
            return found
        if manifest.is_index:
            child = _first_image(doc)
            platform = self.find_manifest(child, deadline) if child else None
            return self.revision(platform, deadline) if platform and not platform.is_index else None
        config = doc.get("config")
        digest = config.get("digest") if isinstance(config, dict) else None
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            return None
        labels = _json_object(self._blob(digest, deadline)).get("config")
        labels = labels.get("Labels") if isinstance(labels, dict) else None
        value = labels.get(REVISION_LABEL) if isinstance(labels, dict) else None
        return value if isinstance(value, str) else None

    def _blob(self, digest: str, deadline: Deadline) -> bytes:
        """A small blob (an image config), checked against its digest.

        Registries serve blobs from storage on another host (GHCR, Docker Hub, ECR redirect to a
        CDN or S3 with a signed URL): that one redirect is followed over https, without our
        ``Authorization`` — the signed URL is the credential, and ours must not leave the registry.
        """
        step = f"GET blob {digest[:19]}…"
        url = f"{self.base_url}/v2/{self.name}/blobs/{digest}"
        response = self._request("GET", url, step, deadline, {}, cap=CONFIG_CAP)
        if response.status == 401 and self._authenticate(response, step, deadline):
            response = self._request("GET", url, step, deadline, {}, cap=CONFIG_CAP)
        location = response.headers.get("Location", "") if response.status in http.REDIRECT_STATUSES else ""
        target = urljoin(url, location)
        if location and (urlsplit(target).scheme == "https" or not self.base_url.startswith("https://")):
            try:
                response = self.client.request("GET", target, headers={}, deadline=deadline, cap=CONFIG_CAP)
            except http.TransportError as exc:
                raise RegistryError(f"{self.image}: {step} from storage failed: {exc}") from None
        if response.status == 404:
            return b"{}"
        self._expect_success(response, step)
        if digest_of(response.body) != digest:
            raise RegistryError(f"{self.image}: {step}: the bytes served hash to {digest_of(response.body)}")
        return response.body

    def put_manifest(self, tag: str, manifest: Manifest, deadline: Deadline) -> None:
        """Store the same bytes under ``tag``, declaring the manifest's own media type."""
        step = f"PUT manifest {tag}"
        response = self._send("PUT", tag, step, deadline, {"Content-Type": manifest.media_type}, manifest.body)
        self._expect_success(response, step)
        self._check_digest(response, manifest.digest, step)

    # -- requests and auth ---------------------------------------------------------------

    def _send(self, method: str, reference: str, step: str, deadline: Deadline, headers: dict[str, str],
              body: bytes | None = None) -> http.Reply:
        url = f"{self.base_url}/v2/{self.name}/manifests/{reference}"
        response = self._request(method, url, step, deadline, headers, body)
        if response.status == 401 and self._authenticate(response, step, deadline):
            response = self._request(method, url, step, deadline, headers, body)
        if response.status in (401, 403):
            raise self._refused("registry", step, response)
        return response

    def _request(self, method: str, url: str, step: str, deadline: Deadline, headers: dict[str, str],
                 body: bytes | None = None, cap: int = MANIFEST_CAP, **kwargs: Any) -> http.Reply:
        deadline.check(f"{step} on {self.image}")
        if self._authorization and "auth" not in kwargs:
            headers = {**headers, "Authorization": self._authorization}
        try:
            return self.client.request(method, url, headers=headers, data=body, deadline=deadline, cap=cap, **kwargs)
        except http.TransportError as exc:
            raise RegistryError(f"{self.image}: {step} failed: {exc}") from None

    def _authenticate(self, response: http.Reply, step: str, deadline: Deadline) -> bool:
        """Answer a 401 challenge; False when retrying could not change the answer."""
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge.scheme == "bearer":
            self._authorization = "Bearer " + self._token(challenge, step, deadline)
            return True
        if challenge.scheme == "basic" and self.username and not self._authorization.startswith("Basic "):
            pair = f"{self.username}:{self._password}".encode()
            self._authorization = "Basic " + base64.b64encode(pair).decode()
            self.mask(self._authorization.removeprefix("Basic "))  # the password, merely encoded
            return True
        return False

    def _token(self, challenge: Challenge, step: str, deadline: Deadline) -> str:
        realm = challenge.params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryError(f"{self.image}: {step}: bearer challenge without a usable realm ({realm[:80]!r})")
        if parts.scheme == "http" and self.base_url.startswith("https://"):
            # The password would cross the network in clear, whatever allow-insecure-http says: that
            # flag serves a registry entry written http://, never an https registry's token service.
            raise RegistryError(f"{self.image}: {step}: refusing to send credentials to the plain-http token "
                                f"realm {parts.scheme}://{parts.netloc}{parts.path} of an https registry")
        params = {"scope": f"repository:{self.name}:pull,push"}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        # bytes: requests encodes a str credential as latin-1, which fails for other characters
        auth = (self.username.encode(), self._password.encode()) if self.username else None
        response = self._request("GET", realm, f"token for {step}", deadline, {}, cap=TOKEN_CAP, params=params,
                                 auth=auth)
        if response.status != 200:
            raise self._refused(f"token service {parts.netloc}", step, response)
        try:
            doc = response.json()
            token = doc.get("token") or doc.get("access_token")
        except (http.UnusableBody, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{self.image}: token service {parts.netloc} answered {step} without a token")
        if len(token) > MAX_TOKEN or not token.isprintable():
            raise RegistryError(f"{self.image}: token service {parts.netloc} answered {step} with a token that is "
                                f"not one ({len(token)} characters)")
        self.mask(token)
        return token

    # -- checks --------------------------------------------------------------------------

    def _refused(self, who: str, step: str, response: http.Reply) -> RegistryError:
        hint = ""
        if response.status == 401:
            hint = (" (check registry-username and registry-password)" if self.username
                    else " (the registry wants credentials: set registry-username and registry-password)")
        text = registry_error_text(response)
        return RegistryError(f"{self.image}: {who} refused {step}: {response.status} {text}{hint}")

    def _expect_success(self, response: http.Reply, step: str) -> None:
        if not 200 <= response.status < 300:
            note = f" ({response.redirect_note})" if response.redirect_note else ""
            raise RegistryError(f"{self.image}: registry answered {step} with "
                                f"{response.status} {registry_error_text(response)}{note}")

    def _media_type(self, response: http.Reply, step: str) -> str:
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type in MANIFEST_TYPES:
            return media_type
        try:
            declared = http.parse_json(response.body).get("mediaType", "")
        except (http.UnusableBody, AttributeError):
            declared = ""
        if isinstance(declared, str) and declared in MANIFEST_TYPES:
            return declared
        raise RegistryError(f"{self.image}: {step}: unsupported manifest media type {media_type[:80] or '(none)'}; "
                            f"expected one of {MANIFEST_ACCEPT}")

    def _check_digest(self, response: http.Reply, digest: str, step: str) -> None:
        claimed = response.headers.get("Docker-Content-Digest", "")
        if claimed and claimed != digest:
            raise RegistryError(f"{self.image}: {step}: Docker-Content-Digest says {claimed[:80]} "
                                f"but the bytes hash to {digest}")
