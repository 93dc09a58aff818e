"""Prometheus metrics of a fanout node.

One process (``FANOUT_PROCESSES=1``): the default registry. Under the supervisor
(``fanout/supervisor.py``) every child writes its samples to ``PROMETHEUS_MULTIPROC_DIR`` and
:func:`render` sums them, so whichever child answers ``/metrics`` serves the whole service:
counters and histograms add up (a dead child's counts stay), and each gauge says how children
combine (``multiprocess_mode``: ``livesum`` for what adds up, ``livemax``/``livemin`` where a sum
would be wrong; ``live``: a dead child's value is dropped when the supervisor reaps it).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from common.metrics_text import render as render  # summed over the children: see above

CONNECTIONS = Gauge(
    "vski_fanout_connections", "Open client WebSocket connections", multiprocess_mode="livesum"
)
CONNECTIONS_TOTAL = Counter(
    "vski_fanout_connection_attempts_total", "Connection attempts by outcome", ["outcome"]
)
SUBSCRIPTIONS = Gauge(
    "vski_fanout_subscriptions",
    "Live (connection, collection) subscriptions",
    multiprocess_mode="livesum",
)
STREAMS = Gauge(
    "vski_fanout_streams",
    "Collections this node reads from Redis (with processes: reads, one per child and collection)",
    multiprocess_mode="livesum",
)
EVENTS_READ = Counter("vski_fanout_events_read_total", "Events read from Redis (live + catch-up)")
FRAMES_SENT = Counter("vski_fanout_frames_sent_total", "EVENT frames written to clients")
EVENTS_SENT = Counter("vski_fanout_events_sent_total", "Events written to clients")
GAP_REPAIRS = Counter(
    "vski_fanout_gap_repairs_total", "Missed notifications repaired by reading the stream"
)
SLOW_CLOSES = Counter(
    "vski_fanout_slow_client_closes_total", "Clients closed for exceeding the send buffer cap"
)
REPLAY_EVENTS = Histogram(
    "vski_fanout_replay_events",
    "Events replayed per SUBSCRIBE with lastId",
    buckets=(0, 1, 10, 100, 1000, 10000, 100000),
)
NOT_RECOVERED = Counter(
    "vski_fanout_not_recovered_total", "SUBSCRIBEs whose lastId could not be honoured"
)
READ_LAG = Histogram(
    "vski_fanout_read_lag_seconds",
    "Redis append time to this node reading the event",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
REDIS_RECONNECTS = Counter("vski_fanout_redis_reconnects_total", "Redis read connection re-opens")
CLIENT_ERRORS = Counter("vski_fanout_client_errors_total", "ERROR frames sent, by code", ["code"])
CLOSES = Counter(
    "vski_fanout_closes_total", "Connections closed by the server, by reason", ["reason"]
)
GROUP_PENDING = Gauge(
    "vski_fanout_group_pending",
    "Delivered but unacknowledged events of a consumer group (all nodes), per periodic pass",
    ["database", "collection", "group"],
    multiprocess_mode="livemax",  # every child measures the same shared number
)
GROUP_MEMBERS = Gauge(
    "vski_fanout_group_members", "Consumer group members on this node", multiprocess_mode="livesum"
)
GROUP_DELIVERED = Counter(
    "vski_fanout_group_delivered_total", "Events handed to group members for the first time"
)
GROUP_REDELIVERIES = Counter(
    "vski_fanout_group_redeliveries_total",
    "Events handed to a group member again, by cause",
    ["cause"],
)
GROUP_ACKS = Counter("vski_fanout_group_acks_total", "ACKs accepted from group members")
GROUP_DESTROYED = Counter(
    "vski_fanout_group_destroyed_total", "Consumer groups destroyed after idling past retention"
)
FORBIDDEN = Counter(
    "vski_fanout_forbidden_total", "SUBSCRIBEs (and subscriptions on a policy reload) refused"
)
GROUP_FILTERED = Counter(
    "vski_fanout_group_filtered_total",
    "Group events acknowledged unseen: the group's members may not see them",
)
PROXY_REQUESTS = Counter(
    "vski_fanout_proxy_requests_total",
    "Subscribe proxy requests by outcome (allow, deny, timeout, error)",
    ["outcome"],
)
PROXY_SECONDS = Histogram(
    "vski_fanout_proxy_seconds",
    "Subscribe proxy request time",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REVOKED_CLOSES = Counter(
    "vski_fanout_revoked_closes_total", "Connections closed because their user or token was revoked"
)
TASKS = Gauge(
    "vski_fanout_asyncio_tasks",
    "asyncio tasks alive in the node (a leak shows as growth after faults heal)",
    multiprocess_mode="livesum",
)
READY = Gauge(
    "vski_fanout_ready",
    "1 while the node is ready (Redis read path alive, not draining), set at each heartbeat",
    multiprocess_mode="livemin",  # with processes: 1 only while every child is ready
)
DRAINING = Gauge(
    "vski_fanout_draining", "1 from SIGTERM until the node exits", multiprocess_mode="livemax"
)
RESIDENT_MEMORY = Gauge(
    "vski_fanout_resident_memory_bytes",
    "Resident memory of the node (with processes: of its children, summed), at each heartbeat",
    multiprocess_mode="livesum",  # process_resident_memory_bytes cannot be summed over children
)
MAX_CONNECTIONS = Gauge(
    "vski_fanout_max_connections",
    "FANOUT_MAX_CONNECTIONS: connections this node accepts (with processes: per child, summed)",
    multiprocess_mode="livesum",
)
