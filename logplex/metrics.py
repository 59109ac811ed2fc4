"""Every Prometheus metric of the router, in one place.

Label values are bounded sets (protocol, reason, drain kind, outcome, state); never a token,
URL, channel name or message text.
"""

from __future__ import annotations

from prometheus_client import Counter

INGEST_MESSAGES = Counter(
    "logplex_ingest_messages_total",
    "Messages accepted into the router, by ingest protocol.",
    ["protocol"],  # shim | http | syslog
)
INGEST_BYTES = Counter(
    "logplex_ingest_bytes_total",
    "Message bytes accepted into the router, by ingest protocol.",
    ["protocol"],
)
INGEST_ERRORS = Counter(
    "logplex_ingest_errors_total",
    "Ingest inputs refused or skipped, by protocol and bounded reason.",
    ["protocol", "reason"],  # reason: unauthorized | unknown_token | malformed | too_large | ...
)
