"""The built image, run the way the Actions runner runs it: the in-image smoke suite.

``scripts/image.sh`` builds the Dockerfile from this checkout with buildah (no Docker daemon) on a
stand-in for the slim Python base, and ``bash scripts/image.sh test`` runs this file against it;
``.ci/run`` builds the image and exports ``FLEET_IMAGE`` for the final ``python -m pytest``, so
these tests count in CI's summary. :mod:`tests.image_runner` starts the image's own ENTRYPOINT with
the runner's mounts, working directory and environment.

When they run: ``FLEET_IMAGE`` names the image (an ID or a name in the script's buildah storage).
Unset, they are skipped locally; under ``CI=true`` the one test below fails instead — CI must not
go green without the image — unless ``FLEET_IMAGE=skip`` says the image step is deliberately not
part of the run (a machine without root or buildah).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.sim.fleet import TenantSpec
from deploy.sim.server import SimServer
from tests.actions_runner import ROOT, ActionResult
from tests.image_runner import (
    buildah,
    command_of,
    exec_in,
    files_in,
    image_config,
    run_image,
    size_over_base,
    start_action,
    working_container,
)
from tests.support import SHA, TAG, assert_no_secrets, buildinfo, step_inputs

IMAGE = os.environ.get("FLEET_IMAGE", "").strip()
OPTED_OUT = IMAGE.lower() == "skip"
IN_CI = os.environ.get("CI", "").lower() == "true"
HOW = "build it with `bash scripts/image.sh` and set FLEET_IMAGE, or run `bash scripts/image.sh test`"

# What the Dockerfile adds on top of its base: the locked dependencies (about 3 MiB with their
# bytecode), /app (0.8 MiB) and the uninstall of setuptools and wheel. Measured 4,068,352 bytes
# (3.9 MiB) on 2026-11-30 with buildah 1.28 (one layer); the whole image on the stand-in base was
# 124,788,736 bytes. A pip cache, a build tool, a compiler or a copied checkout would pass the limit.
MAX_ADDED_BYTES = 5 * 1024 * 1024


def test_ci_runs_the_image_suite():
    """The image tests are skipped only where the image step is not part of the run."""
    if IMAGE and not OPTED_OUT:
        return
    if IN_CI and not OPTED_OUT:
        pytest.fail(f"CI=true but FLEET_IMAGE is unset: .ci/run builds the image; {HOW} "
                    "(FLEET_IMAGE=skip leaves the image step out on purpose)", pytrace=False)
    pytest.skip(f"FLEET_IMAGE={IMAGE or '(unset)'}: no image to test; {HOW}")


@pytest.fixture(scope="module")
def image() -> str:
    if not IMAGE or OPTED_OUT:
        pytest.skip(f"no image (FLEET_IMAGE={IMAGE or '(unset)'}); {HOW}")
    if shutil.which("buildah") is None:
        pytest.fail("FLEET_IMAGE is set but buildah is not installed (apt-get install buildah)", pytrace=False)
    try:
        image_config(IMAGE)
    except RuntimeError as exc:
        pytest.fail(f"FLEET_IMAGE={IMAGE} is not in the image storage: {exc}", pytrace=False)
    return IMAGE


@pytest.fixture(scope="module")
def inside(image: str) -> Iterator[str]:
    """One working container of the image, shared by the tests that only look inside it (each costs
    a copy of the image with vfs); every run of the action gets a fresh one, like `docker run --rm`."""
    with working_container(image) as container:
        yield container


@pytest.fixture
def image_action(image: str, tmp_path: Path) -> Callable[..., ActionResult]:
    """``image_action(server, **inputs)``: the image run as a step with those inputs (sim time)."""
    runs = iter(range(1000))

    def run(server: SimServer | None, **inputs: str) -> ActionResult:
        return run_image(image, step_inputs(server, **inputs), tmp_path / f"run{next(runs)}",
                         github=github_context(server))

    return run


def github_context(server: SimServer | None) -> dict[str, str]:
    return {"sha": SHA, "api_url": f"{server.url}/api/v3"} if server else {"sha": SHA}  # never the real GitHub


# -- what the runner starts -----------------------------------------------------------------------


def test_the_image_runs_the_dockerfiles_entrypoint_as_root_with_no_command(image):
    dockerfile = (ROOT / "Dockerfile").read_text()
    declared = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M)
    assert declared
    config = image_config(image)
    assert config.get("Entrypoint") == json.loads(declared.group(1))
    assert not config.get("Cmd"), "a CMD would be appended to the entrypoint's arguments"
    assert config.get("User", "") in ("", "root", "0"), "the runner's file-command files need root"
    assert command_of(image) == config["Entrypoint"]
    assert {"PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"} <= set(config.get("Env", []))


def test_the_kill_switch_skips_in_the_container_and_reports_to_the_workspace(image_action, tmp_path):
    result = image_action(None, disabled="true")

    assert result.code == 0, result.stdout + result.stderr
    assert result.outputs["outcome"] == "skipped" and result.outputs["ok"] == "false"
    assert result.report is not None and result.report["outcome"] == "skipped"
    assert (tmp_path / "run0" / "workspace" / "fleet-rollout-report.json").exists()
    assert_runner_temp_untouched(tmp_path / "run0")


def assert_runner_temp_untouched(workdir: Path) -> None:
    """RUNNER_TEMP names a host directory the container cannot see: the action writes nothing there
    (only the two mounted directories the runner keeps in it), and nothing in its home either."""
    temp = workdir / "runner_temp"
    assert sorted(p.name for p in temp.iterdir()) == ["_github_home", "_github_workflow"]
    assert list((temp / "_github_home").iterdir()) == []


# -- the scenarios --------------------------------------------------------------------------------


def test_in_the_image_a_dead_tenant_is_quarantined_and_latest_promoted(
    image_action, fleet, registry, repository, tmp_path
):
    old = registry.seed_index(repository, "latest", variant="previous")
    new = registry.seed_index(repository, TAG, variant="new")
    tenants = [TenantSpec(s, deploy_seconds=20, settle_seconds=100) for s in ("hongming", "reno-stars", "adk")]
    sim, server = fleet([*tenants, TenantSpec("dead", dead=True)])
    result = image_action(server, batch_size="2", max_stragglers="1", verify_url=buildinfo(server),
                          promote_images=registry.image(repository))

    assert result.code == 0, result.stdout + result.stderr
    assert result.outputs["ok"] == "true" and result.outputs["outcome"] == "deployed"
    assert json.loads(result.outputs["quarantined"]) == ["dead"]
    assert result.outputs["result_count"] == "4"
    assert result.outputs["verified"] == "3"
    assert result.outputs["promoted-digest"] == new.digest
    assert result.outputs["previous-digest"] == old.digest
    assert registry.digest(repository, "latest") == new.digest  # the real registry's tag moved
    assert [len(call["only_slugs"]) for call in sim.deploy_calls()] == [2, 2]
    assert len(server.seen("/tenants/dead/")) == 1  # the snapshot's one read; quarantined: never verified
    assert "::warning title=quarantined dead::" in result.stdout
    assert "| dead |" in result.summary and new.digest in result.summary
    assert result.report is not None and result.report["outcome"] == "deployed"
    assert_runner_temp_untouched(tmp_path / "run0")
    assert_no_secrets(result)


def test_a_configuration_error_in_the_image_exits_2_with_outputs_and_no_request(image_action, fleet):
    _sim, server = fleet([TenantSpec("a", deploy_seconds=1)])
    result = image_action(server, batch_size="zero")

    assert result.code == 2, result.stdout + result.stderr
    assert result.outputs["ok"] == "false" and result.outputs["outcome"] == "failed"
    assert "batch-size" in result.outputs["reason"]
    assert re.search(r"^::error[^\n]*batch-size", result.stdout, re.M)
    assert result.report is not None and result.report["outcome"] == "failed"
    assert "batch-size" in result.summary
    assert server.requests == []
    assert_no_secrets(result)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_cancelled_run_in_the_image_still_writes_outputs_and_the_report(image, fleet, tmp_path, signum):
    """The runner cancels a step by signalling ``docker run``, whose proxy signals the container's process."""
    sim, server = fleet([TenantSpec("a", deploy_seconds=20), TenantSpec("dead", dead=True)])
    started = start_action(image, step_inputs(server, verify_url="", batch_size="1"), tmp_path / "run",
                           github=github_context(server))
    try:
        for _ in range(600):  # until the dead tenant's slow call (1.95 s) is in flight (bounded: 30 s)
            if any(r.json().get("only_slugs") == ["dead"] for r in server.seen(sim.redeploy_path)):
                break
            assert started.proc.poll() is None, "the action ended before the slow call"
            time.sleep(0.05)
        else:
            pytest.fail("the dead tenant's deploy call never started")
        signalled = time.monotonic()
        started.signal(signum)
    finally:
        result = started.wait(timeout=60)
    stopped = time.monotonic() - signalled

    assert result.code == 1, result.stdout + result.stderr
    assert result.outputs["outcome"] == "failed" and result.outputs["ok"] == "false"
    assert f"cancelled by signal {signum.name}" in result.outputs["reason"]
    assert result.outputs["result_count"] == "1"  # batch 1 (tenant a) finished before the signal
    assert result.report is not None and result.report["outcome"] == "failed"
    assert "cancelled" in result.summary
    assert stopped < 5, f"the run took {stopped:.1f} s to stop after {signum.name}"


# -- what is in the image -------------------------------------------------------------------------

IMPORT_EVERYTHING = r"""
import importlib, json, modulefinder, pkgutil, sys
sys.path.insert(0, "/app")
finder = modulefinder.ModuleFinder(path=["/app", *sys.path[1:]])
finder.run_script("/app/entrypoint.py")
missing, _maybe = finder.any_missing_maybe()
ours = lambda importers: any(i == "__main__" or i == "deploy" or i.startswith("deploy.") for i in importers)
import deploy
names = ["deploy", *(m.name for m in pkgutil.walk_packages(deploy.__path__, "deploy."))]
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
print(json.dumps({
    "reachable": sorted(n for n in finder.modules if n == "deploy" or n.startswith("deploy.")),
    "missing": {n: sorted(finder.badmodules[n]) for n in missing if ours(finder.badmodules[n])},
    "modules": names,
    "failed": failed,
}))
"""


def checkout_modules() -> set[str]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for p in (ROOT / "deploy").rglob("*.py") if "__pycache__" not in p.parts}


def test_every_module_the_entrypoint_reaches_is_in_the_image_and_imports(inside):
    proc = exec_in(inside, "python", "-c", IMPORT_EVERYTHING)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)

    assert found["missing"] == {}, "imported by the action but not in the image"
    assert "deploy.main" in found["reachable"] and "deploy.pipeline" in found["reachable"]
    assert set(found["modules"]) == checkout_modules()
    assert found["failed"] == {}


def test_the_image_holds_the_lock_and_the_package_and_nothing_else(inside):
    expected = {"requirements.lock", "entrypoint.py"} | {
        str(p.relative_to(ROOT)) for p in (ROOT / "deploy").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    files = files_in(inside, "/app")
    caches = exec_in(inside, "find", "/root/.cache", "/tmp", "-mindepth", "1").stdout.split()
    source = {f for f in files if "__pycache__" not in f}
    assert source == expected
    # compileall ran at build time: every module has its bytecode, so nothing compiles at run time.
    for module in (f for f in source if f.endswith(".py")):
        parent, name = os.path.split(module)
        assert any(re.fullmatch(rf"{re.escape(os.path.join(parent, '__pycache__', name[:-3]))}\.cpython-3\d+\.pyc", f)
                   for f in files), f"{module} was not compiled"
    assert caches == [], "caches left in the image"


def test_the_image_installs_exactly_the_locked_distributions(inside):
    script = ("import importlib.metadata as m, importlib.util as u, json; print(json.dumps(["
              "sorted({d.metadata['Name'].lower() for d in m.distributions()}),"
              " [n for n in ('setuptools', 'wheel', 'pytest', 'yaml') if u.find_spec(n)]]))")
    proc = exec_in(inside, "python", "-c", script)
    assert proc.returncode == 0, proc.stderr
    installed, present = json.loads(proc.stdout)
    lock = (ROOT / "requirements.lock").read_text()
    locked = {m.lower() for m in re.findall(r"^([A-Za-z0-9_.-]+)==", lock, re.M)}

    assert set(installed) - {"pip"} == locked
    assert present == [], "build tools or test dependencies in the image"


def test_the_image_adds_no_more_than_it_needs_to_its_base(image):
    total, added = size_over_base(image)
    print(f"image {image}: {total} bytes, {added} added by the Dockerfile")
    assert 0 < added <= MAX_ADDED_BYTES, f"the Dockerfile adds {added} bytes (limit {MAX_ADDED_BYTES})"


# -- the build context ----------------------------------------------------------------------------


def test_the_build_context_is_the_dockerignore_allow_list_whatever_lies_in_the_checkout(image, tmp_path):
    """Built from a copy of the checkout with strays planted, a `COPY . /context` sees only the allow-list."""
    context = tmp_path / "context"
    shutil.copytree(ROOT, context, symlinks=True)
    (context / "secret.env").write_text("CP_TOKEN=stray-secret\n")
    (context / ".env").write_text("FLEET_CP_TOKEN=stray-secret\n")
    (context / "tests").mkdir(exist_ok=True)
    (context / "tests" / "stray_test.py").write_text("SECRET = 'stray-secret'\n")
    (context / "deploy" / "__pycache__").mkdir(exist_ok=True)
    (context / "deploy" / "__pycache__" / "stray.cpython-311.pyc").write_bytes(b"stray")
    (context / "deploy" / "sim" / "stray.pyc").write_bytes(b"stray")
    probe = tmp_path / "Probe.Dockerfile"  # outside the context: only .dockerignore decides what is in it
    probe.write_text(f"FROM {image}\nCOPY . /context\n")
    tag = f"localhost/fleet-rollout-context-probe:{uuid.uuid4().hex[:12]}"
    buildah("bud", "--isolation", "chroot", "--pull=never", "--file", str(probe), "--tag", tag, str(context))
    try:
        with working_container(tag) as container:
            files = files_in(container, "/context")
    finally:
        buildah("rmi", tag, check=False)

    expected = {"requirements.lock", "entrypoint.py"} | {
        str(p.relative_to(ROOT)) for p in (ROOT / "deploy").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert files == expected
