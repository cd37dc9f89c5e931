"""Idempotency-Key records on a real SQLite file: claim, answer, take-over, release."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from hangw import idempotency
from hangw.api.kept import KeptAnswer, KeyHeld
from hangw.store import schema

NOW = 1_790_000_000.0


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    engine = schema.make_engine(f"sqlite:///{tmp_path / 'keys.sqlite'}")
    schema.upgrade(engine)
    return engine


def claim(engine: sa.Engine, key: str, request_hash: str, now: float = NOW) -> object:
    with engine.begin() as conn:
        return idempotency.claim_thd(conn, "rep-a", key, request_hash, now)


def test_a_claimed_key_holds_its_request_then_its_answer(engine: sa.Engine) -> None:
    """The first claim wins; a repeat sees the claim in progress, then the answer once given."""
    assert claim(engine, "k", "h1") is None
    assert claim(engine, "k", "h1") == idempotency.Earlier("h1", idempotency.IN_PROGRESS, b"")
    with engine.begin() as conn:
        assert idempotency.answer_thd(conn, "rep-a", "k", "h1", 202, b'{"id":"dev_1"}')
    assert claim(engine, "k", "h1") == idempotency.Earlier("h1", 202, b'{"id":"dev_1"}')
    assert claim(engine, "k", "h2") == idempotency.Earlier("h1", 202, b'{"id":"dev_1"}')


def test_keys_are_kept_per_party(engine: sa.Engine) -> None:
    """Two parties may use the same key for different requests."""
    assert claim(engine, "shared", "h1") is None
    with engine.begin() as conn:
        assert idempotency.claim_thd(conn, "rep-b", "shared", "h2", NOW) is None


def test_an_expired_claim_is_taken_over_by_the_next_request(engine: sa.Engine) -> None:
    """A claim left unanswered for longer than the expiry goes to the next request with the key."""
    assert claim(engine, "k", "h1") is None
    still_running = NOW + idempotency.CLAIM_EXPIRY_S - 1
    assert claim(engine, "k", "h2", still_running) == idempotency.Earlier(
        "h1", idempotency.IN_PROGRESS, b""
    )
    assert claim(engine, "k", "h2", NOW + idempotency.CLAIM_EXPIRY_S + 1) is None
    later = NOW + idempotency.CLAIM_EXPIRY_S + 2
    assert claim(engine, "k", "h2", later) == idempotency.Earlier(
        "h2", idempotency.IN_PROGRESS, b""
    )


def test_release_frees_an_unanswered_claim_only(engine: sa.Engine) -> None:
    """Releasing gives an unanswered key back; an answered key keeps its answer."""
    assert claim(engine, "open", "h1") is None
    assert claim(engine, "done", "h1") is None
    with engine.begin() as conn:
        idempotency.answer_thd(conn, "rep-a", "done", "h1", 201, b"{}")
        idempotency.release_thd(conn, "rep-a", "open")
        idempotency.release_thd(conn, "rep-a", "done")
    assert claim(engine, "open", "h3") is None
    assert claim(engine, "done", "h3") == idempotency.Earlier("h1", 201, b"{}")


def test_a_second_claim_of_a_claimed_key_is_refused_by_the_store(engine: sa.Engine) -> None:
    """A second claim of a standing key raises what the store reports as an integrity error."""
    from twisted.internet import reactor

    from hangw.store.db import Store

    assert claim(engine, "k", "h1") is None
    row = {
        "party_id": "rep-a",
        "key": "k",
        "request_hash": "h2",
        "status_code": idempotency.IN_PROGRESS,
        "body": b"",
        "created_at": NOW,
    }
    with engine.begin() as conn, pytest.raises(Store(engine, reactor).integrity_errors):
        idempotency._CLAIM.execute(conn, row)


def test_claim_answered_keeps_a_refusal_unless_the_key_is_held(engine: sa.Engine) -> None:
    """A refusal claims its key with its answer at once; a held key keeps what it holds."""
    with engine.begin() as conn:
        assert idempotency.claim_answered_thd(conn, "rep-a", "k", "h1", NOW, 422, b"{}") is None
    assert claim(engine, "k", "h1") == idempotency.Earlier("h1", 422, b"{}")
    with engine.begin() as conn:
        held = idempotency.claim_answered_thd(conn, "rep-a", "k", "h2", NOW, 409, b"[]")
    assert held == idempotency.Earlier("h1", 422, b"{}")
    assert claim(engine, "k", "h1") == idempotency.Earlier("h1", 422, b"{}")


def test_a_claim_in_the_requests_own_job_raises_when_the_key_is_held(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeptAnswer.claim_thd claims once, then raises KeyHeld with what the key holds, and with
    None for a key another gateway inserted at the same moment (not the driver's error)."""
    kept = KeptAnswer("rep-a", "k", "h1", NOW, True, (sqlite3.IntegrityError,))
    with engine.begin() as conn:
        kept.claim_thd(conn)
        kept.keep_thd(conn, 202, b"{}")
    assert kept.claimed and kept.kept == (202, b"{}")
    again = KeptAnswer("rep-a", "k", "h1", NOW, True, (sqlite3.IntegrityError,))
    with pytest.raises(KeyHeld) as held, engine.begin() as conn:
        again.claim_thd(conn)
    assert held.value.previous == idempotency.Earlier("h1", 202, b"{}") and not again.claimed

    def racing(*args: object) -> None:
        raise sqlite3.IntegrityError("UNIQUE constraint failed: idempotency_keys.party_id")

    monkeypatch.setattr(idempotency, "claim_thd", racing)
    with pytest.raises(KeyHeld) as raced, engine.begin() as conn:
        KeptAnswer("rep-a", "k2", "h1", NOW, True, (sqlite3.IntegrityError,)).claim_thd(conn)
    assert raced.value.previous is None


def test_an_answer_kept_without_the_claim_it_needs_is_an_error(engine: sa.Engine) -> None:
    """A request meant to claim its key in its job cannot keep an answer no row would hold."""
    kept = KeptAnswer("rep-a", "k", "h1", NOW, claim_in_job=True)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        kept.keep_thd(conn, 202, b"{}")


def test_an_answer_is_kept_only_under_its_requests_standing_claim(engine: sa.Engine) -> None:
    """answer_thd keeps nothing (False) for a key released, answered or taken over by another."""
    with engine.begin() as conn:
        assert not idempotency.answer_thd(conn, "rep-a", "never", "h1", 202, b"{}")
    assert claim(engine, "never", "h1") is None  # nothing was written under it
    assert claim(engine, "k", "h1") is None
    with engine.begin() as conn:
        assert not idempotency.answer_thd(conn, "rep-a", "k", "h2", 202, b"{}")
        assert idempotency.answer_thd(conn, "rep-a", "k", "h1", 202, b"first")
        assert not idempotency.answer_thd(conn, "rep-a", "k", "h1", 409, b"second")
    assert claim(engine, "k", "h1") == idempotency.Earlier("h1", 202, b"first")
    assert claim(engine, "taken", "h1") is None
    assert claim(engine, "taken", "h2", NOW + idempotency.CLAIM_EXPIRY_S + 1) is None
    with engine.begin() as conn:
        assert not idempotency.answer_thd(conn, "rep-a", "taken", "h1", 202, b"late")


def test_a_request_whose_claim_is_gone_is_undone_with_its_job(engine: sa.Engine) -> None:
    """KeptAnswer.keep_thd raises KeyHeld, so the job rolls back, when the claim has gone."""
    assert claim(engine, "k", "h1") is None
    with engine.begin() as conn:
        idempotency.release_thd(conn, "rep-a", "k")
    kept = KeptAnswer("rep-a", "k", "h1", NOW)
    with pytest.raises(KeyHeld) as gone, engine.begin() as conn:
        idempotency.claim_thd(conn, "rep-a", "written", "hx", NOW)  # the request's own write
        kept.keep_thd(conn, 202, b"{}")
    assert gone.value.previous is None and kept.kept is None
    assert claim(engine, "written", "hy") is None  # the request's write went with its job
    assert claim(engine, "k", "h2", NOW + idempotency.CLAIM_EXPIRY_S + 1) is None
    with pytest.raises(KeyHeld) as taken, engine.begin() as conn:
        kept.keep_thd(conn, 202, b"{}")
    assert taken.value.previous == idempotency.Earlier("h2", idempotency.IN_PROGRESS, b"")
