"""The durable spool: the drains' queue on disk (DESIGN sections 2 and 8, docs/reliability.md).

``log`` owns the segment files, group commit, the per-channel index, the memory cache,
retention and the disk budget; ``cursors`` owns the drains' persisted cursors and
``SpoolQueue``, the ``drains`` queue over the spool; ``recovery`` rebuilds all of it from a
spool directory at start-up, and ``check`` verifies a spool offline.
"""
