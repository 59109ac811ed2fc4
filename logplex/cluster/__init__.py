"""The cluster mode (DESIGN section 10): routers sharing config, durable log and tails through
NATS JetStream. Without ``--nats`` nothing here runs."""
