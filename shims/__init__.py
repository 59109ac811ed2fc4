"""logshim: the supervisor shim that runs as the entrypoint of a customer container."""
