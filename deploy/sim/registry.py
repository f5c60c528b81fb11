"""A minimal in-memory OCI registry on the simulator's port (routes: ``docs/simulator.md``).

The demo's registry on machines without Debian's ``docker-registry``, and the registry of tests
that need one on the simulator's port; the promote end-to-end tests use the real registry
(:mod:`deploy.sim.local_registry`). Only what promote and seeding touch: ``/v2/``, manifests by
tag or digest (GET, HEAD, PUT), monolithic blob uploads, and optional Basic auth. Like real
registries it stores manifest bytes as given and serves a manifest only to an ``Accept`` that
names its media type, so a client with a narrow ``Accept`` fails here as it would in production.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import threading
import uuid

from deploy.sim.server import Request, Response

ROUTE = re.compile(r"^/v2/(?P<name>[a-z0-9._/-]+?)/(?P<kind>manifests|blobs/uploads|blobs)/(?P<ref>[^/]*)$")


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response.json({"errors": [{"code": code, "message": message}]}, status, headers)


class SimRegistry:
    """A registry component for :class:`~deploy.sim.server.SimServer`; repositories appear on first push."""

    def __init__(self, username: str = "", password: str = "") -> None:
        self.username, self._password = username, password
        self._manifests: dict[str, tuple[str, bytes]] = {}  # "repo@digest" -> (media type, bytes)
        self._tags: dict[str, str] = {}  # "repo:tag" -> digest
        self._blobs: dict[str, bytes] = {}  # "repo@digest" -> bytes
        self._lock = threading.Lock()

    # -- for the demo: seed and inspect without HTTP ------------------------------------

    def seed(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """Store a manifest under a tag (or its digest); returns the digest."""
        digest = _digest(body)
        with self._lock:
            self._manifests[f"{repository}@{digest}"] = (media_type, body)
            if not reference.startswith("sha256:"):
                self._tags[f"{repository}:{reference}"] = digest
        return digest

    def tag_digest(self, repository: str, tag: str) -> str:
        with self._lock:
            return self._tags.get(f"{repository}:{tag}", "")

    # -- HTTP ----------------------------------------------------------------------------

    def handle(self, request: Request) -> Response | None:
        if not request.path.startswith("/v2/"):
            return None
        if not self._authorized(request):
            return _error(401, "UNAUTHORIZED", "authentication required",
                          {"WWW-Authenticate": 'Basic realm="fleet-sim"'})
        if request.path == "/v2/":
            return Response.json({})
        route = ROUTE.match(request.path)
        if not route:
            return _error(404, "NAME_UNKNOWN", "repository name not known to registry")
        name, kind, ref = route.group("name", "kind", "ref")
        if kind == "manifests":
            return self._manifest(request, name, ref)
        if kind == "blobs/uploads":
            return self._upload(request, name, ref)
        with self._lock:
            blob = self._blobs.get(f"{name}@{ref}")
        if blob is None or request.method not in ("GET", "HEAD"):
            return _error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        return Response(200, blob, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": ref})

    def _authorized(self, request: Request) -> bool:
        if not self.username:
            return True
        expected = "Basic " + base64.b64encode(f"{self.username}:{self._password}".encode()).decode()
        return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected.encode())

    def _manifest(self, request: Request, name: str, ref: str) -> Response:
        if request.method == "PUT":
            media_type = request.headers.get("content-type", "").split(";")[0].strip()
            if not media_type or (ref.startswith("sha256:") and ref != _digest(request.body)):
                return _error(400, "MANIFEST_INVALID", "manifest invalid")
            digest = self.seed(name, ref, request.body, media_type)
            return Response(201, b"", {"Docker-Content-Digest": digest, "Location": f"/v2/{name}/manifests/{digest}"})
        if request.method not in ("GET", "HEAD"):
            return _error(405, "UNSUPPORTED", "the operation is unsupported")
        with self._lock:
            digest = ref if ref.startswith("sha256:") else self._tags.get(f"{name}:{ref}", "")
            stored = self._manifests.get(f"{name}@{digest}")
        if stored is None:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        media_type, body = stored
        accept = request.headers.get("accept", "")
        if media_type not in accept and "*/*" not in accept:
            return _error(404, "MANIFEST_UNKNOWN", f"{media_type} found, but the Accept header does not name it")
        return Response(200, body, {"Content-Type": media_type, "Docker-Content-Digest": digest})

    def _upload(self, request: Request, name: str, upload: str) -> Response:
        """``POST …/uploads/`` opens an upload; ``PUT …/uploads/<id>?digest=`` completes it in one go."""
        if request.method == "POST" and not upload:
            location = f"/v2/{name}/blobs/uploads/{uuid.uuid4().hex}"
            return Response(202, b"", {"Location": location, "Range": "0-0"})
        digest = request.param("digest")
        if request.method != "PUT" or not upload or digest != _digest(request.body):
            return _error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        with self._lock:
            self._blobs[f"{name}@{digest}"] = request.body
        return Response(201, b"", {"Docker-Content-Digest": digest, "Location": f"/v2/{name}/blobs/{digest}"})
