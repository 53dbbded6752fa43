"""Load on the multi-host platform of the fault campaign (tests/integration/campaign_hosts.py: two
replicas behind nginx, two queue consumers, own PostgreSQL and Redis): wrk on ``/ipxe`` and on a root
image download while publications are processed, then 500 webhook deliveries within a minute, each
processed exactly once. Prints requests/s, errors (must be 0), latency p50/p99, and the delivery count.

Run as root: ``.venv/bin/python bench/load.py`` (10 s per wrk run; ``--seconds 30`` for the full run).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from campaign_hosts import campaign, unavailable_reason
from sqlalchemy import func, select
from test_fault_campaign import PLATFORM, Platform

from diskci.platform.db.models import Task, TaskStatus, WebhookDelivery
from diskci.supplychain.authority import SigningAuthority


def wrk(url: str, seconds: int, connections: int = 32, timeout: int = 10) -> dict[str, float]:
    """wrk's figures for ``url``: requests/s, errors (non-2xx and socket errors: connect, read, write,
    and requests not answered within ``timeout`` seconds), p50 and p99 in ms. wrk's own default timeout
    (2 s) would count an 8 MiB download that is merely slow on 2 busy cores as an error."""
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout}s", "--latency", url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)\b", out)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors += sum(int(g) for g in m.groups()) if m else 0
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    return {"rps": float(rps.group(1)), "errors": errors, "p50": ms("50"), "p99": ms("99")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10, help="each wrk run (the full run: 30)")
    ap.add_argument("--deliveries", type=int, default=500)
    args = ap.parse_args()
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"bench: {reason}")
    with tempfile.TemporaryDirectory(prefix="diskci-load-") as tmp:
        work = Path(tmp)
        authority = SigningAuthority.init(work / "authority", default_issuer="https://git.example.com")
        with campaign(work / "hosts", secret_key="load-key-" + "k" * 40) as c:
            platform = Platform(c, authority, work)
            first = platform.build("0.0.1", root_size=8 << 20)
            platform.deliver(first)
            pub_id = platform.wait_published(first)
            platform.check_one_publication(first)
            builds = [platform.build(f"1.0.{i}") for i in range(10)]
            background = threading.Thread(target=lambda: [platform.deliver(b) for b in builds[:5]])
            background.start()  # publications are processed while wrk runs
            ipxe = wrk(f"{c.base}/ipxe?platform={PLATFORM}&arch=x86_64", args.seconds)
            root = wrk(f"{c.base}/netboot/{pub_id}/amd64/rootfs.img", args.seconds, connections=8)
            background.join()
            for b in builds[:5]:
                platform.wait_published(b)
            print(f"load: wrk {args.seconds} s, 2 threads, 10 s timeout, through nginx to 2 replicas")
            for name, r in (("/ipxe (32 conn.)", ipxe), ("rootfs.img 8 MiB (8 conn.)", root)):
                print(
                    f"  {name:<28} {r['rps']:9.1f} req/s  errors {int(r['errors'])}"
                    f"  p50 {r['p50']:.1f} ms  p99 {r['p99']:.1f} ms"
                )
            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                ids = list(pool.map(lambda i: platform.deliver(builds[i % 10]), range(args.deliveries)))
            sent = time.monotonic() - started

            def done() -> int:
                with platform.db.read_session() as s:
                    return int(
                        s.scalar(
                            select(func.count(func.distinct(Task.payload["delivery_id"].as_string()))).where(
                                Task.status == TaskStatus.SUCCEEDED.value,
                                Task.payload["delivery_id"].as_string().in_(ids),
                            )
                        )
                        or 0
                    )

            deadline = time.monotonic() + 180
            while done() < len(ids) and time.monotonic() < deadline:
                time.sleep(1)
            elapsed = time.monotonic() - started
            with platform.db.read_session() as s:
                succeeded = int(
                    s.scalar(
                        select(func.count()).where(
                            Task.status == TaskStatus.SUCCEEDED.value,
                            Task.payload["delivery_id"].as_string().in_(ids),
                        )
                    )
                    or 0
                )
                linked = int(
                    s.scalar(
                        select(func.count()).where(
                            WebhookDelivery.delivery_id.in_(ids), WebhookDelivery.publication_id.is_not(None)
                        )
                    )
                    or 0
                )
            print(
                f"deliveries: {len(ids)} sent in {sent:.1f} s (8 senders), {done()} processed"
                f" ({succeeded} successful tasks: each once) in {elapsed:.1f} s, {linked} linked"
            )
            ok = ipxe["errors"] == 0 and root["errors"] == 0 and succeeded == len(ids) == linked
            return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
