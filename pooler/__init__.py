"""pooler: a PostgreSQL query-routing connection pooler."""

__version__ = "0.1.0"
