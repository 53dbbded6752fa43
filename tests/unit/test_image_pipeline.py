"""run_build: stages run per architecture in order, build.json saved after each, inputs and epoch recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from diskci.errors import UsageError
from diskci.image import pipeline
from diskci.image.pipeline import BuildContext, Stage, run_build, select_architectures
from diskci.manifest import BuildManifest
from diskci.spec import Architecture, parse_spec

ROOT = Path(__file__).resolve().parents[2]
CALLS: list[tuple[str, str]] = []


def first_stage(ctx: BuildContext) -> None:
    """A stand-in stage: writes one file and records it."""
    CALLS.append(("first", ctx.arch.value))
    out = ctx.arch_dir / "first.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{ctx.arch.value} {ctx.source_date_epoch}\n")
    ctx.add_artifact(out, "text/plain")
    ctx.tool("fake-tool", "1.0")


def failing_stage(ctx: BuildContext) -> None:
    CALLS.append(("failing", ctx.arch.value))
    # build.json already lists what the first stage made, on disk
    saved = BuildManifest.load(ctx.build_dir)
    assert saved.architectures[ctx.arch.value].artifact("first.txt")
    raise UsageError("stop here")


@pytest.fixture
def fake_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    CALLS.clear()
    monkeypatch.setattr(
        pipeline,
        "STAGES",
        (
            Stage("first", f"{__name__}:first_stage"),
            Stage("failing", f"{__name__}:failing_stage", ("first",)),
        ),
    )


def two_arch_spec(tmp_path: Path) -> Path:
    data = yaml.safe_load((ROOT / "platforms" / "debian-12-amd64.yaml").read_text())
    data["architectures"] = ["amd64", "arm64"]
    data["kernel_package"] = {"amd64": "linux-image-amd64", "arm64": "linux-image-arm64"}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_build_runs_each_stage_per_arch(tmp_path: Path, fake_stages: None) -> None:
    spec = two_arch_spec(tmp_path)
    out = tmp_path / "out"
    manifest = run_build(spec, None, out, tmp_path / "cache", 42, ["first"])
    assert CALLS == [("first", "amd64"), ("first", "arm64")]
    saved = json.loads((out / "build.json").read_text())
    assert saved["source_date_epoch"] == 42
    assert saved["tools"]["fake-tool"] == "1.0" and "python" in saved["tools"]
    assert saved["spec_digest"] == manifest.spec_digest
    assert saved["architectures"]["arm64"]["inputs"]["stages"] == ["first"]
    assert saved["architectures"]["arm64"]["artifacts"][0]["path"] == "arm64/first.txt"


def test_a_failing_stage_keeps_what_was_made(tmp_path: Path, fake_stages: None) -> None:
    spec = two_arch_spec(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="stop here"):
        run_build(spec, ["arm64"], out, tmp_path / "cache", 42, ["failing"])
    assert CALLS == [("first", "arm64"), ("failing", "arm64")]
    saved = BuildManifest.load(out)
    assert [a.name for a in saved.architectures["arm64"].artifacts] == ["first.txt"]


def test_build_json_is_reused_only_for_the_same_spec_and_epoch(tmp_path: Path, fake_stages: None) -> None:
    spec = two_arch_spec(tmp_path)
    out = tmp_path / "out"
    run_build(spec, ["amd64"], out, tmp_path / "cache", 42, ["first"])
    both = run_build(spec, ["arm64"], out, tmp_path / "cache", 42, ["first"])
    assert set(both.architectures) == {"amd64", "arm64"}
    fresh = run_build(spec, ["arm64"], out, tmp_path / "cache", 43, ["first"])
    assert set(fresh.architectures) == {"arm64"}


def test_select_architectures() -> None:
    data = yaml.safe_load((ROOT / "platforms" / "debian-12-amd64.yaml").read_text())
    spec = parse_spec(data)
    assert select_architectures(spec, None) == [Architecture.amd64]
    assert select_architectures(spec, ["amd64", "amd64"]) == [Architecture.amd64]
    with pytest.raises(UsageError, match="unknown architecture 'sparc'"):
        select_architectures(spec, ["sparc"])
    with pytest.raises(UsageError, match="not defined for arm64"):
        select_architectures(spec, ["arm64"])


def test_source_date_epoch_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = yaml.safe_load((ROOT / "platforms" / "debian-12-amd64.yaml").read_text())
    spec = parse_spec(data | {"source_date_epoch": 5})
    path = tmp_path / "s.yaml"  # not in git
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "7")
    assert pipeline.source_date_epoch_for(spec, path, 9) == 9
    assert pipeline.source_date_epoch_for(spec, path, None) == 7
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert pipeline.source_date_epoch_for(spec, path, None) == 5
    with pytest.raises(UsageError, match="no SOURCE_DATE_EPOCH"):
        pipeline.source_date_epoch_for(parse_spec(data), path, None)


def test_source_date_epoch_from_git(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    path = ROOT / "platforms" / "debian-12-amd64.yaml"
    committed = subprocess.run(
        ["git", "log", "-1", "--format=%ct", "--", path.name], cwd=path.parent, capture_output=True, text=True
    ).stdout.strip()
    spec = parse_spec(yaml.safe_load(path.read_text()))
    assert committed.isdigit(), "the example specs are committed to git"
    assert pipeline.source_date_epoch_for(spec, path, None) == int(committed)
