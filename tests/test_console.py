"""The web console in headless Chromium (Debian's package) driven by Playwright, against real servers.

The browser tests need ``/usr/bin/chromium`` and the ``playwright`` Python package. Without
them they fail with the commands that install them; ``make test`` installs both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from odin_ext.client import Client
from tests.conftest import REPO_ROOT, OdinLauncher

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM_PATH = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = (
    "the browser tests need Debian's Chromium and Playwright for Python. `make test` installs "
    "both; by hand, run `apt-get install -y chromium` as root and `pip install playwright` in "
    "the virtualenv, but not `playwright install`: the tests use Debian's Chromium"
)
SCREENSHOT_PATH = REPO_ROOT / "docs" / "console.png"
VIEWPORT = {"width": 1280, "height": 800}
# Milliseconds the browser may take for a step that waits on a job or a poll.
STEP_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the Python package playwright is missing; {INSTALL_HINT}", pytrace=False)
    if not CHROMIUM_PATH.exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM_PATH}; {INSTALL_HINT}", pytrace=False)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM_PATH), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """Provide a fresh page; the test fails if the console throws an uncaught error."""
    # Playwright's wait_for_function evaluates strings, which the console's CSP forbids.
    context = browser.new_context(viewport=VIEWPORT, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"the console threw errors: {errors}"


def progress_value(page: Page) -> float:
    value: float = page.eval_on_selector("#job-progress", "element => element.value")
    return value


def shown_events(page: Page) -> list[tuple[int, str]]:
    """Return the (seq, type) of each line in the job page's event list, in page order."""
    rows: list[list[Any]] = page.eval_on_selector_all(
        "#job-events li",
        "items => items.map(item => [Number(item.dataset.seq), item.querySelector('.event-type').textContent])",
    )
    return [(int(seq), str(event_type)) for seq, event_type in rows]


# Served files -----------------------------------------------------------------------------


def test_console_files_have_security_headers(database_url: str, odin_server: OdinLauncher) -> None:
    server = odin_server(database_url)

    with httpx.Client(base_url=server.url, trust_env=False) as http:
        index = http.get("/")
        script = http.get("/console/app.js")
        escape = http.get("/console/..%2F..%2Fodin.py")
        missing = http.get("/console/missing.js")

    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in index.headers["content-security-policy"]
    assert index.headers["x-content-type-options"] == "nosniff"
    assert 'src="console/app.js"' in index.text
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert escape.status_code == 404
    assert missing.status_code == 404


# Browser ----------------------------------------------------------------------------------


def test_job_page_resumes_after_reload_and_restart(
    database_url: str, odin_server: OdinLauncher, page: Page
) -> None:
    # One server runs the jobs; the page and its streams come from another, API-only one,
    # which is killed and restarted mid-job.
    odin_server(database_url)
    api = odin_server(database_url, ODIN_RUN_WORKERS="false")
    port = api.url.rsplit(":", 1)[1]

    page.goto(f"{api.url}/")
    page.get_by_role("link", name="Submit a countdown job").click()
    page.fill("#field-args-steps", "many")
    page.click("#submit-button")
    steps_error = page.locator('[data-field="args.steps"] .field-error')
    steps_error.wait_for(state="visible")

    assert "integer" in steps_error.inner_text()
    assert page.get_attribute("#field-args-steps", "aria-invalid") == "true"

    page.fill("#field-args-steps", "20")
    page.fill("#field-args-interval_seconds", "0.4")
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"#/jobs/1$"))
    page.wait_for_function("document.querySelector('#job-progress')?.value >= 0.1")
    first_value = progress_value(page)
    page.wait_for_function(f"document.querySelector('#job-progress')?.value > {first_value}")

    assert page.inner_text("#job-state") == "running"

    page.reload()
    page.wait_for_function("document.querySelector('#job-progress')?.value >= 0.4")

    api.kill()
    page.locator('#stream-status[data-status="reconnecting"]').wait_for()
    odin_server(database_url, wait_ready=False, ODIN_RUN_WORKERS="false", ODIN_PORT=port)
    page.locator("#job-result").wait_for()

    with Client(api.url, trust_env=False) as client:
        job = client.get(1)
        expected = [(event.seq, event.type) for event in client.events(1)]
    assert job["state"] == "completed"
    assert shown_events(page) == expected
    assert len(expected) == job["last_event_id"]
    assert progress_value(page) == 1
    assert '"steps": 20' in page.inner_text("#job-result")
    assert page.inner_text("#job-state") == "completed"
    assert page.inner_text("#stream-status") == "Ended"

    SCREENSHOT_PATH.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_PATH), full_page=True)


def test_job_page_follows_retries(database_url: str, odin_server: OdinLauncher, page: Page) -> None:
    server = odin_server(database_url)
    with Client(server.url, trust_env=False) as client:
        job_id = client.wait(client.submit("fail")["id"], timeout_seconds=30)["id"]

        page.goto(f"{server.url}/#/jobs/{job_id}")
        page.locator("#job-error").wait_for()
        page.click("#job-retry")
        page.wait_for_function("document.querySelectorAll('#job-events li').length === 6")
        page.locator("#job-retry").wait_for()
        # A retry from elsewhere: the page notices the job's new events and follows them.
        client.retry(job_id)
        page.wait_for_function("document.querySelectorAll('#job-events li').length === 9")
        page.locator("#job-retry").wait_for()

    types = [event_type for _, event_type in shown_events(page)]
    assert [seq for seq, _ in shown_events(page)] == list(range(1, 10))
    assert types == ["queued", "running", "failed"] * 3
    assert page.inner_text("#job-state") == "failed"


def test_console_asks_for_api_key(database_url: str, odin_server: OdinLauncher, page: Page) -> None:
    key = "console-test-key-0123456789"
    server = odin_server(database_url, ODIN_DEV_API_KEYS=json.dumps([key]))

    page.goto(f"{server.url}/")
    page.locator("#api-key-form").wait_for()
    page.fill("#api-key-input", key)
    page.click("#api-key-form button[type=submit]")
    page.get_by_role("link", name="Submit a countdown job").click()
    page.fill("#field-args-steps", "3")
    page.fill("#field-args-interval_seconds", "0.1")
    page.click("#submit-button")
    # The stream authenticates with the token of the job's events_url.
    page.locator("#job-result").wait_for()

    assert page.locator("#api-key-form").is_hidden()
    assert page.locator("#forget-key").is_visible()
    assert [seq for seq, _ in shown_events(page)] == list(range(1, 8))

    page.click("#forget-key")
    page.locator("#api-key-form").wait_for()


def test_job_list_filters_cancels_retries(
    database_url: str, odin_server: OdinLauncher, page: Page
) -> None:
    server = odin_server(database_url)
    with Client(server.url, trust_env=False) as client:
        sleeping = client.submit("sleep", {"seconds": 60})["id"]
        failing = client.submit("fail")["id"]
        client.wait(failing, timeout_seconds=30)

        page.goto(f"{server.url}/#/jobs")
        row = page.locator(f'tr[data-job-id="{sleeping}"]')
        row.locator('button[data-action="cancel"]').click()
        page.locator(f'tr[data-job-id="{sleeping}"][data-state="cancelled"]').wait_for()
        page.locator(f'tr[data-job-id="{sleeping}"] button[data-action="retry"]').click()
        page.locator(
            f'tr[data-job-id="{sleeping}"]:is([data-state="queued"], [data-state="running"])'
        ).wait_for()
        client.cancel(sleeping)

        page.select_option("#filter-state", "failed")
        page.wait_for_function(
            "(rows => rows.length > 0 && rows.every(row => row.dataset.state === 'failed'))"
            "([...document.querySelectorAll('#jobs-table tbody tr')])"
        )
        failed_ids = page.eval_on_selector_all(
            "#jobs-table tbody tr", "rows => rows.map(row => Number(row.dataset.jobId))"
        )
        assert failed_ids == [failing]
        assert "state=failed" in page.url

        page.reload()
        assert page.locator("#filter-state").input_value() == "failed"

        page.select_option("#filter-state", "")
        added = client.submit("echo", {"value": "new"})["id"]
        page.locator(f'tr[data-job-id="{added}"][data-state="completed"]').wait_for()


def test_queue_overview_counts_throughput(
    database_url: str, odin_server: OdinLauncher, page: Page
) -> None:
    server = odin_server(database_url)
    with Client(server.url, trust_env=False) as client:
        for job in [client.submit("echo"), client.submit("echo"), client.submit("fail")]:
            client.wait(job["id"], timeout_seconds=30)
        # No worker serves this queue, so its job stays queued.
        client.submit("echo", queue="unserved")

    page.goto(f"{server.url}/#/queues")
    page.locator('tr[data-queue="unserved"]').wait_for()
    default_counts = page.eval_on_selector_all(
        'tr[data-queue="default"] td', "cells => cells.map(cell => cell.textContent)"
    )
    unserved_counts = page.eval_on_selector_all(
        'tr[data-queue="unserved"] td', "cells => cells.map(cell => cell.textContent)"
    )

    # Columns: scheduled, queued, running, completed, failed, cancelled.
    assert default_counts == ["0", "0", "0", "2", "1", "0"]
    assert unserved_counts == ["0", "1", "0", "0", "0", "0"]
    assert page.locator("#queue-throughput g[data-minute]").count() == 15
    assert "2 completed" in page.inner_text("#queue-throughput .legend")
    assert "1 failed" in page.inner_text("#queue-throughput .legend")


def test_stats_counts_every_state_per_queue(database_url: str, odin_server: OdinLauncher) -> None:
    server = odin_server(database_url)
    with Client(server.url, trust_env=False) as client:
        client.wait(client.submit("echo")["id"], timeout_seconds=30)
        client.wait(client.submit("fail")["id"], timeout_seconds=30)
        client.submit("echo", queue="unserved")
        stats = client.stats()

    minutes = [entry["minute"] for entry in stats["throughput"]]
    assert stats["queues"] == [
        {
            "queue": "default",
            "counts": {
                "scheduled": 0,
                "queued": 0,
                "running": 0,
                "completed": 1,
                "failed": 1,
                "cancelled": 0,
            },
        },
        {
            "queue": "unserved",
            "counts": {
                "scheduled": 0,
                "queued": 1,
                "running": 0,
                "completed": 0,
                "failed": 0,
                "cancelled": 0,
            },
        },
    ]
    assert len(minutes) == 15
    assert minutes == sorted(minutes)
    assert sum(entry["completed"] for entry in stats["throughput"]) == 1
    assert sum(entry["failed"] for entry in stats["throughput"]) == 1
