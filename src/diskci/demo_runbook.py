"""The operator runbook on one machine, through the platform: ``diskci demo`` (``make demo``).

Every step is what an operator does, with the real commands and actions, on the embedded defaults:

 1. start the signing authority (trusting the platform's CI job ID tokens) and the platform on 127.0.0.1
 2. create the NodePlatform (identity regexp: the platform's own build workflow on a ``v*`` tag) and
    provision its webhook (runbook phase 2)
 3. create the image-build repository (``diskci ci init-repo``), its bare ``origin`` with the push hook
    (``diskci ci hook``), and point the platform's CI at it
 4. provision a local CI worker labelled with the spec's architectures and wait until it is online
    (phase 1)
 5. ``git tag vX && git push origin vX``: the hook posts the push, the platform starts a run (phase 3)
 6. watch the run: queued → in_progress → completed, each job and step, the log (phase 4)
 7. the run's publication: verified by the platform (signature from the job's identity, fs-verity,
    manifest integrity), made the default (phase 5)
 8. netboot a QEMU machine through ``/boot.ipxe``; it must print ``diskci: booted``
 9. decommission the CI worker: its runner deregistered, its machine destroyed (phase 7)

The timeline of the run (each status change of the run and its jobs, with the time since the push)
is printed at the end.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from diskci.ci.repo import init_repo
from diskci.demo import (
    BOOT_TIMEOUT,
    DEMO_MAC,
    DemoConfig,
    DemoError,
    PlatformServer,
    diskci_command,
    free_port,
    qemu_netboot_argv,
    timed,
    wait_for_report,
)
from diskci.process import require_tool, run, spawn
from diskci.qemu import QemuConsole
from diskci.spec import PlatformSpec, load_spec

T = TypeVar("T")
RUN_TIMEOUT = 1800.0
PUBLICATION_TIMEOUT = 600.0
DEMO_SOURCE_DATE_EPOCH = 1764000000  # 2025-11-24T16:00:00Z
WORKER_TIMEOUT = 120.0
DEMO_WORKER = "ci-worker-1"


@dataclass
class RunbookResult:
    platform: str
    version: str
    tag: str
    run_id: int = 0
    conclusion: str = ""
    jobs: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    publication_id: int = 0
    manifest_digest: str = ""
    signer_identity: str = ""
    architectures: list[str] = field(default_factory=list)
    log_rows: dict[str, int] = field(default_factory=dict)  # rows each job's log had, read live
    base_url: str = ""
    worker: str = ""
    worker_final_status: str = ""
    booted_line: str = ""
    boot_seconds: float = 0.0
    reports: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    push_started_at: datetime | None = None  # wall clock (UTC) as ``git push`` of the tag began


class AuthorityServer:
    """``diskci authority serve`` as a child process, trusting one OIDC issuer, stopped on exit."""

    def __init__(self, directory: Path, port: int, issuer: str) -> None:
        self.directory = directory
        self.port = port
        self.issuer = issuer
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = directory.parent / "authority.log"
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> AuthorityServer:
        argv = [
            sys.executable, "-m", "diskci.cli.main", "authority", "serve", str(self.directory),
            "--port", str(self.port), "--oidc-issuer", self.issuer,
        ]  # fmt: skip
        child = self._stack.enter_context(spawn(argv, inherit_env=True, log_file=self.log_path))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if child.poll() is not None:
                self._stack.close()
                raise DemoError(f"the signing authority exited at start; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/v1/trusted_root", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        self._stack.close()
        raise DemoError(f"the signing authority did not answer within 30 s; see {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def identity_regexp(ci_base_url: str, platform: str) -> str:
    """The signing identities a platform accepts: its own build workflow, on a ``v*`` tag."""
    return "^" + re.escape(f"{ci_base_url}/{platform}/.gitea/workflows/build.yaml@refs/tags/v") + ".*$"


def _git(*args: str | Path, cwd: Path | None = None) -> str:
    git = require_tool("git", "git")
    identity = ("-c", "user.name=diskci demo", "-c", "user.email=demo@localhost")
    argv = [git, *identity, *map(str, args)]
    proc = run(argv, cwd=cwd, inherit_env=True, check=False)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    if proc.returncode != 0:
        raise DemoError(f"`git {' '.join(map(str, args))}` failed:\n{out[-3000:]}")
    return out


def _poll(check: Callable[[], T | None], timeout: float, interval: float, failed: Callable[[], str]) -> T:
    """``check()``'s first answer that is not None, asked every ``interval`` seconds; DemoError with
    ``failed()`` when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = check()
        if answer is not None:
            return answer
        time.sleep(interval)
    raise DemoError(failed())


def _wait_worker(
    server: PlatformServer, matches: Callable[[dict[str, Any]], bool], wanted: tuple[str, ...], timeout: float
) -> dict[str, Any]:
    """The CI worker ``matches`` picks, once its status is one of ``wanted``."""
    seen: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        listed = server.action("system_list_ci_workers", {"include_terminated": True})
        for worker in listed["workers"]:
            if matches(worker):
                seen.update(worker)
                if worker["status"] in wanted:
                    return dict(worker)
        return None

    return _poll(
        check,
        timeout,
        0.5,
        lambda: (
            f"CI worker {seen.get('hostname', '?')} is {seen.get('status')!r}, not"
            f" {' or '.join(wanted)}, after {timeout:.0f} s"
        ),
    )


def _run_id_from_push(output: str) -> int:
    match = re.search(r"CI run (\d+)", output)
    if match is None:
        raise DemoError(f"the push started no CI run; git said:\n{output[-2000:]}")
    return int(match.group(1))


def _state(item: dict[str, Any]) -> str:
    return str(item["status"]) + (f"/{item['conclusion']}" if item.get("conclusion") else "")


def run_timeline(run: dict[str, Any]) -> list[tuple[float, str]]:
    """The run's and its jobs' status changes, from the platform's timestamps, in seconds since the
    run was created (the push)."""

    def at(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    created = at(run["created_at"])
    assert created is not None
    marks: list[tuple[datetime, str]] = [(created, "run queued")]
    if at(run.get("started_at")):
        marks.append((at(run["started_at"]) or created, "run in_progress"))
    for job in run["jobs"]:
        if at(job.get("started_at")):
            runner = f" on {job['runner']}" if job.get("runner") else ""
            marks.append((at(job["started_at"]) or created, f"job {job['name']} in_progress{runner}"))
        if at(job.get("completed_at")):
            marks.append((at(job["completed_at"]) or created, f"job {job['name']} {_state(job)}"))
    if at(run.get("completed_at")):
        marks.append((at(run["completed_at"]) or created, f"run {_state(run)}"))
    marks.sort(key=lambda m: m[0])
    return [(round((when - created).total_seconds(), 1), line) for when, line in marks]


def _watch(server: PlatformServer, run_id: int, result: RunbookResult, started: float) -> dict[str, Any]:
    """Follow the run with ``diskci ci watch RUN --json`` (every job, step and log row), printing each
    job's status change, until it completes and, when it succeeded, names its publication.

    One watcher process for the whole run, which looks at the platform's database in-process each
    second: a ``diskci platform`` command per look would start Python (seconds of CPU) several times a
    second beside the build it watches, on the same machine."""
    argv = [
        sys.executable, "-m", "diskci.cli.main", "ci", "watch", str(run_id), "--json",
        "--timeout", f"{RUN_TIMEOUT:g}",
    ]  # fmt: skip
    out: dict[str, Any] | None = None
    said: list[str] = []  # what the watcher printed that is not a change (its errors)
    with spawn(argv, env=server.env(), inherit_env=True) as watcher:
        assert watcher.stdout is not None
        for raw in watcher.stdout:
            try:
                change = json.loads(raw)
            except ValueError:
                change = None
            if not isinstance(change, dict):
                said.append(raw.decode(errors="replace").rstrip())
            elif change.get("type") == "run":
                out = dict(change["run"])
            elif change.get("type") == "log":
                result.log_rows[change["job"]] = change["offset"] + 1
            elif change.get("type") == "job":
                print(
                    f"  +{time.monotonic() - started:6.1f} s  job {change['job']}: {_state(change)}",
                    flush=True,
                )
        watcher.wait()
    if out is None:
        raise DemoError(
            f"CI run {run_id} did not complete within {RUN_TIMEOUT:.0f} s:\n"
            + "\n".join(said[-20:])
            + f"\n{server.log_tail()}"
        )
    if out["conclusion"] == "success" and not out["publication_id"]:  # the webhook is still on its way
        with _reads(server) as read:
            fetch_run = functools.partial(read, "get_gitea_workflow_run", {"run_id": run_id})
            out = _poll(
                lambda: latest if (latest := fetch_run())["publication_id"] else None,
                PUBLICATION_TIMEOUT,
                1.0,
                lambda: (
                    f"CI run {run_id} succeeded but named no publication within {PUBLICATION_TIMEOUT:.0f} s"
                ),
            )
    result.timeline = run_timeline(out)
    return dict(out)


def run_runbook_demo(cfg: DemoConfig) -> RunbookResult:
    spec = load_spec(cfg.spec_path)
    state = cfg.state_dir
    state.mkdir(parents=True, exist_ok=True)
    tag = f"v{spec.version}"
    result = RunbookResult(spec.name, spec.version, tag)
    port = cfg.port or free_port()
    ci_base_url = f"http://127.0.0.1:{port}"
    registry = state / "registry"
    registry.mkdir(exist_ok=True)

    authority_dir = state / "authority"
    if not (authority_dir / "trusted_root.json").exists():
        diskci_command("authority", "init", authority_dir, "--issuer", ci_base_url)
    trusted_root = (authority_dir / "trusted_root.json").read_text()

    extra_env = {"DISKCI_CI_BASE_URL": ci_base_url, "DISKCI_CACHE": str(cfg.cache_dir)}
    with (
        AuthorityServer(authority_dir, free_port(), ci_base_url) as authority,
        PlatformServer(state / "platform", port, extra_env=extra_env) as server,
    ):
        result.base_url = server.base_url
        # 2. the NodePlatform and its webhook
        with timed(result, "configure", "create the NodePlatform and provision its webhook"):
            fields = {
                "architectures": [a.value for a in spec.architectures],
                "registry_repository": f"oci-layout:{registry}/{spec.registry_repository}",
                "cosign_identity_regexp": identity_regexp(ci_base_url, spec.name),
                "cosign_oidc_issuer": ci_base_url,
                "trusted_root": trusted_root,
            }
            server.action("system_create_node_platform", {"name": spec.name, **fields})
            server.action("provision_disk_image_webhook", {"platform": spec.name})
            server.action(
                "system_register_node_instance",
                {"hostname": "demo-node-1", "platform": spec.name, "mac_addresses": [DEMO_MAC]},
            )

        # 3. the image-build repository and its push hook
        with timed(result, "repository", "create the image-build repository and its push hook"):
            work = state / "images"
            bare = state / "images.git"
            # a fixed commit time: the builds' SOURCE_DATE_EPOCH, so a second demo reuses the cache
            init_repo(work, cfg.spec_path, commit_time=cfg.source_date_epoch or DEMO_SOURCE_DATE_EPOCH)
            _git("init", "--quiet", "--bare", bare)
            ci = server.action(
                "system_configure_disk_image_ci",
                {
                    "node_platform": spec.name,
                    "image_build_repository": str(bare),
                    "ci_variables": {
                        "DISKCI_REGISTRY": f"oci-layout:{registry}",
                        "DISKCI_AUTHORITY": authority.url,
                    },
                    "rotate_push_secret": True,
                },
            )
            secret_file = state / "push.secret"
            secret_file.touch(mode=0o600)
            secret_file.write_text(ci["push_secret"])
            diskci_command(
                "ci", "hook", bare, "--url", server.base_url, "--platform", spec.name,
                "--secret-file", secret_file,
            )  # fmt: skip
            _git("-C", work, "remote", "add", "origin", bare)
            _git("-C", work, "push", "--quiet", "origin", "main")

        # 4. a CI worker (runbook phase 1)
        with timed(result, "worker", f"provision CI worker {DEMO_WORKER} and wait until it is online"):
            server.action(
                "system_provision_ci_worker",
                {
                    "hostname": DEMO_WORKER,
                    "provider_region_id": "local",
                    "provider_instance_type_id": "local.large",
                    "build_targets": [a.value for a in spec.architectures],
                },
            )
            worker = _wait_worker(
                server, lambda w: w["hostname"] == DEMO_WORKER, ("online", "busy"), WORKER_TIMEOUT
            )
            result.worker = f"{worker['hostname']} (labels {', '.join(worker['labels'])})"
        try:
            _after_worker(cfg, server, spec, work, port, tag, result)
        except BaseException:
            # a failed demo still decommissions its worker: no runner left polling a stopped platform
            with contextlib.suppress(Exception):
                server.action("system_terminate_ci_worker", {"id": int(worker["id"])}, yes=True)
                _wait_worker(server, lambda w: w["id"] == worker["id"], ("terminated",), 60)
            raise
    return result


def _after_worker(
    cfg: DemoConfig, server: PlatformServer, spec: PlatformSpec, work: Path, port: int, tag: str,
    result: RunbookResult,
) -> None:  # fmt: skip
    """Steps 5-9: push the tag, watch the run, verify and default the publication, boot, decommission."""

    # 5. push a tag (runbook phase 3) and 6. watch the run (phase 4)
    started = time.monotonic()
    result.push_started_at = datetime.now(UTC)  # where the bench's timeline of the run starts
    with timed(result, "push", f"git tag {tag} && git push origin {tag}"):
        _git("-C", work, "tag", tag)
        pushed = _git("-C", work, "push", "origin", tag)
        result.run_id = _run_id_from_push(pushed)
    with timed(result, "run", f"watch CI run {result.run_id}"):
        out = _watch(server, result.run_id, result, started)
        result.conclusion = str(out["conclusion"])
        result.jobs = list(out["jobs"])
        if out["conclusion"] != "success":
            failed = [j["name"] for j in out["jobs"] if j["conclusion"] != "success"]
            raise DemoError(f"CI run {result.run_id} ended {out['conclusion']} (jobs {failed})")

    # 7. the publication, verified; then the default (phase 5)
    with timed(result, "verify", "the platform verifies the run's publication"):
        pub = _wait_published(server, int(out["publication_id"]))
        result.publication_id = int(pub["id"])
        result.manifest_digest = str(pub["manifest_digest"])
        result.signer_identity = str(pub.get("signer_identity") or "")
        result.architectures = sorted(pub.get("artifacts") or {})
        server.action(
            "system_set_default_disk_image_publication",
            {"platform": spec.name, "publication_id": result.publication_id},
        )

    # 8. a machine netboots it
    if cfg.boot:
        with timed(result, "boot", "netboot a QEMU machine through /boot.ipxe"):
            argv = qemu_netboot_argv(spec.architectures[0], f"http://10.0.2.2:{port}/boot.ipxe", DEMO_MAC)
            with QemuConsole(argv, log_path=cfg.state_dir / "console.log") as vm:
                result.booted_line = vm.wait_for(r"diskci: booted", timeout=BOOT_TIMEOUT)
                result.boot_seconds = round(vm.elapsed, 1)
                result.reports = wait_for_report(server, "booted", timeout=60)

    # 9. decommission the CI worker (phase 7)
    with timed(result, "decommission", f"decommission CI worker {DEMO_WORKER}"):
        instance_id = next(
            w["id"] for w in server.action("system_list_ci_workers", {})["workers"]
            if w["hostname"] == DEMO_WORKER
        )  # fmt: skip
        server.action("system_terminate_ci_worker", {"id": instance_id}, yes=True)
        terminated = _wait_worker(server, lambda w: w["id"] == instance_id, ("terminated",), 60)
        result.worker_final_status = str(terminated["status"])


@contextlib.contextmanager
def _reads(server: PlatformServer) -> Iterator[Callable[[str, dict[str, Any]], dict[str, Any]]]:
    """Read-only actions invoked in this process on the platform's database, as ``diskci ci watch``
    invokes them: a wait looks every second, and a ``diskci platform`` command per look would start
    Python (seconds of CPU) beside the verification it waits for, on the same machine."""
    from diskci.platform.actions.catalog import invoke
    from diskci.platform.db.models import Role
    from diskci.platform.db.session import Database
    from diskci.platform.settings import PlatformSettings

    settings = PlatformSettings(state_dir=server.state_dir)
    database = Database(settings.database_url)

    def read(name: str, data: dict[str, Any]) -> dict[str, Any]:
        answer = invoke(name, data, database=database, settings=settings, actor="demo", role=Role.VIEWER)
        return dict(answer.model_dump(mode="json"))

    try:
        yield read
    finally:
        database.dispose()


def _wait_published(server: PlatformServer, publication_id: int) -> dict[str, Any]:
    with _reads(server) as read:

        def check() -> dict[str, Any] | None:
            pub = read("system_get_disk_image_publication", {"id": publication_id})
            return pub if pub["status"] in ("published", "failed") else None

        pub = _poll(
            check,
            PUBLICATION_TIMEOUT,
            1.0,
            lambda: f"publication {publication_id} was not verified within 600 s:\n{server.log_tail()}",
        )
    if pub["status"] != "published":
        raise DemoError(
            f"the platform refused the run's publication: {pub['failure_reason']}: {pub['failure_detail']}"
        )
    return pub


def clean_runbook_state(state_dir: Path) -> None:
    """Remove the demo's platform, repositories, registry and worker state (not the build cache)."""
    for sub in (
        "platform",
        "registry",
        "images",
        "images.git",
        "push.secret",
        "console.log",
        "authority.log",
    ):
        p = state_dir / sub
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def timeline_text(result: RunbookResult) -> Iterator[str]:
    for seconds, line in result.timeline:
        yield f"+{seconds:6.1f} s  {line}"


__all__ = ["RunbookResult", "clean_runbook_state", "identity_regexp", "run_runbook_demo", "timeline_text"]
