"""Runs the action's built image the way the Actions runner starts a Docker action, with buildah.

The runner (actions/runner, ``ContainerActionHandler`` and ``DockerCommandManager.DockerRun``) does
``docker run --rm --workdir /github/workspace -e … -e GITHUB_ACTIONS=true -e CI=true`` with four host
directories mounted — ``/github/home``, ``/github/workflow``, ``/github/file_commands`` and the
workspace at ``/github/workspace`` — and no command, so the image's own ENTRYPOINT runs. Every
environment value that names a path under a mounted host directory is translated to the container
path; the rest stay host paths (``RUNNER_TEMP`` names a directory the container cannot see). The
inputs and ``runs.env`` come from ``action.yml`` through :func:`tests.actions_runner.container_env`.

Here ``buildah run --isolation chroot`` stands in for ``docker run`` (CI has no Docker daemon), in a
fresh working container per run, removed afterwards like ``--rm``. Two differences, both known:
chroot isolation shares the host's network (the simulator and registry on 127.0.0.1 are reachable,
which a Docker bridge would not allow) and PID namespace; and ``buildah run`` does not forward
signals — a SIGTERM to it kills the process inside with SIGKILL, where ``docker run``'s signal proxy
delivers SIGINT/SIGTERM to the container's process. :meth:`StartedAction.signal` therefore sends the
signal to the entrypoint's process itself, which is what the proxy does.

Storage: ``scripts/image.sh`` builds into its own buildah storage (``FLEET_BUILDAH_ROOT``, vfs);
``FLEET_IMAGE`` names the image there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.runner import parse_output_file
from tests.actions_runner import ActionResult, container_env
from tests.report_schema import load_report
from tests.support import JOB_TOKEN, SHA

BUILDAH_ROOT = os.environ.get("FLEET_BUILDAH_ROOT", "/var/lib/fleet-rollout/containers")
BUILDAH_RUNROOT = os.environ.get("FLEET_BUILDAH_RUNROOT", "/run/fleet-rollout/containers")
PRIVILEGED: list[str] = [] if os.geteuid() == 0 else ["sudo", "-n"]
BUILDAH = [*PRIVILEGED, "buildah", "--root", BUILDAH_ROOT, "--runroot", BUILDAH_RUNROOT, "--storage-driver", "vfs"]
CONTAINER_PREFIX = "fleet-rollout-"  # scripts/image.sh removes working containers so named that a crash left


def buildah(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def inspect(image: str) -> dict[str, Any]:
    return json.loads(buildah("inspect", "--type", "image", image).stdout)


def image_config(image: str) -> dict[str, Any]:
    """The OCI image config's ``config`` object: Entrypoint, Cmd, Env, WorkingDir, User, Labels."""
    return inspect(image)["OCIv1"].get("config") or {}


def command_of(image: str, args: list[str] | None = None) -> list[str]:
    """What ``docker run IMAGE [ARGS]`` executes: the ENTRYPOINT, then ARGS or else the image's CMD."""
    config = image_config(image)
    entrypoint, cmd = list(config.get("Entrypoint") or []), list(config.get("Cmd") or [])
    command = entrypoint + (args if args else cmd)
    assert command, f"{image} has neither ENTRYPOINT nor CMD"
    return command


def layers(image: str) -> list[tuple[str, int]]:
    """(diff ID, uncompressed bytes) of each layer, base first."""
    data = inspect(image)
    sizes = [layer["size"] for layer in json.loads(data["Manifest"])["layers"]]
    return list(zip(data["OCIv1"]["rootfs"]["diff_ids"], sizes, strict=True))


def image_ids() -> list[str]:
    listed = buildah("images", "--no-trunc", "--format", "{{.ID}}").stdout.split()
    return list(dict.fromkeys(listed))


def size_over_base(image: str) -> tuple[int, int]:
    """(bytes of the whole image, bytes its own build added on top of the base it was built from).

    The base is the stored image whose layers are the longest proper prefix of this one's.
    """
    own = layers(image)
    base_count = 0
    for other in image_ids():
        theirs = layers(other)
        if len(theirs) < len(own) and own[: len(theirs)] == theirs:
            base_count = max(base_count, len(theirs))
    total = sum(size for _, size in own)
    return total, sum(size for _, size in own[base_count:])


@contextmanager
def working_container(image: str) -> Iterator[str]:
    """A fresh working container of ``image``, removed afterwards (``docker run --rm``)."""
    name = f"{CONTAINER_PREFIX}{uuid.uuid4().hex[:12]}"
    buildah("from", "--pull=never", "--name", name, image)
    try:
        yield name
    finally:
        buildah("rm", name, check=False)


def exec_in(container: str, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``command`` (not the entrypoint) in a working container: for looking inside the image.

    Inside, not through ``buildah mount``: the storage is root's, and a CI user may only sudo buildah.
    """
    return subprocess.run([*BUILDAH, "run", "--isolation", "chroot", container, "--", *command],
                          capture_output=True, text=True, timeout=timeout)


def files_in(container: str, directory: str) -> set[str]:
    """Paths of the regular files under ``directory`` in a working container, relative to it."""
    proc = exec_in(container, "find", directory, "-type", "f", "-printf", "%P\\n")
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.splitlines())


@dataclass
class Layout:
    """The runner's host directories for one step, and where the container sees them."""

    workdir: Path
    mounts: dict[Path, str] = field(init=False)

    def __post_init__(self) -> None:
        temp = self.workdir / "runner_temp"  # RUNNER_TEMP: on the host, never mounted
        self.mounts = {
            temp / "_github_home": "/github/home",
            temp / "_github_workflow": "/github/workflow",
            self.workdir / "file_commands": "/github/file_commands",
            self.workdir / "workspace": "/github/workspace",
        }
        for host in self.mounts:
            host.mkdir(parents=True, exist_ok=True)

    @property
    def runner_temp(self) -> Path:
        return self.workdir / "runner_temp"

    def translate(self, value: str) -> str:
        """The runner's ``TranslateToContainerPath``: a host path under a mount becomes the container path."""
        for host, container in self.mounts.items():
            if value == str(host) or value.startswith(f"{host}/"):
                return container + value[len(str(host)):]
        return value

    def host_path(self, container_path: str) -> Path:
        for host, container in self.mounts.items():
            if container_path == container or container_path.startswith(f"{container}/"):
                return host / container_path[len(container):].lstrip("/")
        raise ValueError(f"{container_path} is not under a mounted directory")


def runner_env(with_: dict[str, str], github: dict[str, str], layout: Layout) -> dict[str, str]:
    """Everything the runner passes with ``-e``, container paths translated."""
    env = container_env(with_, github, layout.workdir)  # INPUT_*, runs.env, GITHUB_OUTPUT, …
    (layout.runner_temp / "_github_workflow" / "event.json").write_text(
        json.dumps({"after": github["sha"], "ref": f"refs/heads/{github.get('ref_name', 'main')}"}))
    commands = layout.workdir / "file_commands"
    for name in ("add_path", "set_env", "save_state"):
        (commands / name).touch()
    env.update(
        HOME=str(layout.runner_temp / "_github_home"),
        GITHUB_EVENT_PATH=str(layout.runner_temp / "_github_workflow" / "event.json"),
        GITHUB_PATH=str(commands / "add_path"),
        GITHUB_ENV=str(commands / "set_env"),
        GITHUB_STATE=str(commands / "save_state"),
        GITHUB_SERVER_URL="https://github.com",
        GITHUB_EVENT_NAME="push",
        GITHUB_JOB="rollout",
        GITHUB_ACTION="rollout",
        GITHUB_RUN_ID="4242",
        GITHUB_RUN_ATTEMPT="1",
        RUNNER_TEMP=str(layout.runner_temp),
        RUNNER_WORKSPACE=str(layout.workdir),
        RUNNER_TOOL_CACHE="/opt/hostedtoolcache",
        RUNNER_OS="Linux",
        RUNNER_ARCH="X64",
        GITHUB_ACTIONS="true",
        CI="true",
    )
    return {name: layout.translate(value) for name, value in env.items()}


@dataclass
class StartedAction:
    """A running ``buildah run`` of the action; :meth:`wait` gives the :class:`ActionResult`."""

    proc: subprocess.Popen[str]
    container: str
    command: list[str]
    env: dict[str, str]
    layout: Layout

    def action_pid(self, timeout: float = 30) -> int:
        """The entrypoint's process: the descendant of ``buildah run`` that is not buildah's own."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid in _descendants(self.proc.pid):
                argv = _cmdline(pid)
                if argv and not Path(argv[0]).name.startswith("buildah") and argv[1:] == self.command[1:]:
                    return pid
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"no process running {self.command} under buildah run (pid {self.proc.pid})")

    def signal(self, signum: signal.Signals) -> None:
        """What ``docker run``'s signal proxy does on a cancel: the signal goes to the container's process."""
        pid = self.action_pid()
        if PRIVILEGED:
            subprocess.run([*PRIVILEGED, "kill", f"-{signum.name}", str(pid)], check=True)
        else:
            os.kill(pid, signum)

    def wait(self, timeout: float = 120) -> ActionResult:
        try:
            stdout, stderr = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
            buildah("rm", self.container, check=False)
        outputs_text = self.layout.host_path(self.env["GITHUB_OUTPUT"]).read_text()
        summary = self.layout.host_path(self.env["GITHUB_STEP_SUMMARY"]).read_text()
        report_file = self.layout.host_path(self.env["GITHUB_WORKSPACE"]) / self.env["FLEET_REPORT_PATH"]
        report_text = report_file.read_text() if report_file.exists() else ""
        return ActionResult(
            code=self.proc.returncode,
            stdout=stdout,
            stderr=stderr,
            outputs=parse_output_file(outputs_text),
            summary=summary,
            report=load_report(report_text, f"the JSON report the image wrote at {report_file}"),
            files_text="\n".join([outputs_text, summary, report_text]),
            output_text=outputs_text,
        )


def start_action(
    image: str,
    with_: dict[str, str],
    workdir: Path,
    github: dict[str, str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> StartedAction:
    """Start the image's ENTRYPOINT as the runner would, with ``with_`` as the step's inputs."""
    github = {"sha": SHA, "token": JOB_TOKEN, **(github or {})}
    layout = Layout(workdir)
    env = runner_env(with_, github, layout)
    env.update({name: layout.translate(value) for name, value in (extra_env or {}).items()})
    command = command_of(image)
    name = f"{CONTAINER_PREFIX}{uuid.uuid4().hex[:12]}"
    buildah("from", "--pull=never", "--name", name, image)
    argv = [*BUILDAH, "run", "--isolation", "chroot", "--network", "host", "--workingdir", "/github/workspace"]
    for host, container in layout.mounts.items():
        argv += ["--volume", f"{host}:{container}"]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]  # buildah 1.28 drops a bare `-e NAME`: values go on the command line
    argv += [name, "--", *command]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    except BaseException:
        buildah("rm", name, check=False)
        raise
    return StartedAction(proc, name, command, env, layout)


def run_image(
    image: str,
    with_: dict[str, str],
    workdir: Path,
    github: dict[str, str] | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 120,
) -> ActionResult:
    return start_action(image, with_, workdir, github, extra_env).wait(timeout)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return [part for part in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") if part]
    except OSError:
        return []
