"""Role switches of one code base: an API-only process (ODIN_RUN_WORKERS=false) takes jobs that
a workers-only process (ODIN_SERVE_API=false) runs; the workers-only process serves nothing
but its health checks and metrics.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import OdinLauncher
from tests.odin_client import submit, wait_for_state


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/kinds"), ("GET", "/")],
)
def test_workers_only_process_serves_no_api(
    database_url: str, odin_server: OdinLauncher, method: str, path: str
) -> None:
    worker = odin_server(database_url, ODIN_SERVE_API="false")

    answer = httpx.request(method, f"{worker.url}{path}", json={"kind": "noop"}, trust_env=False)

    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    assert "ODIN_SERVE_API" in answer.json()["detail"]


def metric_names_and_roles(text: str) -> tuple[set[str], dict[str, str]]:
    """Return the metric names of a `/metrics` response and the labels of `odin_process_info`."""
    families = list(text_string_to_metric_families(text))
    [info] = [family.samples[0] for family in families if family.name == "odin_process_info"]
    return {family.name for family in families}, info.labels


def test_api_and_worker_processes_share_jobs(database_url: str, odin_server: OdinLauncher) -> None:
    api_only = odin_server(database_url, ODIN_RUN_WORKERS="false")
    workers_only = odin_server(database_url, ODIN_SERVE_API="false")

    with httpx.Client(base_url=api_only.url, timeout=10.0, trust_env=False) as client:
        job = submit(client, "echo", {"value": "from the API replica"})
        done = wait_for_state(client, job["id"], {"completed", "failed"})
        api_metrics = client.get("/metrics").text
    with httpx.Client(base_url=workers_only.url, timeout=10.0, trust_env=False) as worker:
        health = [worker.get(path).status_code for path in ("/healthz", "/readyz", "/metrics")]
        worker_metrics = worker.get("/metrics").text

    assert done["state"] == "completed"
    assert done["result"] == "from the API replica"
    assert health == [200, 200, 200]
    api_names, api_roles = metric_names_and_roles(api_metrics)
    worker_names, worker_roles = metric_names_and_roles(worker_metrics)
    assert (api_roles["serve_api"], api_roles["run_workers"]) == ("true", "false")
    assert (worker_roles["serve_api"], worker_roles["run_workers"]) == ("false", "true")
    assert "odin_worker_running_jobs" not in api_names
    assert "odin_worker_running_jobs" in worker_names
