"""What a platform team adopts: the README tables, the examples, the pip package, the image and the release.

Each test pins a promise a user relies on the moment they paste ``uses:`` (or ``pip install``) somewhere:
the documented inputs are the real ones, every example passes only inputs that exist, the console
script and the wheel work, the image installs hash-checked dependencies only, and a release points
``action.yml`` at the image it just pushed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from deploy import config, main
from tests.actions_runner import ROOT, manifest

EXAMPLES = ROOT / "examples"
GITHUB_EXAMPLES = sorted(p for p in EXAMPLES.glob("*.yml") if p.name != "gitlab-ci.yml")
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
THIS_ACTION = re.compile(r"^(?:\./?|(?:https://[^/]+/)?[\w.-]+/fleet-rollout@\S+)$")


def readme_tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def steps_of(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- README ---------------------------------------------------------------------------------------


def test_readme_tables_are_generated_from_action_yml():
    readme = (ROOT / "README.md").read_text()
    assert readme_tables().render(readme, manifest()) == readme, "run python scripts/readme_tables.py"


def layout_rows() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def test_the_readme_layout_names_every_module_and_only_modules_that_exist():
    """A newcomer reads the architecture from that table: a module it leaves out is invisible."""
    modules = {path.name for path in (ROOT / "deploy").glob("*.py") if path.name not in ("__init__.py", "__main__.py")}
    named = {name.rsplit("/", 1)[-1] for row in layout_rows() for name in re.findall(r"`((?:deploy/)?\w+\.py)`", row)
             if "deploy/" in row.split("|")[1]}
    assert modules - named == set(), "modules missing from README's Layout table"
    assert named - modules == set(), "README's Layout table names modules that do not exist"


def test_readme_check_fails_when_an_input_default_drifts(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "readme_tables.py", tmp_path / "scripts")
    shutil.copy(ROOT / "README.md", tmp_path)
    shutil.copy(ROOT / "action.yml", tmp_path)
    check = [sys.executable, str(tmp_path / "scripts" / "readme_tables.py"), "--check"]
    assert subprocess.run(check, capture_output=True, text=True).returncode == 0

    drifted = manifest()
    drifted["inputs"]["batch-size"]["default"] = "4"
    (tmp_path / "action.yml").write_text(yaml.safe_dump(drifted, sort_keys=False))
    proc = subprocess.run(check, capture_output=True, text=True)

    assert proc.returncode == 1
    assert "README.md tables differ from action.yml" in proc.stdout


# -- examples -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", GITHUB_EXAMPLES + WORKFLOWS, ids=lambda p: p.name)
def test_workflows_pass_this_action_only_declared_inputs_and_secrets_only_from_secrets(path):
    inputs = set(manifest()["inputs"])
    uses = [step for step in steps_of(load_yaml(path)) if THIS_ACTION.match(step.get("uses", ""))]
    if path.parent == EXAMPLES:
        assert uses, f"{path.name} never uses the action"
    for step in uses:
        given = step.get("with", {})
        assert set(given) <= inputs, f"{path.name}: unknown inputs {set(given) - inputs}"
        for secret in set(given) & set(config.SECRET_INPUTS):
            from_secret = re.match(r"\$\{\{ secrets[.\[]", str(given[secret]))  # secrets.X or secrets[matrix.x]
            assert from_secret, f"{path.name}: {secret} must come from a secret"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("gitea*.yml")), ids=lambda p: p.name)
def test_the_gitea_examples_name_the_action_by_full_url_pinned_by_commit(path):
    uses = [step.get("uses", "") for step in steps_of(load_yaml(path))]
    ours = [u for u in uses if "fleet-rollout@" in u]
    assert ours and all(re.fullmatch(r"https://\S+/fleet-rollout@[0-9a-f]{40}", u) for u in ours)


def test_ci_lints_every_example():
    """.ci/run lints examples by glob: a new example must match one, or it is never linted."""
    script = (ROOT / ".ci" / "run").read_text()
    globs = re.findall(r"examples/[\w*.-]+\.yml", script)
    linted = {path.name for pattern in globs for path in EXAMPLES.glob(pattern.removeprefix("examples/"))}
    assert linted == {path.name for path in EXAMPLES.glob("*.yml")}


def action_steps(workflow: dict[str, Any], job: str) -> list[dict[str, Any]]:
    """The ``with:`` of every step of ``job`` that uses this action."""
    return [step.get("with", {}) for step in workflow["jobs"][job]["steps"] if THIS_ACTION.match(step.get("uses", ""))]


@pytest.mark.parametrize("path", GITHUB_EXAMPLES, ids=lambda p: p.name)
def test_no_workflow_input_is_named_like_an_action_input(path):
    """On Gitea a workflow_dispatch/workflow_call input named like an action input replaces it in runs.env."""
    triggers = load_yaml(path).get(True) or {}  # YAML 1.1 reads the key `on` as True
    names = {name for trigger in ("workflow_dispatch", "workflow_call")
             for name in ((triggers.get(trigger) or {}).get("inputs") or {})}
    assert not names & set(manifest()["inputs"]), path.name


def test_the_production_example_rolls_back_on_failure_and_never_waits_for_approval_to():
    workflow = load_yaml(EXAMPLES / "github-production.yml")
    [deploy] = action_steps(workflow, "rollout")
    assert deploy["canary"] and deploy["required-checks"].strip()
    assert deploy["on-failure"] == "rollback"  # before latest moves: inside the approved job
    assert workflow["jobs"]["rollout"]["environment"] == "production"
    assert workflow["jobs"]["rollout"]["outputs"]["previous-digest"] == "${{ steps.rollout.outputs.previous-digest }}"
    rollback = workflow["jobs"]["rollback"]  # after latest moved: the tag back, then the fleet
    assert rollback["environment"] != "production", "an automatic rollback must not wait for reviewers"
    tag_back, fleet_back = action_steps(workflow, "rollback")
    assert tag_back["stages"] == "promote" and "previous-digest" in tag_back["promote-source"]
    assert fleet_back["stages"] == "rollout" and fleet_back["target-tag"] == "latest"
    assert fleet_back["on-failure"] == "hold" and fleet_back["skip-if-superseded"] is False
    assert "promoted-digest" in rollback["if"] and "failure" in rollback["if"]


def test_the_manual_rollback_example_redeploys_the_build_it_is_given_and_moves_latest_back():
    workflow = load_yaml(EXAMPLES / "github-manual-rollback.yml")
    inputs = workflow[True]["workflow_dispatch"]["inputs"]
    [step] = action_steps(workflow, "rollback")
    assert step["sha"] == "${{ inputs.build-sha }}" and inputs["build-sha"]["required"] is True
    assert step["target-tag"] == "${{ inputs.build-tag }}" and step["dry-run"] == "${{ inputs.preview }}"
    assert step.get("stages", "rollout,verify,promote") == "rollout,verify,promote"
    assert step["skip-if-superseded"] is False and step["on-failure"] == "hold"
    assert step["verify-url"] and step["promote-images"] and "disabled" not in step
    assert workflow["concurrency"]["group"] == load_yaml(EXAMPLES / "github-production.yml")["concurrency"]["group"]


def test_the_pull_request_example_is_a_dry_run_that_sends_no_registry_credentials():
    workflow = load_yaml(EXAMPLES / "github-pr-dry-run.yml")
    [step] = action_steps(workflow, "plan")
    assert set(workflow[True]) == {"pull_request"}
    assert step["dry-run"] is True
    assert not {"promote-images", "registry-password", "registry-username"} & set(step)
    assert "head.repo.full_name == github.repository" in workflow["jobs"]["plan"]["if"]  # forks get no secrets


def test_the_promotion_example_ships_staging_first_then_production_behind_reviewers_by_digest():
    workflow = load_yaml(EXAMPLES / "github-promotion.yml")
    jobs = workflow["jobs"]
    [staging], [production] = action_steps(workflow, "staging"), action_steps(workflow, "production")
    assert jobs["staging"]["environment"] == "staging" and jobs["production"]["environment"] == "production"
    assert "staging" in jobs["production"]["needs"] and "needs.staging.outputs.ok == 'true'" in jobs["production"]["if"]
    assert staging["cp-url"] != production["cp-url"]
    assert staging["promote-tag"] != production.get("promote-tag", "latest")
    assert production["promote-source"] == "${{ needs.build.outputs.digest }}"
    assert jobs["build"]["outputs"]["digest"] == "${{ steps.push.outputs.digest }}"
    assert staging["on-failure"] == production["on-failure"] == "rollback"


@pytest.mark.parametrize("name", ["github-multi-region.yml", "gitea-multi-region.yml"])
def test_the_multi_region_examples_prove_every_region_in_rings_then_promote_once(name):
    workflow = load_yaml(EXAMPLES / name)
    jobs = workflow["jobs"]
    legs = {job: action_steps(workflow, job) for job in ("ring-1", "ring-2")}
    for job, [leg] in legs.items():
        assert leg["stages"] == "rollout,verify" and leg["on-failure"] == "rollback", job
        assert leg["cp-url"] == "${{ matrix.cp-url }}" and leg["verify-url"] == "${{ matrix.verify-url }}"
        assert any(step.get("if") == "steps.leg.outputs.ok != 'true'" for step in jobs[job]["steps"]), job
    assert len(jobs["ring-1"]["strategy"]["matrix"]["include"]) == 1  # the first ring: one region alone
    assert len(jobs["ring-2"]["strategy"]["matrix"]["include"]) >= 2
    assert "ring-1" in jobs["ring-2"]["needs"] and jobs["ring-2"]["strategy"]["fail-fast"] is False
    [promote] = action_steps(workflow, "promote")
    assert promote["stages"] == "promote" and {"ring-1", "ring-2"} <= set(jobs["promote"]["needs"])
    assert promote["promote-source"] == "${{ needs.build.outputs.digest }}"
    assert not [job for job in jobs if job != "promote" and "promote" in str(action_steps(workflow, job))]


def test_the_gitlab_example_sets_only_fleet_variables_that_are_inputs_and_no_secret():
    pipeline = load_yaml(EXAMPLES / "gitlab-ci.yml")
    variables = {
        name for job in pipeline.values() if isinstance(job, dict)
        for name in (job.get("variables") or {}) if name.startswith("FLEET_")
    }
    known = {config.env_name(name) for name in manifest()["inputs"]}
    assert "FLEET_CP_URL" in variables and variables <= known, variables - known
    assert not variables & {config.env_name(name) for name in ("cp-token",)}, "the CP token is a masked CI variable"
    scripts = " ".join(line for job in pipeline.values() if isinstance(job, dict) for line in job.get("script", []))
    assert "fleet-rollout" in scripts and "/app/entrypoint.py" in scripts


# -- the pip package ------------------------------------------------------------------------------


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_console_script_resolves_to_a_callable():
    target = pyproject()["project"]["scripts"]["fleet-rollout"]
    module_name, _, attribute = target.partition(":")
    assert target == "deploy.main:cli"
    assert callable(getattr(importlib.import_module(module_name), attribute))


def wheel_backend_missing() -> str:
    """Why this interpreter cannot build a wheel without build isolation ('' when it can)."""
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed"
    major, minor = (int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        return "setuptools < 70.1 needs the wheel package to build wheels"
    return ""


def test_the_wheel_ships_the_package_and_the_console_script(tmp_path):
    if missing := wheel_backend_missing():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}: CI installs requirements-lint.txt and must build the wheel")
        pytest.skip(missing)
    source = tmp_path / "src"  # a copy: an in-tree build would leave build/ and *.egg-info behind
    source.mkdir()
    for name in ("pyproject.toml", "LICENSE"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "deploy", source / "deploy", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
         "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    (wheel,) = (tmp_path / "dist").glob("fleet_rollout-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert {"deploy/main.py", "deploy/sim/fleet.py", "deploy/config.py"} <= names
    assert not any(n.startswith("tests/") for n in names)
    assert any(n.startswith(f"{dist_info}/") and n.endswith("LICENSE") for n in names)
    assert "Name: fleet-rollout" in metadata and f"Version: {pyproject()['project']['version']}" in metadata
    assert re.search(r"^fleet-rollout = deploy\.main:cli$", entry_points, re.M)


def test_without_github_output_the_outputs_are_printed_as_name_value_lines(tmp_path):
    stream = io.StringIO()
    code = main.run({"FLEET_DISABLED": "true", "GITHUB_WORKSPACE": str(tmp_path)}, stream)
    lines = stream.getvalue().splitlines()
    assert code == 0
    assert "outcome=skipped" in lines and "ok=false" in lines and "result_count=0" in lines


def test_outside_a_runner_secrets_are_neither_masked_nor_printed(tmp_path):
    secrets = {"FLEET_CP_TOKEN": "cp-s3cret-9f2e", "FLEET_REGISTRY_PASSWORD": "reg-s3cret-41aa"}
    env = {**secrets, "FLEET_CP_URL": "https://cp.example.com", "FLEET_SHA": "a" * 40,
           "FLEET_BATCH_SIZE": "zero", "GITHUB_WORKSPACE": str(tmp_path)}
    outside, inside = io.StringIO(), io.StringIO()

    assert main.run(env, outside) == 2
    assert main.run({**env, "GITHUB_ACTIONS": "true"}, inside) == 2

    printed = outside.getvalue() + (tmp_path / "fleet-rollout-report.json").read_text()
    assert "batch-size" in printed
    assert not any(secret in printed for secret in secrets.values())
    assert "::add-mask::" not in outside.getvalue()  # a GitLab log would show that line in clear
    assert inside.getvalue().count("::add-mask::") == len(secrets)


# -- the image ------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    return [" ".join(part.split()) for part in text.replace("\\\n", " ").splitlines() if part.strip()]


def test_the_image_installs_dependencies_only_from_the_hash_locked_list():
    instructions = dockerfile_instructions()
    installs = [i for i in instructions if i.startswith("RUN") and "pip install" in i]
    assert len(installs) == 1
    assert all(flag in installs[0].split() for flag in ("--require-hashes", "--no-cache-dir"))
    assert "-r /app/requirements.lock" in installs[0]
    assert instructions.index("COPY requirements.lock /app/requirements.lock") < instructions.index(installs[0])
    assert not any("requirements.txt" in i for i in instructions)


def test_the_image_is_a_version_pinned_slim_python_run_as_the_default_user():
    instructions = dockerfile_instructions()
    assert re.fullmatch(r"ARG PYTHON_BASE=python:3\.11\.\d+-slim-bookworm", instructions[0])
    assert instructions[1] == "FROM ${PYTHON_BASE}"
    assert not any(i.startswith("USER") for i in instructions), "a non-root USER cannot write GITHUB_OUTPUT"
    assert "PYTHONUNBUFFERED=1" in " ".join(i for i in instructions if i.startswith("ENV"))


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    ignored = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = [i.split()[1] for i in dockerfile_instructions() if i.startswith("COPY")]
    files = [
        str(p.relative_to(ROOT)) for source in copied
        for p in ([ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*.py"))
    ]
    assert files and not [f for f in files if dockerignored(f, patterns)]
    for outside in ("tests/test_packaging.py", ".git/config", "README.md", ".env", "deploy/__pycache__/main.pyc"):
        assert dockerignored(outside, patterns), outside


# -- requirements.lock ----------------------------------------------------------------------------


def pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {normalized(n): v for n, _, v in (line.partition("==") for line in lines if "==" in line)}


def locked() -> dict[str, tuple[str, list[str]]]:
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    entries = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement, *options = line.split()
            name, _, version = requirement.partition("==")
            entries[normalized(name)] = (version, options)
    return entries


def dependencies(name: str) -> set[str]:
    requirements = [Requirement(r) for r in importlib.metadata.requires(name) or []]
    return {normalized(r.name) for r in requirements if not r.marker or r.marker.evaluate({"extra": ""})}


def test_the_lock_pins_exactly_the_runtime_requirements_and_their_dependencies():
    runtime, lock = pins(ROOT / "requirements.txt"), locked()
    assert {name: lock[name][0] for name in runtime if name in lock} == runtime
    closure, todo = set(), list(runtime)
    while todo:
        name = todo.pop()
        if name not in closure:
            closure.add(name)
            todo.extend(dependencies(name))
    assert set(lock) == closure


def test_every_locked_package_carries_sha256_hashes_for_its_files():
    for name, (version, options) in locked().items():
        assert re.fullmatch(r"\d[\w.]*", version), name
        assert options and all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", o) for o in options), name
        assert len(options) >= 2, f"{name}: a wheel and the sdist"
    # The one compiled dependency needs a wheel per platform of the multi-arch image, plus the pure one.
    assert len(locked()["charset-normalizer"][1]) >= 3


# -- workflows ------------------------------------------------------------------------------------


def release_step(step_id: str) -> dict[str, Any]:
    release = load_yaml(ROOT / ".github" / "workflows" / "release.yml")
    return next(step for step in steps_of(release) if step.get("id") == step_id)


def run_release_rewrite(workdir: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "IMAGE": "ghcr.io/acme/fleet-rollout", "VERSION": "1.2.3"}
    script = release_step("pin-image")["run"]
    return subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script], cwd=workdir, env=env, capture_output=True, text=True
    )


def test_the_release_points_action_yml_at_the_versioned_image_and_changes_nothing_else(tmp_path):
    shutil.copy(ROOT / "action.yml", tmp_path)
    assert run_release_rewrite(tmp_path).returncode == 0

    released, source = load_yaml(tmp_path / "action.yml"), manifest()
    assert released["runs"].pop("image") == "docker://ghcr.io/acme/fleet-rollout:1.2.3"
    source["runs"].pop("image")
    assert released == source


def test_the_release_fails_rather_than_publishing_an_action_that_still_builds(tmp_path):
    text = (ROOT / "action.yml").read_text().replace("  image: Dockerfile\n", '  image: "Dockerfile"\n')
    (tmp_path / "action.yml").write_text(text)
    assert run_release_rewrite(tmp_path).returncode != 0


def test_the_release_builds_both_architectures_when_run_by_hand_on_main():
    release = load_yaml(ROOT / ".github" / "workflows" / "release.yml")
    build = release_step("build")["with"]
    assert list(release[True]) == ["workflow_dispatch"]  # YAML 1.1 reads the key `on` as True
    assert set(build["platforms"].split(",")) == {"linux/amd64", "linux/arm64"} and build["push"] is True


def test_the_release_never_moves_a_version_tag():
    """Gitea's act_runner fetches a ref without force: a moved vX.Y.Z keeps running the old clone."""
    text = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    pushes = [line.strip() for line in text.splitlines() if "git push" in line or "git tag" in line]
    assert 'git tag --annotate "$TAG" --message "fleet-rollout $VERSION, image $IMAGE:$VERSION@$DIGEST"' in pushes
    assert all("--force" not in line for line in pushes if "$TAG" in line)
    assert any("--force" in line and "$MAJOR" in line for line in pushes)  # only vX moves


@pytest.mark.parametrize("path", GITHUB_EXAMPLES + WORKFLOWS, ids=lambda p: p.name)
def test_third_party_actions_are_pinned_by_major_version_or_commit(path):
    for step in steps_of(load_yaml(path)):
        uses = step.get("uses", "")
        if uses and not THIS_ACTION.match(uses):
            assert re.fullmatch(r"[\w.-]+/[\w.-]+(/[\w./-]+)?@(v\d+|[0-9a-f]{40})", uses), f"{path.name}: {uses}"


# -- the versions the package allows ----------------------------------------------------------------


def test_the_pins_are_inside_the_bounds_and_urllib3_is_held_below_its_next_major():
    """deploy/http.py subclasses urllib3's pools and Retry: a new major may change what it overrides."""
    bounds = {normalized(Requirement(r).name): Requirement(r).specifier for r in pyproject()["project"]["dependencies"]}
    runtime = pins(ROOT / "requirements.txt")
    assert set(bounds) == set(runtime) == {"requests", "urllib3"}
    assert all(runtime[name] in spec for name, spec in bounds.items()), (runtime, bounds)
    assert "3.0" not in bounds["urllib3"] and "2.99" in bounds["urllib3"]


def test_ci_runs_the_demo_and_the_end_to_end_tests_on_the_lowest_versions_allowed_before_the_test_command():
    lowest = subprocess.run([sys.executable, "scripts/lowest_requirements.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    assert lowest[:2] == ["requests==2.32.2", "urllib3==2.6"], lowest  # 2.32.2: get_connection_with_tls_context
    assert {line.partition("==")[0] for line in lowest[2:]} == {"pytest", "requests-mock", "PyYAML", "jsonschema"}
    ci = (ROOT / ".ci" / "run").read_text()
    step = ci[ci.index("step lowest-versions"):ci.index("step image")]
    assert '-m deploy demo' in step and "tests/test_*_e2e.py" in step and "lowest_requirements.py --check" in step
    assert ci.rstrip().splitlines()[-1] == "python -m pytest"  # the README's test command stays last
