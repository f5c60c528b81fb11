"""Inputs: the only module that reads the environment.

Every input arrives as a ``FLEET_*`` variable (``action.yml`` maps each ``inputs.x`` there in
``runs.env``; ``docker run -e`` and a laptop set them directly), so there is one configuration
path. :func:`load` validates everything before any network call and reports *every* bad input
at once, each naming the input and its value (never a secret's value).

Decisions where the contract is silent:
- an empty value means "not given", i.e. the default; a required input left empty is an error;
- ``cp-url``/``cp-token`` are required only when a stage talks to the CP (rollout, verify);
  ``stages: promote`` (a manual promotion or rollback) needs neither;
- ``retry-delays: none`` disables retries.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from deploy import promql
from deploy.buildinfo import request_form
from deploy.domain import (
    DIGEST_RE,
    FALSE_WORDS,
    SHA_RE,
    SHOWN_VALUE,
    TAG_RE,
    TRUE_WORDS,
    ImageRef,
    display_url,
    is_loopback,
    parse_image,
    parse_kill_switch,
    sha_matches,
    url_parts,
)
from deploy.errors import ConfigError, ConfigErrors
from deploy.settings import (
    STAGES,
    AnalysisSettings,
    Config,
    ControlPlaneSettings,
    ForgeSettings,
    GateSettings,
    HttpSettings,
    Inconclusive,
    OnFailure,
    PromoteSettings,
    RolloutSettings,
    VerifySettings,
)
from deploy.waves import BatchSize, parse_batch_sizes

T = TypeVar("T")

# Defaults of every input; action.yml declares the same ones (a test keeps them in sync).
# Empty means "none", or "computed at run time" for target-tag, promote-source, rollback-tag and branch.
DEFAULTS: dict[str, str] = {
    "cp-url": "",
    "cp-token": "",
    "allow-insecure-http": "false",
    "stages": "rollout,verify,promote",
    "redeploy-path": "/cp/admin/tenants/redeploy-fleet",
    "sha": "",
    "target-tag": "",
    "canary": "",
    "soak-seconds": "60",
    "batch-size": "3",
    "max-batch-size": "",
    "batch-soak-seconds": "0",
    "max-stragglers": "1",
    "rollout-timeout": "600",
    "request-timeout": "120",
    "cp-tenant-timeout": "300",
    "cp-settle-seconds": "90",
    "retry-delays": "5,10,20",
    "dry-run": "false",
    "verify-url": "",
    "verify-field": "git_sha",
    "verify-budget": "240",
    "verify-interval": "20",
    "verify-concurrency": "32",
    "verify-each-batch": "true",
    "skip-current": "true",
    "on-failure": "hold",
    "rollback-tag": "",
    "analysis-url": "",
    "analysis-query": "",
    "analysis-token": "",
    "analysis-username": "",
    "analysis-password": "",
    "analysis-interval": "30",
    "analysis-failure-limit": "1",
    "analysis-inconclusive": "hold",
    "analysis-dry-run": "false",
    "promote-images": "",
    "promote-tag": "latest",
    "promote-source": "",
    "allow-single-arch": "false",
    "registry-username": "",
    "registry-password": "",
    "disabled": "",
    "disabled-variable": "",
    "required-checks": "",
    "checks-timeout": "1800",
    "checks-interval": "15",
    "skip-if-superseded": "true",
    "branch": "",
    "github-token": "",
    "report-path": "fleet-rollout-report.json",
    "timeout": "3600",
}
SECRET_INPUTS = ("cp-token", "registry-password", "github-token", "analysis-token", "analysis-password")
URL_INPUTS = ("cp-url", "verify-url", "promote-images", "analysis-url")  # may carry a credential in userinfo or query
MIN_RELIABLE_SECRET = 8  # shorter, and a secret also matches ordinary words and numbers in the log
MIN_QUERY_SECRET = 8  # a query value this long in a URL input is treated as a credential (?key=…)
# Passwords that say the username is the credential: `https://TOKEN:x-oauth-basic@host` (GitHub's
# form), `https://TOKEN:@host`, `https://TOKEN@host`. Any other password is the credential itself.
PLACEHOLDER_PASSWORDS = frozenset({"", "x-oauth-basic"})


VARIABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_RETRIES = 10
# Upper bounds: beyond them a value is a typo, and would overflow (1e12 s) or stall (a pool of 1e8).
DAY, HOUR = 86400.0, 3600.0
MAX_BATCH_SIZE = 10_000
MAX_VERIFY_CONCURRENCY = 256
MAX_STRAGGLERS = 1_000_000
MAX_FAILURE_LIMIT = 100


def env_name(input_name: str) -> str:
    """``rollout-timeout`` → ``FLEET_ROLLOUT_TIMEOUT``."""
    return "FLEET_" + input_name.upper().replace("-", "_")


_SAID_AS_YAML = re.compile(r"\b(" + "|".join(sorted(map(re.escape, DEFAULTS), key=len, reverse=True))
                           + r"): (?=\S)")
_HYPHENATED = re.compile(r"(?<![\w./-])(" + "|".join(sorted((re.escape(name) for name in DEFAULTS if "-" in name),
                                                             key=len, reverse=True)) + r")(?![\w/-])")


_SINGLE_WORDS = "|".join(name for name in DEFAULTS if "-" not in name)
_SINGLE_WORD_SAID = re.compile(r"\b(make|raise|inside|than|set) (" + _SINGLE_WORDS + r")\b(?![-\w])")


def in_environment_terms(message: str) -> str:
    """A message about inputs, said to someone who sets ``FLEET_*`` variables (GitLab, a laptop):
    ``stages: rollout,promote`` becomes ``FLEET_STAGES=rollout,promote`` and ``verify-url``
    ``FLEET_VERIFY_URL``. Single-word inputs are renamed where written as a setting, or as the
    object of advice ("raise timeout", "longer than timeout"): "the overall timeout" is prose."""
    message = _SAID_AS_YAML.sub(lambda match: env_name(match.group(1)) + "=", message)
    message = _SINGLE_WORD_SAID.sub(lambda match: f"{match.group(1)} {env_name(match.group(2))}", message)
    return _HYPHENATED.sub(lambda match: env_name(match.group(1)), message)


EXPRESSION_RE = re.compile(r"^\s*\$\{\{.*\}\}\s*$", re.DOTALL)


def input_env_name(input_name: str) -> str:
    """``rollout-timeout`` → ``INPUT_ROLLOUT-TIMEOUT``: how the runner itself exports an input."""
    return "INPUT_" + input_name.upper()


@dataclass(frozen=True)
class InputSources:
    """Where each input came from, before anything is validated.

    ``action.yml`` maps every input to ``FLEET_*`` in ``runs.env``, but that map is not always
    applied: Gitea's act evaluates ``runs.env`` only when the step has no ``with: args``, and
    older act releases did not interpolate it. The runner's own ``INPUT_<NAME>`` (upper case,
    hyphen kept) is then the fallback. Precedence differs by runner (GitHub: a workflow ``env:``
    or ``$GITHUB_ENV`` of the same ``FLEET_*`` name beats ``with:``; Gitea: ``runs.env``
    overwrites, and a ``workflow_dispatch`` input of the same name replaces ``with:``), so an
    input whose two values differ is named at start.
    """

    env: Mapping[str, str]  # the environment with every FLEET_* filled in from INPUT_* where absent
    from_input: tuple[str, ...]  # inputs read from INPUT_* because FLEET_* was absent
    differing: tuple[str, ...]  # inputs whose FLEET_* and INPUT_* values differ (FLEET_* wins)
    literal: tuple[tuple[str, str], ...]  # (input, its FLEET_* value): an uninterpolated ${{ … }}
    unknown: tuple[tuple[str, str], ...]  # (FLEET_* name we do not know, closest known name or '')

    @classmethod
    def read(cls, env: Mapping[str, str]) -> InputSources:
        resolved = dict(env)
        from_input, differing, literal = [], [], []
        for name in DEFAULTS:
            fleet, runner = env_name(name), input_env_name(name)
            if fleet not in env and runner in env:
                resolved[fleet] = env[runner]
                from_input.append(name)
            elif fleet in env and EXPRESSION_RE.match(env[fleet]):
                literal.append((name, env[fleet].strip()))  # an error, but the kill switch and masking
                resolved[fleet] = env.get(runner, "")  # must still see the runner's own value
            elif fleet in env and runner in env and env[fleet].strip() != env[runner].strip():
                differing.append(name)
        known = [env_name(name) for name in DEFAULTS]
        unknown = tuple(
            (key, next(iter(difflib.get_close_matches(key, known, n=1, cutoff=0.75)), ""))
            for key in sorted(env) if key.startswith("FLEET_") and key not in known
        )
        return cls(resolved, tuple(from_input), tuple(differing), tuple(literal), unknown)

    def errors(self) -> list[ConfigError]:
        """One error for every input left as its literal ``${{ … }}``: one cause, said once, naming
        each input (one annotation per input repeated it up to the runner's cap of ten)."""
        if not self.literal:
            return []
        names = tuple(name for name, _ in self.literal)
        first, text = self.literal[0]
        if len(names) == 1:
            what = f"{first} is the literal text {text[:60]!r}"
            where = f"set {env_name(first)} in the step's env"
        else:
            what = f"{len(names)} inputs are literal text such as {text[:60]!r} ({', '.join(names)})"
            where = "set their FLEET_* variables in the step's env"
        return [ConfigError(first, f"{what}: the runner did not evaluate action.yml's runs.env (Gitea's act skips "
                                   "it when the step has `with: args`, and older act releases did not "
                                   f"interpolate it); remove `args` from the step, or {where}", about=names)]

    def notes(self) -> list[str]:
        """Lines for the start of the log: names only, never values."""
        lines = []
        if self.from_input:
            lines.append(f"inputs read from INPUT_* (runs.env was not applied): {', '.join(self.from_input)}")
        for name in self.differing:
            lines.append(f"input {name}: {env_name(name)} differs from {input_env_name(name)}; using "
                         f"{env_name(name)} (a workflow env: of that name, $GITHUB_ENV, or on Gitea a "
                         "workflow_dispatch input of the same name)")
        return lines

    def warnings(self) -> list[str]:
        return [f"{key} is not a fleet-rollout variable" + (f"; did you mean {close}?" if close else "")
                for key, close in self.unknown]


@dataclass(frozen=True)
class RunnerEnv:
    """What the runner tells us about where to write; read even when the inputs are bad."""

    output_path: str | None
    summary_path: str | None
    workspace: Path
    in_actions: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RunnerEnv:
        return cls(
            output_path=env.get("GITHUB_OUTPUT") or None,
            summary_path=env.get("GITHUB_STEP_SUMMARY") or None,
            workspace=Path(env.get("GITHUB_WORKSPACE") or "."),
            in_actions=env.get("GITHUB_ACTIONS", "").lower() == "true",
        )

    def report_path(self, env: Mapping[str, str]) -> Path:
        """The report's path even when the inputs are bad (falls back to the default)."""
        raw = env.get(env_name("report-path"), "").strip() or DEFAULTS["report-path"]
        try:
            return self.workspace / parse_report_path(raw)
        except ValueError:
            return self.workspace / DEFAULTS["report-path"]


def run_key(env: Mapping[str, str]) -> str:
    """What makes this run's ``Idempotency-Key`` values its own (:func:`deploy.redeploy.call_key`):
    the repository, the workflow run and its attempt — a re-run of the job is a new attempt, and
    must not get the first attempt's answers replayed — or a random id outside Actions."""
    run, attempt = env.get("GITHUB_RUN_ID", "").strip(), env.get("GITHUB_RUN_ATTEMPT", "").strip() or "1"
    if not run.isdigit():
        return f"fleet-rollout:{uuid.uuid4().hex}"
    repository = re.sub(r"[^A-Za-z0-9._/-]", "", env.get("GITHUB_REPOSITORY", ""))
    return f"fleet-rollout:{repository}:{run}.{attempt if attempt.isdigit() else '1'}"


ROLLOUT_INPUTS = ("canary", "soak-seconds", "batch-size", "max-batch-size", "batch-soak-seconds", "max-stragglers",
                  "rollout-timeout", "skip-current", "on-failure", "rollback-tag", "dry-run", "redeploy-path")
VERIFY_INPUTS = ("verify-field", "verify-budget", "verify-interval", "verify-concurrency", "verify-each-batch")
PROMOTE_INPUTS = ("promote-tag", "promote-source", "allow-single-arch", "registry-username")
GATE_INPUTS = ("required-checks", "disabled-variable")


def effective_settings(env: Mapping[str, str], config: Config) -> str:
    """One line for the start of the log: the stages that run, and every input set to something
    other than its default that has no effect in this run, with why — an input silently ignored
    is a setting the user believes in and does not have."""
    def given(name: str) -> bool:
        value = env.get(env_name(name), "").strip()
        return bool(value) and value != DEFAULTS[name]

    rollout, verify = config.rollout, config.verify
    idle: dict[str, str] = {}
    if not config.wants("rollout"):
        idle.update((name, "stages has no rollout") for name in ROLLOUT_INPUTS if given(name))
    else:
        if not rollout.canary and given("soak-seconds"):
            idle["soak-seconds"] = "no canary"
        if rollout.on_failure != OnFailure.ROLLBACK and given("rollback-tag"):
            idle["rollback-tag"] = "on-failure is hold"
    if not verify.url_template:
        idle.update((name, "verify-url is empty") for name in VERIFY_INPUTS if given(name))
    elif not config.wants("verify"):
        idle.update((name, "stages has no verify") for name in VERIFY_INPUTS if given(name))
    if not (config.promote.images and config.wants("promote")):
        why = "promote-images is empty" if not config.promote.images else "stages has no promote"
        idle.update((name, why) for name in PROMOTE_INPUTS if given(name))
    if rollout.dry_run:
        idle.update((name, "a dry run reads no gate") for name in GATE_INPUTS if given(name))
    ignored = ", ".join(f"{name} ({why})" for name, why in idle.items()) or "none"
    return f"effective settings: stages {','.join(config.stages)}; inputs set that have no effect here: {ignored}"


def kill_switch(env: Mapping[str, str]) -> bool:
    """Read ``disabled`` on its own, first: a freeze must not be blocked by an unrelated typo."""
    raw = env.get(env_name("disabled"), "")
    try:
        return parse_kill_switch(raw)
    except ValueError as exc:
        raise ConfigErrors([ConfigError("disabled", f"{exc} (got {raw.strip()!r})")]) from None


def secrets_in(env: Mapping[str, str]) -> tuple[str, ...]:
    """Secret values, to mask before anything is validated or printed.

    Besides the secret inputs: the ``Basic`` credential a registry token service or the metrics
    API receives (base64 of ``user:password``, UTF-8 and latin-1 as requests encodes it), and the
    credentials a URL input may carry — its userinfo password and its long query values.
    """
    def value(name: str) -> str:
        return env.get(env_name(name), "").strip()

    found = [value(name) for name in SECRET_INPUTS]
    for user_input, password_input in (("registry-username", "registry-password"),
                                       ("analysis-username", "analysis-password")):
        username, password = value(user_input), value(password_input)
        if username and password:
            for encoding in ("utf-8", "latin-1"):
                with contextlib.suppress(UnicodeEncodeError):  # latin-1 cannot encode every password
                    found.append(base64.b64encode(f"{username}:{password}".encode(encoding)).decode("ascii"))
    for name in URL_INPUTS:
        found += _url_credentials(value(name))
    return tuple(dict.fromkeys(v for v in found if v))


def _url_credentials(url: str) -> list[str]:
    """Every form of a credential a URL input carries that is sent: its userinfo password, and the
    username too when that is the credential (``https://TOKEN:x-oauth-basic@host``,
    ``https://TOKEN@host``), each as written and decoded; the ``Basic`` credential the request
    carries (base64 of the decoded ``user:password``, in UTF-8 and in latin-1, as requests encodes
    it), which a tenant's 401 page may echo; and every query value of :data:`MIN_QUERY_SECRET`+
    characters, as written and decoded."""
    _, userinfo, _, _, hidden = url_parts(url)
    user, _, password = userinfo.partition(":")
    query = hidden[1:].partition("#")[0] if hidden.startswith("?") else ""
    written = [pair.partition("=")[2] for pair in re.split("[&;]", query)]
    decoded = [v for _, v in parse_qsl(query, keep_blank_values=True)]
    long_values = [v for v in written + decoded if len(v) >= MIN_QUERY_SECRET and "{slug}" not in v]  # not a template
    values = [password, unquote(password), *long_values]
    if userinfo and unquote(password) in PLACEHOLDER_PASSWORDS:
        values += [user, unquote(user)]
    if userinfo:
        pair = f"{unquote(user)}:{unquote(password)}"
        for encoding in ("utf-8", "latin-1"):
            with contextlib.suppress(UnicodeEncodeError):
                values.append(base64.b64encode(pair.encode(encoding)).decode("ascii"))
    return [v for v in values if v]


def public_facts(env: Mapping[str, str]) -> tuple[str, ...]:
    """The run's own facts that redaction must leave readable (see ``Runner.public``): the SHA, the
    tags, the promote source and the images, as the run will show them. Read before the inputs
    are validated, so only values of the right form count: a malformed one is not shown as a fact."""
    def value(name: str) -> str:
        return env.get(env_name(name), "").strip()

    sha = (value("sha") or env.get("GITHUB_SHA", "").strip()).lower()
    sha = sha if SHA_RE.match(sha) else ""
    tags = [value("target-tag") or (f"staging-{sha[:7]}" if sha else ""), value("promote-tag") or "latest",
            value("rollback-tag")]
    source = value("promote-source")
    facts = [sha, *(tag for tag in tags if TAG_RE.match(tag)), source if _parses(parse_source, source) else ""]
    facts += [image for image in parse_list(value("promote-images")) if _parses(lambda i: parse_image(i, True), image)]
    return tuple(dict.fromkeys(fact for fact in facts if fact))


def _parses(parser: Callable[[str], object], value: str) -> bool:
    try:
        parser(value)
    except ValueError:
        return False
    return True


def short_secret_warnings(env: Mapping[str, str]) -> list[str]:
    """One warning per secret input too short to redact reliably — naming the input, never the value.

    A 3-character token also matches ordinary words and numbers, so either the log keeps the
    token or redaction garbles it; 1–2 characters are not redacted at all.
    """
    warnings = []
    for name in SECRET_INPUTS:
        length = len(env.get(env_name(name), "").strip())
        if 0 < length < MIN_RELIABLE_SECRET:
            kind = "password" if name.endswith("-password") else "token"
            plural = "s" if length > 1 else ""
            warnings.append(
                f"{name} is only {length} character{plural}: too short to be redacted reliably from logs; "
                f"use a longer {kind}"
            )
    return warnings


class _Inputs:
    """Reads and parses inputs, collecting every error instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[ConfigError] = []

    def raw(self, name: str) -> str:
        return self.env.get(env_name(name), "").strip() or DEFAULTS[name]

    def fail(self, name: str, message: str) -> None:
        self.errors.append(ConfigError(name, message))

    def parse(self, name: str, parser: Callable[[str], T], fallback: T) -> T:
        try:
            return parser(self.raw(name))
        except ValueError as exc:
            self.fail(name, f"{exc} (got {self.shown(name)})")
            return fallback

    def shown(self, name: str) -> str:
        """The value as an error may quote it: never a secret, nor a URL's credentials."""
        if name in SECRET_INPUTS:
            return "(secret)"
        raw = display_url(self.raw(name)) if name in URL_INPUTS else self.raw(name)
        return repr(raw) if len(raw) <= SHOWN_VALUE else repr(raw[:SHOWN_VALUE]) + f"… ({len(raw)} characters)"

    def header_secret(self, name: str) -> str:
        """A token sent in a header: printable latin-1 on one line, or a clear error (never its value)."""
        value = self.text(name)
        if value and (not value.isprintable() or any(ord(char) > 0xFF for char in value)):
            self.fail(name, "must be printable text on one line (it is sent in an HTTP header)")
        return value

    def credential(self, name: str) -> str:
        """A user name or password sent as HTTP Basic (UTF-8, base64): printable text on one line,
        a user name without ``:`` (RFC 7617), or a clear error — never a traceback, never the value."""
        value = self.text(name)
        if value and not value.isprintable():  # a control character, or a byte that is not UTF-8
            self.fail(name, "must be printable text on one line (it is sent in an HTTP header)")
        elif name.endswith("-username") and ":" in value:
            self.fail(name, "must not contain ':' (HTTP Basic separates the user name from the password with it)")
        return value

    def text(self, name: str) -> str:
        return self.raw(name)

    def boolean(self, name: str) -> bool:
        return self.parse(name, parse_bool, False)

    def duration(self, name: str, minimum: float = 0.0, positive: bool = False, maximum: float = DAY) -> float:
        return self.parse(name, lambda v: parse_duration(v, minimum, positive, maximum), 1.0)

    def count(self, name: str, minimum: int, maximum: int) -> int:
        return self.parse(name, lambda v: parse_count(v, minimum, maximum), minimum)


def parse_bool(value: str) -> bool:
    word = value.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("expected true or false (also yes/no, on/off, 1/0)")


def parse_duration(value: str, minimum: float = 0.0, positive: bool = False, maximum: float = DAY) -> float:
    """Seconds, bounded: an unbounded ``1e12`` would overflow later, an internal error instead of exit 2."""
    if not value.isascii() or "_" in value:  # float() also takes "1_000" and other scripts' digits
        raise ValueError("expected a number of seconds")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number of seconds")
    if positive and seconds <= 0:
        raise ValueError("must be greater than 0 seconds")
    if seconds < minimum:
        raise ValueError("must be 0 or more" if minimum == 0 else f"must be at least {minimum:g} seconds")
    if seconds > maximum:
        raise ValueError(f"must be at most {maximum:g} seconds{' (a day)' if maximum == DAY else ''}")
    return seconds


def parse_count(value: str, minimum: int, maximum: int) -> int:
    """A whole number within bounds; ``-1`` is out of range, not "not a number"."""
    match = re.fullmatch(r"([+-]?)0*([0-9]+)", value)  # [0-9], not \d: no other scripts' digits
    if not match:
        raise ValueError("expected a whole number")
    sign, digits = match.groups()
    if sign == "-" and digits.strip("0"):
        raise ValueError("must be 0 or more" if minimum == 0 else f"must be at least {minimum}")
    if len(digits) > len(str(maximum)) or int(digits) > maximum:  # no int() of a 5000-digit string
        raise ValueError(f"must be at most {maximum}")
    number = int(digits)
    if number < minimum:
        raise ValueError("must be 0 or more" if minimum == 0 else f"must be at least {minimum}")
    return number


def parse_delays(value: str) -> tuple[float, ...]:
    if value.lower() == "none":
        return ()
    delays = tuple(parse_duration(part.strip(), maximum=HOUR) for part in value.split(",") if part.strip())
    if len(delays) > MAX_RETRIES:
        raise ValueError(f"at most {MAX_RETRIES} retries")
    return delays


def parse_list(value: str, separators: str = ",\n") -> tuple[str, ...]:
    items = re.split("[" + re.escape(separators) + "]", value)
    return tuple(dict.fromkeys(item.strip() for item in items if item.strip()))


def parse_stages(value: str) -> tuple[str, ...]:
    stages = parse_list(value.lower())
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        close = difflib.get_close_matches(unknown[0], STAGES, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown stage {unknown[0]!r}{hint}; choose from {', '.join(STAGES)}")
    if not stages:
        raise ValueError("name at least one stage")
    return tuple(s for s in STAGES if s in stages)


def parse_url(value: str, allow_insecure: bool, credentials: bool = False) -> str:
    """An http(s) URL. ``credentials``: userinfo is allowed (verify-url); the CP's and a registry's
    credentials have inputs of their own, and a '#' (never sent) would hide how the URL splits."""
    if "#" in value:
        raise ValueError("must not contain '#'")
    if "@" in value and not credentials:
        raise ValueError("must not carry credentials (use cp-token)")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http(s) URL such as https://cp.example.com")
    if parts.scheme == "http" and not allow_insecure and not is_loopback(parts.hostname):
        raise ValueError(
            "must use https:// (plain http is allowed only to loopback hosts, "
            "or with allow-insecure-http: true)"
        )
    return value


def parse_on_failure(value: str) -> OnFailure:
    """``hold`` or ``rollback`` (any case): a typo must not silently mean "hold"."""
    try:
        return OnFailure(value.lower())
    except ValueError:
        raise ValueError(f"expected {' or '.join(OnFailure)}") from None


def parse_report_path(value: str) -> str:
    """Relative and inside the workspace: an absolute path or ``..`` could write anywhere the
    container's user can (root, on a self-hosted runner's mounted workspace)."""
    path = PurePosixPath(value)
    if path.is_absolute() or value.startswith("~"):
        raise ValueError("must be a path relative to the workspace")
    if ".." in path.parts:
        raise ValueError("must stay inside the workspace (no '..')")
    return value


def parse_source(value: str) -> str:
    if value.startswith("sha256:"):
        if not DIGEST_RE.match(value):
            raise ValueError("a digest must be sha256: and 64 lowercase hex characters")
        return value
    if not TAG_RE.match(value):
        raise ValueError("expected an image tag or a sha256: digest")
    return value


def load(env: Mapping[str, str]) -> Config:
    """Build the validated :class:`Config`, or raise :class:`ConfigErrors` listing every problem.

    ``disabled`` is not part of it: :func:`kill_switch` reads it first, on its own.
    """
    inputs = _Inputs(env)
    stages = inputs.parse("stages", parse_stages, STAGES)
    insecure = inputs.boolean("allow-insecure-http")
    needs_cp = "rollout" in stages or "verify" in stages

    http = HttpSettings(request_timeout=inputs.duration("request-timeout", positive=True),
                        retry_delays=inputs.parse("retry-delays", parse_delays, ()))
    cp_worst_case = (inputs.duration("cp-tenant-timeout"), inputs.duration("cp-settle-seconds"))
    cp = _control_plane(inputs, needs_cp, insecure, http.request_timeout, cp_worst_case)
    sha = _sha(inputs, env, required=needs_cp or not (inputs.raw("target-tag") or inputs.raw("promote-source")))
    rollout = _rollout_settings(inputs, sha, cp_worst_case)
    verify = _verify_settings(inputs, insecure)
    promote = _promote_settings(inputs, rollout.target_tag, insecure)
    gates, forge = _gates_and_forge(inputs, env)
    timeout = inputs.duration("timeout", positive=True)
    report = inputs.parse("report-path", parse_report_path, DEFAULTS["report-path"])
    analysis = _analysis_settings(inputs, insecure)

    loaded = Config(stages=stages, sha=sha, http=http, cp=cp, rollout=rollout, verify=verify, promote=promote,
                    gates=gates, forge=forge, report_path=RunnerEnv.from_env(env).workspace / report, timeout=timeout,
                    analysis=analysis, run_key=run_key(env))

    _check_time(inputs, loaded)

    if "verify" in stages and not verify.url_template and promote.images and "promote" in stages:
        unverified = ",".join(stage for stage in stages if stage != "verify")  # what was asked, less the proof
        inputs.fail(
            "verify-url",
            "is empty but promote-images is set: latest never moves without proof. "
            f"Set verify-url, or say stages: {unverified} to promote unverified on purpose",
        )
    _check_something_to_do(inputs, loaded)
    if gates.disabled_variable and not forge.token:
        inputs.fail("disabled-variable", "needs github-token to read the variable live")
    if gates.required_checks and not forge.token:
        inputs.fail("required-checks", "needs github-token to read commit statuses")
    if inputs.errors:
        raise ConfigErrors(inputs.errors)
    return loaded


TIME_INPUTS = ("timeout", "cp-tenant-timeout", "cp-settle-seconds", "verify-budget", "verify-interval",
               "soak-seconds", "batch-soak-seconds")


def _check_time(inputs: _Inputs, config: Config) -> None:
    """Durations that cannot fit together, each error stating the minimum that does.

    ``timeout`` must hold the first deploy call's worst case, its proof, the canary's soak (or a
    batch's bake) and, with ``on-failure: rollback``, the room kept for a rollback: a run whose
    first step cannot finish would deploy a tenant and die at the deadline. (The whole plan's worst
    case is checked once the fleet is known, before any side effect.)"""
    if any(error.input_name in TIME_INPUTS for error in inputs.errors):
        return  # one of them is already wrong: a sum of it would say nothing
    rollout, verify, timeout = config.rollout, config.verify, config.timeout
    proving = config.wants("verify") and bool(verify.url_template)
    if proving and verify.interval > verify.budget:
        inputs.fail("verify-interval", f"{verify.interval:g} s is longer than verify-budget ({verify.budget:g} s): a "
                                       "tenant would be read once at most; make it at most verify-budget")
    waits = (("verify-budget", verify.budget if proving else 0.0),
             ("soak-seconds", rollout.soak_seconds if rollout.canary else 0.0),
             ("batch-soak-seconds", rollout.batch_soak_seconds))
    for name, seconds in waits:
        if seconds > timeout:
            inputs.fail(name, f"{seconds:g} s is longer than timeout ({timeout:g} s): the run would die waiting; "
                              f"make timeout at least {seconds:g} s more than the rest of the run needs")
    if not config.wants("rollout") or rollout.dry_run:
        return
    parts = [("one deploy call's worst case (cp-tenant-timeout + cp-settle-seconds)", rollout.call_worst_case),
             ("its proof (verify-budget)", verify.budget if proving else 0.0),
             ("the canary's soak (soak-seconds)", rollout.soak_seconds if rollout.canary else 0.0),
             ("a batch's bake (batch-soak-seconds)", 0.0 if rollout.canary else rollout.batch_soak_seconds),
             ("kept for on-failure: rollback (one call's worst case + verify-budget)", config.rollback_reserve)]
    needed = sum(seconds for _what, seconds in parts)
    if timeout < needed:
        shown = " + ".join(f"{what} {seconds:g} s" for what, seconds in parts if seconds)
        inputs.fail("timeout", f"must be at least {needed:g} s here ({shown}), or the first step could never "
                               f"finish (got {timeout:g} s)")


def _check_something_to_do(inputs: _Inputs, config: Config) -> None:
    """A run whose requested stages could do nothing is an error, not a green job that moved
    nothing: rollout always deploys, verify needs verify-url, promote needs promote-images."""
    if config.wants("rollout"):
        return
    idle: list[tuple[str, str]] = []  # (why a stage would do nothing, the input that would give it work)
    if config.wants("verify") and not config.verify.url_template:
        idle.append(("verify has no verify-url to read", "verify-url"))
    if config.wants("promote") and not config.promote.images:
        idle.append(("promote has no promote-images to move", "promote-images"))
    if idle and len(idle) == len(config.stages):
        inputs.fail("stages", f"is {','.join(config.stages)}, which would do nothing: "
                              f"{'; '.join(why for why, _ in idle)}. Set {' and '.join(name for _, name in idle)}")


def _control_plane(
    inputs: _Inputs, needed: bool, insecure: bool, request_timeout: float, cp_worst_case: tuple[float, float],
) -> ControlPlaneSettings:
    url = ""
    if inputs.raw("cp-url"):
        url = inputs.parse("cp-url", lambda v: parse_url(v, insecure), "")
    elif needed:
        inputs.fail("cp-url", "is required for the rollout and verify stages")
    token = inputs.header_secret("cp-token")
    if needed and not token:
        inputs.fail("cp-token", "is required for the rollout and verify stages")
    path = inputs.text("redeploy-path")
    if not path.startswith("/"):
        inputs.fail("redeploy-path", f"must start with '/' (got {path!r})")
    rollout_timeout = inputs.duration("rollout-timeout", positive=True)
    tenant, settle = cp_worst_case
    if rollout_timeout < request_timeout:
        inputs.fail(
            "rollout-timeout",
            f"{rollout_timeout:g} s is below request-timeout ({request_timeout:g} s); "
            "the rollout call is the slowest the CP makes",
        )
    elif rollout_timeout <= tenant + settle:
        inputs.fail(
            "rollout-timeout",
            f"{rollout_timeout:g} s must exceed cp-tenant-timeout + cp-settle-seconds "
            f"({tenant:g} + {settle:g} = {tenant + settle:g} s): the CP answers a batch only after "
            "its slowest tenant, so a shorter read budget gives up before a dead tenant can be "
            "reported and quarantined",
        )
    return ControlPlaneSettings(url=url, token=token, redeploy_path=path, rollout_timeout=rollout_timeout)


def _sha(inputs: _Inputs, env: Mapping[str, str], required: bool) -> str:
    raw = inputs.env.get(env_name("sha"), "").strip() or env.get("GITHUB_SHA", "").strip()
    if not raw:
        if required:
            inputs.fail("sha", "is required (defaults to github.sha inside Actions)")
        return ""
    if not SHA_RE.match(raw):
        inputs.fail("sha", f"expected a git commit SHA of 7 to 64 hex characters (got {raw!r})")
        return ""
    return raw.lower()


def _rollout_settings(inputs: _Inputs, sha: str, cp_worst_case: tuple[float, float]) -> RolloutSettings:
    tag = inputs.text("target-tag") or (f"staging-{sha[:7]}" if sha else "")
    if tag and not TAG_RE.match(tag):
        inputs.fail("target-tag", f"not a valid image tag (got {tag!r})")
    elif tag and sha and (named := tag_sha(tag)) and not sha_matches(named, sha):
        inputs.fail("target-tag", f"{tag!r} names commit {named}, not sha {sha[:12]}: the fleet would be told to run "
                                  "one build and verified against another. Set target-tag to the image built from sha "
                                  "(or sha to the commit the tag was built from)")
    return RolloutSettings(
        target_tag=tag,
        canary=inputs.text("canary"),
        soak_seconds=inputs.duration("soak-seconds"),
        batch_sizes=inputs.parse("batch-size", lambda v: parse_batch_sizes(v, MAX_BATCH_SIZE), (BatchSize(count=3),)),
        max_batch_size=inputs.count("max-batch-size", 1, MAX_BATCH_SIZE) if inputs.raw("max-batch-size") else 0,
        batch_soak_seconds=inputs.duration("batch-soak-seconds"),
        max_stragglers=inputs.count("max-stragglers", 0, MAX_STRAGGLERS),
        cp_tenant_timeout=cp_worst_case[0],
        cp_settle_seconds=cp_worst_case[1],
        dry_run=inputs.boolean("dry-run"),
        skip_current=inputs.boolean("skip-current"),
        on_failure=inputs.parse("on-failure", parse_on_failure, OnFailure.HOLD),
        rollback_tag=_rollback_tag(inputs),
    )


TAG_SHA_RE = re.compile(r"-([0-9a-fA-F]{7,64})\Z")


def tag_sha(tag: str) -> str:
    """The commit a tag names by its ``-<hex>`` suffix (``staging-8ddce85``, ``sha-8ddce85f``,
    ``staging-ABCDEF0``), lower-cased, or ''.

    A suffix of 7 to 64 hex characters counts, in either case (SHA-1 or SHA-256 commits); one of
    digits only, only at the lengths git prints a SHA (7, 40, 64): ``release-20241101`` or
    ``build-104233`` is a date or a build number, while ``staging-0000000`` is the short SHA of a commit.
    """
    match = TAG_SHA_RE.search(tag)
    named = match.group(1).lower() if match else ""
    return named if not named.isdigit() or len(named) in (7, 40, 64) else ""


def _rollback_tag(inputs: _Inputs) -> str:
    """rollback-tag, or promote-tag's value when empty (an invalid promote-tag is reported there, once)."""
    if not inputs.raw("rollback-tag"):
        return inputs.text("promote-tag")
    tag = inputs.text("rollback-tag")
    if not TAG_RE.match(tag):
        inputs.fail("rollback-tag", f"not a valid image tag (got {inputs.shown('rollback-tag')})")
    return tag


def _verify_settings(inputs: _Inputs, insecure: bool) -> VerifySettings:
    template = inputs.text("verify-url")
    if template:
        if "{slug}" not in template:
            inputs.fail("verify-url", f"must contain {{slug}} (got {inputs.shown('verify-url')})")
        elif inputs.parse("verify-url", lambda v: parse_url(v.replace("{slug}", "tenant"), insecure, True), ""):
            template = inputs.parse("verify-url", request_form, template)
    field_path = inputs.text("verify-field")
    if any(not part for part in field_path.split(".")):
        inputs.fail("verify-field", f"expected a dotted JSON path such as git_sha (got {field_path!r})")
    return VerifySettings(
        url_template=template,
        field=field_path,
        budget=inputs.duration("verify-budget", positive=True),
        interval=inputs.duration("verify-interval", positive=True, maximum=HOUR),
        concurrency=inputs.count("verify-concurrency", 1, MAX_VERIFY_CONCURRENCY),
        each_batch=inputs.boolean("verify-each-batch"),
    )


def parse_inconclusive(value: str) -> Inconclusive:
    """``hold`` or ``fail`` (any case): never a silent "pass"."""
    try:
        return Inconclusive(value.lower())
    except ValueError:
        raise ValueError(f"expected {' or '.join(Inconclusive)}") from None


def parse_analysis_url(value: str, allow_insecure: bool) -> str:
    """The metrics API's base URL (``/api/v1/query`` is appended): cp-url's rules, and no query,
    which the appended path would end up behind."""
    if "@" in value:
        raise ValueError("must not carry credentials (use analysis-token, or analysis-username and "
                         "analysis-password)")
    if "?" in value:
        raise ValueError("must be the API's base URL, without a query (/api/v1/query is appended)")
    return parse_url(value, allow_insecure)


def _analysis_settings(inputs: _Inputs, insecure: bool) -> AnalysisSettings:
    """``analysis-*``: on when analysis-url is set, and then it needs at least one query line."""
    url = inputs.parse("analysis-url", lambda v: parse_analysis_url(v, insecure), "") if \
        inputs.raw("analysis-url") else ""
    written = inputs.env.get(env_name("analysis-query"), "")  # unstripped: line numbers as the user wrote them
    queries, problems = promql.parse_queries(written)
    for problem in problems:
        inputs.fail("analysis-query", problem)
    if url and not queries and not problems:
        inputs.fail("analysis-query", "is required when analysis-url is set: one NAME: EXPR <op> THRESHOLD per line")
    if (queries or problems) and not inputs.raw("analysis-url"):
        inputs.fail("analysis-url", "is required when analysis-query is set (the Prometheus-compatible API to ask)")
    token = inputs.header_secret("analysis-token")
    username, password = inputs.credential("analysis-username"), inputs.credential("analysis-password")
    if bool(username) != bool(password):
        missing, given = ("analysis-password", "analysis-username") if username else \
            ("analysis-username", "analysis-password")
        inputs.fail(missing, f"is required when {given} is set (they go together)")
    if token and (username or password):
        inputs.fail("analysis-token", "cannot be combined with analysis-username/analysis-password: the API gets "
                                      "one Authorization header (Bearer or Basic)")
    return AnalysisSettings(
        url=url,
        queries=queries,
        token=token,
        username=username,
        password=password,
        interval=inputs.duration("analysis-interval", positive=True, maximum=HOUR),
        failure_limit=inputs.count("analysis-failure-limit", 1, MAX_FAILURE_LIMIT),
        inconclusive=inputs.parse("analysis-inconclusive", parse_inconclusive, Inconclusive.HOLD),
        dry_run=inputs.boolean("analysis-dry-run"),
    )


def _promote_settings(inputs: _Inputs, target_tag: str, insecure: bool) -> PromoteSettings:
    no_images: tuple[ImageRef, ...] = ()
    images = inputs.parse("promote-images", lambda v: tuple(parse_image(i, insecure) for i in parse_list(v)),
                          no_images)
    tag = inputs.text("promote-tag")
    if not TAG_RE.match(tag):
        inputs.fail("promote-tag", f"not a valid image tag (got {tag!r})")
    source = inputs.parse("promote-source", parse_source, "") if inputs.raw("promote-source") else target_tag
    if images and not source and not any(error.input_name in ("sha", "target-tag") for error in inputs.errors):
        inputs.fail("promote-source", "nothing to promote: set sha, target-tag or promote-source")
    username, password = inputs.credential("registry-username"), inputs.credential("registry-password")
    if bool(username) != bool(password):
        missing, given = ("registry-password", "registry-username") if username else \
            ("registry-username", "registry-password")
        inputs.fail(missing, f"is required when {given} is set (they go together)")
    return PromoteSettings(
        images=images,
        tag=tag,
        source=source,
        username=username,
        password=password,
        allow_single_arch=inputs.boolean("allow-single-arch"),
    )


def _gates_and_forge(inputs: _Inputs, env: Mapping[str, str]) -> tuple[GateSettings, ForgeSettings]:
    variable = inputs.text("disabled-variable")
    if variable and not VARIABLE_RE.match(variable):
        inputs.fail("disabled-variable", f"not a variable name (got {variable!r})")
    gates = GateSettings(
        required_checks=parse_list(inputs.text("required-checks"), "\n"),
        checks_timeout=inputs.duration("checks-timeout"),
        checks_interval=inputs.duration("checks-interval", positive=True, maximum=HOUR),
        skip_if_superseded=inputs.boolean("skip-if-superseded"),
        branch=inputs.text("branch") or env.get("GITHUB_REF_NAME", "").strip(),
        disabled_variable=variable,
    )
    return gates, _forge(env, inputs.header_secret("github-token"))


def _forge(env: Mapping[str, str], token: str) -> ForgeSettings:
    api_url = (env.get("GITHUB_API_URL") or "").rstrip("/")
    server_url = (env.get("GITHUB_SERVER_URL") or "").rstrip("/")
    is_gitea = env.get("GITEA_ACTIONS", "").lower() == "true" or api_url.endswith("/api/v1")
    if is_gitea and not api_url:
        api_url = f"{server_url}/api/v1"
    return ForgeSettings(
        kind="gitea" if is_gitea else "github",
        api_url=api_url or "https://api.github.com",
        repository=env.get("GITHUB_REPOSITORY", "").strip(),
        token=token,
    )
