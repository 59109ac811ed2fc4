"""logplex: a log drain and forwarding pipeline.

This module stays free of imports so that ``logplex.codecs`` (which the shim loads) pulls in no
router code at start-up.
"""

__version__ = "0.1.0"
