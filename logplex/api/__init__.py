"""The HTTP API (DESIGN section 3): shared base, config endpoints, logs, sessions, app factory."""
