"""Ingest books an STS token's top-up when the meter's TOPUP_APPLIED event is stored."""
from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware.core import events as E
from headend import ledger as L
from headend import tokens as TK
from headend.store import UplinkStore
from headend.tests.test_tokens import T0, db, pay  # noqa: F401 - db is a fixture


def event_uplink(meter, s, events):
    return {"v": 1, "m": meter, "s": s, "t": T0 + 900, "kind": "event", "e": events}


def token_state(engine, tid):
    with Session(engine) as s:
        return s.scalars(select(TK.StsToken.state).where(TK.StsToken.tid == tid)).one()


def applied_entries(engine):
    with Session(engine) as s:
        return list(s.scalars(select(L.LedgerEntry.amount_paise)
                              .where(L.LedgerEntry.kind == L.TOPUP_APPLIED)))


def test_a_stored_topup_applied_event_marks_the_token_applied_in_the_same_commit(db):  # noqa: F811
    receipt = pay(db, amount=1000, delivery="token")
    credited = receipt["sts_token"]["credited_paise"]
    assert token_state(db, receipt["sts_token"]["tid"]) == TK.ISSUED
    result = UplinkStore(db).write(
        [event_uplink("UJ-1", 3, [[7, T0 + 600, E.TOPUP_APPLIED, credited]])], now=T0 + 1000)
    assert result.uplinks == 1
    assert token_state(db, receipt["sts_token"]["tid"]) == TK.APPLIED
    assert applied_entries(db) == [credited]


def test_a_replayed_event_uplink_books_the_token_once(db):  # noqa: F811
    receipt = pay(db, amount=1000, delivery="token")
    credited = receipt["sts_token"]["credited_paise"]
    body = event_uplink("UJ-1", 3, [[7, T0 + 600, E.TOPUP_APPLIED, credited]])
    store = UplinkStore(db)
    store.write([body], now=T0 + 1000)
    again = store.write([dict(body)], now=T0 + 2000)
    assert again.duplicates == 1
    assert applied_entries(db) == [credited]


def test_a_topup_event_of_another_amount_leaves_the_token_issued(db):  # noqa: F811
    receipt = pay(db, amount=1000, delivery="token")
    UplinkStore(db).write([event_uplink("UJ-1", 3, [[7, T0 + 600, E.TOPUP_APPLIED, 1000]])],
                          now=T0 + 1000)
    assert token_state(db, receipt["sts_token"]["tid"]) == TK.ISSUED
    assert applied_entries(db) == []
