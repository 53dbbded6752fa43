"""The dashboard's CI, activity and publication-document pages through the ASGI test client: runs, a
run with its live log and build stages, CI workers with host statistics, nodes, events, the SBOM and
provenance of a publication; roles decide the buttons, forged posts are refused, and cancel and
terminate change state only through the confirmation."""

from __future__ import annotations

from typing import Any

import pytest
from dashboard_seed import RUNNING_JOB, SOURCE, SeededCi, add_log_rows, finish_run, seed, seed_ci
from test_dashboard import csrf_of, sign_in

from diskci.platform.db.models import CiRun, NodeInstance
from diskci.platform.db.session import Database
from diskci.platform.settings import PlatformSettings


@pytest.fixture
def ci(platform_db: Database, platform_settings: PlatformSettings) -> tuple[int, SeededCi]:
    good, _ = seed(platform_db, platform_settings)
    return good, seed_ci(platform_db, good)


PAGES = ["/runs", "/runs/{run}", "/workers", "/nodes", "/events", "/publications/{pub}"]


@pytest.mark.parametrize("role", ["admin", "viewer"])
def test_every_page_renders_for_admin_and_viewer(
    platform_client: Any, make_token: Any, ci: tuple[int, SeededCi], role: str
) -> None:
    good, seeded = ci
    assert sign_in(platform_client, make_token(role)).status_code == 303
    for path in PAGES:
        r = platform_client.get(path.format(run=seeded.running_run, pub=good))
        assert r.status_code == 200, (path, r.text)
    runs = platform_client.get("/runs").text
    assert f'href="/runs/{seeded.running_run}"' in runs and "refs/tags/v1.3.0" in runs
    assert f'href="/publications/{good}"' in runs and "7 min 12 s" in runs  # the done run's duration
    workers = platform_client.get("/workers").text
    assert "ci-busy-1" in workers and "ci-idle-2" in workers and ">busy<" in workers
    assert "37.0 GiB free of 100.0 GiB" in workers and "11.0 GiB available of 16.0 GiB" in workers
    assert "0.42 · 0.9 · 1.37" in workers and f"run #{seeded.running_run}" in workers
    nodes = platform_client.get("/nodes").text
    assert "node-7" in nodes and f'href="/publications/{good}"' in nodes and "ci-busy-1" not in nodes
    shown = ("Terminate…", "Cancel run…")
    page_text = workers + platform_client.get(f"/runs/{seeded.running_run}").text
    if role == "viewer":
        assert not any(button in page_text for button in shown)
        assert '<form method="post"' not in page_text.replace('action="/signout"', "")
    else:
        assert all(button in page_text for button in shown)


def test_publication_detail_shows_the_sbom_packages_and_the_provenance(
    platform_client: Any, make_token: Any, ci: tuple[int, SeededCi]
) -> None:
    good, _ = ci
    assert sign_in(platform_client, make_token("viewer")).status_code == 303
    detail = platform_client.get(f"/publications/{good}").text
    for shown in (
        "busybox-static",
        "1:1.35.0-4+b3",
        "pkg:deb/debian/busybox-static@1%3A1.35.0-4%2Bb3?arch=amd64",
        "source busybox 1:1.35.0-4",
        "base-files",
        "2 packages",
        "SPDX-2.3",
        SOURCE["commit"],
        SOURCE["repo"],
        "sha256:" + "5e" * 32,
        "1764000000",
        "mmdebstrap",
        "http://deb.debian.org/debian",
    ):
        assert shown in detail, shown
    assert "debian-12-amd64-amd64-rootfs</td>" not in detail  # the described root is not a package


def test_sbom_of_a_pruned_blob_says_it_is_missing(
    platform_client: Any, make_token: Any, ci: tuple[int, SeededCi], platform_settings: PlatformSettings
) -> None:
    good, _ = ci
    from diskci.platform.services.blobcache import BlobCache

    blobs = BlobCache(platform_settings.blob_dir)
    for digest in list(blobs.digests()):
        blobs.remove(digest)
    assert sign_in(platform_client, make_token("viewer")).status_code == 303
    detail = platform_client.get(f"/publications/{good}")
    assert detail.status_code == 200
    assert "is not in the blob cache" in detail.text


def test_the_live_route_follows_the_log_and_reports_build_stages(
    platform_client: Any, make_token: Any, ci: tuple[int, SeededCi], platform_db: Database
) -> None:
    _, seeded = ci
    assert sign_in(platform_client, make_token("viewer")).status_code == 303
    url = f"/runs/{seeded.running_run}/live"
    first = platform_client.get(url, params={"job": RUNNING_JOB, "offset": 0}).json()
    assert first["run"]["status"] == "in_progress"
    assert first["log"]["rows"][0] == "::group::Build" and first["log"]["next_offset"] == 5
    states = [(e["stage"], e["state"]) for e in first["log"]["stages"]]
    assert states == [
        ("rootfs", "running"),
        ("rootfs", "cached"),
        ("rootfs", "done"),
        ("composefs", "running"),
    ]
    add_log_rows(platform_db, seeded.running_run, ["12:00:09 INFO composefs (amd64) done (7.0s)", "ok"])
    more = platform_client.get(url, params={"job": RUNNING_JOB, "offset": 5}).json()["log"]
    assert more["rows"] == ["12:00:09 INFO composefs (amd64) done (7.0s)", "ok"] and more["next_offset"] == 7
    assert more["stages"] == [{"stage": "composefs", "arch": "amd64", "state": "done", "seconds": 7.0}]
    assert more["complete"] is False
    finish_run(platform_db, seeded.running_run)
    last = platform_client.get(url, params={"job": RUNNING_JOB, "offset": 7}).json()
    assert last["run"]["conclusion"] == "success" and last["log"] == {
        "rows": [],
        "next_offset": 7,
        "complete": True,
        "stages": [],
    }
    bad = platform_client.get(url, params={"job": "no such job"})
    assert bad.status_code == 404 and "no job" in bad.json()["detail"]
    assert platform_client.get(url, params={"job": RUNNING_JOB, "offset": "-3"}).status_code == 400
    platform_client.cookies.clear()
    assert platform_client.get(url).status_code == 401


def test_forged_posts_without_csrf_are_refused_and_change_nothing(
    platform_client: Any, make_token: Any, ci: tuple[int, SeededCi], platform_db: Database
) -> None:
    _, seeded = ci
    assert sign_in(platform_client, make_token("admin")).status_code == 303
    for path in (f"/runs/{seeded.running_run}/cancel", f"/workers/{seeded.worker_id}/terminate"):
        for data in ({"confirm": "yes"}, {"csrf": "forged", "confirm": "yes"}):
            r = platform_client.post(path, data=data)
            assert r.status_code == 403 and "CSRF" in r.text, (path, r.text)
    with platform_db.read_session() as s:
        run = s.get(CiRun, seeded.running_run)
        worker = s.get(NodeInstance, seeded.worker_id)
        assert run is not None and run.status == "in_progress"
        assert worker is not None and worker.status == "running"


def test_a_viewer_cannot_cancel_or_terminate_even_with_a_valid_form(
    platform_client: Any, make_token: Any, ci: tuple[int, SeededCi], platform_db: Database
) -> None:
    _, seeded = ci
    assert sign_in(platform_client, make_token("viewer")).status_code == 303
    csrf = csrf_of(platform_client.get("/workers").text)
    r = platform_client.post(f"/runs/{seeded.running_run}/cancel", data={"csrf": csrf, "confirm": "yes"})
    assert r.status_code == 403 and "operator" in r.text
    r = platform_client.post(f"/workers/{seeded.worker_id}/terminate", data={"csrf": csrf, "confirm": "yes"})
    assert r.status_code == 403 and "operator" in r.text
    with platform_db.read_session() as s:
        assert s.get(CiRun, seeded.running_run).status == "in_progress"  # type: ignore[union-attr]


def test_cancel_a_run_through_the_confirmation(
    platform_client: Any, make_token: Any, ci: tuple[int, SeededCi], platform_db: Database
) -> None:
    _, seeded = ci
    assert sign_in(platform_client, make_token("operator")).status_code == 303
    page = platform_client.get(f"/runs/{seeded.running_run}")
    csrf = csrf_of(page.text)
    ask = platform_client.post(f"/runs/{seeded.running_run}/cancel", data={"csrf": csrf})
    assert ask.status_code == 200 and "Nothing has changed yet" in ask.text
    assert "build amd64, publish" in ask.text and "system_cancel_disk_image_ci_run" in ask.text
    with platform_db.read_session() as s:
        assert s.get(CiRun, seeded.running_run).status == "in_progress"  # type: ignore[union-attr]
    done = platform_client.post(f"/runs/{seeded.running_run}/cancel", data={"csrf": csrf, "confirm": "yes"})
    assert done.status_code == 200 and "Cancel run…" not in done.text  # redirected to the run
    assert "ci-cancelled" in done.text
    with platform_db.read_session() as s:
        run = s.get(CiRun, seeded.running_run)
        assert run is not None and (run.status, run.conclusion) == ("completed", "cancelled")
    again = platform_client.post(f"/runs/{seeded.running_run}/cancel", data={"csrf": csrf, "confirm": "yes"})
    assert again.status_code == 409 and "already completed" in again.text


def test_terminate_a_worker_through_the_confirmation(
    platform_client: Any, make_token: Any, ci: tuple[int, SeededCi], platform_db: Database
) -> None:
    _, seeded = ci
    assert sign_in(platform_client, make_token("operator")).status_code == 303
    csrf = csrf_of(platform_client.get("/workers").text)
    path = f"/workers/{seeded.worker_id}/terminate"
    ask = platform_client.post(path, data={"csrf": csrf})
    assert ask.status_code == 200 and "Nothing has changed yet" in ask.text
    assert f"its job {RUNNING_JOB} of run {seeded.running_run} is cancelled" in ask.text
    with platform_db.read_session() as s:
        assert s.get(NodeInstance, seeded.worker_id).status == "running"  # type: ignore[union-attr]
    done = platform_client.post(path, data={"csrf": csrf, "confirm": "yes"})
    assert done.status_code == 200 and ">terminating<" in done.text  # back on the workers page
    with platform_db.read_session() as s:
        assert s.get(NodeInstance, seeded.worker_id).status == "terminating"  # type: ignore[union-attr]
        assert s.get(NodeInstance, seeded.idle_worker_id).status == "running"  # type: ignore[union-attr]
    missing = platform_client.post("/workers/999999/terminate", data={"csrf": csrf})
    assert missing.status_code == 404


def test_events_filter_by_type_reason_and_platform(
    platform_client: Any, make_token: Any, ci: tuple[int, SeededCi]
) -> None:
    assert sign_in(platform_client, make_token("viewer")).status_code == 303
    everything = platform_client.get("/events").text
    assert "ci_run_queued" in everything and "netboot_report" in everything
    by_type = platform_client.get("/events", params={"type": "ci_run_queued"}).text
    assert "ci_run_queued" in by_type and ">netboot_report<" not in by_type
    by_reason = platform_client.get("/events", params={"reason": "booted"}).text
    assert ">netboot_report<" in by_reason and ">ci_run_queued<" not in by_reason
    unknown = platform_client.get("/events", params={"type": "nothing_like_this"})
    assert unknown.status_code == 400 and "unknown event type" in unknown.text  # not an empty answer
    assert "No event matches" in platform_client.get("/events", params={"type": "api_token_revoked"}).text
    by_platform = platform_client.get("/events", params={"platform": "debian-12-amd64"}).text
    assert ">ci_run_queued<" in by_platform and ">netboot_report<" in by_platform
    assert platform_client.get("/events", params={"until": "yesterday"}).status_code == 400


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/runs/999999", 404),
        ("/runs/abc", 400),
        ("/runs?status=bogus", 400),
        ("/runs?before=-1", 400),
        ("/runs?platform=no-such", 404),
        ("/runs/99999999999999999999/live", 400),
        ("/nodes?platform=%3Cscript%3E", 404),
    ],
)
def test_odd_ci_paths_answer_without_a_500(
    platform_client: Any, make_token: Any, ci: tuple[int, SeededCi], path: str, status: int
) -> None:
    assert sign_in(platform_client, make_token("viewer")).status_code == 303
    r = platform_client.get(path)
    assert r.status_code == status, r.text
    assert "<script>" not in r.text


def test_runs_page_filters_and_pages(platform_client: Any, make_token: Any, ci: tuple[int, SeededCi]) -> None:
    _, seeded = ci
    assert sign_in(platform_client, make_token("viewer")).status_code == 303
    running = platform_client.get("/runs", params={"status": "in_progress"}).text
    assert f"#{seeded.running_run}<" in running and f"#{seeded.done_run}<" not in running
    older = platform_client.get("/runs", params={"before": seeded.running_run}).text
    assert f"#{seeded.done_run}<" in older and f"#{seeded.running_run}<" not in older
