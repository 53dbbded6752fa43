"""The dashboard in a real browser: Python playwright driving Debian's chromium (never ``playwright
install``) against a real ``diskci platform serve`` on 127.0.0.1. Screenshots land in the test's tmp dir."""

from __future__ import annotations

import secrets
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from dashboard_seed import COMPOSEFS, PLATFORM, VERITY, seed
from served_platform import admin_token, platform_serve, serve_env

from diskci.platform.db.session import Database
from diskci.platform.settings import PlatformSettings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_sign_in_browse_a_publication_and_sign_out(tmp_path: Path) -> None:
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (Debian package chromium, deploy/debian-packages.txt)")
    from playwright.sync_api import expect, sync_playwright

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    key = secrets.token_urlsafe(48)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with platform_serve(serve_env(state, key), tmp_path / "serve.log", consumer=False) as served:
        token = admin_token(state, "browser-admin")
        database = Database(f"sqlite:///{state / 'platform.db'}")
        try:
            good, _ = seed(database, PlatformSettings(state_dir=state, secret_key=key))
        finally:
            database.dispose()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(f"{served.base}/")
                expect(page).to_have_url(f"{served.base}/signin")
                page.fill("#token", token)
                page.click("button[type=submit]")
                expect(page.locator("h1")).to_have_text("Node platforms")
                expect(page.locator("header .who")).to_contain_text("browser-admin")
                expect(page.locator("header .role")).to_have_text("admin")
                page.screenshot(path=str(shots / "platforms.png"), full_page=True)

                page.click(f"text={PLATFORM}")
                expect(page.locator("table")).to_contain_text("1.2.0")
                expect(page.locator("table")).to_contain_text(COMPOSEFS[:23])
                expect(page.locator("table")).to_contain_text("signature_invalid")
                page.screenshot(path=str(shots / "publications.png"), full_page=True)

                page.click("a:text-is('1.2.0')")
                expect(page).to_have_url(f"{served.base}/publications/{good}")
                expect(page.locator("table.artifacts")).to_contain_text(VERITY)
                page.screenshot(path=str(shots / "publication.png"), full_page=True)

                page.click("text=Set as default…")
                expect(page.locator(".would")).to_contain_text("default publication")
                page.screenshot(path=str(shots / "confirm.png"), full_page=True)
                page.click("button.danger")
                expect(page.locator("h1 .badge.default")).to_have_text("default")

                page.click("text=Sign out")
                expect(page).to_have_url(f"{served.base}/signin")
                page.goto(f"{served.base}/publications/{good}")
                expect(page).to_have_url(f"{served.base}/signin")  # the session is gone
                page.goto(f"{served.base}/api/v1/docs")
                expect(page.locator(".swagger-ui .title").first).to_contain_text("diskci platform")
                page.screenshot(path=str(shots / "apidocs.png"))
            finally:
                browser.close()
    for name in ("platforms", "publications", "publication", "confirm", "apidocs"):
        assert (shots / f"{name}.png").stat().st_size > 5_000
