"""The fault campaign's machines, on this one: network namespaces joined by a bridge in the campaign's
own test range (``SUBNET``, never any other address), the campaign's own PostgreSQL (initdb into a
temporary directory), Redis and registry that it may kill and restart, nginx (nginx-light) balancing two
``diskci platform serve`` replicas, and two ``diskci platform consume`` queue consumers.

Layout: the bridge ``dci-br0`` holds ``GATEWAY`` in the root namespace, where PostgreSQL, Redis, the
registry and nginx listen (on ``GATEWAY`` only). Each replica and consumer is a namespace ``dci-<host>``
with one veth link to the bridge. The registry is reached, from every host and from the test, at
``127.0.0.1:<port>`` through a socat forwarder (diskci speaks plain HTTP only to a loopback registry).
Everything is torn down when ``campaign()`` ends, after a failure too, and leftovers of a killed run (the
``dci-`` namespaces and links) are removed first; a lock file keeps two campaigns from overlapping.
The machine's own PostgreSQL and Redis are never touched.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SUBNET = "10.231.0"  # the campaign's own test range
GATEWAY = f"{SUBNET}.1"
BRIDGE = "dci-br0"
HOSTS = {"replica-1": 11, "replica-2": 12, "consumer-1": 21, "consumer-2": 22}
SERVE_PORT = 8480
LOCK_FILE = Path("/run/diskci-fault-campaign.lock")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def unavailable_reason() -> str | None:
    """Why the campaign cannot run here (not root, no ``ip netns``, a tool missing), or None."""
    if os.geteuid() != 0:
        return "the fault campaign needs root (network namespaces)"
    for tool in ("ip", "nginx", "redis-server", "docker-registry", "socat", "runuser"):
        if shutil.which(tool) is None:
            return f"the fault campaign needs {tool} (deploy/debian-packages.txt)"
    if not (PG_BIN / "initdb").is_file():
        return f"the fault campaign needs PostgreSQL 15's initdb in {PG_BIN}"
    probe = f"dci-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns is unavailable here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def free_gateway_port() -> int:
    """A TCP port nothing listens on at ``GATEWAY`` nor at 127.0.0.1."""
    while True:
        with socket.socket() as sock:
            sock.bind((GATEWAY, 0))
            port = int(sock.getsockname()[1])
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def _remove_leftovers() -> None:
    for name in HOSTS:
        _ip("netns", "del", f"dci-{name}", check=False)
    _ip("link", "del", BRIDGE, check=False)


@dataclass
class Network:
    """The bridge and one namespace per host of ``HOSTS``."""

    def address(self, host: str) -> str:
        return f"{SUBNET}.{HOSTS[host]}"

    def namespace(self, host: str) -> str:
        return f"dci-{host}"

    def link(self, host: str) -> str:
        return f"dci-{host.replace('replica-', 'r').replace('consumer-', 'c')}"

    def cut(self, host: str) -> None:
        """The host's link goes down: its packets are dropped, nothing is refused."""
        _ip("link", "set", self.link(host), "down")

    def restore(self, host: str) -> None:
        _ip("link", "set", self.link(host), "up")

    def argv(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(host), *argv]


@contextmanager
def network() -> Iterator[Network]:
    net = Network()
    _remove_leftovers()
    try:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for host, last in HOSTS.items():
            ns, link = net.namespace(host), net.link(host)
            _ip("netns", "add", ns)
            _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", link, "master", BRIDGE, "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{last}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield net
    finally:
        _remove_leftovers()


@dataclass
class Process:
    """A restartable child (``argv`` in ``env``), its output appended to ``log``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    healthy: Callable[[], bool] | None = None
    proc: subprocess.Popen[bytes] | None = None
    user: str | None = None

    def start(self, timeout: float = 30) -> None:
        with self.log.open("ab") as out:
            argv = ["runuser", "-u", self.user, "--", *self.argv] if self.user else self.argv
            self.proc = subprocess.Popen(
                argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        if self.healthy is not None:
            deadline = time.monotonic() + timeout
            while not self.healthy():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not come up: {self.log.read_text()[-3000:]}")
                time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _healthz(address: str) -> Callable[[], bool]:
    return lambda: _http_ok(f"http://{address}:{SERVE_PORT}/healthz")


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


@dataclass
class OwnPostgres:
    """initdb into a temporary directory owned by ``postgres``; ``pg_ctl`` stops and starts it."""

    data: Path
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{GATEWAY}:{self.port}/diskci"

    def _pg_ctl(self, *args: str) -> None:
        argv = ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w"]
        options = f"-p {self.port} -c listen_addresses={GATEWAY} -k {self.data} -c fsync=off"
        options += " -c max_connections=300"
        done = subprocess.run(
            [*argv, "-l", str(self.log), "-o", options, *args], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)}: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "stop")

    def restart(self) -> None:
        """Stopped as a crash would (``immediate``: every connection dropped), then started again."""
        self.stop("immediate")
        self.start()


@contextmanager
def own_postgres(port: int) -> Iterator[OwnPostgres]:
    root = Path(tempfile.mkdtemp(prefix="diskci-campaign-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    pg = OwnPostgres(data, port, root / "postgres.log")
    try:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
             "--auth=trust", "-E", "UTF8"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        pg.start()
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "createdb"), "-h", str(data), "-p", str(port),
             "diskci"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        yield pg
    finally:
        with suppress(RuntimeError, subprocess.TimeoutExpired):
            pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Campaign:
    """Everything the fault campaign runs; ``base`` is nginx, the platform's one public address."""

    work: Path
    net: Network
    postgres: OwnPostgres
    redis: Process
    registry: Process
    registry_port: int
    nginx_port: int
    replicas: dict[str, Process] = field(default_factory=dict)
    consumers: dict[str, Process] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://{GATEWAY}:{self.nginx_port}"

    @property
    def registry_address(self) -> str:
        """Where every host (and the test) reaches the registry: its local forwarder."""
        return f"127.0.0.1:{self.registry_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{GATEWAY}:{self.redis_port}/0"

    redis_port: int = 0

    def logs(self) -> str:
        out = []
        for log in sorted(self.work.glob("*.log")):
            out.append(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}")
        return "\n".join(out)


NGINX_CONF = """worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 2048; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  client_max_body_size 2m;
  upstream platform {{
    server {r1}:{port} max_fails=1 fail_timeout=3s;
    server {r2}:{port} max_fails=1 fail_timeout=3s;
    keepalive 32;
  }}
  server {{
    listen {gateway}:{listen};
    location / {{
      proxy_pass http://platform;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_connect_timeout 1s;
      proxy_read_timeout 30s;
      proxy_next_upstream error timeout http_502 http_503 http_504;
      proxy_next_upstream_tries 2;
      proxy_buffering off;
    }}
  }}
}}
"""


@contextmanager
def campaign(work: Path, *, secret_key: str, lease_seconds: int = 3) -> Iterator[Campaign]:
    """The whole campaign set up in ``work`` (logs there), torn down at the end."""
    work.mkdir(parents=True, exist_ok=True)
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("w") as lock, ExitStack() as stack:
        fcntl.flock(lock, fcntl.LOCK_EX)
        net = stack.enter_context(network())
        pg = stack.enter_context(own_postgres(free_gateway_port()))
        redis_port, registry_port, nginx_port = (free_gateway_port() for _ in range(3))
        redis_dir = work / "redis"
        redis_dir.mkdir()
        redis = Process(
            "redis",
            ["redis-server", "--bind", GATEWAY, "--port", str(redis_port), "--dir", str(redis_dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
            dict(os.environ), work / "redis.log", healthy=lambda: _tcp_open(GATEWAY, redis_port),
        )  # fmt: skip
        stack.callback(redis.kill)
        redis.start()
        reg_dir = work / "registry"
        (reg_dir / "storage").mkdir(parents=True)
        (reg_dir / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {reg_dir / 'storage'}\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: {GATEWAY}:{registry_port}\n"
        )
        registry = Process(
            "registry",
            ["docker-registry", "serve", str(reg_dir / "config.yml")],
            dict(os.environ),
            work / "registry.log",
            healthy=lambda: _http_ok(f"http://{GATEWAY}:{registry_port}/v2/"),
        )
        stack.callback(registry.kill)
        registry.start()
        forward = ["socat", f"TCP-LISTEN:{registry_port},bind=127.0.0.1,fork,reuseaddr",
                   f"TCP:{GATEWAY}:{registry_port}"]  # fmt: skip
        for where in (None, "consumer-1", "consumer-2"):
            argv = forward if where is None else net.argv(where, forward)
            fwd = Process(f"forwarder {where or 'test'}", argv, dict(os.environ), work / "socat.log")
            stack.callback(fwd.kill, signal.SIGTERM)
            fwd.start()
        c = Campaign(work, net, pg, redis, registry, registry_port, nginx_port, redis_port=redis_port)
        env = {
            **os.environ,
            "DISKCI_DATABASE_URL": pg.url,
            "DISKCI_QUEUE_URL": c.redis_url,
            "DISKCI_SECRET_KEY": secret_key,
            "DISKCI_BLOB_CACHE_DIR": str(work / "blobs"),  # shared storage, as NFS would be
            "DISKCI_TASK_LEASE_SECONDS": str(lease_seconds),
            "DISKCI_PUBLIC_BASE_URL": c.base,
        }
        for name in ("replica-1", "replica-2"):
            address = net.address(name)
            argv = [sys.executable, "-m", "diskci.cli.main", "platform", "serve", "--host", address,
                    "--port", str(SERVE_PORT), "--no-consumer", "--public-base-url", c.base]  # fmt: skip
            proc = Process(
                name,
                net.argv(name, argv),
                {**env, "DISKCI_STATE_DIR": str(work / name)},
                work / f"{name}.log",
                healthy=_healthz(address),
            )
            stack.callback(proc.kill, signal.SIGTERM)
            proc.start(timeout=60)  # one after the other: the first one migrates the database
            c.replicas[name] = proc
        for name in ("consumer-1", "consumer-2"):
            argv = [sys.executable, "-m", "diskci.cli.main", "platform", "consume", "-w", "2"]
            proc = Process(name, net.argv(name, argv), {**env, "DISKCI_STATE_DIR": str(work / name)},
                           work / f"{name}.log")  # fmt: skip
            stack.callback(proc.kill, signal.SIGTERM)
            proc.start()
            c.consumers[name] = proc
        ngx = work / "nginx"
        ngx.mkdir()
        (ngx / "nginx.conf").write_text(
            NGINX_CONF.format(
                dir=ngx, r1=net.address("replica-1"), r2=net.address("replica-2"), port=SERVE_PORT,
                gateway=GATEWAY, listen=nginx_port,
            )
        )  # fmt: skip
        nginx = Process("nginx", ["nginx", "-c", str(ngx / "nginx.conf"), "-p", str(ngx)], dict(os.environ),
                        work / "nginx.log", healthy=lambda: _http_ok(f"{c.base}/healthz"))  # fmt: skip
        stack.callback(nginx.kill, signal.SIGTERM)
        nginx.start()
        yield c
