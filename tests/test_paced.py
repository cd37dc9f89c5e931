"""A long answer's writer waits while the client's connection is full, and stops with it."""

from __future__ import annotations

from twisted.internet.defer import Deferred, ensureDeferred

from hangw.api.paced import Paced


def waiting(paced: Paced) -> Deferred[None]:
    return ensureDeferred(paced.room())


def test_room_is_there_until_the_transport_pauses() -> None:
    """room() returns at once while the connection takes data."""
    paced = Paced()
    assert waiting(paced).called


def test_a_paused_writer_waits_for_resume() -> None:
    """After pauseProducing, room() waits; resumeProducing lets every waiter go on."""
    paced = Paced()
    paced.pauseProducing()
    paced.pauseProducing()  # a second pause before the resume changes nothing
    first, second = waiting(paced), waiting(paced)
    assert not first.called and not second.called
    paced.resumeProducing()
    assert first.called and second.called
    assert waiting(paced).called


def test_stop_releases_the_waiter_and_says_so() -> None:
    """stopProducing (the client went away) ends the wait and marks the writer stopped."""
    paced = Paced()
    paced.pauseProducing()
    blocked = waiting(paced)
    assert not paced.stopped
    paced.stopProducing()
    assert blocked.called and paced.stopped
