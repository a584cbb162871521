"""The in-memory query cache (issue 20): keys (``key``), the store with its LRU, sizes,
ttl and race rule (``store``), what a statement reads and what a write reaches
(``relations``), where writes are in the WAL for standbys (``positions``), the
freshness of each database's change stream (``watch``) and the logical-decoding poller
that keeps it (``decoding``), answers captured from servers (``answer``), one client's
use of it (``session``), and the whole (``query_cache``)."""
