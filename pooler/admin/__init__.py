"""Admin SQL: pgpool-II's SHOW POOL_* views on every connection, and the admin
database (`dbname=pooler`) with PgBouncer's commands and node control."""
