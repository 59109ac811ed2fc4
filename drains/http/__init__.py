"""HTTPS and HTTP drains: ``application/logplex-1`` posts (DESIGN sections 5.2 and 8).

Four modules, one job each: ``request`` encodes a batch into the exact POST bytes once,
``connection`` carries posts over one keep-alive HTTP/1.1 connection (a small byte-stream
interface under it), ``response`` reads the answer (sans-IO, h11's rules and limits), and
``drain`` is the delivery loop (``HttpDrain``: two connections, retries, accounting).
"""

from __future__ import annotations

from drains.http.drain import HttpDrain, encode_https_frames, lane_to_use

__all__ = ["HttpDrain", "encode_https_frames", "lane_to_use"]
