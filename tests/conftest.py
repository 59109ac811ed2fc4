"""Shared test configuration."""

from __future__ import annotations

import os
import signal

import hypothesis

hypothesis.settings.register_profile("ci", max_examples=200, deadline=None)
hypothesis.settings.register_profile("dev", max_examples=100, deadline=None)
hypothesis.settings.register_profile("deep", max_examples=5000, deadline=None)  # by hand
hypothesis.settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
)

# Many tests press Ctrl-C on the processes they start (a tail, the router, the shim's app).
# A suite started as a background job of a non-interactive shell inherits SIGINT ignored,
# and an ignored disposition survives exec into every child, which then never sees those
# signals: give the suite, and so its children, the default disposition back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
