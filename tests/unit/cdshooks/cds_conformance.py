"""CDS Hooks 2.0 response rules, checked on the JSON an EHR receives (docs/cds-hooks.md 4.2)."""

from __future__ import annotations

from typing import Any

INDICATORS = {"info", "warning", "critical"}


def no_empty_values(value: Any, where: str = "$") -> None:
    """No null, "", [] or {} anywhere ("Use of JSON"), except what the caller exempts."""
    assert value is not None, f"{where} is null"
    if isinstance(value, str):
        assert value.strip(), f"{where} is an empty string"
    elif isinstance(value, list):
        assert value, f"{where} is an empty array"
        for i, v in enumerate(value):
            no_empty_values(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        assert value, f"{where} is an empty object"
        for k, v in value.items():
            no_empty_values(v, f"{where}.{k}")


def assert_action(action: dict[str, Any], where: str) -> None:
    assert action["type"] in ("create", "update", "delete"), where
    assert action["description"].strip(), where
    if action["type"] == "create":
        resource = action["resource"]
        assert "id" not in resource, f"{where}: a create carries no id (the EHR assigns it)"
        if resource["resourceType"] == "ServiceRequest":
            for name in ("status", "intent", "code", "subject"):
                assert name in resource, f"{where}: ServiceRequest.{name} is required"
            assert resource["subject"]["reference"].startswith("Patient/")
            for ref in resource.get("supportingInfo", []):
                # A systemAction's urn:uuid does not resolve inside a card's action.
                assert not str(ref.get("reference", "")).startswith("urn:uuid:"), where
    if action["type"] == "delete":
        assert "/" in action["resourceId"], where


def assert_conformant(body: dict[str, Any]) -> None:
    """Every rule of the spec's response, plus unique uuids (or feedback cannot be joined)."""
    assert set(body) <= {"cards", "systemActions"}
    assert isinstance(body["cards"], list)
    if body["cards"]:
        no_empty_values(body)
    elif "systemActions" in body:
        no_empty_values(body["systemActions"], "$.systemActions")
    uuids: list[str] = []
    for i, card in enumerate(body["cards"]):
        where = f"cards[{i}]"
        assert len(card["summary"]) < 140, f"{where}.summary is {len(card['summary'])} characters"
        assert card["indicator"] in INDICATORS, where
        assert card["source"]["label"].strip(), where
        assert card["uuid"], f"{where} has no uuid: no feedback would come back"
        uuids.append(card["uuid"])
        suggestions = card.get("suggestions")
        if suggestions is not None:
            assert card.get("selectionBehavior") in ("at-most-one", "any"), where
            recommended = [s for s in suggestions if s.get("isRecommended")]
            if len(recommended) > 1:
                assert card["selectionBehavior"] == "any", where
            for j, s in enumerate(suggestions):
                assert s["label"].strip()
                assert s["uuid"], f"{where}.suggestions[{j}] has no uuid"
                uuids.append(s["uuid"])
                for k, action in enumerate(s.get("actions", [])):
                    assert_action(action, f"{where}.suggestions[{j}].actions[{k}]")
        else:
            assert "selectionBehavior" not in card, where
        for reason in card.get("overrideReasons", []):
            assert reason["code"] and reason["system"] and reason["display"], where
    for k, action in enumerate(body.get("systemActions", [])):
        assert_action(action, f"systemActions[{k}]")
    assert len(uuids) == len(set(uuids)), "card and suggestion uuids must be unique"
