"""Operating the endpoint under steady load, on the default ingress (HAProxy), through real HTTP:
`facemask serve --autoscale` scaling up and down, `facemask promote`, `promote --canary` and
`facemask rollback` switching the served model, and what clients see meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from tests.services import facemask_serve, process_tree, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.whole_machine(
        reason="an autoscaler's reaction to a load, and a canary switched under load, are timed against bounds"
    ),
]
FACEMASK = [sys.executable, "-m", "facemask.cli"]


@dataclass
class SteadyLoad:
    """`clients` threads posting `body` to /predict back to back; each answer is kept as
    (sent at, status or exception name, X-Model-Version). `clients` may change while it runs."""

    url: str
    body: bytes
    clients: int
    params: dict = field(default_factory=dict)
    answers: list[tuple[float, object, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(self.clients)]

    def client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set():
                if index >= self.clients:  # turned down: idle, not gone
                    time.sleep(0.05)
                    continue
                sent = time.monotonic()
                try:
                    answer = http.post("/predict", params=self.params, content=self.body)
                    self.answers.append((sent, answer.status_code, answer.headers.get("x-model-version")))
                except httpx.HTTPError as exc:
                    self.answers.append((sent, type(exc).__name__, None))

    def __enter__(self) -> "SteadyLoad":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def since(self, moment: float) -> list[tuple[float, object, str | None]]:
        return [a for a in list(self.answers) if a[0] >= moment]

    def failures(self) -> Counter:
        return Counter(status for _, status, _ in self.answers if status != 200)


def replicas(root: int) -> list[int]:
    return [pid for pid, cmd in process_tree(root) if "ServeReplica:facemask" in cmd]


def test_autoscale_adds_a_replica_under_load_and_removes_it_after_without_an_error(
    known_image, tmp_path, machine_alone
):
    """`facemask serve --autoscale 1:2`: 12 clients push each replica over its target, a second
    replica starts and takes traffic; the load drops to one client, the extra replica is
    removed. Every request across both transitions is answered 200. The simulated accelerator
    keeps replicas quick to start, so the times measured are Serve's and HAProxy's."""
    body = known_image.read_bytes()
    options = ("--backend", "simulated-gpu", "--num-cpus", "0.25", "--autoscale", "1:2", "--target-ongoing", "2")
    delays = ("--upscale-delay", "1", "--downscale-delay", "5")
    with facemask_serve(None, tmp_path, *options, *delays) as (proc, url, log):
        wait_until(lambda: len(replicas(proc.pid)) == 1, 60, "one replica at the start", proc, log)
        with machine_alone():  # the load and the scaling; the endpoint's start and stop run beside other tests
            with SteadyLoad(url, body, clients=12) as load:
                wait_until(lambda: len(load.answers) > 50, 60, "answers to the load", proc, log)
                loaded = time.monotonic()
                wait_until(lambda: len(replicas(proc.pid)) == 2, 90, "a second replica under load", proc, log)
                scaled_up = time.monotonic()
                one = sum(1 for sent, *_ in load.answers if loaded <= sent < scaled_up) / (scaled_up - loaded)
                # The new replica takes traffic once HAProxy has it: answers keep coming at a higher rate.
                time.sleep(8)
                before = len([a for a in load.since(scaled_up + 4) if a[0] < scaled_up + 8])
                load.clients = 1
                quiet = time.monotonic()
                wait_until(lambda: len(replicas(proc.pid)) == 1, 120, "the second replica removed", proc, log)
                scaled_down = time.monotonic()
                time.sleep(4)  # the removed replica's drain and HAProxy's reload, under the remaining client
            after = load.since(scaled_down)
    print(
        f"autoscale 1:2: second replica {scaled_up - loaded:.1f} s after the load began; "
        f"removed {scaled_down - quiet:.1f} s after it fell; {len(load.answers)} requests, "
        f"{one:.0f}/s at one replica, {before / 4:.0f}/s at two; failures {dict(load.failures())}"
    )
    assert not load.failures(), load.failures()
    assert after and all(status == 200 for _, status, _ in after)


def cli(*args: str, tracking_uri: str) -> str:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    done = subprocess.run([*FACEMASK, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def converged(load: SteadyLoad, moment: float, version: str, timeout: float) -> float:
    """Seconds from `moment` to the first answer after which every answer names `version`; fails
    at the deadline naming the versions still answering."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers = load.since(moment)
        last_other = max((sent for sent, _, v in answers if v != version), default=moment)
        if time.monotonic() - last_other > 3 and any(v == version for sent, _, v in answers if sent > last_other):
            return last_other - moment
        time.sleep(0.5)
    pytest.fail(f"still {Counter(v for _, _, v in load.since(deadline - 5))} {timeout:.0f} s after the switch")


def test_promote_canary_and_rollback_under_load_cost_no_request(
    registered_detector, known_image, tmp_path, machine_alone
):
    """Two replicas serving @champion under 4 steady clients, refresh_s 1: a promotion, its
    rollback, a 25% canary and the rollback that ends it. Every answer names its version; none
    fails; each switch reaches every replica within refresh_s plus a model load; the canary
    takes its share."""
    from facemask.quality.rollout import end_canary, history_tag
    from facemask.tracking import set_alias, set_model_tag

    name, uri = registered_detector["name"], registered_detector["tracking_uri"]
    champion, other = registered_detector["champion"], registered_detector["other"]
    times = {}
    options = ("--replicas", "2", "--num-cpus", "0.5", "--threads", "1", "--refresh-s", "1")
    try:
        with facemask_serve(f"models:/{name}@champion", tmp_path, *options, tracking_uri=uri) as (proc, url, log):
            wait_until(lambda: len(replicas(proc.pid)) == 2, 90, "two replicas", proc, log)
            with machine_alone():  # the load and the switches; the endpoint's start and stop run beside other tests
                with SteadyLoad(url, known_image.read_bytes(), clients=4, params={"imgsz": 160}) as load:
                    wait_until(lambda: len(load.answers) > 20, 120, "answers to the load", proc, log)
                    assert {v for _, _, v in load.answers} == {champion}

                    switched = time.monotonic()  # from the command's start (it changes the registry within it)
                    cli("promote", "--model-uri", f"models:/{name}/{other}", "--force", tracking_uri=uri)
                    times["promote"] = converged(load, switched, other, 60)

                    switched = time.monotonic()
                    assert f"back from version {other} to version {champion}" in cli(
                        "rollback", "--registered-model", name, tracking_uri=uri
                    )
                    times["rollback"] = converged(load, switched, champion, 60)

                    switched = time.monotonic()
                    cli(
                        "promote",
                        "--model-uri",
                        f"models:/{name}/{other}",
                        "--force",
                        "--canary",
                        "25",
                        tracking_uri=uri,
                    )
                    wait_until(
                        lambda: any(v == other for *_, v in load.since(switched)), 60, "the challenger's first answer"
                    )
                    time.sleep(5)  # both replicas hold the challenger
                    window_start = time.monotonic()
                    time.sleep(10)
                    window = [v for _, status, v in load.since(window_start) if status == 200]
                    share = sum(1 for v in window if v == other) / len(window)

                    switched = time.monotonic()
                    assert "ended the canary" in cli("rollback", "--registered-model", name, tracking_uri=uri)
                    times["canary ended"] = converged(load, switched, champion, 60)
            scrape = log.read_text().split("metrics for Prometheus: ", 1)[1].split()[0].rstrip(",")
            exported = wait_until(
                lambda: (text := httpx.get(scrape, timeout=10).text) and f'model_version="{other}"' in text and text,
                60,
                f"requests of version {other} in {scrape}",
            )
    finally:
        end_canary(name, "champion", uri)
        set_alias(name, "champion", champion, uri)
        set_model_tag(name, history_tag("champion"), None, uri)
    print(
        f"rollouts under load, 2 replicas, refresh_s 1: every replica on the new version {times} s after the "
        f"switch; canary 25%: {share:.1%} of {len(window)} answers; {len(load.answers)} requests, "
        f"failures {dict(load.failures())}"
    )
    assert not load.failures(), load.failures()
    assert all(v in (champion, other) for _, _, v in load.answers)
    assert all(seconds <= 1 + 15 for seconds in times.values()), times
    # Each replica sends exactly 1 in 4 of its default requests to the challenger.
    assert len(window) >= 40 and abs(share - 0.25) <= 0.05, (share, len(window))
    assert "ray_facemask_requests_total" in exported
