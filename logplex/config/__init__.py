"""Configuration: the records the router indexes and the SQLite store that keeps them."""
