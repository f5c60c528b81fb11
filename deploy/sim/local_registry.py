"""A real OCI registry on loopback: Debian's ``docker-registry``, and a client to seed it.

Used by the promote tests (the server users meet, not a mock: which media types it stores and
serves for which ``Accept``, what it answers a bad password with) and by the demo. Each registry
runs from its own directory with a generated ``config.yml``; a secured one uses htpasswd with
bcrypt, the only hash the registry accepts. The seeding client works against
:class:`deploy.sim.registry.SimRegistry` too. Unlike the simulator's components, each registry is
a separate process on its own free loopback port (``docs/simulator.md`` § Registries).
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from deploy.registry import DOCKER_LIST, DOCKER_MANIFEST, MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST, digest_of

CONFIG_TYPES = {OCI_MANIFEST: "application/vnd.oci.image.config.v1+json",
                DOCKER_MANIFEST: "application/vnd.docker.container.image.v1+json"}
LAYER_TYPES = {OCI_MANIFEST: "application/vnd.oci.image.layer.v1.tar+gzip",
               DOCKER_MANIFEST: "application/vnd.docker.image.rootfs.diff.tar.gzip"}
CHILD_TYPES = {OCI_INDEX: OCI_MANIFEST, DOCKER_LIST: DOCKER_MANIFEST}

STARTUP_SECONDS = 15.0

CONFIG_TEMPLATE = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: {secret}
{auth}"""

AUTH_TEMPLATE = """\
auth:
  htpasswd:
    realm: fleet-rollout-tests
    path: {htpasswd}
"""


@dataclass(frozen=True)
class Seeded:
    """A manifest pushed by :meth:`RunningRegistry.seed_image` or ``seed_index``."""

    digest: str
    media_type: str
    body: bytes = field(repr=False)
    children: tuple[str, ...] = ()  # digests of an index's platform manifests


@dataclass
class RunningRegistry:
    """A started ``docker-registry``; ``host`` is what goes in front of a repository name."""

    host: str
    root: Path
    username: str = ""
    password: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def image(self, repository: str) -> str:
        return f"{self.host}/{repository}"

    def api(self) -> requests.Session:
        """A session for seeding and inspecting, outside the code under test."""
        session = requests.Session()
        if self.username:
            session.auth = (self.username, self.password)
        return session

    def push_blob(self, repository: str, body: bytes) -> str:
        digest = digest_of(body)
        with self.api() as api:
            started = api.post(f"{self.url}/v2/{repository}/blobs/uploads/", timeout=10)
            assert started.status_code == 202, started.text
            location = started.headers["Location"]
            if location.startswith("/"):
                location = self.url + location
            separator = "&" if "?" in location else "?"
            done = api.put(f"{location}{separator}digest={digest}", data=body, timeout=10,
                           headers={"Content-Type": "application/octet-stream"})
            assert done.status_code == 201, done.text
        return digest

    def push_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        with self.api() as api:
            response = api.put(f"{self.url}/v2/{repository}/manifests/{reference}", data=body, timeout=10,
                               headers={"Content-Type": media_type})
            assert response.status_code == 201, response.text
        return digest_of(body)

    def seed_image(self, repository: str, tag: str, variant: str = "amd64", media_type: str = OCI_MANIFEST,
                   labels: dict[str, str] | None = None) -> Seeded:
        """Push a config, a layer and a single-platform manifest; ``variant`` makes the bytes unique.
        ``labels`` go in the config (``org.opencontainers.image.revision``: the commit it was built from)."""
        arch = variant.split("-")[0]
        config = json.dumps({"architecture": arch, "os": "linux", "variant_of_test": variant,
                             "config": {"Labels": labels or {}},
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        layer = f"layer of {repository} {variant}".encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": CONFIG_TYPES[media_type], "digest": self.push_blob(repository, config),
                       "size": len(config)},
            "layers": [{"mediaType": LAYER_TYPES[media_type], "digest": self.push_blob(repository, layer),
                        "size": len(layer)}],
        }
        body = json.dumps(manifest, indent=3).encode()  # unusual formatting: re-serialising would change the digest
        return Seeded(self.push_manifest(repository, tag, body, media_type), media_type, body)

    def seed_index(self, repository: str, tag: str, variant: str = "v1", media_type: str = OCI_INDEX,
                   labels: dict[str, str] | None = None) -> Seeded:
        """Push two platform manifests (amd64, arm64), each with ``labels``, and an index of them under ``tag``."""
        child_type = CHILD_TYPES[media_type]
        entries, children = [], []
        for arch in ("amd64", "arm64"):
            child = self.seed_image(repository, f"{tag}-{arch}", f"{arch}-{variant}", child_type, labels)
            children.append(child.digest)
            entries.append({"mediaType": child_type, "digest": child.digest, "size": len(child.body),
                            "platform": {"architecture": arch, "os": "linux"}})
        body = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}).encode()
        return Seeded(self.push_manifest(repository, tag, body, media_type), media_type, body, tuple(children))

    def read(self, repository: str, reference: str) -> tuple[int, bytes, str]:
        """(status, bytes, content type) of a manifest, asking for every media type."""
        with self.api() as api:
            response = api.get(f"{self.url}/v2/{repository}/manifests/{reference}", timeout=10,
                               headers={"Accept": MANIFEST_ACCEPT})
        return response.status_code, response.content, response.headers.get("Content-Type", "")

    def digest(self, repository: str, reference: str) -> str:
        """The digest under ``reference`` ('' when absent), hashed from the bytes."""
        status, body, _ = self.read(repository, reference)
        return digest_of(body) if status == 200 else ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_registry(
    root: Path, username: str = "", password: str = "", binary: str = "docker-registry", htpasswd_tool: str = "htpasswd"
) -> tuple[subprocess.Popen[bytes], RunningRegistry]:
    """Start ``docker-registry`` in ``root`` and wait until ``/v2/`` answers (200, or 401 when secured)."""
    auth = ""
    if username:
        htpasswd = root / "htpasswd"
        line = subprocess.run([htpasswd_tool, "-Bbn", username, password],
                              check=True, capture_output=True, text=True).stdout.strip()
        htpasswd.write_text(line + "\n")
        auth = AUTH_TEMPLATE.format(htpasswd=htpasswd)
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(CONFIG_TEMPLATE.format(root=root / "data", port=port, secret=secrets.token_hex(16), auth=auth))
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    registry = RunningRegistry(f"127.0.0.1:{port}", root, username, password)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if requests.get(f"{registry.url}/v2/", timeout=1).status_code in (200, 401):
                return process, registry
        except requests.ConnectionError:
            time.sleep(0.05)
    stop_registry(process)
    raise RuntimeError(f"docker-registry did not start: {(root / 'registry.log').read_text()[-2000:]}")


def stop_registry(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
