"""The asyncio side: listening socket, client and server connections. Kept thin."""
