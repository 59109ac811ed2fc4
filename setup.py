"""The one C extension of the distribution; everything else is in pyproject.toml.

``logplex._syslogscan`` cuts the syslog listener's octet-counted frames at C speed
(docs/architecture.md, "Syslog ingest"). It is optional: without a C compiler the install
still succeeds and the listener uses its pure-Python reader, which gives the same results
at about a third of the speed; ``logplex serve`` logs which of the two it runs.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "logplex._syslogscan",
            sources=["logplex/_syslogscan.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        )
    ]
)
