"""The dashboard in a real browser: Python playwright driving Debian's chromium (never ``playwright
install``) against a real ``diskci platform serve`` on 127.0.0.1. Screenshots land in the test's tmp dir."""

from __future__ import annotations

import secrets
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from dashboard_seed import COMPOSEFS, PLATFORM, RUNNING_JOB, VERITY, add_log_rows, finish_run, seed, seed_ci
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


def test_follow_a_running_build_and_terminate_a_worker(tmp_path: Path) -> None:
    """A running run's log grows while its page is open (rows appended as a runner would), its build
    stages show, and a CI worker is terminated through the confirmation; every page is photographed."""
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
            ci = seed_ci(database, good)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 800})
                    page.goto(f"{served.base}/signin")
                    page.fill("#token", token)
                    page.click("button[type=submit]")
                    expect(page.locator("h1")).to_have_text("Node platforms")

                    page.click("nav >> text=Runs")
                    expect(page.locator("table.runs")).to_contain_text("refs/tags/v1.3.0")
                    page.screenshot(path=str(shots / "runs.png"), full_page=True)

                    page.click(f"a:text-is('#{ci.running_run}')")
                    log = page.locator("#log")
                    expect(log).to_contain_text("composefs (amd64)")
                    expect(page.locator("#stages")).to_contain_text("rootfs (amd64)")
                    expect(page.locator("#stages")).to_contain_text("cached")
                    add_log_rows(
                        database,
                        ci.running_run,
                        ["12:00:09 INFO composefs (amd64) done (7.0s)", "12:00:09 INFO artifacts (amd64) …"]
                        + [f"writing block {i}" for i in range(40)],
                    )
                    expect(log).to_contain_text("writing block 39")  # the log grew on the open page
                    expect(page.locator("#stages tr.stage-running")).to_contain_text("artifacts (amd64)")
                    expect(page.locator("#log-state")).to_contain_text("following · 47 rows")
                    page.screenshot(path=str(shots / "run.png"), full_page=True)

                    page.click("nav >> text=CI workers")
                    busy = page.locator("tr[data-worker=ci-busy-1]")
                    expect(busy).to_contain_text("busy")
                    expect(busy).to_contain_text("37.0 GiB free of 100.0 GiB")
                    page.screenshot(path=str(shots / "workers.png"), full_page=True)
                    busy.locator("text=Terminate…").click()
                    expect(page.locator(".would")).to_contain_text(f"its job {RUNNING_JOB}")
                    page.screenshot(path=str(shots / "terminate-confirm.png"), full_page=True)
                    page.click("button.danger")
                    expect(page).to_have_url(f"{served.base}/workers")
                    expect(page.locator("tr[data-worker=ci-busy-1]")).to_contain_text("terminating")
                    page.screenshot(path=str(shots / "workers-terminating.png"), full_page=True)

                    page.goto(f"{served.base}/runs/{ci.running_run}?job={RUNNING_JOB}")
                    expect(page.locator("#run-status")).to_have_text("cancelled")  # the worker's job
                    page.goto(f"{served.base}/runs/{ci.done_run}")
                    finish_run(database, ci.done_run)
                    expect(page.locator("#log-state")).to_contain_text("complete")

                    page.click("nav >> text=Nodes")
                    expect(page.locator("table.nodes")).to_contain_text("node-7")
                    page.screenshot(path=str(shots / "nodes.png"), full_page=True)
                    page.click("nav >> text=Events")
                    expect(page.locator("table.events")).to_contain_text("ci_worker_terminating")
                    page.screenshot(path=str(shots / "events.png"), full_page=True)
                    page.goto(f"{served.base}/publications/{good}")
                    expect(page.locator("table.sbom")).to_contain_text("busybox-static")
                    expect(page.locator("dl.provenance")).to_contain_text("refs/tags/v1.2.0")
                    page.screenshot(path=str(shots / "publication-sbom.png"), full_page=True)
                finally:
                    browser.close()
        finally:
            database.dispose()
    names = ("runs", "run", "workers", "terminate-confirm", "workers-terminating", "nodes", "events")
    for name in (*names, "publication-sbom"):
        assert (shots / f"{name}.png").stat().st_size > 5_000
