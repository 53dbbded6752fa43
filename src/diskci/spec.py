"""PlatformSpec: what a node platform image is made of, loaded from YAML and strictly validated.

A spec names the distribution, suite, mirror, architectures and packages of the root filesystem, the
kernel command line, the version and registry repository it is published under, and the signing
identity the platform trusts. Unknown keys are refused; every problem is reported with its field path.
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from diskci.bounded_yaml import load_bounded_yaml
from diskci.canonical import canonical_json
from diskci.errors import SpecError

DEBIAN_MIRROR = "http://deb.debian.org/debian"
UBUNTU_MIRROR = "http://archive.ubuntu.com/ubuntu"
UBUNTU_PORTS_MIRROR = "http://ports.ubuntu.com/ubuntu-ports"

DEFAULT_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
    "/usr/share/linda/*",
)
# Kept even when their directory is excluded (licences, and the C locale).
DEFAULT_INCLUDES = ("/usr/share/doc/*/copyright", "/usr/share/locale/locale.alias")


class Distribution(StrEnum):
    debian = "debian"
    ubuntu = "ubuntu"


class Architecture(StrEnum):
    amd64 = "amd64"
    arm64 = "arm64"

    @property
    def qemu_name(self) -> str:
        return {"amd64": "x86_64", "arm64": "aarch64"}[self.value]

    @property
    def oci_name(self) -> str:
        return self.value


_NAME = r"[a-z0-9][a-z0-9.-]*[a-z0-9]"
_PACKAGE = r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9]+)?(=[A-Za-z0-9.+~:-]+)?"
_HOSTNAME = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"

PackageName = Annotated[str, Field(pattern=rf"^{_PACKAGE}$")]


class FileCopy(BaseModel):
    """A file from the spec's directory copied into the root filesystem."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="path relative to the spec file")
    dest: str = Field(pattern=r"^/", description="absolute path inside the image")
    mode: int = Field(default=0o644, ge=0, le=0o7777)

    @field_validator("source")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in Path(v).parts:
            raise ValueError("must be a path relative to the spec file, without '..'")
        return v


class Signing(BaseModel):
    """The identity the platform requires of this platform's signatures (cosign keyless terms)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cosign_identity_regexp: str
    cosign_oidc_issuer: str = Field(pattern=r"^https?://")

    @field_validator("cosign_identity_regexp")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return v


class PlatformSpec(BaseModel):
    """A node platform definition (``platforms/<name>.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(pattern=rf"^{_NAME}$", description="e.g. debian-12-amd64")
    distribution: Distribution
    suite: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    mirror: str | None = Field(default=None, pattern=r"^(https?|file)://")
    components: tuple[str, ...] = Field(default=("main",), min_length=1)
    architectures: tuple[Architecture, ...] = Field(min_length=1)
    variant: str = Field(
        default="minbase",
        pattern=r"^(extract|custom|essential|apt|required|minbase|buildd|important|debootstrap|standard)$",
    )
    packages: tuple[PackageName, ...] = ()
    arch_packages: dict[Architecture, tuple[PackageName, ...]] = Field(default_factory=dict)
    kernel_package: dict[Architecture, PackageName]
    exclude_paths: tuple[str, ...] = DEFAULT_EXCLUDES
    include_paths: tuple[str, ...] = DEFAULT_INCLUDES
    kernel_cmdline: str = "console=ttyS0 quiet"
    arch_kernel_cmdline: dict[Architecture, str] = Field(default_factory=dict)
    hostname: str = Field(default="node", pattern=rf"^{_HOSTNAME}$")
    files: tuple[FileCopy, ...] = ()
    customize_hooks: tuple[str, ...] = ()
    source_date_epoch: int | None = Field(default=None, ge=0)
    version: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
    registry_repository: str = Field(
        pattern=r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$",
        description="<account>/disk-images/<platform>",
    )
    signing: Signing

    @field_validator("exclude_paths", "include_paths")
    @classmethod
    def _absolute(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            if not p.startswith("/"):
                raise ValueError(f"{p!r} must be an absolute path pattern")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PlatformSpec:
        if len(set(self.architectures)) != len(self.architectures):
            raise ValueError("architectures: each architecture may appear once")
        missing = [a.value for a in self.architectures if a not in self.kernel_package]
        if missing:
            raise ValueError(f"kernel_package: no kernel package for {', '.join(missing)}")
        for key in self.arch_packages:
            if key not in self.architectures:
                raise ValueError(f"arch_packages: {key.value} is not one of the spec's architectures")
        return self

    # --- derived values ------------------------------------------------------------------------
    def packages_for(self, arch: Architecture) -> tuple[str, ...]:
        extra = self.arch_packages.get(arch, ())
        return tuple(dict.fromkeys((*self.packages, self.kernel_package[arch], *extra)))

    def cmdline_for(self, arch: Architecture) -> str:
        return self.arch_kernel_cmdline.get(arch, self.kernel_cmdline)

    def default_mirror(self, arch: Architecture) -> str:
        if self.distribution is Distribution.debian:
            return DEBIAN_MIRROR
        return UBUNTU_MIRROR if arch is Architecture.amd64 else UBUNTU_PORTS_MIRROR

    def normalized(self) -> dict[str, Any]:
        """The spec as plain JSON data with every default filled in: what digests are taken over."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """sha256 of the normalized spec's canonical JSON, non-ASCII escaped (as spec digests always were)."""
        return hashlib.sha256(canonical_json(self.normalized(), ascii_only=True)).hexdigest()


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(spec)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the platform spec)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        out.append((loc, msg))
    return out


def parse_spec(data: Any, source: str = "<spec>") -> PlatformSpec:
    if not isinstance(data, dict):
        raise SpecError(source, [("(spec)", "expected a mapping of keys to values at the top level")])
    try:
        as_json = json.dumps(data, default=str)
    except (TypeError, ValueError, RecursionError) as exc:  # a non-text key, a cycle, too deep
        raise SpecError(source, [("(spec)", f"not plain data: {exc}")]) from None
    try:
        # JSON mode: strict types, while enums and tuples are read from their plain YAML forms.
        return PlatformSpec.model_validate_json(as_json)
    except ValidationError as exc:
        raise SpecError(source, _problems(exc)) from None


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def yaml_problem(exc: yaml.YAMLError, text: str) -> tuple[str, str]:
    """A YAML syntax error as (where, what): the line and column, what is wrong, what it was inside,
    and the offending line with a caret under the column (PyYAML's own text names no file)."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return ("(yaml)", " ".join(str(exc).split()))
    mark = exc.problem_mark
    what = exc.problem or "invalid YAML"
    if exc.context:
        context = exc.context
        if exc.context_mark is not None and exc.context_mark.line != mark.line:
            context += f" (from {_at(exc.context_mark)})"
        what += f", {context}"
    lines = text.splitlines()
    if 0 <= mark.line < len(lines):
        what += f"\n    {lines[mark.line]}\n    {' ' * mark.column}^"
    return (f"(yaml) {_at(mark)}", what)


def load_spec(path: Path) -> PlatformSpec:
    """Read and validate a YAML spec file; every problem is reported in one SpecError."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise SpecError(str(path), [("(file)", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise SpecError(str(path), [("(file)", f"not UTF-8 text (at byte {exc.start})")]) from None
    try:
        data = load_bounded_yaml(text)  # refuses an alias bomb before anything expands it
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [yaml_problem(exc, text)]) from None
    except (ValueError, RecursionError) as exc:  # a YAML value out of range (a date in year 0), too deep
        raise SpecError(str(path), [("(yaml)", f"unreadable value: {exc}")]) from None
    return parse_spec(data, str(path))
