"""ChunkFeed: a resumed stream sends the unanswered chunks again, in order, and loses none."""

import threading

from client._feed import ChunkFeed


def feed_of(chunks) -> ChunkFeed:
    return ChunkFeed(chunks, lambda chunk: (f"request {chunk}", 10))


def test_one_attempt_sends_every_chunk_in_order():
    """Without a restart the requests are the chunks' requests, in order."""
    assert list(feed_of(range(3)).requests()) == ["request 0", "request 1", "request 2"]


def test_a_restart_sends_the_unanswered_again_first():
    """After a restart, the requests sent but not answered come first, then the rest."""
    feed = feed_of(range(5))
    first = feed.requests()
    assert [next(first) for _ in range(3)] == ["request 0", "request 1", "request 2"]
    assert feed.answered() == 10  # request 0 got its reply
    feed.restart()
    assert list(first) == []  # the old attempt is over
    assert list(feed.requests()) == ["request 1", "request 2", "request 3", "request 4"]


def test_a_chunk_read_for_an_attempt_that_ended_goes_to_the_next():
    """A chunk the old attempt's reader got after the restart is kept for the new attempt, not lost."""
    release, waiting = threading.Event(), threading.Event()

    def chunks():
        yield 0
        waiting.set()
        release.wait(10)  # the caller is slow with chunk 1
        yield 1
        yield 2

    feed = feed_of(chunks())
    old = feed.requests()
    assert next(old) == "request 0"
    reader = threading.Thread(target=lambda: list(old))  # gRPC's reader, waiting for chunk 1
    reader.start()
    waiting.wait(10)
    feed.restart()
    release.set()
    reader.join(10)
    assert list(feed.requests()) == ["request 0", "request 1", "request 2"]


def test_kept_requests_are_sent_while_another_reader_waits():
    """A new attempt sends what is kept at once, while the old attempt's reader still waits for a chunk."""
    release, waiting = threading.Event(), threading.Event()

    def chunks():
        yield 0
        waiting.set()
        release.wait(10)
        yield 1

    feed = feed_of(chunks())
    old = feed.requests()
    assert next(old) == "request 0"
    reader = threading.Thread(target=lambda: list(old))
    reader.start()
    waiting.wait(10)
    feed.restart()
    new = feed.requests()
    assert next(new) == "request 0"  # the old reader holds the chunks, waiting: this needs none
    release.set()
    reader.join(10)
    assert list(new) == ["request 1"]


def test_the_end_of_the_chunks_ends_every_attempt():
    """After the last chunk, a restarted attempt sends the unanswered and ends."""
    feed = feed_of(range(2))
    assert list(feed.requests()) == ["request 0", "request 1"]
    feed.restart()
    assert list(feed.requests()) == ["request 0", "request 1"]
    feed.answered()
    feed.restart()
    assert list(feed.requests()) == ["request 1"]
