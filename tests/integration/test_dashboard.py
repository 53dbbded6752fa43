"""The dashboard through the ASGI test client: sign-in, sessions, CSRF, roles, pages, and offline API docs."""

from __future__ import annotations

import re
from typing import Any

import pytest
from dashboard_seed import COMPOSEFS, KERNEL_SHA, VERITY, seed

from diskci.platform.db.session import Database
from diskci.platform.settings import PlatformSettings
from diskci.platform.web.session import SESSION_COOKIE

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, html
    return match.group(1)


def sign_in(client: Any, token: str) -> Any:
    page = client.get("/signin")
    assert page.status_code == 200
    return client.post("/signin", data={"token": token, "csrf": csrf_of(page.text)}, follow_redirects=False)


@pytest.fixture
def seeded(platform_db: Database, platform_settings: PlatformSettings) -> tuple[int, int]:
    return seed(platform_db, platform_settings)


def test_root_without_a_session_goes_to_sign_in(platform_client: Any) -> None:
    r = platform_client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/signin"


def test_sign_in_sets_a_strict_http_only_signed_cookie(
    platform_client: Any, make_token: Any, seeded: tuple[int, int]
) -> None:
    token = make_token("viewer", "alice")
    r = sign_in(platform_client, token)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert token not in cookie and token.removeprefix("dci_") not in cookie
    page = platform_client.get("/")
    assert page.status_code == 200
    assert "debian-12-amd64" in page.text and "alice" in page.text and ">viewer<" in page.text
    assert "operator role needed" in page.text  # webhooks are an operator's read


def test_bad_token_and_missing_csrf_are_refused(platform_client: Any, make_token: Any) -> None:
    r = sign_in(platform_client, "dci_not-a-real-token")
    assert r.status_code == 401 and "invalid or revoked API token" in r.text
    assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
    r = platform_client.post("/signin", data={"token": make_token("admin")}, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.text
    assert platform_client.get("/", follow_redirects=False).status_code == 303


def test_forged_posts_without_the_session_csrf_change_nothing(
    platform_client: Any, make_token: Any, seeded: tuple[int, int]
) -> None:
    good, _ = seeded
    assert sign_in(platform_client, make_token("operator")).status_code == 303
    for data in ({}, {"csrf": "forged", "confirm": "yes"}):
        r = platform_client.post(f"/publications/{good}/default", data=data)
        assert r.status_code == 403 and "CSRF" in r.text
    assert "badge default" not in platform_client.get(f"/publications/{good}").text
    r = platform_client.post("/signout", data={"csrf": "forged"})
    assert r.status_code == 403
    assert platform_client.get("/", follow_redirects=False).status_code == 200  # still signed in


def test_pages_show_publications_and_artifacts(
    platform_client: Any, make_token: Any, seeded: tuple[int, int]
) -> None:
    good, bad = seeded
    assert sign_in(platform_client, make_token("viewer")).status_code == 303
    page = platform_client.get("/platforms/debian-12-amd64")
    assert page.status_code == 200
    assert "1.2.0" in page.text and "1.3.0" in page.text and COMPOSEFS[:23] in page.text
    assert "signature_invalid" in page.text
    assert "<b>evil</b>" not in page.text and "&lt;b&gt;evil&lt;/b&gt;" in page.text  # escaped
    detail = platform_client.get(f"/publications/{good}")
    assert detail.status_code == 200
    for shown in ("vmlinuz", "8,123,456", KERNEL_SHA, VERITY, COMPOSEFS, "2026-11-30T12:00:00"):
        assert shown in detail.text
    assert "Set as default" not in detail.text and "Mark critical" not in detail.text  # a viewer's page
    assert platform_client.get(f"/publications/{bad}").status_code == 200


def test_operator_sets_default_through_the_confirmation(
    platform_client: Any, make_token: Any, seeded: tuple[int, int]
) -> None:
    good, _ = seeded
    assert sign_in(platform_client, make_token("operator")).status_code == 303
    detail = platform_client.get(f"/publications/{good}")
    assert "Set as default" in detail.text
    csrf = csrf_of(detail.text)
    ask = platform_client.post(f"/publications/{good}/default", data={"csrf": csrf})
    assert ask.status_code == 200 and "Nothing has changed yet" in ask.text
    assert "badge default" not in platform_client.get(f"/publications/{good}").text
    done = platform_client.post(f"/publications/{good}/default", data={"csrf": csrf, "confirm": "yes"})
    assert done.status_code == 200 and "badge default" in done.text  # redirected to the publication
    home = platform_client.get("/")
    assert f'href="/publications/{good}"' in home.text
    crit = platform_client.post(
        f"/publications/{good}/critical", data={"csrf": csrf, "confirm": "yes", "critical": "true"}
    )
    assert crit.status_code == 200 and "badge critical" in crit.text


def test_sign_out_and_revocation_end_the_session(
    platform_client: Any, make_token: Any, platform_db: Database
) -> None:
    assert sign_in(platform_client, make_token("admin", "bob")).status_code == 303
    csrf = csrf_of(platform_client.get("/").text)
    r = platform_client.post("/signout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    assert platform_client.get("/", follow_redirects=False).status_code == 303
    # a revoked token's session ends at once
    from diskci.platform.actions.catalog import invoke
    from diskci.platform.db.models import Role

    assert sign_in(platform_client, make_token("viewer", "carol")).status_code == 303
    assert platform_client.get("/", follow_redirects=False).status_code == 200
    invoke(
        "system_revoke_api_token",
        {"name": "carol"},
        database=platform_db,
        settings=platform_client.app.state.settings,
        actor="test",
        role=Role.ADMIN,
        confirmed=True,
    )
    assert platform_client.get("/", follow_redirects=False).status_code == 303


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/platforms/no-such-platform", 404),
        ("/platforms/%5B%2Foops%5D%3Cscript%3E", 404),
        ("/publications/999999", 404),
        ("/publications/-1", 404),
        ("/publications/abc", 400),
        ("/publications/99999999999999999999999", 400),
    ],
)
def test_odd_paths_answer_without_a_500(
    platform_client: Any, make_token: Any, path: str, status: int
) -> None:
    assert sign_in(platform_client, make_token("viewer")).status_code == 303
    r = platform_client.get(path)
    assert r.status_code == status, r.text
    assert "<script>" not in r.text


def test_odd_forms_answer_without_a_500(
    platform_client: Any, make_token: Any, seeded: tuple[int, int]
) -> None:
    good, _ = seeded
    page = platform_client.get("/signin")
    csrf = csrf_of(page.text)
    for body in (b"\xff\xfe%%%", b"token=" + b"x" * 5000 + b"&csrf=" + csrf.encode(), b"a=1&" * 100):
        r = platform_client.post(
            "/signin", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert r.status_code in (400, 401, 403), (body[:40], r.status_code, r.text)
    assert sign_in(platform_client, make_token("operator")).status_code == 303
    csrf = csrf_of(platform_client.get("/").text)
    r = platform_client.post(f"/publications/{good}/explode", data={"csrf": csrf})
    assert r.status_code == 400
    platform_client.cookies.clear()
    platform_client.cookies.set(SESSION_COOKIE, "tampered.value.sig")
    assert platform_client.get("/", follow_redirects=False).status_code == 303


def test_api_docs_are_served_from_installed_assets(platform_client: Any) -> None:
    docs = platform_client.get("/api/v1/docs")
    assert docs.status_code == 200
    assert "/static/apidocs/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        r = platform_client.get(f"/static/apidocs/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000
    redoc = platform_client.get("/api/v1/redoc")
    assert redoc.status_code == 200 and "/static/apidocs/redoc.standalone.js" in redoc.text
    assert "fonts.googleapis" not in redoc.text
    assert platform_client.get("/static/dashboard/dashboard.css").status_code == 200
    paths = platform_client.get("/api/v1/openapi.json").json()["paths"]
    assert not any(p.startswith(("/signin", "/platforms", "/publications", "/api/v1/docs")) for p in paths)
