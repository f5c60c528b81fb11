"""Pytest fixtures for a real registry: Debian's ``docker-registry`` on a free loopback port.

The registry itself and the seeding client live in :mod:`deploy.sim.local_registry` (the demo
uses them too). Without the binary the tests skip locally but fail under ``CI=true``: CI must
not go green by testing nothing (``.ci/run`` installs ``docker-registry`` and ``apache2-utils``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.sim import local_registry
from deploy.sim.local_registry import RunningRegistry, stop_registry


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path:
        return path
    message = (f"{tool} is not installed: the promote tests need a real registry "
               "(apt-get install docker-registry apache2-utils)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " — CI must not skip them", pytrace=False)
    pytest.skip(message)


def start_registry(root: Path, username: str = "", password: str = "") -> tuple[subprocess.Popen, RunningRegistry]:
    binary = _require("docker-registry")
    tool = _require("htpasswd") if username else "htpasswd"
    try:
        return local_registry.start_registry(root, username, password, binary, tool)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """An anonymous registry, shared by the session (tests use their own repositories)."""
    process, running = start_registry(tmp_path_factory.mktemp("registry"))
    yield running
    stop_registry(process)


@pytest.fixture(scope="session")
def secured_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """An htpasswd-protected registry (Basic challenge, bcrypt), shared by the session."""
    password = "pw-" + secrets.token_hex(12)
    process, running = start_registry(tmp_path_factory.mktemp("secured-registry"), "ci-bot", password)
    yield running
    stop_registry(process)


@pytest.fixture
def repository() -> str:
    """A fresh repository name, so tests sharing a registry never see each other's tags."""
    return f"acme/app-{uuid.uuid4().hex[:10]}"
