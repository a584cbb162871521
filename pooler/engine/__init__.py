"""Per-connection policy, sans-IO: protocol events in, actions out; no sockets here."""
