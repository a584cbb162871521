"""pooler: a PostgreSQL query-routing connection pooler."""

from pooler import native

__version__ = "0.1.0"

# First of all: compiled modules older than their sources must not be the ones imported.
native.use_fresh_code()
