"""``logplex serve``: its settings (flags, env, TOML) and the wiring of the router process."""
