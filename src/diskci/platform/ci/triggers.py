"""What starts a CI run: a ref of the platform's image-build repository, read at its commit, made a run
once per trigger; and which pushed tags a workflow runs on.

``start_run`` resolves the ref (``platform.ci.gitsource``), reads the workflow at that commit and
creates the run (``scheduler.create_run``). A run with a ``trigger_key`` (``push:<ref>:<sha>``) is made
once per platform: asked again, ``start_run`` answers the existing run (``Started.duplicate``), also
when two requests race (the database's unique key decides).

``push_tag_patterns(workflow)`` reads ``on.push.tags`` / ``on.push.tags-ignore`` and ``tag_matches``
applies them to a tag name with GitHub's (and Gitea's) filter pattern rules: ``*`` any characters but
``/``, ``**`` any characters, ``?`` the preceding character or nothing, ``+`` one or more of the
preceding character, ``[...]`` a character class, ``\\`` escapes, and a pattern starting with ``!``
excludes what the patterns before it included (the last matching pattern wins).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from diskci.bounded_yaml import load_bounded_yaml
from diskci.ci.workflow import WORKFLOW_PATH
from diskci.errors import Conflict
from diskci.platform.ci import scheduler
from diskci.platform.ci.gitsource import GitSource, ResolvedRef
from diskci.platform.db.models import CiRun, NodePlatform
from diskci.platform.settings import PlatformSettings

__all__ = [
    "CiNotConfigured",
    "PushTagPatterns",
    "Started",
    "git_source",
    "push_tag_patterns",
    "push_trigger_key",
    "start_run",
    "tag_matches",
]


class CiNotConfigured(Conflict):
    """The platform has no image-build repository (``system_configure_disk_image_ci`` sets one)."""


@dataclass(frozen=True)
class Started:
    run: CiRun
    duplicate: bool


def git_source(settings: PlatformSettings, platform: NodePlatform) -> GitSource:
    """The platform's image-build repository, read through the mirror cache in the state directory."""
    if not platform.image_build_repository:
        raise CiNotConfigured(
            f"node platform {platform.name!r} has no image-build repository",
            hint="Set one: system_configure_disk_image_ci {"
            f'"node_platform": "{platform.name}", "image_build_repository": "<git URL or path>"}}',
        )
    return GitSource(settings.state_dir / "git", platform.image_build_repository)


def push_trigger_key(ref: str, sha: str) -> str:
    return f"push:{ref}:{sha}"


def _existing(session: Session, platform_id: int, trigger_key: str) -> CiRun | None:
    return session.scalar(
        select(CiRun).where(CiRun.platform_id == platform_id, CiRun.trigger_key == trigger_key)
    )


def start_run(
    session: Session,
    platform: NodePlatform,
    resolved: ResolvedRef,
    workflow_text: str,
    *,
    event: str,
    inputs: Mapping[str, Any] | None = None,
    trigger_key: str | None = None,
    reproducibility_check: bool = False,
) -> Started:
    """The queued run of ``workflow_text`` at ``resolved``; the existing one for a ``trigger_key`` seen."""
    if trigger_key is not None:
        found = _existing(session, platform.id, trigger_key)
        if found is not None:
            return Started(found, duplicate=True)
    try:
        with session.begin_nested():
            run = scheduler.create_run(
                session,
                platform,
                workflow_text,
                ref=resolved.ref,
                sha=resolved.sha,
                event=event,
                inputs=inputs,
                trigger_key=trigger_key,
                reproducibility_check=reproducibility_check,
            )
    except IntegrityError:
        if trigger_key is None:
            raise
        found = _existing(session, platform.id, trigger_key)  # a racing trigger made it first
        if found is None:
            raise
        return Started(found, duplicate=True)
    return Started(run, duplicate=False)


def read_workflow(source: GitSource, resolved: ResolvedRef) -> str:
    return source.read_file(resolved.sha, WORKFLOW_PATH)


# --- push filters ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushTagPatterns:
    """``on.push`` of a workflow, for tags: ``None`` when a tag push does not run it at all."""

    tags: list[str] | None  # None: every tag (no tags filter)
    tags_ignore: list[str]

    def matches(self, tag: str) -> bool:
        if self.tags is not None:
            return tag_matches(tag, self.tags)
        return not (self.tags_ignore and tag_matches(tag, self.tags_ignore))


def _strings(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        return []
    return [str(v) for v in items if isinstance(v, str | int | float)]


def push_tag_patterns(workflow_text: str) -> PushTagPatterns | None:
    """The tag filters of the workflow's push trigger; None when it has no push trigger or one that
    only runs for branches (``branches`` without ``tags``)."""
    try:
        data = load_bounded_yaml(workflow_text)
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict):
        return None
    on = data.get("on", data.get(True))  # YAML 1.1 reads the key ``on`` as true
    if isinstance(on, str):
        on = {on: None}
    elif isinstance(on, list):
        on = {str(e): None for e in on}
    if not isinstance(on, dict) or "push" not in on:
        return None
    push = on["push"]
    if not isinstance(push, dict):
        return PushTagPatterns(tags=None, tags_ignore=[])  # ``on: push``: every push
    has_tags = "tags" in push or "tags-ignore" in push
    if not has_tags and ("branches" in push or "branches-ignore" in push):
        return None
    return PushTagPatterns(
        tags=_strings(push["tags"]) if "tags" in push else None,
        tags_ignore=_strings(push.get("tags-ignore")),
    )


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
            else:
                out.append("[^/]*")
                i += 1
            continue
        if c in "?+" and out:
            out.append(c)  # the preceding character (or class): optional, or one or more
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                out.append(f"[{body}]")
                i = end + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def tag_matches(tag: str, patterns: Sequence[str]) -> bool:
    """Whether ``tag`` passes ``patterns`` (GitHub's filter rules; see the module)."""
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        if body and _pattern_regex(body).fullmatch(tag):
            matched = not negated
    return matched
