"""The outstanding-requests queue, fed message types as the scanners report them.

Each case is a conversation PostgreSQL 15 was seen to have (see PG15-FACTS.md): the
client's messages in order, then the server's answers, and what the queue must say.
"""

from __future__ import annotations

from pooler.protocol.outstanding import TRACKED, Outstanding


def sent(queue: Outstanding, types: str) -> None:
    """The client sent these message types; only the tracked ones reach the queue."""
    queue.sent([ord(t) for t in types if ord(t) in TRACKED])


def test_one_ready_for_query_per_query_sync_and_function_call() -> None:
    queue = Outstanding()
    sent(queue, "QPBESFQ")
    assert queue.owed == 4
    for left in (3, 2, 1, 0):
        assert not queue.idle()
        queue.ready()
        assert queue.owed == left
    assert queue.idle()


def test_copy_then_two_syncs_owes_three_ready_for_query() -> None:
    # The shape that handed a busy server to the next client: the two Syncs come after
    # the CopyDone, so each gets a ReadyForQuery of its own.
    queue = Outstanding()
    sent(queue, "QdcSSQQ")
    queue.copy_started()
    queue.copy_done()
    assert queue.owed == 5
    for _ in range(4):
        queue.ready()
    assert not queue.idle(), "one query still owes its answer"
    queue.ready()
    assert queue.idle()


def test_syncs_read_in_copy_in_mode_are_ignored() -> None:
    # Simple protocol: Syncs between the COPY and its CopyDone get nothing.
    queue = Outstanding()
    sent(queue, "QdSdSHcS")
    queue.copy_started()
    queue.copy_done()
    assert queue.owed == 2
    queue.ready()
    queue.ready()
    assert queue.idle()


def test_libpq_extended_copy_sync_after_execute_is_ignored() -> None:
    # libpq: Parse, Bind, Describe, Execute, Sync, then the data, CopyDone, Sync.
    queue = Outstanding()
    sent(queue, "PBDES")
    queue.unsynced = False
    queue.copy_started()
    sent(queue, "ddcS")
    queue.copy_done()
    assert queue.owed == 1
    queue.ready()
    assert queue.idle()


def test_syncs_sent_before_copy_in_response_arrived_count_the_same() -> None:
    # The client pipelined everything before the server said CopyInResponse.
    queue = Outstanding()
    sent(queue, "PBESdcS")
    queue.copy_started()
    queue.copy_done()
    assert queue.owed == 1


def test_only_the_syncs_of_the_copy_that_ended_are_dropped() -> None:
    # Two COPYs in one Query, a Sync inside the second only.
    queue = Outstanding()
    sent(queue, "QdcdScS")
    queue.copy_started()
    queue.copy_done()
    assert queue.owed == 3
    queue.copy_started()
    queue.copy_done()
    assert queue.owed == 2


def test_failed_copy_keeps_every_sync_counted() -> None:
    # Where the COPY failed decides which Syncs the server had read in copy-in mode;
    # counting too many only keeps the server from being reused.
    queue = Outstanding()
    sent(queue, "QdSdcS")
    queue.copy_started()
    queue.copy_failed()
    assert not queue.copy_in
    assert queue.owed == 3
    queue.ready()
    queue.ready()
    assert not queue.idle()


def test_copy_done_without_a_starter_keeps_counting() -> None:
    queue = Outstanding()
    sent(queue, "ScS")
    queue.copy_started()
    queue.copy_done()
    assert queue.owed == 2


def test_copy_in_and_unsynced_batches_are_not_idle() -> None:
    queue = Outstanding()
    queue.unsynced = True
    assert not queue.idle()
    queue.unsynced = False
    queue.copy_started()
    assert not queue.idle()
