"""The query cache's tests."""
