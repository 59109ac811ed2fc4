"""Sans-IO wire formats: pure functions and small state machines over bytes.

Nothing here imports trio, sockets or clocks (time is always an argument), and nothing here
imports any other part of the project. Decoders return values or raise one ``ProtocolError``
subclass, nothing else.

Modules:
- ``records``     the message tuple every layer passes around, PRI constants, ``Batch``
- ``errors``      ``ProtocolError`` and its subclasses (with shim ERROR codes)
- ``timestamps``  RFC 3339 timestamps <-> integer microseconds
- ``rfc5424``     strict and lenient RFC 5424 parsers, syslog-drain encoder (DESIGN 5.1)
- ``octet``       RFC 6587 section 3.4.1 octet counting, incremental decoder and encoder
- ``logplex1``    ``application/logplex-1`` bodies: input layout parser, drain layout (5.2)
- ``shimproto``   the shim stream protocol v1 (DESIGN section 4): frames
- ``shimbatch``   BATCH bodies of the shim stream: compression and bounded validation
- ``shimsession`` the shim stream's states, transitions and seq rule, for both ends
- ``lines``       bytes -> lines for the shim (LF split, CR strip, UTF-8-safe chunking)
- ``notices``     tail lines (5.3), in-band notices (5.5), shim lifecycle notices (6)
"""
