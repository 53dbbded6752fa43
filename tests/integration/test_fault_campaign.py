"""The multi-host fault campaign: two ``platform serve`` replicas behind nginx and two queue consumers,
each in its own network namespace, on the campaign's own PostgreSQL, Redis and registry
(``campaign_hosts``). Faults are injected while publications are processed and a node boots in a loop:
SIGKILL of a replica and of a consumer, PostgreSQL restarted, Redis down for 10 s, the registry down
mid-download, a replica's link cut.

After each: exactly one ``published`` DiskImagePublication with the delivered digest (and one
``disk_image_published`` event), the node was never served a publication that is not ``published`` nor
a root image whose sha256 differs from the script's, no 5xx outside the fault's failover window, and the
queue resumes (a fresh delivery is published).
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from campaign_hosts import Campaign, campaign, unavailable_reason
from platform_publication_helpers import IDENTITY_REGEXP, ISSUER, Published, make_netboot_build, sign_and_push
from sqlalchemy import func, select

from diskci.notify import sign_delivery
from diskci.platform.actions.tokens import create_token
from diskci.platform.db.models import DiskImagePublication, Event, Role, Task
from diskci.platform.db.session import Database
from diskci.supplychain.authority import SigningAuthority

_REASON = unavailable_reason()
pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

PLATFORM = "debian-12-campaign"
HOOK = "/api/v1/system/webhooks/disk_image_built"
FAILOVER_SECONDS = 5.0  # after a fault heals (or, for a lost replica, after it is lost)
BIG_ROOT = 96 << 20  # a root image whose verification lasts long enough to be interrupted


@dataclass
class Window:
    start: float
    end: float = float("inf")


@dataclass
class NodeProbe:
    """A node booting in a loop through nginx: ``/ipxe``, then the root image the script names."""

    base: str
    database: Database
    results: list[tuple[float, str, int]] = field(default_factory=list)  # (time, what, status)
    served: dict[int, set[str]] = field(default_factory=dict)  # publication id → root sha256 received
    bad: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                self.boot_once(client)
                time.sleep(0.05)

    def boot_once(self, client: httpx.Client) -> None:
        now = time.monotonic()
        try:
            r = client.get(f"{self.base}/ipxe", params={"platform": PLATFORM, "arch": "x86_64"})
        except httpx.HTTPError as exc:
            self.results.append((now, f"/ipxe {type(exc).__name__}", 599))
            return
        self.results.append((now, "/ipxe", r.status_code))
        match = re.search(r"diskci\.root=(\S+/netboot/(\d+)/\S+) diskci\.root_sha256=([0-9a-f]{64})", r.text)
        if r.status_code != 200 or match is None:
            return
        url, pub_id, sha = match.group(1), int(match.group(2)), match.group(3)
        try:
            got = client.get(url)
        except httpx.HTTPError as exc:
            self.results.append((now, f"root {type(exc).__name__}", 599))
            return
        self.results.append((now, "root", got.status_code))
        if got.status_code == 200:
            digest = hashlib.sha256(got.content).hexdigest()
            if digest != sha:
                self.bad.append(f"publication {pub_id}: root image sha256 {digest}, the script said {sha}")
            self.served.setdefault(pub_id, set()).add(digest)

    def server_errors_outside(self, windows: list[Window]) -> list[tuple[float, str, int]]:
        return [
            r
            for r in self.results
            if r[2] >= 500 and not any(w.start <= r[0] <= w.end + FAILOVER_SECONDS for w in windows)
        ]


class Platform:
    """The campaign's platform seen from outside: the operator's API and the sender's webhook."""

    def __init__(self, c: Campaign, authority: SigningAuthority, work: Path) -> None:
        self.c = c
        self.authority = authority
        self.work = work
        self.db = Database(c.postgres.url)
        with self.db.session() as s:
            token = create_token(s, "campaign", Role.ADMIN, actor="test").token
        self.auth = {"Authorization": f"Bearer {token}"}
        self.repository = f"{c.registry_address}/ops/disk-images/{PLATFORM}"
        r = self.api(
            "system_create_node_platform",
            name=PLATFORM,
            architectures=["amd64"],
            registry_repository=self.repository,
            cosign_identity_regexp=f"^{IDENTITY_REGEXP}$",
            cosign_oidc_issuer=ISSUER,
            trusted_root=authority.trusted_root_json().decode(),
        )
        self.secret = str(self.api("provision_disk_image_webhook", platform=PLATFORM)["secret"])
        assert r

    def api(self, action: str, **data: Any) -> Any:
        for _ in range(40):  # through a failover: the operator retries too
            try:
                r = httpx.post(f"{self.c.base}/api/v1/{action}", headers=self.auth, json=data, timeout=30)
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            if r.status_code < 500:
                assert r.status_code == 200, r.text
                return r.json()
            time.sleep(0.5)
        raise AssertionError(f"{action}: the platform kept failing")

    def build(self, version: str, root_size: int = 300_000) -> Published:
        build_dir = self.work / f"build-{version}"
        make_netboot_build(build_dir, platform=PLATFORM, version=version, root_size=root_size)
        return sign_and_push(build_dir, self.authority, self.repository)

    def deliver(self, pub: Published, *, retry_for: float = 40) -> str:
        """POST the delivery as ``diskci notify`` does: the same id until accepted, 5xx retried."""
        body = json.dumps(
            {
                "node_platform": PLATFORM,
                "version": pub.build.version,
                "reference": pub.reference,
                "manifest_digest": pub.digest,
                "source": {
                    "repo": "https://git.example.com/ops/images",
                    "ref": "refs/tags/v1",
                    "commit": "c0",
                },
                "run_id": "1",
            }
        ).encode()
        delivery = str(uuid.uuid4())
        deadline = time.monotonic() + retry_for
        attempt = 0
        while True:
            attempt += 1
            headers = {
                "Content-Type": "application/json",
                **sign_delivery(self.secret, delivery, int(time.time()), body),
            }
            try:
                r = httpx.post(f"{self.c.base}{HOOK}", content=body, headers=headers, timeout=30)
                if r.status_code == 202 or (
                    r.status_code == 409 and attempt > 1 and r.json().get("error") == "ReplayedDelivery"
                ):
                    return delivery
                assert r.status_code >= 500, r.text
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"delivery {pub.build.version} never accepted"
            time.sleep(1)

    def publications(self, digest: str) -> list[tuple[int, str]]:
        with self.db.read_session() as s:
            rows = s.scalars(
                select(DiskImagePublication).where(DiskImagePublication.manifest_digest == digest)
            )
            return [(p.id, p.status) for p in rows]

    def wait_published(self, pub: Published, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                rows = self.publications(pub.digest)
                if [status for _, status in rows] == ["published"]:
                    return rows[0][0]
            except Exception:  # the database is restarting
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{pub.build.version} not published: {self.tasks()}\n{self.c.logs()}")
            time.sleep(0.2)

    def tasks(self) -> list[tuple[str, str, str | None]]:
        with self.db.read_session() as s:
            return [(t.task_id, t.status, t.error) for t in s.scalars(select(Task).order_by(Task.id))]

    def running(self) -> bool:
        try:
            with self.db.read_session() as s:
                return bool(s.scalar(select(func.count()).where(Task.status == "running")))
        except Exception:
            return False

    def check_one_publication(self, pub: Published) -> int:
        """Exactly one publication of the digest, published once, and made the node's default."""
        rows = self.publications(pub.digest)
        assert [status for _, status in rows] == ["published"], rows
        pub_id = rows[0][0]
        with self.db.read_session() as s:
            events = s.scalar(
                select(func.count()).where(
                    Event.type == "disk_image_published",
                    Event.payload["manifest_digest"].as_string() == pub.digest,
                )
            )
        assert events == 1, events
        self.api("system_set_default_disk_image_publication", platform=PLATFORM, publication_id=pub_id)
        return pub_id


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    with campaign(tmp_path_factory.mktemp("campaign"), secret_key="campaign-key-" + "k" * 40) as c:
        yield c


@pytest.fixture(scope="module")
def platform(
    hosts: Campaign, authority: SigningAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Platform:
    p = Platform(hosts, authority, tmp_path_factory.mktemp("builds"))
    first = p.build("0.0.1")
    p.deliver(first)
    p.wait_published(first)
    p.check_one_publication(first)
    return p


@pytest.fixture(scope="module")
def node(hosts: Campaign, platform: Platform) -> Iterator[NodeProbe]:
    probe = NodeProbe(hosts.base, platform.db)
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    yield probe
    probe.stop.set()
    thread.join(20)


WINDOWS: list[Window] = []


def _resumes(platform: Platform, version: str) -> None:
    fresh = platform.build(version)
    platform.deliver(fresh)
    platform.wait_published(fresh, timeout=60)
    platform.check_one_publication(fresh)


def test_sigkill_of_a_replica(hosts: Campaign, platform: Platform, node: NodeProbe) -> None:
    pub = platform.build("1.0.0", root_size=BIG_ROOT)
    window = Window(time.monotonic())
    WINDOWS.append(window)
    hosts.replicas["replica-1"].kill(signal.SIGKILL)
    platform.deliver(pub)  # through nginx, to whichever replica is left
    window.end = time.monotonic()
    platform.wait_published(pub)
    platform.check_one_publication(pub)
    hosts.replicas["replica-1"].start(timeout=60)
    _resumes(platform, "1.0.1")


def test_sigkill_of_a_consumer_mid_verification(hosts: Campaign, platform: Platform, node: NodeProbe) -> None:
    survivor = hosts.consumers["consumer-2"]
    survivor.kill(signal.SIGTERM)  # so that the task lands on consumer-1
    pub = platform.build("2.0.0", root_size=BIG_ROOT)
    platform.deliver(pub)
    wait(platform.running, 30, "the task to run on consumer-1")
    window = Window(time.monotonic())
    WINDOWS.append(window)
    hosts.consumers["consumer-1"].kill(signal.SIGKILL)
    assert [status for _, status in platform.publications(pub.digest)] in ([], ["processing"])
    time.sleep(4)  # its lease (3 s) runs out; then the supervisor starts the consumers again
    survivor.start()
    hosts.consumers["consumer-1"].start()
    window.end = time.monotonic()
    platform.wait_published(pub)
    platform.check_one_publication(pub)
    statuses = [status for _, status, _ in platform.tasks()]
    assert "failed" in statuses  # the abandoned task, recovered by a new one
    _resumes(platform, "2.0.1")


def test_postgresql_restarted_mid_processing(hosts: Campaign, platform: Platform, node: NodeProbe) -> None:
    pub = platform.build("3.0.0", root_size=BIG_ROOT)
    platform.deliver(pub)
    wait(platform.running, 30, "the task to run")
    window = Window(time.monotonic())
    WINDOWS.append(window)
    hosts.postgres.restart()
    window.end = time.monotonic()
    platform.wait_published(pub, timeout=90)
    platform.check_one_publication(pub)
    _resumes(platform, "3.0.1")


def test_redis_down_for_ten_seconds(hosts: Campaign, platform: Platform, node: NodeProbe) -> None:
    pub = platform.build("4.0.0")
    window = Window(time.monotonic())
    WINDOWS.append(window)
    hosts.redis.kill(signal.SIGKILL)
    accepted: list[str] = []
    sender = threading.Thread(target=lambda: accepted.append(platform.deliver(pub, retry_for=60)))
    sender.start()  # answered 503 while Redis is down; the sender retries
    time.sleep(10)
    hosts.redis.start()
    window.end = time.monotonic()
    sender.join(70)
    assert accepted
    platform.wait_published(pub, timeout=90)
    platform.check_one_publication(pub)
    _resumes(platform, "4.0.1")


def test_registry_down_mid_download(hosts: Campaign, platform: Platform, node: NodeProbe) -> None:
    pub = platform.build("5.0.0", root_size=BIG_ROOT)
    platform.deliver(pub)
    wait(platform.running, 30, "the task to run")
    hosts.registry.kill(signal.SIGKILL)
    time.sleep(3)
    hosts.registry.start()
    platform.wait_published(pub, timeout=90)  # registry_unreachable is retried by the queue
    platform.check_one_publication(pub)
    _resumes(platform, "5.0.1")


def test_a_replica_link_cut(hosts: Campaign, platform: Platform, node: NodeProbe) -> None:
    pub = platform.build("6.0.0")
    window = Window(time.monotonic())
    WINDOWS.append(window)
    hosts.net.cut("replica-2")
    try:
        platform.deliver(pub)
        platform.wait_published(pub)
        platform.check_one_publication(pub)
        time.sleep(3)  # the node keeps booting through replica-1 alone
    finally:
        hosts.net.restore("replica-2")
        window.end = time.monotonic()
    _resumes(platform, "6.0.1")


def test_the_node_was_never_served_an_unverified_image_and_saw_no_5xx(
    platform: Platform, node: NodeProbe
) -> None:
    time.sleep(FAILOVER_SECONDS + 1)
    node.stop.set()
    assert node.bad == []
    assert node.served, "the node never booted"
    with platform.db.read_session() as s:
        for pub_id, digests in node.served.items():
            pub = s.get(DiskImagePublication, pub_id)
            assert pub is not None and pub.status == "published", pub_id
            recorded = {a["sha256"] for a in pub.artifacts["amd64"]["artifacts"] if a["name"] == "rootfs.img"}
            assert digests == recorded, (pub_id, digests, recorded)
    errors = node.server_errors_outside(WINDOWS)
    assert errors == [], errors[:20]
    boots = sum(1 for _, what, status in node.results if what == "root" and status == 200)
    print(f"\ncampaign: {boots} boots, {len(node.results)} requests, {len(node.served)} publications served")
