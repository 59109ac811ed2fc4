"""The C extensions of the distribution; everything else is in pyproject.toml.

``logplex.codecs._syslogscan`` cuts the syslog listener's octet-counted frames and
``logplex.codecs._cframes`` formats drain frames, at C speed (docs/architecture.md, "The
C modules"). Both are optional: without a C compiler the install still succeeds and the
pure-Python twins give the same results, slower; ``logplex serve`` logs a warning then.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            name,
            sources=[source],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        )
        for name, source in (
            ("logplex.codecs._syslogscan", "logplex/codecs/_syslogscan.c"),
            ("logplex.codecs._cframes", "logplex/codecs/_cframes.c"),
        )
    ]
)
