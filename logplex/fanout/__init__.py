"""Fan-out: the router's channels, their history rings and live tails (DESIGN section 7)."""
