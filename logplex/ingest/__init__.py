"""Ingest: the accept loop and the shim-stream and syslog listeners (DESIGN sections 2 and 4)."""
