"""Uplinks into the flash outbox: meter outputs -> CBOR bodies -> ``Outbox`` records.

Every uplink gets the outbox's sequence number as its ``s`` (one counter
across all kinds, surviving reboots), so the head-end's (m, s) dedupe and
the outbox's replay order are the same thing.  A stored record is one kind
byte (index into ``messages.UPLINK_KINDS``) followed by the CBOR body; the
MQTT pump turns the kind back into the topic.  No I/O here.

>>> up = Uplink(outbox, "UJ-1")
>>> seq = up.heartbeat(now, {"up": 60, "hf": 51200})
>>> kind, body = split(outbox.peek(1)[0][1])
>>> kind
'heartbeat'
"""
from firmware.core import credit
from firmware.protocol import messages

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

MAX_RECORDS_PER_READING = const(8)
_MAX_EVENTS_PER_MESSAGE = const(16)
_SNAP_KINDS = {1: "daily", 2: "monthly"}  # metering.SNAP_DAILY / SNAP_MONTHLY
MAX_BACKFILLS = 4  # backfill ranges waiting to be re-published; more are merged into the last


class UplinkError(ValueError):
    """The outbox handed out a sequence other than the one the body carries."""


def split(record):
    """(kind, cbor body) of a stored outbox record."""
    return messages.UPLINK_KINDS[record[0]], bytes(record[1:])


def queue_backfill(outbox, ranges, sent_upto, first, last):
    """Queue the held uplinks with ``first <= s <= last`` for publishing again: (n, lo, queued).

    ``ranges`` is the publisher's list of [next s, last s] still to re-send (the
    pump publishes them before the outbox's new messages, so the ack queued
    after this call arrives after them); ``sent_upto`` the newest s it has
    published.  ``n`` counts every held uplink in the range, ``lo`` is the
    oldest s the outbox still holds.  Uplinks not sent yet are only counted:
    the normal pump sends them once, so only ``s`` up to what was already sent
    is queued again (no uplink goes out twice from one request).  ``queued``:
    ``ranges`` changed, the pump has work.  Kept in RAM only: after a reset
    the head-end asks again if its gap is still open.  The app and the
    simulator's meters (``simulator/net_link.py``) both answer with this.
    """
    lo = outbox.oldest_held
    n = outbox.count_held(first, last)
    hi = min(last, max(sent_upto, outbox.released))
    start = max(first, lo)
    if start > hi:
        return n, lo, False
    if len(ranges) >= MAX_BACKFILLS:
        # merged: may re-send a few uplinks more than asked (the head-end dedupes)
        rng = ranges[-1]
        rng[0], rng[1] = min(rng[0], start), max(rng[1], hi)
    else:
        ranges.append([start, hi])
    return n, lo, True


def reading_record(rec):
    """A metering interval record -> the protocol's [start_t, energy, avg_mv, avg_ma, flags, span_s]."""
    start_t, span_s, energy, avg_mv, avg_ma, _count, flags = rec
    return [start_t, energy, avg_mv, avg_ma, flags, span_s]


def records_end_cum(meter):
    """The cumulative register at the end of the interval records ``meter.step`` just closed.

    That is the open interval's base (``IntervalProfile.base_wh``), not
    ``meter.energy_units``: a step that runs after the boundary books the
    energy that came in since the boundary to the new interval, so the
    register at the step is ahead of the records' end (docs/protocol.md
    ``cum``; the head-end subtracts the records from the first ``cum``).
    """
    return meter.profile.base_wh


class Uplink:
    """Queues uplink messages of one meter in its outbox (QoS 1 publishing is the pump's job)."""

    def __init__(self, outbox, meter_id, unit="Wh"):
        self.outbox = outbox
        self.meter_id = meter_id
        self.unit = unit
        self.queued = 0

    def _put(self, kind, now, fields):
        seq = self.outbox.next_seq
        body = messages.encode_uplink(kind, self.meter_id, seq, now, fields)
        stored = self.outbox.append(bytes((messages.UPLINK_KINDS.index(kind),)) + body, now)
        if stored != seq:  # never publish a body whose s is not its outbox seq
            raise UplinkError("outbox gave seq %d for a body with s=%d" % (stored, seq))
        self.queued += 1
        return seq

    def readings(self, now, interval_s, end_cum, records):
        """Interval records (metering tuples) in as few messages as needed; returns seqs.

        ``end_cum`` is the register at the end of the last record
        (``records_end_cum``); each message's ``cum`` is the register at the
        end of its own last record.
        """
        seqs = []
        after = 0  # energy of the records after the current message
        for r in records:
            after += r[2]
        for i in range(0, len(records), MAX_RECORDS_PER_READING):
            chunk = records[i:i + MAX_RECORDS_PER_READING]
            rows = []
            for r in chunk:
                rows.append(reading_record(r))
                after -= r[2]
            seqs.append(self._put(messages.READING, now,
                                  {"iv": interval_s, "u": self.unit, "cum": end_cum - after,
                                   "r": rows}))
        return seqs

    def events(self, now, log):
        """Pending events of an ``EventLog`` -> one message, then ack them in the log.

        The outbox is flash, so once the message is stored the events are
        delivered as far as the log is concerned.  Returns the seq or 0.
        """
        pending = log.pending(_MAX_EVENTS_PER_MESSAGE)
        if not pending:
            return 0
        fields = {"e": [[e[0], e[1], e[2], e[3]] for e in pending]}
        if log.lost:
            fields["lost"] = log.lost
        seq = self._put(messages.EVENT, now, fields)
        log.ack(pending[-1][0])
        return seq

    def status(self, now, meter):
        a = meter.account
        return self._put(messages.STATUS, now, {
            "bal": a.balance_paise, "cr": a.credit_paise, "em": a.emergency_used_paise,
            "dt": a.debt_paise, "st": credit.STATE_NAMES[a.state], "rl": bool(a.relay_closed),
            "ld": credit.LOAD_STATE_NAMES[a.load_state], "tv": meter.schedule.version,
            "tt": a.total_topups, "tc": a.total_charges})

    def heartbeat(self, now, fields):
        return self._put(messages.HEARTBEAT, now, fields)

    def ack(self, now, cmd_id, counter, result, name, detail="", n=None, lo=None):
        """A command ack; ``n`` / ``lo`` only for ``backfill`` (uplinks re-queued, oldest held)."""
        fields = {"id": cmd_id, "c": counter, "r": result, "rn": name}
        if detail:
            fields["d"] = detail
        if n is not None:
            fields["n"] = n
        if lo is not None:
            fields["lo"] = lo
        return self._put(messages.ACK, now, fields)

    def snapshot(self, now, snap):
        """A billing snapshot tuple (kind, key, at, cum, bal, md, flags) from ``Meter.step``."""
        kind, key, at, cum, bal, md, flags = snap
        return self._put(messages.SNAPSHOT, now, {
            "k": _SNAP_KINDS.get(kind, kind), "key": key, "at": at, "cum": cum,
            "bal": bal, "md": md, "f": flags})
