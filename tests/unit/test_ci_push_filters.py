"""Which pushes start a run: the push signature (Gitea, Forgejo and GitHub headers, constant-time
compare) and the workflow's ``on.push.tags`` filters with GitHub's pattern rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from diskci.ci.pushhook import push_signature
from diskci.ci.workflow import render, workflow
from diskci.platform.ci.triggers import push_tag_patterns, tag_matches
from diskci.platform.http.ci_push import BadPushSignature, _verify
from diskci.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-" + "x" * 30
BODY = b'{"ref": "refs/tags/v1", "after": "' + b"a" * 40 + b'"}'


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Gitea-Signature": push_signature(SECRET, BODY)},
        {"X-Forgejo-Signature": push_signature(SECRET, BODY).upper()},
        {"X-Hub-Signature-256": "sha256=" + push_signature(SECRET, BODY)},
        {"X-Gitea-Signature": "0" * 64, "X-Hub-Signature-256": "sha256=" + push_signature(SECRET, BODY)},
    ],
)
def test_a_body_signed_with_the_push_secret_passes(headers: dict[str, str]) -> None:
    _verify(headers, BODY, SECRET)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "no push signature"),
        ({"X-Gitea-Signature": "not-hex"}, "no push signature"),
        ({"X-Hub-Signature-256": push_signature(SECRET, BODY)}, "no push signature"),  # sha256= missing
        ({"X-Gitea-Signature": push_signature("other-secret", BODY)}, "does not match"),
        ({"X-Gitea-Signature": push_signature(SECRET, BODY + b" ")}, "does not match"),
    ],
)
def test_a_missing_malformed_or_wrong_signature_is_refused(headers: dict[str, str], message: str) -> None:
    with pytest.raises(BadPushSignature, match=message):
        _verify(headers, BODY, SECRET)


@pytest.mark.parametrize(
    ("tag", "patterns", "expected"),
    [
        ("v1.2.3", ["v*"], True),
        ("release-1", ["v*"], False),
        ("v1/rc", ["v*"], False),  # * stops at /
        ("v1/rc", ["v**"], True),
        ("v1.0", ["v[0-9].*"], True),
        ("vx.0", ["v[0-9].*"], False),
        ("v1.0-rc1", ["v*", "!v*-rc*"], False),  # the last matching pattern wins
        ("v1.0-rc1", ["!v*-rc*", "v*"], True),
        ("v10", ["v1+0"], True),
        ("v110", ["v1+0"], True),
        ("v0", ["v1?0"], True),  # ? makes the preceding character optional
        ("v*", ["v\\*"], True),
        ("v1", ["v\\*"], False),
        ("v1", [], False),
    ],
)
def test_tag_patterns_follow_githubs_filter_rules(tag: str, patterns: list[str], expected: bool) -> None:
    assert tag_matches(tag, patterns) is expected


def test_the_generated_workflow_runs_on_v_tags_only() -> None:
    spec = load_spec(ROOT / "platforms/debian-12-amd64.yaml")
    patterns = push_tag_patterns(render(workflow(spec, "platforms/debian-12-amd64.yaml")))
    assert patterns is not None and patterns.tags == ["v*"]
    assert patterns.matches("v0.3.0") and not patterns.matches("nightly")


@pytest.mark.parametrize(
    ("text", "v1", "nightly"),
    [
        ("on: push\njobs: {}\n", True, True),
        ("on: [push, workflow_dispatch]\njobs: {}\n", True, True),
        ("on:\n  push:\n    tags-ignore: [nightly]\njobs: {}\n", True, False),
        ("on:\n  push:\n    branches: [main]\njobs: {}\n", False, False),
        ("on: workflow_dispatch\njobs: {}\n", False, False),
        ("not: [valid\n", False, False),
    ],
)
def test_other_push_triggers(text: str, v1: bool, nightly: bool) -> None:
    patterns = push_tag_patterns(text)
    assert (patterns is not None and patterns.matches("v1")) is v1
    assert (patterns is not None and patterns.matches("nightly")) is nightly
