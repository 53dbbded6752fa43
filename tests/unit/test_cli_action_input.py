"""An action's command-line input: ``--data`` files and their errors, ``--set`` read as the field's type."""

from __future__ import annotations

from pathlib import Path

import pytest

from diskci.cli.action_input import parse_action_input
from diskci.errors import InvalidRequest, UsageError
from diskci.platform.actions.catalog import get_action, parse_input


def test_data_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--data @.*missing\.json: no such file"):
        parse_action_input(f"@{tmp_path / 'missing.json'}", [])
    with pytest.raises(UsageError, match="is a directory"):
        parse_action_input(f"@{tmp_path}", [])
    with pytest.raises(UsageError, match="name the file after the @"):
        parse_action_input("@", [])
    bad = tmp_path / "bad.json"
    bad.write_text('{"name":')
    with pytest.raises(UsageError, match=r"--data \(@.*bad\.json\) is not JSON: .*line 1"):
        parse_action_input(f"@{bad}", [])
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match="not UTF-8"):
        parse_action_input(f"@{bad}", [])
    good = tmp_path / "good.json"
    good.write_text('{"name": "debian-12-amd64"}')
    assert parse_action_input(f"@{good}", []) == {"name": "debian-12-amd64"}


def test_set_values_are_read_as_the_field_type() -> None:
    critical = get_action("system_mark_disk_image_publication_critical").input_model
    for word, value in [("yes", True), ("true", True), ("no", False), ("0", False)]:
        assert parse_action_input(None, [f"critical={word}", "publication_id=3"], critical) == {
            "critical": value,
            "publication_id": 3,
        }


def test_a_list_filter_takes_one_value_and_refuses_unknown_ones() -> None:
    spec = get_action("system_list_disk_image_publications")
    values = parse_action_input(None, ["status=published"], spec.input_model)
    assert parse_input(spec, values).status == ["published"]  # type: ignore[attr-defined]
    events = get_action("system_list_recent_events")
    assert parse_input(events, {"type": "api_token_created"}).type == ["api_token_created"]  # type: ignore[attr-defined]
    with pytest.raises(InvalidRequest, match="unknown event type 'bogus'"):
        parse_input(events, {"type": ["bogus"]})
    nodes = get_action("system_list_node_instances")
    with pytest.raises(InvalidRequest, match="unknown node status 'up'"):
        parse_input(nodes, {"status": "up"})
    assert parse_input(nodes, {"status": "booted"}).status == "booted"  # type: ignore[attr-defined]


def test_every_bad_field_of_a_new_platform_is_reported_at_once() -> None:
    spec = get_action("system_create_node_platform")
    bad = {
        "name": "Bad Name",
        "architectures": ["amd64"],
        "registry_repository": "",
        "cosign_identity_regexp": "(",
        "cosign_oidc_issuer": "nope",
    }
    with pytest.raises(InvalidRequest) as caught:
        parse_input(spec, bad)
    message = str(caught.value)
    for field in ("name:", "registry_repository:", "cosign_identity_regexp:", "cosign_oidc_issuer:"):
        assert field in message
    assert "Value error" not in message
