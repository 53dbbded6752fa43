"""PlatformSpec: the three example platforms validate; each kind of bad field is refused with its path;
``diskci spec validate`` exits 0 / 2 and names every problem."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from diskci.cli.main import app
from diskci.errors import SpecError
from diskci.spec import DEFAULT_EXCLUDES, Architecture, PlatformSpec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
PLATFORMS = sorted((ROOT / "platforms").glob("*.yaml"))


def base() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "platforms" / "debian-12-amd64.yaml").read_text())
    assert isinstance(data, dict)
    return data


def problems_of(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(data, "test.yaml")
    return info.value.problems


def test_the_three_platforms_validate() -> None:
    names = {p.name for p in PLATFORMS}
    assert {"debian-12-amd64.yaml", "debian-12-arm64.yaml", "ubuntu-24.04-amd64.yaml"} <= names
    for path in PLATFORMS:
        spec = load_spec(path)
        assert spec.name == path.stem
        for arch in spec.architectures:
            assert spec.kernel_package[arch] in spec.packages_for(arch)


def test_defaults_are_filled_and_digest_is_stable() -> None:
    spec = load_spec(ROOT / "platforms" / "debian-12-amd64.yaml")
    assert spec.exclude_paths == DEFAULT_EXCLUDES
    assert spec.components == ("main",)
    assert spec.default_mirror(Architecture.amd64) == "http://deb.debian.org/debian"
    assert spec.digest() == parse_spec(base()).digest()
    changed = base() | {"hostname": "other"}
    assert parse_spec(changed).digest() != spec.digest()


def test_packages_for_dedupes_and_adds_arch_packages() -> None:
    data = base() | {
        "packages": ["busybox-static", "linux-image-amd64"],
        "arch_packages": {"amd64": ["grub-pc-bin"]},
    }
    spec = parse_spec(data)
    assert spec.packages_for(Architecture.amd64) == ("busybox-static", "linux-image-amd64", "grub-pc-bin")


def test_ubuntu_arm64_default_mirror_is_ports() -> None:
    data = base() | {
        "distribution": "ubuntu",
        "suite": "noble",
        "architectures": ["arm64"],
        "kernel_package": {"arm64": "linux-image-generic"},
    }
    spec = parse_spec(data)
    assert spec.default_mirror(Architecture.arm64) == "http://ports.ubuntu.com/ubuntu-ports"


# (change to the valid base, field path expected in the problems, words expected in the message)
INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("name pattern", {"name": "Debian 12"}, "name", "pattern"),
    ("distribution enum", {"distribution": "fedora"}, "distribution", "debian"),
    ("suite pattern", {"suite": "Bookworm!"}, "suite", "pattern"),
    ("mirror scheme", {"mirror": "ftp://deb.debian.org/debian"}, "mirror", "pattern"),
    ("components empty", {"components": []}, "components", "at least 1"),
    ("architectures enum", {"architectures": ["riscv64"]}, "architectures.0", "amd64"),
    ("architectures empty", {"architectures": []}, "architectures", "at least 1"),
    ("variant", {"variant": "tiny"}, "variant", "pattern"),
    ("package name", {"packages": ["Bad Package"]}, "packages.0", "pattern"),
    ("packages not a list", {"packages": 7}, "packages", "array"),
    ("arch_packages key", {"arch_packages": {"mips": ["xz-utils"]}}, "arch_packages.mips.[key]", "amd64"),
    ("kernel_package value", {"kernel_package": {"amd64": "Linux Image"}}, "kernel_package.amd64", "pattern"),
    ("exclude_paths relative", {"exclude_paths": ["usr/share/doc/*"]}, "exclude_paths", "absolute"),
    ("include_paths relative", {"include_paths": ["copyright"]}, "include_paths", "absolute"),
    ("kernel_cmdline type", {"kernel_cmdline": 5}, "kernel_cmdline", "string"),
    (
        "arch_kernel_cmdline key",
        {"arch_kernel_cmdline": {"x86": "quiet"}},
        "arch_kernel_cmdline.x86.[key]",
        "amd64",
    ),
    ("hostname", {"hostname": "-node-"}, "hostname", "pattern"),
    (
        "files source escapes",
        {"files": [{"source": "../etc/passwd", "dest": "/etc/x"}]},
        "files.0.source",
        "..",
    ),
    ("files dest relative", {"files": [{"source": "motd", "dest": "etc/motd"}]}, "files.0.dest", "pattern"),
    (
        "files mode range",
        {"files": [{"source": "motd", "dest": "/etc/motd", "mode": 99999}]},
        "files.0.mode",
        "4095",
    ),
    (
        "files unknown key",
        {"files": [{"source": "a", "dest": "/a", "owner": "root"}]},
        "files.0.owner",
        "unknown",
    ),
    ("customize_hooks type", {"customize_hooks": [["echo"]]}, "customize_hooks.0", "string"),
    ("source_date_epoch negative", {"source_date_epoch": -1}, "source_date_epoch", "greater than or equal"),
    ("source_date_epoch string", {"source_date_epoch": "1700000000"}, "source_date_epoch", "integer"),
    ("version pattern", {"version": "1.0 beta"}, "version", "pattern"),
    ("registry_repository", {"registry_repository": "Ops/Disk Images"}, "registry_repository", "pattern"),
    (
        "signing regexp",
        {"signing": {"cosign_identity_regexp": "(", "cosign_oidc_issuer": "https://x"}},
        "signing.cosign_identity_regexp",
        "regular expression",
    ),
    (
        "signing issuer",
        {"signing": {"cosign_identity_regexp": ".*", "cosign_oidc_issuer": "x"}},
        "signing.cosign_oidc_issuer",
        "pattern",
    ),
    ("unknown key", {"kernel": "linux"}, "kernel", "unknown key"),
]


@pytest.mark.parametrize(("change", "field", "words"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_field_is_named(change: dict[str, Any], field: str, words: str) -> None:
    data = base() | change
    problems = problems_of(data)
    matching = [msg for loc, msg in problems if loc == field]
    assert matching, f"expected a problem at {field}, got {problems}"
    assert any(words.lower() in m.lower() for m in matching), matching


@pytest.mark.parametrize(
    "field",
    [
        "name",
        "distribution",
        "suite",
        "architectures",
        "kernel_package",
        "version",
        "registry_repository",
        "signing",
    ],
)
def test_required_field_missing(field: str) -> None:
    data = base()
    del data[field]
    assert (field, "required field is missing") in problems_of(data)


def test_cross_field_rules() -> None:
    no_kernel = base() | {"architectures": ["amd64", "arm64"]}
    assert any("no kernel package for arm64" in m for _, m in problems_of(no_kernel))
    twice = base() | {"architectures": ["amd64", "amd64"]}
    assert any("appear once" in m for _, m in problems_of(twice))
    stray = base() | {"arch_packages": {"arm64": ["xz-utils"]}}
    assert any("arm64 is not one of the spec's architectures" in m for _, m in problems_of(stray))


def test_every_problem_is_reported_at_once() -> None:
    data = copy.deepcopy(base()) | {"hostname": "_", "version": "a b", "extra": 1}
    fields = {loc for loc, _ in problems_of(data)}
    assert {"hostname", "version", "extra"} <= fields


def test_top_level_must_be_a_mapping() -> None:
    assert problems_of(["a", "b"]) == [("(spec)", "expected a mapping of keys to values at the top level")]


def test_yaml_and_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert info.value.problems[0][0].startswith("(yaml) line ")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "missing.yaml")
    assert info.value.problems[0][0] == "(file)"


def test_spec_is_frozen() -> None:
    spec = parse_spec(base())
    with pytest.raises(ValueError):
        spec.name = "x"  # type: ignore[misc]
    assert isinstance(spec, PlatformSpec)


# --- the CLI --------------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_validate_ok() -> None:
    result = runner.invoke(app, ["spec", "validate", *map(str, PLATFORMS)])
    assert result.exit_code == 0, result.output
    for p in PLATFORMS:
        assert f"{p}: OK" in result.output


def test_cli_validate_invalid_exits_2_with_every_problem(tmp_path: Path) -> None:
    data = base() | {"hostname": "-bad-", "colour": "blue"}
    del data["version"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["spec", "validate", str(PLATFORMS[0]), str(bad)])
    assert result.exit_code == 2
    assert f"{bad}: invalid" in result.output
    assert "hostname:" in result.output
    assert "colour: unknown key (not part of the platform spec)" in result.output
    assert "version: required field is missing" in result.output


def test_cli_validate_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(base() | {"suite": "NOPE"}))
    result = runner.invoke(app, ["spec", "validate", "--json", str(PLATFORMS[0]), str(bad)])
    assert result.exit_code == 2
    out = json.loads(result.output)
    assert out[0]["valid"] is True and out[0]["problems"] == []
    assert out[1]["valid"] is False and out[1]["problems"][0]["field"] == "suite"


def test_cli_show_json_is_normalized() -> None:
    result = runner.invoke(app, ["spec", "show", "--json", str(ROOT / "platforms" / "debian-12-arm64.yaml")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    spec = load_spec(ROOT / "platforms" / "debian-12-arm64.yaml")
    assert out["digest"] == spec.digest()
    assert out["spec"]["variant"] == "minbase"
    assert out["spec"]["exclude_paths"] == list(DEFAULT_EXCLUDES)
