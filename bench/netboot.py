"""Netboot serving throughput: iPXE scripts per second, and root-image downloads against nginx.

One run, same machine, same file: the platform (``diskci.platform.http.app:create_app`` under uvicorn,
one process) serves ``/ipxe`` for a registered machine and a 128 MiB root image from its blob cache;
Debian's nginx (nginx-light, its own temporary config on 127.0.0.1, sendfile on) serves the very same
file. ``wrk`` (Debian) measures each. Goals: at least 2,000 iPXE scripts/s; platform downloads at
least half of nginx's throughput.

Run: ``.venv/bin/python bench/netboot.py [--seconds 10] [--size-mib 128]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

GOAL_SCRIPTS_PER_S = 2000.0
GOAL_DOWNLOAD_RATIO = 0.5
MAC = "52:54:00:be:0c:01"
_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench: {url} did not answer within {timeout} s")


@contextmanager
def process(argv: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> Iterator[None]:
    with open(log or os.devnull, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wrk(url: str, *, seconds: int, connections: int, threads: int = 1) -> dict[str, float]:
    res = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        check=True,
        capture_output=True,
        text=True,
    )
    rps = re.search(r"Requests/sec:\s+([\d.]+)", res.stdout)
    tps = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", res.stdout)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", res.stdout)
    if not rps or not tps:
        raise SystemExit(f"bench: cannot read wrk's output:\n{res.stdout}\n{res.stderr}")
    if errors:
        raise SystemExit(f"bench: {errors.group(1)} error responses from {url}")
    return {"rps": float(rps.group(1)), "bytes_per_s": float(tps.group(1)) * _UNITS[tps.group(2)]}


def prepare(state: Path, size: int) -> tuple[int, Path]:
    """A platform state dir with one published publication whose files are in the blob cache."""
    from diskci.platform.db.models import DiskImagePublication, NodeInstance, NodePlatform
    from diskci.platform.db.session import Database
    from diskci.platform.services.blobcache import BlobCache

    database = Database(f"sqlite:///{state / 'platform.db'}")
    database.upgrade()
    blobs = BlobCache(state / "blobs")
    files = []
    root_path = None
    for name, n in (("vmlinuz", 8 << 20), ("initramfs.img", 16 << 20), ("rootfs.img", size)):
        data = os.urandom(n)
        digest = hashlib.sha256(data).hexdigest()
        path = blobs.put_bytes(digest, data)
        files.append(
            {
                "name": name,
                "media_type": "application/octet-stream",
                "size": n,
                "sha256": digest,
                "fsverity": None,
                "digest": f"sha256:{digest}",
            }
        )
        if name == "rootfs.img":
            root_path = path
    assert root_path is not None
    with database.session() as s:
        platform = NodePlatform(
            name="bench-amd64",
            architectures=["amd64"],
            registry_repository="127.0.0.1:5000/bench/disk-images/bench-amd64",
            cosign_identity_regexp="https://ci.example/.*",
            cosign_oidc_issuer="https://ci.example",
        )
        s.add(platform)
        s.flush()
        pub = DiskImagePublication(
            platform_id=platform.id,
            version="1.0.0",
            reference="127.0.0.1:5000/bench/disk-images/bench-amd64:1.0.0",
            manifest_digest="sha256:" + hashlib.sha256(b"bench").hexdigest(),
            status="published",
            artifacts={
                "amd64": {
                    "manifest_digest": "sha256:" + "0" * 64,
                    "cmdline": "console=ttyS0",
                    "artifacts": files,
                }
            },
        )
        s.add(pub)
        s.flush()
        platform.default_publication_id = pub.id
        s.add(NodeInstance(hostname="bench-node", mac_addresses=[MAC], platform_id=platform.id))
        pub_id = pub.id
    database.dispose()
    return pub_id, root_path


NGINX_CONF = """worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--size-mib", type=int, default=128)
    args = ap.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"bench: {tool} is missing (Debian packages wrk, nginx-light)")
    with tempfile.TemporaryDirectory(prefix="diskci-bench-netboot-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's workers run as an unprivileged user
        state = work / "state"
        pub_id, root_path = prepare(state, args.size_mib << 20)
        www = work / "www"
        www.mkdir()
        os.link(root_path, www / "rootfs.img")  # nginx serves the very same bytes (same inode)
        port, nginx_port = free_port(), free_port()
        env = {
            **os.environ,
            "DISKCI_STATE_DIR": str(state),
            "DISKCI_SECRET_KEY": secrets.token_urlsafe(48),
            "DISKCI_QUEUE_URL": f"sqlite:///{work / 'queue.db'}",
        }
        uvicorn = [
            sys.executable,
            "-m",
            "uvicorn",
            "diskci.platform.http.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        ngx_dir = work / "nginx"
        ngx_dir.mkdir()
        (ngx_dir / "nginx.conf").write_text(NGINX_CONF.format(dir=ngx_dir, port=nginx_port, root=www))
        nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        base = f"http://127.0.0.1:{port}"
        with (
            process(uvicorn, env, work / "uvicorn.log"),
            process(
                [nginx_bin, "-c", str(ngx_dir / "nginx.conf"), "-p", str(ngx_dir)], log=work / "nginx.log"
            ),
        ):
            wait_http(f"{base}/healthz")
            wait_http(f"http://127.0.0.1:{nginx_port}/rootfs.img")
            ipxe_url = f"{base}/ipxe?mac={MAC.replace(':', '-')}&uuid=bench&arch=x86_64"
            import httpx

            script = httpx.get(ipxe_url).text
            if "diskci.root_sha256=" not in script:
                raise SystemExit(f"bench: /ipxe did not render a boot script:\n{script}")
            ipxe = wrk(ipxe_url, seconds=args.seconds, connections=32)
            platform_dl = wrk(
                f"{base}/netboot/{pub_id}/amd64/rootfs.img", seconds=args.seconds, connections=4
            )
            nginx_dl = wrk(f"http://127.0.0.1:{nginx_port}/rootfs.img", seconds=args.seconds, connections=4)
    ratio = platform_dl["bytes_per_s"] / nginx_dl["bytes_per_s"]
    ok_ipxe = ipxe["rps"] >= GOAL_SCRIPTS_PER_S
    ok_dl = ratio >= GOAL_DOWNLOAD_RATIO
    mib = 1 << 20
    print(f"netboot bench ({args.seconds} s per run, root image {args.size_mib} MiB, one uvicorn process)")
    print(
        f"  /ipxe scripts:          {ipxe['rps']:9.0f} /s   goal >= {GOAL_SCRIPTS_PER_S:.0f}   "
        f"{'PASS' if ok_ipxe else 'MISS'}"
    )
    print(f"  platform rootfs.img:    {platform_dl['bytes_per_s'] / mib:9.0f} MiB/s")
    print(f"  nginx rootfs.img:       {nginx_dl['bytes_per_s'] / mib:9.0f} MiB/s")
    print(
        f"  platform / nginx:       {ratio:9.2f}      goal >= {GOAL_DOWNLOAD_RATIO:.2f}  "
        f"{'PASS' if ok_dl else 'MISS'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
