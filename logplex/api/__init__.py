"""The HTTP API (DESIGN section 3): ``base`` (what endpoints share), ``channels`` (config
endpoints), ``logs``, ``sessions`` with its ``registry``, and ``app`` (the factory)."""
