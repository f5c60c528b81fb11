"""The JSON report's contract: one serialisation rule, a shipped schema, and a shape that changes only
with ``schema_version``."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from deploy.controlplane import CallState
from deploy.pipeline import Outcome, Run
from deploy.promote import PromotionState
from deploy.report import REPORTED, SCHEMA_VERSION, as_json, report
from deploy.verify import STATES, Verdict
from tests import golden
from tests.report_schema import SCHEMA_PATH, check_report, schema


def test_the_shipped_schema_is_a_valid_draft_2020_12_schema_of_this_schema_version():
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    shipped = schema()["properties"]["schema_version"]["const"]
    assert shipped == SCHEMA_VERSION, f"{SCHEMA_PATH.name} says schema_version {shipped}, the code {SCHEMA_VERSION}"
    check_report(report(Run(outcome=Outcome.FAILED, exit_code=2, reason="bad")))  # also checks the schema itself


def test_the_readme_names_the_current_schema_version():
    readme = (SCHEMA_PATH.parent.parent / "README.md").read_text()
    assert f"`schema_version` (now `{SCHEMA_VERSION}`)" in readme


def test_the_report_shape_matches_the_golden_unless_schema_version_was_bumped():
    now, before = golden.current(), golden.recorded()
    assert before is not None, f"{golden.GOLDEN} is missing: run `{golden.REGENERATE}`"
    if before["shape"] != now["shape"] and before["schema_version"] == now["schema_version"]:
        pytest.fail(
            f"the JSON report's shape changed, but deploy.report.SCHEMA_VERSION is still {SCHEMA_VERSION}:\n"
            + "\n".join(golden.differences(before["shape"], now["shape"]))
            + "\nReaders tell shapes apart by schema_version: bump SCHEMA_VERSION in deploy/report.py and the "
            "schema_version const in schema/report.schema.json, describe the change there, then run "
            f"`{golden.REGENERATE}`.",
            pytrace=False,
        )
    assert before == now, (
        f"deploy.report.SCHEMA_VERSION is {SCHEMA_VERSION} but {golden.GOLDEN.name} records "
        f"{before['schema_version']}: run `{golden.REGENERATE}`"
    )


def test_the_schema_names_exactly_the_states_the_code_has():
    """A new state (an ``aborted`` outcome, say) must reach the schema, or its first report fails validation."""
    defs = schema()["$defs"]
    assert schema()["properties"]["outcome"]["enum"] == [outcome.value for outcome in Outcome]
    assert defs["call"]["properties"]["state"]["enum"] == [state.value for state in CallState]
    assert defs["verdict"]["properties"]["state"]["enum"] == [state.value for state in STATES]
    assert defs["promotion"]["properties"]["state"]["enum"] == [state.value for state in PromotionState]


@pytest.mark.parametrize("name", list(golden.representative_runs()))
def test_every_representative_report_matches_the_shipped_schema(name):
    check_report(golden.documents()[name], f"the report of the {name} run")


def test_the_schema_rejects_what_is_not_ours():
    document = golden.documents()["full"]
    document["rollout"]["calls"][0]["rows"][0]["secret_field"] = "from the CP"
    document["verify"]["tenants"][0]["state"] = "quarantined"  # the coverage gate's word, never a verify verdict
    with pytest.raises(AssertionError) as caught:
        check_report(document)
    message = str(caught.value)
    assert "$.rollout.calls[0].rows[0]: Additional properties are not allowed ('secret_field'" in message
    assert "$.verify.tenants[0].state: 'quarantined' is not one of" in message


def test_the_report_starts_with_its_schema_version_and_holds_enums_as_their_words():
    document = report(golden.representative_runs()["full"])
    assert next(iter(document)) == "schema_version" and document["schema_version"] == SCHEMA_VERSION
    assert type(document["outcome"]) is str and document["outcome"] == "failed"
    states = [tenant["state"] for tenant in document["verify"]["tenants"]]
    assert states == ["verified", "stale", "unreachable", "unhealthy"] and {type(s) for s in states} == {str}
    assert json.loads(json.dumps(document)) == document  # nothing JSON would change: tuples are already lists


def test_as_json_refuses_what_the_contract_does_not_declare():
    @dataclass
    class Stray:
        token: str

    with pytest.raises(TypeError, match="Stray is not part of the JSON report's contract"):
        as_json({"nested": [Stray("x")]})
    with pytest.raises(TypeError):
        as_json(object())
    assert as_json((Verdict.STALE, {"k": (1, 2.5, None, True)})) == ["stale", {"k": [1, 2.5, None, True]}]


def test_every_declared_key_is_unique_per_type():
    for kind, keys in REPORTED.items():
        names = [key.name for key in keys]
        assert len(names) == len(set(names)), f"{kind.__name__} declares a key twice: {names}"
