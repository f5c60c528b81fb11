"""Bad inputs: one clear error naming the input, exit 2, before any network call."""

from __future__ import annotations

import base64

import pytest

from deploy import config
from deploy.errors import ConfigErrors
from deploy.sim.fleet import TenantSpec
from tests.support import CP_TOKEN, assert_no_secrets

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
    assert cfg.cp.rollout_timeout == 600 and cfg.http.request_timeout == 120
    assert cfg.http.retry_delays == (5, 10, 20)
    assert cfg.stages == ("rollout", "verify", "promote")


@pytest.mark.parametrize(
    ("overrides", "input_name", "words"),
    [
        ({"max_stragglers": "abc"}, "max-stragglers", "whole number"),
        ({"max_stragglers": "-1"}, "max-stragglers", "must be 0 or more"),
        ({"batch_size": "0"}, "batch-size", "a call takes at least one tenant"),
        ({"cp_url": "http://cp.example.com"}, "cp-url", "https://"),
        ({"cp_url": "cp.example.com"}, "cp-url", "http(s) URL"),
        ({"rollout_timeout": "60"}, "rollout-timeout", "below request-timeout"),
        ({"rollout_timeout": "390"}, "rollout-timeout", "300 + 90 = 390"),
        ({"soak_seconds": "-5"}, "soak-seconds", "must be 0 or more"),
        ({"batch_soak_seconds": "-1"}, "batch-soak-seconds", "must be 0 or more"),
        ({"target_tag": "staging-0000000"}, "target-tag", "names commit 0000000, not sha 8ddce85f3b2a"),
        ({"target_tag": "sha-abcdef12"}, "target-tag", "names commit abcdef12"),
        ({"verify_budget": "nan"}, "verify-budget", "finite"),
        ({"dry_run": "maybe"}, "dry-run", "true or false"),
        ({"verify_each_batch": "maybe"}, "verify-each-batch", "true or false"),
        ({"skip_current": "maybe"}, "skip-current", "true or false"),
        ({"on_failure": "revert"}, "on-failure", "expected hold or rollback"),
        ({"rollback_tag": "bad tag"}, "rollback-tag", "not a valid image tag"),
        ({"retry_delays": "5,x"}, "retry-delays", "number of seconds"),
        ({"stages": "rollout,deploy"}, "stages", "unknown stage 'deploy'"),
        ({"stages": "rollot,verify"}, "stages", "unknown stage 'rollot' (did you mean rollout?)"),
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


def test_verify_each_batch_is_on_by_default_and_can_be_turned_off():
    assert config.load(BASE).verify.each_batch is True
    assert config.load({**BASE, "FLEET_VERIFY_EACH_BATCH": "false"}).verify.each_batch is False
    assert config.load({**BASE, "FLEET_VERIFY_EACH_BATCH": "No"}).verify.each_batch is False
    assert config.load({**BASE, "FLEET_VERIFY_EACH_BATCH": "on"}).verify.each_batch is True


def test_fleet_state_inputs_default_to_resume_hold_and_the_promote_tag():
    rollout = config.load(BASE).rollout
    assert rollout.skip_current is True
    assert rollout.on_failure == "hold"
    assert rollout.rollback_tag == "latest"  # promote-tag's default: it still names the last promoted build


def test_fleet_state_inputs_parse():
    rollout = config.load({**BASE, "FLEET_SKIP_CURRENT": "false", "FLEET_ON_FAILURE": "rollback",
                           "FLEET_ROLLBACK_TAG": "v1.4.2"}).rollout
    assert (rollout.skip_current, rollout.on_failure, rollout.rollback_tag) == (False, "rollback", "v1.4.2")
    assert config.load({**BASE, "FLEET_SKIP_CURRENT": "No"}).rollout.skip_current is False
    assert config.load({**BASE, "FLEET_ON_FAILURE": " Rollback "}).rollout.on_failure == "rollback"
    assert config.load({**BASE, "FLEET_ON_FAILURE": "HOLD"}).rollout.on_failure == "hold"


def test_rollback_tag_defaults_to_the_value_of_promote_tag():
    assert config.load({**BASE, "FLEET_PROMOTE_TAG": "stable"}).rollout.rollback_tag == "stable"
    assert config.load({**BASE, "FLEET_PROMOTE_TAG": "stable", "FLEET_ROLLBACK_TAG": " "}).rollout.rollback_tag \
        == "stable"  # blank is "not given"
    cfg = config.load({**BASE, "FLEET_PROMOTE_TAG": "stable", "FLEET_ROLLBACK_TAG": "last-good"})
    assert (cfg.rollout.rollback_tag, cfg.promote.tag) == ("last-good", "stable")


def test_a_bad_on_failure_names_the_input_the_value_and_both_words():
    errors = errors_for(on_failure="roll-back")
    assert set(errors) == {"on-failure"}
    assert "on-failure" in errors["on-failure"] and "'roll-back'" in errors["on-failure"]
    assert "hold" in errors["on-failure"] and "rollback" in errors["on-failure"]


def test_a_bad_promote_tag_is_one_error_even_when_rollback_tag_defaults_to_it():
    errors = errors_for(promote_tag="not/a/tag")
    assert set(errors) == {"promote-tag"}


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
        ({"request_timeout": "1e12"}, "request-timeout"),
        ({"timeout": "1e12"}, "timeout"),
        ({"verify_concurrency": "100000000"}, "verify-concurrency"),
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


@pytest.mark.parametrize(
    ("overrides", "input_name", "words"),
    [
        ({"request_timeout": "1e12"}, "request-timeout", "at most 86400 seconds"),
        ({"rollout_timeout": "1e12"}, "rollout-timeout", "at most 86400 seconds"),
        ({"timeout": "1e12"}, "timeout", "at most 86400 seconds"),
        ({"soak_seconds": "86401"}, "soak-seconds", "at most 86400 seconds"),
        ({"cp_tenant_timeout": "1e9"}, "cp-tenant-timeout", "at most 86400 seconds"),
        ({"checks_timeout": "1e30"}, "checks-timeout", "at most 86400 seconds"),
        ({"verify_budget": "1e12"}, "verify-budget", "at most 86400 seconds"),
        ({"verify_interval": "3601"}, "verify-interval", "at most 3600 seconds"),
        ({"checks_interval": "1e6"}, "checks-interval", "at most 3600 seconds"),
        ({"retry_delays": "5,1e12"}, "retry-delays", "at most 3600 seconds"),
        ({"batch_size": "10001"}, "batch-size", "at most 10000"),
        ({"verify_concurrency": "100000000"}, "verify-concurrency", "at most 256"),
        ({"max_stragglers": "1000001"}, "max-stragglers", "at most 1000000"),
        ({"max_stragglers": "9" * 5000}, "max-stragglers", "at most 1000000"),
        ({"batch_size": "-3"}, "batch-size", "at least 1"),
        ({"verify_concurrency": "-1"}, "verify-concurrency", "at least 1"),
    ],
)
def test_an_extreme_number_fails_validation_naming_its_bound(overrides, input_name, words):
    errors = errors_for(**overrides)
    assert input_name in errors, errors
    assert words in errors[input_name]


def test_the_largest_allowed_numbers_load():
    cfg = config.load({**BASE, "FLEET_TIMEOUT": "86400", "FLEET_VERIFY_CONCURRENCY": "256",
                       "FLEET_BATCH_SIZE": "10000", "FLEET_MAX_STRAGGLERS": "1000000", "FLEET_RETRY_DELAYS": "3600"})
    assert cfg.timeout == 86400 and cfg.verify.concurrency == 256 and cfg.rollout.batch_size == 10000
    assert cfg.rollout.max_stragglers == 1_000_000 and cfg.http.retry_delays == (3600,)


def test_a_bad_cp_url_is_echoed_without_its_password_or_query():
    errors = errors_for(cp_url="ftp://deploy:hunter2-pass@cp.example.com/api?token=abcdefgh12345#frag")
    assert "ftp://cp.example.com/api?…" in errors["cp-url"]
    assert "hunter2" not in errors["cp-url"] and "abcdefgh12345" not in errors["cp-url"]


@pytest.mark.parametrize(
    "url",
    ["https://tenants.example.com/buildinfo?key=k3y-abcdefgh", "http://{slug}.example.com/b?key=k3y-abcdefgh"],
)
def test_a_bad_verify_url_is_echoed_without_its_query_key(url):
    errors = errors_for(verify_url=url)
    assert "k3y-abcdefgh" not in errors["verify-url"]
    assert "example.com/b" in errors["verify-url"] or "example.com/buildinfo" in errors["verify-url"]
    assert "?…" in errors["verify-url"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pw@cp.example.com:8443/x?key=v#f", "https://cp.example.com:8443/x?…"),
        ("https://cp.example.com", "https://cp.example.com"),
        ("user:pw@cp.example.com/x", "cp.example.com/x"),
        ("https://{slug}.example.com/buildinfo", "https://{slug}.example.com/buildinfo"),
        ("https://h.example.com/#access_token=abc", "https://h.example.com/#…"),
    ],
)
def test_display_url_keeps_host_and_path_and_drops_credentials(url, shown):
    assert config.display_url(url) == shown


def test_secrets_include_the_basic_credential_in_utf8_and_latin1():
    env = {"FLEET_REGISTRY_USERNAME": "bot", "FLEET_REGISTRY_PASSWORD": "pässwörd-1234"}
    found = config.secrets_in(env)
    assert "pässwörd-1234" in found
    assert base64.b64encode("bot:pässwörd-1234".encode()).decode() in found
    assert base64.b64encode("bot:pässwörd-1234".encode("latin-1")).decode() in found


def test_secrets_include_credentials_embedded_in_url_inputs():
    env = {
        "FLEET_CP_URL": "https://deploy:p%40ss-w0rd@cp.example.com/?tenant=eu&api_key=abcdefgh1234",
        "FLEET_VERIFY_URL": "https://{slug}.example.com/buildinfo?key=k3y%2Fabcdefgh&v=2",
    }
    found = set(config.secrets_in(env))
    assert {"p%40ss-w0rd", "p@ss-w0rd", "abcdefgh1234", "k3y%2Fabcdefgh", "k3y/abcdefgh"} <= found
    assert not {"eu", "2", "deploy"} & found  # short query values and the user name are not secrets


def test_a_short_secret_is_warned_about_by_input_name_never_by_value():
    env = {"FLEET_CP_TOKEN": "x9q", "FLEET_REGISTRY_PASSWORD": "long-enough-password", "FLEET_GITHUB_TOKEN": "ab"}
    warnings = config.short_secret_warnings(env)
    assert warnings == [
        "cp-token is only 3 characters: too short to be redacted reliably from logs; use a longer token",
        "github-token is only 2 characters: too short to be redacted reliably from logs; use a longer token",
    ]
    assert config.short_secret_warnings({"FLEET_CP_TOKEN": "eight-ch"}) == []


def test_a_short_token_is_warned_once_and_leaves_outputs_and_report_intact(action):
    result = action(None, cp_token="tru", disabled="1")
    warnings = [line for line in result.stdout.splitlines() if line.startswith("::warning")]
    assert sum("cp-token is only 3 characters" in line for line in warnings) == 1
    assert result.code == 0 and result.outputs["outcome"] == "skipped"
    assert result.outputs["ok"] == "false" and result.outputs["quarantined"] == "[]"
    assert result.report is not None and result.report["outcome"] == "skipped"


def test_url_credentials_never_reach_the_log_outputs_summary_or_report(fleet, action):
    _sim, server = fleet([TenantSpec("a")])
    result = action(
        server, cp_url="ftp://deploy:hunter2-pass@cp.example.com/?token=abcdefgh12345",
        verify_url="https://{slug}.example.com/b?key=k3y-abcdefgh",
    )
    assert result.code == 2 and server.requests == []
    assert_no_secrets(result, "hunter2-pass", "abcdefgh12345", "k3y-abcdefgh")


@pytest.mark.parametrize("value", ["1_000", "１０", "١٠"])
def test_a_number_in_another_script_or_with_underscores_is_refused(value):
    """float() and \\d accept these; an input that only looks like a number must not pass."""
    assert "expected" in errors_for(timeout=value)["timeout"]
    assert "is neither a count of tenants (5) nor a percentage of the fleet (10%)" in \
        errors_for(batch_size=value)["batch-size"]


def test_a_bad_timeout_is_one_error_not_two():
    assert errors_for(timeout="nan")["timeout"].count("timeout") == 1


@pytest.mark.parametrize("url", ["https://deploy:pw-Secret-99@cp.example.com", "https://cp.example.com/#x",
                                 "http://deploy:pw-Secret-99?x@127.0.0.1:9"])
def test_credentials_or_a_fragment_in_cp_url_are_refused_without_echoing_them(url):
    error = errors_for(cp_url=url)["cp-url"]
    assert "pw-Secret-99" not in error and ("credentials" in error or "'#'" in error)


def test_credentials_in_a_promote_image_are_refused_without_echoing_them():
    error = errors_for(promote_images="https://deploy:pw-Secret-99@reg.example.com/acme/app")["promote-images"]
    assert "pw-Secret-99" not in error and "registry-username" in error


@pytest.mark.parametrize("image", ["https://deploy:pw-Secret-99@reg.example.com/acme/app@sha256:" + "ab" * 32,
                                   "https://deploy:pw/Secret-99@sha256:" + "ab" * 32])
def test_a_digest_after_credentials_is_named_without_echoing_them(image):
    error = errors_for(promote_images=image)["promote-images"]
    assert "pw-Secret-99" not in error and "pw/Secret-99" not in error and "remove the digest '@sha256:abab" in error


def test_a_port_after_credentials_is_not_mistaken_for_a_digest():
    error = errors_for(promote_images="https://deploy:pw-Secret-99@registry:5000")["promote-images"]
    assert "pw-Secret-99" not in error and "digest" not in error and "registry-username" in error


@pytest.mark.parametrize("name", ["cp_token", "github_token"])
def test_a_token_that_cannot_travel_in_a_header_is_a_configuration_error(name):
    error = errors_for(**{name: "t\u00f6k\u20ac-with-euro"})[name.replace("_", "-")]
    assert "printable text on one line" in error and "euro" not in error


@pytest.mark.parametrize(("given", "sent"), [
    ("https://t.example/tenants/{slug}/buildinfo", "https://t.example/tenants/{slug}/buildinfo"),
    ("https://{slug}.t.example/a/../buildinfo?", "https://{slug}.t.example/buildinfo"),
    ("https://t.example/./%7e/{slug}?token=a%7eb", "https://t.example/~/{slug}?token=a~b"),
])
def test_verify_url_is_kept_in_the_form_requests_sends(given: str, sent: str) -> None:
    """Tenant reads skip requests' own URL preparation: the template is prepared once, here."""
    assert config.load({**BASE, "FLEET_VERIFY_URL": given}).verify.url_template == sent


@pytest.mark.parametrize(("tag", "named"), [
    ("staging-8ddce85", "8ddce85"),
    ("sha-8ddce85f3b2a", "8ddce85f3b2a"),
    ("staging-0000000", "0000000"),  # seven digits: git's short SHA
    ("release-20241101", ""),  # eight digits: a date, not a SHA
    ("build-104233", ""),  # too short
    ("v1.2.3", ""),
    ("latest", ""),
    ("staging-8DDCE85", "8ddce85"),  # a commit in upper case is still that commit
])
def test_the_commit_a_tag_names_by_its_hex_suffix(tag, named):
    assert config.tag_sha(tag) == named


def test_a_tag_whose_suffix_agrees_with_sha_or_names_no_commit_loads():
    for tag in ("staging-8ddce85", "sha-8ddce85f3b2a", "release-20241101", "latest-build"):
        assert config.load({**BASE, "FLEET_TARGET_TAG": tag}).rollout.target_tag == tag


VERIFYING = {"verify_url": "https://{slug}.example.com/buildinfo"}


@pytest.mark.parametrize(("overrides", "input_name", "words"), [
    ({**VERIFYING, "timeout": "600"}, "timeout",
     "must be at least 630 s here (one deploy call's worst case (cp-tenant-timeout + cp-settle-seconds) 390 s + "
     "its proof (verify-budget) 240 s)"),
    ({**VERIFYING, "on_failure": "rollback", "timeout": "1000"}, "timeout",
     "must be at least 1260 s here (one deploy call's worst case (cp-tenant-timeout + cp-settle-seconds) 390 s + its "
     "proof (verify-budget) 240 s + kept for on-failure: rollback (one call's worst case + verify-budget) 630 s)"),
    ({"canary": "t1", "soak_seconds": "300", "timeout": "600"}, "timeout",
     "must be at least 690 s here (one deploy call's worst case (cp-tenant-timeout + cp-settle-seconds) 390 s + "
     "the canary's soak (soak-seconds) 300 s)"),
    ({"batch_soak_seconds": "900", "timeout": "1000"}, "timeout", "a batch's bake (batch-soak-seconds) 900 s"),
    ({"canary": "t1", "soak_seconds": "4000", "timeout": "3600"}, "soak-seconds",
     "4000 s is longer than timeout (3600 s)"),
    ({**VERIFYING, "verify_budget": "5000"}, "verify-budget", "5000 s is longer than timeout (3600 s)"),
    ({**VERIFYING, "verify_interval": "300"}, "verify-interval", "300 s is longer than verify-budget (240 s)"),
])
def test_durations_that_cannot_fit_together_name_the_minimum_that_does(overrides, input_name, words):
    assert words in errors_for(**overrides)[input_name]


def test_durations_that_fit_load_and_a_dry_run_needs_no_room_to_deploy():
    assert config.load({**BASE, "FLEET_VERIFY_URL": "https://{slug}.example.com/buildinfo"}).timeout == 3600
    assert config.load({**BASE, "FLEET_TIMEOUT": "100", "FLEET_DRY_RUN": "true"}).timeout == 100
