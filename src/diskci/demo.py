"""The whole path on the embedded defaults, as an operator would walk it: ``diskci demo``.

Every step is the real ``diskci`` command an operator or a CI workflow runs (build, authority init,
platform serve, platform actions, publish), so the demo doubles as the end-to-end test of the path:

 1. build the platform spec (every artifact family; the root filesystem comes from the cache when it can)
 2. create the embedded signing authority (once)
 3. start the platform (API, webhook receiver, in-process queue, netboot) on 127.0.0.1
 4. create the NodePlatform (the spec's identity regexp and issuer, the authority's trusted root),
    provision its webhook and register a node by MAC address
 5. publish: sign, push to the OCI layout registry, post the HMAC-signed webhook
 6. wait for the DiskImagePublicationProcessor to verify it, then make it the default
 7. netboot a QEMU machine through the platform's /boot.ipxe; it must print ``diskci: booted`` and the
    platform must have recorded its ``booted`` report
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from diskci.console import step
from diskci.errors import BuildError, DiskciError, ResourceError
from diskci.process import Child, require_tool, run, spawn
from diskci.qemu import QemuConsole
from diskci.spec import Architecture, PlatformSpec, load_spec

DEMO_MAC = "52:54:00:d1:5c:01"
BOOT_TIMEOUT = 300.0
PUBLISH_TIMEOUT = 900.0


class DemoError(DiskciError):
    """A step of the demo did not do what it should."""


@dataclass
class DemoConfig:
    spec_path: Path
    state_dir: Path
    cache_dir: Path
    build_dir: Path | None = None  # an existing build to publish instead of building
    source_date_epoch: int | None = None
    boot: bool = True
    port: int = 0  # 0: a free port


@dataclass
class DemoResult:
    platform: str
    version: str
    build_dir: Path
    reference: str
    manifest_digest: str
    publication_id: int
    base_url: str
    booted_line: str = ""
    boot_seconds: float = 0.0
    reports: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def diskci_command(*args: str | Path, env: dict[str, str] | None = None) -> dict[str, Any] | str:
    """Run ``diskci ARGS`` (the real CLI, this interpreter); parse JSON output when ``--json`` is given."""
    argv = [sys.executable, "-m", "diskci.cli.main", *map(str, args)]
    proc = run(argv, env=env, inherit_env=True, check=False)
    stdout = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        text = proc.stderr.decode(errors="replace") or stdout
        tail = "\n".join(text.strip().splitlines()[-25:])
        raise DemoError(f"`diskci {' '.join(map(str, args))}` failed (exit {proc.returncode}):\n{tail}")
    if "--json" in args:
        data: dict[str, Any] = json.loads(stdout)
        return data
    return stdout


class PlatformServer:
    """``diskci platform serve`` as a child process, stopped on exit."""

    def __init__(self, state_dir: Path, port: int, *, extra_env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.port = port
        self.extra_env = dict(extra_env or {})
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = state_dir / "serve.log"
        self._stack = contextlib.ExitStack()

    def env(self) -> dict[str, str]:
        return {
            "DISKCI_STATE_DIR": str(self.state_dir),
            # what the guest reaches through QEMU user networking
            "DISKCI_PUBLIC_BASE_URL": f"http://10.0.2.2:{self.port}",
            **self.extra_env,
        }

    def __enter__(self) -> PlatformServer:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        child = self._stack.enter_context(
            spawn(
                [sys.executable, "-m", "diskci.cli.main", "platform", "serve", "--port", str(self.port)],
                env=self.env(),
                inherit_env=True,
                log_file=self.log_path,
                term_wait=20.0,
            )
        )
        try:
            self._wait_until_serving(child)
        except BaseException:
            self._stack.close()  # a server that did not come up is stopped again
            raise
        return self

    def _wait_until_serving(self, child: Child) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise DemoError(f"the platform exited at start; see {self.log_path}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise DemoError(f"the platform did not answer /healthz within 60 s; see {self.log_path}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __exit__(self, *exc: object) -> None:
        self._stack.close()  # SIGTERM, 20 s, then SIGKILL

    def action(self, name: str, data: dict[str, Any], *, yes: bool = False) -> dict[str, Any]:
        args: list[str | Path] = ["platform", name, "--data", json.dumps(data), "--json"]
        if yes:
            args.append("--yes")
        out = diskci_command(*args, env=self.env())
        assert isinstance(out, dict)
        return out


def demo_identity(spec: PlatformSpec) -> str:
    """The CI identity the demo signs as: the workflow of the spec's issuer, on main."""
    issuer = spec.signing.cosign_oidc_issuer.rstrip("/")
    return f"{issuer}/ops/images/.gitea/workflows/build.yaml@refs/heads/main"


def qemu_netboot_argv(arch: Architecture, bootfile_url: str, mac: str) -> list[str]:
    if arch is not Architecture.amd64:
        raise DemoError(f"the demo netboots amd64 through the iPXE option ROM; {arch.value} is not supported")
    require_tool("qemu-system-x86_64", "qemu-system-x86")
    return [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        "1536",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-boot",
        "n",
        "-netdev",
        f"user,id=n0,bootfile={bootfile_url}",
        "-device",
        f"virtio-net-pci,netdev=n0,mac={mac}",
    ]


def wait_for_publication(
    server: PlatformServer, platform: str, digest: str, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = server.action("system_list_disk_image_publications", {"platform": platform, "limit": 50})
        for pub in out["publications"]:
            if pub["manifest_digest"] == digest and pub["status"] in ("published", "failed"):
                return dict(pub)
        time.sleep(2)
    raise DemoError(f"publication {digest} was not processed within {timeout:.0f} s:\n{server.log_tail()}")


class _Timed(Protocol):
    timings: dict[str, float]


@contextlib.contextmanager
def timed(result: _Timed, name: str, title: str) -> Iterator[None]:
    """A step shown with progress, its seconds kept in ``result.timings[name]``."""
    started = time.monotonic()
    with step(title):
        yield
    result.timings[name] = round(time.monotonic() - started, 1)


def run_demo(cfg: DemoConfig) -> DemoResult:
    spec = load_spec(cfg.spec_path)
    arch = spec.architectures[0]
    state = cfg.state_dir
    state.mkdir(parents=True, exist_ok=True)
    build_dir = cfg.build_dir or state / "build" / spec.name
    result = DemoResult(spec.name, spec.version, build_dir, "", "", 0, "")

    # 1. build
    if cfg.build_dir is None:
        with timed(result, "build", f"build {spec.name}"):
            args: list[str | Path] = ["build", cfg.spec_path, "--out", build_dir, "--cache", cfg.cache_dir]
            if cfg.source_date_epoch is not None:
                args += ["--source-date-epoch", str(cfg.source_date_epoch)]
            diskci_command(*args)
    if not (build_dir / "build.json").exists():
        raise BuildError(f"{build_dir} has no build.json")

    # 2. the embedded signing authority
    authority = state / "authority"
    if not (authority / "trusted_root.json").exists():
        with timed(result, "authority", "create the embedded signing authority"):
            diskci_command("authority", "init", authority, "--issuer", spec.signing.cosign_oidc_issuer)
    trusted_root = (authority / "trusted_root.json").read_text()

    port = cfg.port or free_port()
    registry = state / "registry"
    reference = f"oci-layout:{registry}:{spec.version}"
    with PlatformServer(state / "platform", port) as server:
        result.base_url = server.base_url
        # 4. NodePlatform, webhook, node
        with timed(result, "configure", "configure the platform"):
            listed = server.action("system_list_node_platforms", {})
            known = {p["name"] for p in listed["platforms"]}
            platform_fields = {
                "architectures": [a.value for a in spec.architectures],
                "registry_repository": f"oci-layout:{registry}",
                "cosign_identity_regexp": spec.signing.cosign_identity_regexp,
                "cosign_oidc_issuer": spec.signing.cosign_oidc_issuer,
                "trusted_root": trusted_root,
            }
            if spec.name in known:
                server.action("system_update_node_platform", {"name": spec.name, **platform_fields})
            else:
                server.action("system_create_node_platform", {"name": spec.name, **platform_fields})
            # A re-run rotates the demo's own secret; the demo is its only sender, so a rotation inside
            # the grace window (destructive: the previous secret stops at once) is confirmed here.
            hook = server.action("provision_disk_image_webhook", {"platform": spec.name}, yes=True)
            secret_file = state / "webhook.secret"
            secret_file.touch(mode=0o600)
            secret_file.write_text(hook["secret"])
            nodes = server.action("system_list_node_instances", {"platform": spec.name})
            if not any(DEMO_MAC in n["mac_addresses"] for n in nodes["instances"]):
                server.action(
                    "system_register_node_instance",
                    {"hostname": "demo-node-1", "platform": spec.name, "mac_addresses": [DEMO_MAC]},
                )

        # 5. sign, push, notify
        with timed(result, "publish", f"publish → {reference}"):
            out = diskci_command(
                "publish", build_dir, "--to", reference,
                "--identity", demo_identity(spec), "--authority", authority,
                "--issuer", spec.signing.cosign_oidc_issuer,
                "--notify-url", f"{server.base_url}/api/v1/system/webhooks/disk_image_built",
                "--secret-file", secret_file,
                "--source-repo", f"{spec.signing.cosign_oidc_issuer.rstrip('/')}/ops/images",
                "--source-ref", "refs/heads/main", "--run-id", "demo",
                "--json",
            )  # fmt: skip
            assert isinstance(out, dict)
            result.reference = out["pushed"]["reference"]
            result.manifest_digest = out["pushed"]["digest"]

        # 6. verified by the processor, then the default
        with timed(result, "verify", "platform verifies the publication"):
            pub = wait_for_publication(server, spec.name, result.manifest_digest, PUBLISH_TIMEOUT)
            if pub["status"] != "published":
                raise DemoError(
                    f"the platform refused the publication: {pub['failure_reason']}: {pub['failure_detail']}"
                )
            result.publication_id = pub["id"]
            server.action(
                "system_set_default_disk_image_publication",
                {"platform": spec.name, "publication_id": pub["id"]},
            )

        # 7. a machine netboots through the platform
        if cfg.boot:
            with timed(result, "boot", "netboot a QEMU machine through /boot.ipxe"):
                argv = qemu_netboot_argv(arch, f"http://10.0.2.2:{port}/boot.ipxe", DEMO_MAC)
                with QemuConsole(argv, log_path=state / "console.log") as vm:
                    result.booted_line = vm.wait_for(r"diskci: booted", timeout=BOOT_TIMEOUT)
                    result.boot_seconds = round(vm.elapsed, 1)
                    result.reports = wait_for_report(server, "booted", timeout=60)
    return result


def wait_for_report(server: PlatformServer, stage: str, *, timeout: float) -> list[str]:
    """The boot stages the platform recorded for the demo node, once ``stage`` is among them."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        events = server.action("system_list_recent_events", {"type": ["netboot_report"], "limit": 200})
        seen = [str((e.get("payload") or {}).get("status") or "") for e in reversed(events["events"])]
        if stage in seen:
            return seen
        time.sleep(1)
    raise DemoError(f"the platform recorded no '{stage}' report from the node (saw {seen})")


def clean_state(state_dir: Path) -> None:
    """Remove the demo's platform state (not its build or cache)."""
    for sub in ("platform", "registry", "webhook.secret", "console.log"):
        p = state_dir / sub
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


__all__ = ["DemoConfig", "DemoError", "DemoResult", "ResourceError", "clean_state", "run_demo"]
