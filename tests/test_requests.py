"""RequestTracker: when a server owes nothing, including around COPY and Sync-less batches."""

from __future__ import annotations

from pooler.protocol.requests import TRACKED, UNSYNC, RequestTracker


def _sent(tracker: RequestTracker, types: str) -> None:
    """What the client scanner reports: tracked types in order, and the Sync state."""
    for t in types:
        if ord(t) in UNSYNC:
            tracker.unsynced = True
        elif ord(t) in TRACKED:
            if t == "S":
                tracker.unsynced = False
            tracker.sent([ord(t)])


def test_simple_queries_and_pipelines() -> None:
    tracker = RequestTracker()
    _sent(tracker, "QQ")
    assert tracker.pending == 2 and not tracker.idle()
    tracker.ready()
    assert tracker.pending == 1
    tracker.ready()
    assert tracker.idle()


def test_extended_batch_without_sync_is_not_idle() -> None:
    tracker = RequestTracker()
    _sent(tracker, "PBEH")
    assert tracker.pending == 0 and not tracker.idle()
    _sent(tracker, "S")
    tracker.ready()
    assert tracker.idle()


def test_libpq_extended_copy_ignores_the_sync_sent_during_copy_in() -> None:
    tracker = RequestTracker()
    _sent(tracker, "PBES")  # libpq: Sync right after the Execute of COPY
    tracker.copy_started()
    _sent(tracker, "ddc")
    _sent(tracker, "S")
    tracker.copy_ended()  # CommandComplete
    assert tracker.pending == 1
    tracker.ready()
    assert tracker.idle()


def test_simple_copy_keeps_the_query_owed() -> None:
    tracker = RequestTracker()
    _sent(tracker, "Q")
    tracker.copy_started()
    _sent(tracker, "dc")
    tracker.copy_ended()
    assert tracker.pending == 1
    tracker.ready()
    assert tracker.idle()


def test_copy_error_then_sync() -> None:
    tracker = RequestTracker()
    _sent(tracker, "PBES")
    tracker.copy_started()
    _sent(tracker, "d")
    tracker.copy_ended()  # ErrorResponse: the early Sync was ignored
    assert tracker.pending == 0 and tracker.idle()
    _sent(tracker, "cS")  # CopyDone after the error is dropped by the server
    assert tracker.pending == 1
    tracker.ready()
    assert tracker.idle()


def test_open_copy_is_not_idle() -> None:
    tracker = RequestTracker()
    _sent(tracker, "Q")
    tracker.copy_started()
    _sent(tracker, "d")
    assert not tracker.idle()
