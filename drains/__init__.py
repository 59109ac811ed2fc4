"""Outbound drains: HTTPS (application/logplex-1) and syslog over TCP, TLS and UDP."""
