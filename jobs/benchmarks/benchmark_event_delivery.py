"""Benchmark: violation events delivered to a webhook that goes down, against the events made.

A loopback webhook (the tests' receiver, which checks every signature) takes the first events;
then it is down (its socket closed: "connection refused") for --down-s while --events more
happen, each one person seen unmasked for 0.6 s (a start and an end message each); then it is
up again. Reported per outage: messages made, probes sent to the down receiver, seconds from
its return to the last message taken, and messages lost and taken twice (by idempotency key).
The outbox, the sink and the event tracker are the product's own (facemask.events.hub.EventHub).

    python jobs/benchmarks/benchmark_event_delivery.py [--down-s 10,60] [--events 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def run(down_s: float, events: int) -> dict:
    from facemask.events.hub import EventHub
    from facemask.events.rules import EventsConfig, Webhook
    from facemask.events.sinks import WebhookSink
    from tests.integration.events.test_event_delivery import RULE, people_come_and_go, sent_keys
    from tests.receivers import WEBHOOK_SECRET, WebhookReceiver

    folder = Path(tempfile.mkdtemp(prefix="facemask-delivery-"))
    receiver = WebhookReceiver()
    cfg = EventsConfig(rule=RULE, webhook=Webhook(receiver.url, WEBHOOK_SECRET, timeout_s=2))
    hub = EventHub(cfg, folder, "benchmark", sinks=[WebhookSink(cfg.webhook)])
    try:
        people_come_and_go(hub, range(1, 3))
        before = hub.outbox.counts["retried"]
        receiver.down()
        down_at = time.monotonic()
        people_come_and_go(hub, range(3, 3 + events))
        time.sleep(max(0.0, down_s - (time.monotonic() - down_at)))  # the outage itself: a measurement window
        probes = hub.outbox.counts["retried"] - before
        receiver.up()
        up_at = time.monotonic()
        made = 2 * (2 + events)
        while len(receiver.keys()) < made and time.monotonic() - up_at < down_s + 120:
            time.sleep(0.05)
        caught_up = time.monotonic() - up_at
    finally:
        hub.close(fetch=lambda frame: frame)
        receiver.down()
    sent, got = sent_keys(folder), receiver.keys()
    return {
        "down_s": down_s,
        "messages": len(sent),
        "probes": probes,
        "caught_up_s": round(caught_up, 1),
        "lost": len(set(sent) - set(got)),
        "twice": sum(n - 1 for n in got.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--down-s", default="10,60", help="Outages to try, in seconds (comma-separated).")
    parser.add_argument("--events", type=int, default=10, help="Events made while the receiver is down.")
    args = parser.parse_args()
    rows = [run(float(s), args.events) for s in args.down_s.split(",")]
    print("| receiver down | messages | probes while down | all taken after its return | lost | taken twice |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cells = [f"{r['down_s']:.0f} s", r["messages"], r["probes"], f"{r['caught_up_s']} s", r["lost"], r["twice"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
