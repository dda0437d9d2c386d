"""Compliance that reaches people: per-person violation events, their evidence, and delivery.

rules     what counts as a violation (states, duration, consensus, cooldown) and where events
          go (webhook, MQTT), read from the camera list's `events:` section
people    one camera's tracked people become events: opened, updated, closed
evidence  a snapshot per event, faces blurred by default, kept within age and size limits
clips     a short clip per event from a ring buffer per camera, blurred as the snapshot
outbox    a durable SQLite outbox: each message delivered at least once, by idempotency key
sinks     the webhook (HMAC-signed JSON) and MQTT, each telling a retry from a refusal
hub       what `facemask watch` holds: all of the above, for every camera
report    `facemask report`: a daily or weekly compliance report per camera, CSV and HTML
"""

from facemask import public_parts

__getattr__, __all__ = public_parts(
    __name__,
    {
        "EventHub": "hub",
        "EventsConfig": "rules",
        "Outbox": "outbox",
        "PersonEvents": "people",
        "Rule": "rules",
        "load_events_config": "rules",
    },
)
