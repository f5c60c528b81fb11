"""Bad inputs: one clear error naming the input, exit 2, before any network call."""

from __future__ import annotations

import pytest

from deploy import config
from deploy.errors import ConfigErrors
from deploy.sim.fleet import TenantSpec
from tests.conftest import CP_TOKEN, assert_no_secrets

BASE = {"FLEET_CP_URL": "https://cp.example.com", "FLEET_CP_TOKEN": "t0k", "FLEET_SHA": "8ddce85f3b2a"}


def errors_for(**overrides: str) -> dict[str, str]:
    env = {**BASE, **{config.env_name(k.replace("_", "-")): v for k, v in overrides.items()}}
    with pytest.raises(ConfigErrors) as caught:
        config.load(env)
    errors: dict[str, str] = {}
    for error in caught.value.errors:
        errors[error.input_name] = errors.get(error.input_name, "") + str(error)
    return errors


def test_defaults_load_and_target_tag_derives_from_sha():
    cfg = config.load(BASE)
    assert cfg.rollout.target_tag == "staging-8ddce85"
    assert cfg.promote.source == "staging-8ddce85"
    assert cfg.cp.rollout_timeout == 600 and cfg.cp.request_timeout == 120
    assert cfg.cp.retry_delays == (5, 10, 20)
    assert cfg.stages == ("rollout", "verify", "promote")


@pytest.mark.parametrize(
    ("overrides", "input_name", "words"),
    [
        ({"max_stragglers": "abc"}, "max-stragglers", "whole number"),
        ({"max_stragglers": "-1"}, "max-stragglers", "whole number"),
        ({"batch_size": "0"}, "batch-size", "at least 1"),
        ({"cp_url": "http://cp.example.com"}, "cp-url", "https://"),
        ({"cp_url": "cp.example.com"}, "cp-url", "http(s) URL"),
        ({"rollout_timeout": "60"}, "rollout-timeout", "below request-timeout"),
        ({"rollout_timeout": "390"}, "rollout-timeout", "300 + 90 = 390"),
        ({"soak_seconds": "-5"}, "soak-seconds", "at least 0"),
        ({"verify_budget": "nan"}, "verify-budget", "finite"),
        ({"dry_run": "maybe"}, "dry-run", "true or false"),
        ({"retry_delays": "5,x"}, "retry-delays", "number of seconds"),
        ({"stages": "rollout,deploy"}, "stages", "unknown stage 'deploy'"),
        ({"verify_url": "https://example.com/buildinfo"}, "verify-url", "{slug}"),
        ({"promote_images": "ftp://ghcr.io/acme/app"}, "promote-images", "only http:// or https://"),
        ({"promote_images": "http://registry.lan/acme/app"}, "promote-images", "needs allow-insecure-http"),
        ({"promote_images": "acme"}, "promote-images", "host[:port]/repository"),
        ({"promote_source": "sha256:abc"}, "promote-source", "64 lowercase hex"),
        ({"registry_username": "bot"}, "registry-password", "go together"),
        ({"sha": "not-a-sha"}, "sha", "hex"),
        ({"disabled_variable": "bad name"}, "disabled-variable", "variable name"),
        ({"timeout": "0"}, "timeout", "greater than 0"),
    ],
)
def test_each_bad_input_is_named_with_its_value(overrides, input_name, words):
    errors = errors_for(**overrides)
    assert input_name in errors, errors
    assert words in errors[input_name]


def test_every_bad_input_is_reported_at_once():
    errors = errors_for(max_stragglers="abc", batch_size="x", cp_url="ftp://x")
    assert {"max-stragglers", "batch-size", "cp-url"} <= set(errors)


def test_a_secret_value_is_never_echoed_in_an_error():
    env = {**BASE, "FLEET_REGISTRY_USERNAME": "bot", "FLEET_REGISTRY_PASSWORD": "pw-secret-value"}
    env["FLEET_PROMOTE_IMAGES"] = "ghcr.io/acme/app"
    env["FLEET_VERIFY_URL"] = "https://{slug}.example.com/buildinfo"
    config.load(env)  # valid
    env["FLEET_CP_TOKEN"] = ""
    with pytest.raises(ConfigErrors) as caught:
        config.load(env)
    assert "pw-secret-value" not in str(caught.value)


def test_loopback_cp_may_use_http_and_insecure_is_opt_in():
    assert config.load({**BASE, "FLEET_CP_URL": "http://127.0.0.1:8080"}).cp.url.startswith("http://")
    assert config.load({**BASE, "FLEET_CP_URL": "http://[::1]:8080"}).cp.url
    insecure = {**BASE, "FLEET_CP_URL": "http://cp.internal", "FLEET_ALLOW_INSECURE_HTTP": "yes"}
    assert config.load(insecure).cp.url == "http://cp.internal"


def test_promote_without_verify_url_is_refused_unless_verify_is_left_out():
    errors = errors_for(promote_images="ghcr.io/acme/app")
    assert "latest never moves without proof" in errors["verify-url"]
    env = {**BASE, "FLEET_PROMOTE_IMAGES": "ghcr.io/acme/app", "FLEET_STAGES": "rollout,promote"}
    assert config.load(env).stages == ("rollout", "promote")


def test_promote_only_needs_no_control_plane():
    env = {"FLEET_STAGES": "promote", "FLEET_PROMOTE_IMAGES": "ghcr.io/acme/app",
           "FLEET_PROMOTE_SOURCE": "sha256:" + "a" * 64}
    cfg = config.load(env)
    assert cfg.promote.source == "sha256:" + "a" * 64 and cfg.cp.url == ""


@pytest.mark.parametrize("word", ["1", "TRUE", "yes", "On", "disabled", "DISABLE"])
def test_kill_switch_words_that_skip(word):
    assert config.kill_switch({"FLEET_DISABLED": word}) is True


@pytest.mark.parametrize("word", ["", "0", "false", "No", "off", "enabled"])
def test_kill_switch_words_that_run(word):
    assert config.kill_switch({"FLEET_DISABLED": word}) is False


def test_a_kill_switch_typo_is_an_error_not_a_guess():
    with pytest.raises(ConfigErrors, match="disabled"):
        config.kill_switch({"FLEET_DISABLED": "ture"})


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ({"max_stragglers": "abc"}, "max-stragglers"),
        ({"cp_url": "http://cp.example.com"}, "cp-url"),
        ({"rollout_timeout": "2", "cp_tenant_timeout": "2", "cp_settle_seconds": "1"}, "rollout-timeout"),
        ({"disabled": "perhaps"}, "disabled"),
    ],
)
def test_bad_input_exits_2_with_zero_requests_and_still_writes_outputs(fleet, action, inputs, named):
    _sim, server = fleet([TenantSpec("a")])
    result = action(server, **inputs)

    assert result.code == 2
    assert server.requests == []
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert any(f"title=input {named}::" in line for line in errors), errors
    assert result.outputs["outcome"] == "failed" and result.outputs["ok"] == "false"
    assert result.outputs["result_count"] == "0" and result.outputs["quarantined"] == "[]"
    assert result.report is not None and result.report["exit_code"] == 2
    assert_no_secrets(result, CP_TOKEN)
