"""Sans-IO PostgreSQL wire protocol 3.0: framing, startup packets, message builders.

Nothing here touches sockets or asyncio: callers feed bytes in and get events out.
"""
