"""The endpoint's metrics in a real Prometheus (Debian's `prometheus`), started on loopback with
monitoring/prometheus.yml; every panel of monitoring/grafana-dashboard.json is queried from it.

Mapped to this machine: the scrape targets to the ports this session's Ray and Serve got (the
file's are the documented defaults), the scrape interval to 1 s so the test waits seconds."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from facemask.core.lifecycle import stop_process_group
from tests.services import free_port, wait_http, wait_until

pytestmark = pytest.mark.integration
MONITORING = Path(__file__).resolve().parents[3] / "monitoring"


def panels() -> list[tuple[str, str]]:
    """(title, PromQL) of every query of the dashboard."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


class Prometheus:
    def __init__(self, config: Path, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                shutil.which("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=open(root / "prometheus.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(f"{self.url}/-/ready", 60, proc=self.proc)

    def query(self, expr: str) -> list[dict]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def settled(self, expr: str, quiet_s: float = 12) -> float:
        """The value of `expr` once it has held for `quiet_s`: Ray's agent reports every 10 s, so
        an earlier test's last requests may still be on their way."""
        seen = {"value": None, "since": 0.0}

        def steady() -> bool:
            value, now = self.value(expr), time.monotonic()
            if value != seen["value"]:
                seen.update(value=value, since=now)
                return False
            return now - seen["since"] >= quiet_s

        wait_until(steady, 120, f"{expr} steady for {quiet_s:g} s", interval=1)
        return seen["value"]

    def series(self, expr: str, start: float, end: float) -> list[dict]:
        """`expr` over [start, end] (Unix seconds), one point a second: Grafana's own query."""
        params = {"query": expr, "start": start, "end": end, "step": 1}
        answer = httpx.get(f"{self.url}/api/v1/query_range", params=params, timeout=30).json()
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def stop(self) -> None:
        stop_process_group(self.proc, grace_s=10)


def steady_traffic(url: str, image: bytes, seconds: float) -> None:
    """Four requests a second and one live stream at two frames a second, for `seconds`."""
    from websockets.sync.client import connect

    deadline = time.monotonic() + seconds
    with connect(url.replace("http://", "ws://") + "/live") as ws:
        ws.send(json.dumps({"conf": 0, "imgsz": 160, "max_det": 6, "fps": 30}))
        json.loads(ws.recv(timeout=60))
        while time.monotonic() < deadline:
            for _ in range(2):
                httpx.post(f"{url}/predict", params={"conf": 0, "imgsz": 160, "max_det": 6}, content=image, timeout=60)
            ws.send(image)
            json.loads(ws.recv(timeout=60))
            time.sleep(0.3)


def render_dashboard(prometheus: Prometheus, start: float, end: float, path: Path) -> list[str]:
    """The dashboard's panels drawn from Prometheus over [start, end] into a PNG at `path`, as
    Grafana would draw its time series; returns the titles of the panels that drew nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    columns = 3
    rows = -(-len(dashboard["panels"]) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3 * rows), squeeze=False)
    empty = []
    for ax, panel in zip(axes.flat, dashboard["panels"]):
        drawn = 0
        for target in panel["targets"]:
            for line in prometheus.series(target["expr"], start, end):
                times = [float(t) - start for t, _ in line["values"]]
                values = [float(v) for _, v in line["values"]]
                label = ",".join(f"{k}={v}" for k, v in line["metric"].items() if k != "__name__") or target["expr"]
                ax.plot(times, values, label=label[:40])
                drawn += 1
        if not drawn:
            empty.append(panel["title"])
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel("s", fontsize=7)
        ax.tick_params(labelsize=7)
        if drawn:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(dashboard["panels"]) :]:
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return empty


def test_prometheus_scrapes_the_endpoint_and_every_dashboard_panel_has_data(endpoint, known_image, tmp_path):
    from websockets.sync.client import connect

    from facemask.core.runtime import metrics_endpoints

    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus is not installed")
    # What `facemask serve` prints: this node's metrics, where Prometheus must scrape.
    (node,) = [url for url in metrics_endpoints("proxy")]
    target = node.removeprefix("http://").removesuffix("/metrics")
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["facemask"]["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = [jobs["facemask"]]  # this endpoint runs Serve's Python proxy, not HAProxy
    config["rule_files"] = [str(MONITORING / rules) for rules in config["rule_files"]]  # the alerts load too
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = Prometheus(tmp_path / "prometheus.yml", tmp_path)
    try:
        # Earlier replicas of this Ray session (other test modules' endpoints) keep their series:
        # what counts is the change.
        champion = str(endpoint["champion"])
        answered = f'sum(ray_facemask_requests_total{{route="/predict",status="200",model_version="{champion}"}})'
        wait_until(lambda: prometheus.query("up") and prometheus.value('up{job="facemask"}') == 1, 60, "a scrape")
        before = prometheus.settled(answered)
        started = time.time()
        sent = 12
        image = known_image.read_bytes()
        for _ in range(sent):
            answer = httpx.post(
                f"{endpoint['url']}/predict", params={"conf": 0, "imgsz": 160}, content=image, timeout=60
            )
            assert answer.status_code == 200 and answer.headers["x-model-version"] == champion
        ws_url = endpoint["url"].replace("http://", "ws://") + "/live"
        with connect(ws_url) as ws:  # open while the panels are read: a closed stream's gauges are retired
            ws.send(json.dumps({"conf": 0, "imgsz": 160, "max_det": 3, "fps": 120}))
            json.loads(ws.recv(timeout=60))  # the stream's settings
            for _ in range(6):
                ws.send(image)
                last = json.loads(ws.recv(timeout=60))
            assert last["type"] == "result", last
            # The counter grew by exactly the requests sent, under the version that answered them.
            wait_until(
                lambda: prometheus.value(answered) == before + sent, 90, f"{sent} more answers counted", interval=1
            )
            # The stream's gauge is what the stream itself reported.
            ratio = last["people"]["share"]["with_mask"]

            def stream_ratios() -> list[float]:
                return [float(r["value"][1]) for r in prometheus.query("ray_facemask_live_compliance_ratio")]

            wait_until(
                lambda: ratio in stream_ratios(), 60, f"the live stream's compliance ratio ({ratio})", interval=1
            )
            streams_open = prometheus.query("ray_facemask_live_compliance_ratio")
            empty = []
            for title, expr in panels():
                try:
                    wait_until(lambda: prometheus.query(expr), 60, title, interval=1)
                except pytest.fail.Exception:
                    empty.append(title)
            assert not empty, f"dashboard panels without data: {empty}"
            # Every model call holds at least one image (a mean from Ray's histogram `_sum` gave 0.5).
            # A counter first exported after its first requests has no rate yet: a few more give it one.
            (mean_batch,) = [expr for title, expr in panels() if title == "Mean batch size"]

            def mean_batch_size() -> float | None:
                httpx.post(f"{endpoint['url']}/predict", params={"imgsz": 160}, content=image, timeout=60)
                value = prometheus.value(mean_batch)
                return value if math.isfinite(value) and value > 0 else None

            assert 1.0 <= wait_until(mean_batch_size, 90, "a mean batch size", interval=1) <= 8

        # Closed: the stream's series leave the scrape (hostile review item 6: labels are retired).
        def series(result: list[dict]) -> set[frozenset]:
            return {frozenset(r["metric"].items()) for r in result}

        opened = series(streams_open)
        wait_until(
            lambda: not opened & series(prometheus.query("ray_facemask_live_compliance_ratio")),
            60,
            "the closed stream's gauges retired",
            interval=1,
        )
        # The picture in docs/operating.md: FACEMASK_DASHBOARD_PNG=docs/dashboard.png pytest ... -k prometheus
        # draws it after two minutes of steady traffic; the test alone draws what it sent.
        picture = os.environ.get("FACEMASK_DASHBOARD_PNG")
        if picture:
            steady_traffic(endpoint["url"], image, seconds=150)
        picture = Path(picture or tmp_path / "dashboard.png")
        assert not render_dashboard(prometheus, started, time.time(), picture)
        assert picture.stat().st_size > 10_000
    finally:
        prometheus.stop()
