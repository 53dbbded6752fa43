"""Dashboard page times with 1,000 publications and 10,000 events (the goal: every page under 100 ms).

Seeds a fresh SQLite platform database (or ``--database-url``): the dashboard tests' platform with its
SBOM and build.json in the blob cache, 1,000 publications of it, 10,000 events, 200 CI runs (one in
progress with a 2,000-row log), 5 busy CI workers with host statistics and 100 nodes with boot reports.
Then signs in as an admin and times each page through the app in-process (ASGI, no network): the
median and the slowest of ``--runs`` requests after one warm-up, in ms.

Run: ``.venv/bin/python bench/dashboard.py [--runs N] [--database-url URL]`` (default 20 runs)
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bench/mcp.py would shadow the mcp package the app imports: take this directory off the path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO / "tests" / "integration"))
from dashboard_seed import PLATFORM, add_log_rows, seed, seed_ci  # noqa: E402

from diskci.platform.actions.tokens import create_token  # noqa: E402
from diskci.platform.db.models import (  # noqa: E402
    CiJob,
    CiRun,
    DiskImagePublication,
    Event,
    NodeInstance,
    NodePlatform,
    Role,
)
from diskci.platform.db.session import Database  # noqa: E402
from diskci.platform.settings import PlatformSettings  # noqa: E402

GOAL_MS = 100.0
PUBLICATIONS = 1000
EVENTS = 10_000
RUNS = 200
NODES = 100
EVENT_TYPES = ("disk_image_published", "disk_image_publication_failed", "netboot_report", "ci_run_queued")


def populate(database: Database, settings: PlatformSettings) -> dict[str, int]:
    """The data the pages are timed over; returns the ids the page paths need."""
    good, _ = seed(database, settings)
    ci = seed_ci(database, good)
    add_log_rows(database, ci.running_run, [f"12:00:{i % 60:02d} INFO line {i}" for i in range(2000)])
    now = datetime.now(UTC)
    with database.session() as s:
        platform = s.query(NodePlatform).filter_by(name=PLATFORM).one()
        template = s.get(DiskImagePublication, good)
        assert template is not None
        for i in range(PUBLICATIONS - 2):
            s.add(
                DiskImagePublication(
                    platform_id=platform.id,
                    version=f"2.{i // 100}.{i % 100}",
                    reference=f"{template.reference}-{i}",
                    status="published" if i % 10 else "failed",
                    failure_reason=None if i % 10 else "signature_invalid",
                    manifest_digest=f"sha256:{i:064x}",
                    composefs_digest=template.composefs_digest,
                    artifacts=template.artifacts,
                    signer_identity=template.signer_identity,
                    signer_issuer=template.signer_issuer,
                    signed_at=now - timedelta(minutes=i),
                    created_at=now - timedelta(minutes=i),
                )
            )
        s.add_all(
            Event(
                type=EVENT_TYPES[i % len(EVENT_TYPES)],
                platform_id=platform.id if i % 3 else None,
                subject=f"subject {i}",
                reason="booted" if i % 4 == 2 else None,
                payload={"n": i, "actor": "bench"},
                created_at=now - timedelta(seconds=i),
            )
            for i in range(EVENTS)
        )
        for i in range(RUNS - 2):
            run = CiRun(
                platform_id=platform.id,
                ref=f"refs/tags/v3.{i}",
                sha=f"{i:040x}",
                status="completed",
                conclusion="success" if i % 7 else "failure",
                created_at=now - timedelta(hours=i),
                started_at=now - timedelta(hours=i),
                completed_at=now - timedelta(hours=i) + timedelta(minutes=9),
            )
            s.add(run)
            s.flush()
            s.add(CiJob(run_id=run.id, job_id="build", name="build amd64", status="completed"))
        for i in range(NODES):
            s.add(
                NodeInstance(
                    hostname=f"node-{i:03d}",
                    platform_id=platform.id,
                    mac_addresses=[f"52:54:00:00:{i // 256:02x}:{i % 256:02x}"],
                    status="booted",
                    last_report={"status": "booted", "publication": good, "source": "127.0.0.1"},
                    last_seen=now,
                )
            )
    return {"publication": good, "run": ci.running_run}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the app's and the test client's request lines
    from fastapi.testclient import TestClient

    from diskci.platform.http.app import create_app

    with tempfile.TemporaryDirectory(prefix="diskci-bench-dashboard-") as tmp:
        state = Path(tmp) / "state"
        url = args.database_url or f"sqlite:///{state / 'platform.db'}"
        settings = PlatformSettings(state_dir=state, database_url=url, secret_key="bench-" + "k" * 40)  # type: ignore[arg-type]
        database = Database(url)
        database.upgrade()
        started = time.perf_counter()
        ids = populate(database, settings)
        print(
            f"seeded in {time.perf_counter() - started:.1f} s: {PUBLICATIONS} publications, {EVENTS} events"
        )
        with database.session() as s:
            token = create_token(s, "bench-admin", Role.ADMIN, actor="bench").token
        app = create_app(settings, database=database, enqueue=lambda d: d, migrate=False)
        pages = {
            "node platforms": "/",
            "publications": f"/platforms/{PLATFORM}",
            "publication": f"/publications/{ids['publication']}",
            "runs": "/runs",
            "run": f"/runs/{ids['run']}",
            "run log (500 rows)": f"/runs/{ids['run']}/live?job=build%20amd64&offset=0",
            "CI workers": "/workers",
            "nodes": "/nodes",
            "events": "/events",
            "events by type": "/events?type=netboot_report&reason=booted",
            "events by platform": f"/events?platform={PLATFORM}",
        }
        slow = []
        with TestClient(app) as client:
            signin = client.get("/signin").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', signin)
            assert csrf is not None
            client.post("/signin", data={"token": token, "csrf": csrf.group(1)})
            print(f"{'page':<22} {'median ms':>10} {'max ms':>8}")
            for name, path in pages.items():
                warm = client.get(path, follow_redirects=False)  # warm-up, and signed in
                assert warm.status_code == 200 and ("bench-admin" in warm.text or '"run"' in warm.text), path
                times = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    r = client.get(path, follow_redirects=False)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200, (path, r.status_code)
                median = statistics.median(times)
                mark = "" if median < GOAL_MS else "  over the goal"
                if median >= GOAL_MS:
                    slow.append(name)
                print(f"{name:<22} {median:>10.1f} {max(times):>8.1f}{mark}")
        database.dispose()
    print(
        f"goal < {GOAL_MS:.0f} ms: " + ("every page meets it" if not slow else f"missed by {', '.join(slow)}")
    )
    return 1 if slow else 0


if __name__ == "__main__":
    raise SystemExit(main())
