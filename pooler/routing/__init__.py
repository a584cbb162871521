"""Where each request runs: the primary or a standby (plain code, no sockets)."""
