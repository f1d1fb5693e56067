"""Batched, idempotent writes of decoded uplinks, and sequence-gap detection.

One ``UplinkStore.write`` call is one transaction: it claims each uplink's
(meter, s) in ``uplinks_seen`` with INSERT ... ON CONFLICT DO NOTHING
RETURNING (PostgreSQL; SQLite: the same upsert syntax, which is INSERT OR
IGNORE), and only the claimed ones reach the kind tables, which collide
again on their own natural keys ((meter, interval start) for readings,
(meter, event_seq) for events, ...).  So a batch may be replayed any number
of times, by any number of workers, and each fact is stored once.

Hot tables on PostgreSQL (uplinks_seen, readings) are
written by ONE statement per batch: the claim ``INSERT ... SELECT FROM
unnest(<one array literal per column>) ON CONFLICT DO NOTHING RETURNING``
and the reading inserts as data-modifying CTEs of it, the readings taking
only the claimed (meter, s) (``_PG_CLAIM_READINGS``).  Unnest was measured
~6x faster than SQLAlchemy's multi-row VALUES (whose SQL text psycopg must
re-parse: ~100 us per uplink for 5000); one statement instead of three, no
row per stored uplink and reading sent back, and the columns built straight
from the bodies took the client's CPU from ~5.5 to ~2.5 us per reading
(5,000-uplink batches; the server's share did not change, ~21-24 us).
Everything else, and SQLite, goes through SQLAlchemy's "insertmanyvalues".

Gap detection reads ``uplinks_seen`` (the set of sequence numbers actually
stored) with a LEAD() window: a run of missing ``s`` between two stored ones
is a gap.  Gaps are recorded in ``seq_gaps``; one that later fills (a late or
redelivered message) gets ``closed_at``.  One still open after a grace period
gets a ``backfill`` downlink through the command queue (``request_backfills``);
the meter's ack marks it unrecoverable when the meter no longer holds it.

>>> from headend.db import make_engine
>>> store = UplinkStore(make_engine("sqlite://"))            # doctest: +SKIP
>>> store.write([body, ...], dead=[("topic", b"..", "reason")], now=1795737600)   # doctest: +SKIP
WriteResult(uplinks=..., duplicates=..., readings=..., dead=...)
"""
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from firmware.core.events import TOPUP_APPLIED
from headend import models as M

# the batch's arrays built in C (optional, see setup.py); _claim_params otherwise
from headend.fastscan import claim_arrays as _c_claim_arrays


def _binary_array_types():
    """Wrapper types psycopg sends as ready-made binary arrays: text[], bigint[], integer[].

    ``_fastingest.claim_arrays`` writes PostgreSQL's binary array format, which the
    server reads without parsing a number from text per element (docs/SCALING.md).
    """
    from psycopg import adapters, postgres
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    types = []
    for name in ("text", "int8", "int4"):
        wrapper = type("Pg%sArray" % name.title(), (), {
            "__slots__": ("data",), "__init__": lambda self, data: setattr(self, "data", data)})
        dumper = type("Pg%sArrayDumper" % name.title(), (Dumper,), {
            "format": Format.BINARY, "oid": postgres.types[name].array_oid,
            "dump": lambda self, obj: obj.data})
        adapters.register_dumper(wrapper, dumper)
        types.append(wrapper)
    return types


if _c_claim_arrays is not None:
    try:
        _PgText, _PgInt8, _PgInt4 = _binary_array_types()
    except ImportError:  # no psycopg (SQLite only): the C arrays are never needed
        _c_claim_arrays = None


class WriteResult:
    """What one batch did: uplinks newly stored, duplicates skipped, readings stored, dead letters."""
    __slots__ = ("uplinks", "duplicates", "readings", "dead", "stored_keys")

    def __init__(self):
        self.uplinks = 0
        self.duplicates = 0
        self.readings = 0
        self.dead = 0
        self.stored_keys = []  # (meter, s) newly stored, for gap scans and hooks

    def __repr__(self):
        return "WriteResult(uplinks=%d, duplicates=%d, readings=%d, dead=%d)" % (
            self.uplinks, self.duplicates, self.readings, self.dead)


def _insert(dialect_name, table):
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    if dialect_name == "sqlite":
        return sqlite.insert(table)
    raise ValueError("unsupported database %r (PostgreSQL or SQLite)" % dialect_name)


def _reading_rows(body, now):
    m, s = body["m"], body["s"]
    for start_t, energy, mv, ma, flags, span in body["r"]:
        yield {"meter_id": m, "start_t": start_t, "energy": energy, "avg_mv": mv, "avg_ma": ma,
               "flags": flags or 0, "span_s": span if span is not None else body["iv"],
               "estimated": False, "seq": s, "received_at": now}


def _status_row(body):
    return {"meter_id": body["m"], "seq": body["s"], "t": body["t"],
            "balance_paise": body["bal"], "credit_paise": body["cr"],
            "emergency_paise": body["em"], "debt_paise": body["dt"], "state": body["st"],
            "relay_closed": body["rl"], "limiter": body["ld"], "tariff_version": body["tv"],
            "topups_total_paise": body["tt"], "charges_total_paise": body["tc"]}


def _text_array(values, sql_type):
    r"""A PostgreSQL array literal (text format) of one column.

    psycopg's binary array dumper packs every element in Python (~10 us per
    uplink for the three hot tables); ``",".join`` over ``str`` runs in C and
    the server parses the literal in C.  Text elements are always quoted
    (meter ids may hold ``,`` ``"`` ``{`` or a backslash); None is NULL.

    >>> _text_array([1, None, 3], "bigint"), _text_array(['a"b', "c"], "text")
    ('{1,NULL,3}', '{"a\\"b","c"}')
    """
    if sql_type == "text":
        joined = "".join(values)
        if '"' not in joined and "\\" not in joined:  # the usual meter id: quote only
            return '{"%s"}' % '","'.join(values) if values else "{}"
        return "{%s}" % ",".join(
            '"%s"' % v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    if sql_type == "boolean":
        return "{%s}" % ",".join("t" if v else "f" for v in values)
    if None in values:
        return "{%s}" % ",".join("NULL" if v is None else str(v) for v in values)
    return "{%s}" % ",".join(map(str, values))


# PostgreSQL: the dedupe claim (with each reading uplink's register) and the readings
# in ONE statement per batch.  ``claimed`` holds the (meter, s) this batch newly
# stored; readings join it, so a replayed uplink's rows never reach them (exactly
# what the claim-then-insert round trips did).  Only joins: when some of the batch was
# stored before, the readings join ``claimed`` and the duplicates anti-join it (hash or
# merge joins, which spill to disk when large); an ``IN (SELECT ...)`` there ran as a
# per-row scan once the set outgrew work_mem (a 70,000-uplink batch, half replayed:
# 152 s, against 0.65 s with the joins).  Each branch is gated by the count, so the usual batch
# (nothing replayed) pays for neither.  The statement returns the batch's
# duplicates (usually none) and the count of readings stored, instead of one row per
# stored uplink and reading.  Constants (received_at, estimated) are scalars, not arrays.
_PG_CLAIM_READINGS = """WITH inp AS (
    SELECT * FROM unnest(%(m)s::text[], %(s)s::bigint[], %(k)s::text[], %(t)s::bigint[],
                         %(iv)s::integer[], %(cum)s::bigint[])
        AS u(m, s, k, t, iv, cum)),
claimed AS (
    INSERT INTO uplinks_seen (meter_id, seq, kind, t, received_at, interval_s, cum)
    SELECT m, s, k, t, %(now)s, iv, cum FROM inp
    ON CONFLICT DO NOTHING RETURNING meter_id, seq),
rd AS (
    INSERT INTO readings (meter_id, start_t, energy, avg_mv, avg_ma, flags, span_s, estimated,
                          seq, received_at)
    SELECT r.m, r.st, r.e, r.mv, r.ma, r.f, r.sp, false, r.s, %(now)s
    FROM _RECORDS_ AS r(m, s, st, e, mv, ma, f, sp)
    WHERE (SELECT count(*) FROM claimed) = %(n)s
    UNION ALL
    SELECT r.m, r.st, r.e, r.mv, r.ma, r.f, r.sp, false, r.s, %(now)s
    FROM _RECORDS_ AS r(m, s, st, e, mv, ma, f, sp)
    JOIN claimed c ON c.meter_id = r.m AND c.seq = r.s
    WHERE (SELECT count(*) FROM claimed) < %(n)s
    ON CONFLICT DO NOTHING RETURNING 1)
SELECT NULL::text, NULL::bigint, (SELECT count(*) FROM rd)
UNION ALL
SELECT i.m, i.s, NULL FROM inp i
WHERE (SELECT count(*) FROM claimed) < %(n)s
  AND NOT EXISTS (SELECT 1 FROM claimed c WHERE c.meter_id = i.m AND c.seq = i.s)
""".replace("_RECORDS_", (  # written out in both branches: a CTE read twice is materialised
    "unnest(%(rm)s::text[], %(rs)s::bigint[], %(rst)s::bigint[], %(re)s::bigint[], "
    "%(rmv)s::bigint[], %(rma)s::bigint[], %(rf)s::integer[], %(rsp)s::integer[])"))


def _pg_claim_readings(conn, unique, now):
    """Claim every uplink of ``unique`` and store the reading ones; PostgreSQL, one round trip.

    Returns (set of (meter, s) that were already stored, readings newly stored).
    """
    bodies = list(unique.values())
    arrays = _c_claim_arrays(bodies) if _c_claim_arrays is not None else None
    if arrays is not None:  # all readings, one record each: binary arrays built in C
        m, s, k, t, iv, cum, rst, re_, rmv, rma, rf, rsp = arrays
        m, s, i8, i4 = _PgText(m), _PgInt8(s), _PgInt8, _PgInt4
        params = {"m": m, "s": s, "k": _PgText(k), "t": i8(t), "iv": i4(iv), "cum": i8(cum),
                  "now": now, "n": len(bodies), "rm": m, "rs": s, "rst": i8(rst),
                  "re": i8(re_), "rmv": i8(rmv), "rma": i8(rma), "rf": i4(rf), "rsp": i4(rsp)}
    else:
        params = _claim_params(bodies, now)
    cur = conn.connection.driver_connection.cursor()  # same connection, same transaction
    try:
        cur.execute(_PG_CLAIM_READINGS, params)
        rows = cur.fetchall()
    finally:
        cur.close()
    readings = 0
    seen = set()
    for m, s, n in rows:
        if m is None:
            readings = n
        else:
            seen.add((m, s))
    return seen, readings


def _claim_params(bodies, now):
    """The statement's parameters, in Python (the reference for ``_fastingest.claim_arrays``)."""
    ms = [b["m"] for b in bodies]
    ss = [b["s"] for b in bodies]
    rb = [b for b in bodies if b["kind"] == "reading"]
    rm, rs, rst, re_, rmv, rma, rf, rsp = [], [], [], [], [], [], [], []
    for b in rb:
        m, s, iv = b["m"], b["s"], b["iv"]
        for start_t, energy, mv, ma, flags, span in b["r"]:
            rm.append(m)
            rs.append(s)
            rst.append(start_t)
            re_.append(energy)
            rmv.append(mv)
            rma.append(ma)
            rf.append(flags or 0)
            rsp.append(iv if span is None else span)
    a = _text_array
    m_text = a(ms, "text")
    s_text = a(ss, "bigint")
    if len(rb) == len(bodies):  # all readings (the usual batch): no NULL registers
        iv, cum = [b["iv"] for b in bodies], [b["cum"] for b in bodies]
    else:
        iv = [b["iv"] if b["kind"] == "reading" else None for b in bodies]
        cum = [b["cum"] if b["kind"] == "reading" else None for b in bodies]
    params = {
        "m": m_text, "s": s_text, "k": a([b["kind"] for b in bodies], "text"),
        "t": a([b["t"] for b in bodies], "bigint"), "iv": a(iv, "integer"),
        "cum": a(cum, "bigint"), "now": now, "n": len(bodies),
        # one record per reading uplink and nothing else in the batch (the usual case):
        # the readings' meter/s columns are the claim's, so the literals are built once
        "rm": m_text if rm == ms else a(rm, "text"),
        "rs": s_text if rs == ss else a(rs, "bigint"),
        "rst": a(rst, "bigint"), "re": a(re_, "bigint"), "rmv": a(rmv, "bigint"),
        "rma": a(rma, "bigint"), "rf": a(rf, "integer"), "rsp": a(rsp, "integer")}
    return params


class UplinkStore:
    """Writes batches of decoded uplink bodies (``messages.decode_uplink`` output) idempotently.

    >>> store = UplinkStore(engine)                              # doctest: +SKIP
    >>> store.write(bodies, dead=[], now=now).uplinks            # doctest: +SKIP
    """

    def __init__(self, engine):
        self.engine = engine
        self.dialect = engine.dialect.name
        ins = lambda model: _insert(self.dialect, model.__table__)  # noqa: E731
        seen = M.UplinkSeen.__table__
        self._claim = (ins(M.UplinkSeen).on_conflict_do_nothing()
                       .returning(seen.c.meter_id, seen.c.seq))
        rd = M.Reading.__table__
        self._readings = ins(M.Reading).on_conflict_do_nothing().returning(rd.c.start_t)
        self._events = ins(M.EventRecord).on_conflict_do_nothing()
        self._status = ins(M.StatusRecord).on_conflict_do_nothing()
        self._heartbeats = ins(M.Heartbeat).on_conflict_do_nothing()
        self._acks = ins(M.AckRecord).on_conflict_do_nothing()
        self._snapshots = ins(M.Snapshot).on_conflict_do_nothing()
        bal = ins(M.MeterBalance)
        cols = {c.name: bal.excluded[c.name] for c in M.MeterBalance.__table__.columns
                if c.name != "meter_id"}
        # the newest status (highest s) wins; a late old one never rolls the balance back
        self._balance = bal.on_conflict_do_update(
            index_elements=["meter_id"], set_=cols,
            where=M.MeterBalance.__table__.c.seq < bal.excluded.seq)
        self._dead = M.DeadLetter.__table__.insert()

    def write(self, bodies, dead=(), now=0):
        """Store ``bodies`` (decoded uplinks, each with ``kind``) and ``dead`` (topic, payload, reason).

        Returns a WriteResult; the whole batch commits or nothing does.
        """
        result = WriteResult()
        unique = dict(zip([(b["m"], b["s"]) for b in bodies], bodies))
        if len(unique) < len(bodies):  # duplicates within the batch: the first one wins
            unique = {}
            for b in bodies:
                unique.setdefault((b["m"], b["s"]), b)
            result.duplicates += len(bodies) - len(unique)
        with self.engine.begin() as conn:
            if unique:
                if self.dialect == "postgresql":
                    old, readings = _pg_claim_readings(conn, unique, now)
                    keys = [k for k in unique if k not in old] if old else list(unique)
                    fresh = [unique[k] for k in keys]
                    self._write_kinds(conn, [b for b in fresh if b["kind"] != "reading"], now)
                else:
                    seen = []
                    for b in unique.values():
                        reading = b["kind"] == "reading"  # a snapshot's cum is not a register
                        seen.append({"meter_id": b["m"], "seq": b["s"], "kind": b["kind"],
                                     "t": b["t"], "received_at": now,
                                     "interval_s": b["iv"] if reading else None,
                                     "cum": b["cum"] if reading else None})
                    claimed = conn.execute(self._claim, seen).all()
                    keys = [tuple(k) for k in claimed]
                    fresh = [unique[k] for k in keys]
                    readings = self._write_kinds(conn, fresh, now)
                result.duplicates += len(unique) - len(fresh)
                result.uplinks = len(fresh)
                result.stored_keys = keys
                result.readings = readings
            if dead:
                conn.execute(self._dead, [{"topic": t, "payload": bytes(p), "reason": r,
                                           "received_at": now} for t, p, r in dead])
                result.dead = len(dead)
        return result

    def _write_kinds(self, conn, fresh, now):
        rows = {"reading": [], "event": [], "status": [], "heartbeat": [],
                "ack": [], "snapshot": []}
        for b in fresh:
            kind, m, s = b["kind"], b["m"], b["s"]
            if kind == "reading":
                rows["reading"].extend(_reading_rows(b, now))
            elif kind == "event":
                for event_seq, t, code, value in b["e"]:
                    rows["event"].append({"meter_id": m, "event_seq": event_seq, "t": t,
                                          "code": code, "value": value, "seq": s,
                                          "lost_total": b.get("lost")})
            elif kind == "status":
                rows["status"].append(_status_row(b))
            elif kind == "heartbeat":
                rows["heartbeat"].append({
                    "meter_id": m, "seq": s, "t": b["t"], "uptime_s": b["up"],
                    "heap_free": b.get("hf"), "rssi_dbm": b.get("rssi"),
                    "outbox_depth": b.get("ob"), "outbox_dropped": b.get("dr"),
                    "firmware": b.get("fw"), "journal_writes": b.get("jw")})
            elif kind == "ack":
                rows["ack"].append({"meter_id": m, "seq": s, "t": b["t"], "command_id": b["id"],
                                    "counter": b["c"], "result": b["r"], "result_name": b["rn"],
                                    "detail": b.get("d"), "received_at": now})
            elif kind == "snapshot":
                rows["snapshot"].append({"meter_id": m, "kind": b["k"], "key": b["key"],
                                         "at": b["at"], "cum": b["cum"], "balance_paise": b["bal"],
                                         "max_demand_w": b.get("md"), "flags": b.get("f", 0),
                                         "seq": s})
        readings = 0
        if rows["reading"]:  # SQLite; PostgreSQL stores readings with the claim
            readings = len(conn.execute(self._readings, rows["reading"]).all())
        if rows["event"]:
            conn.execute(self._events, rows["event"])
            topped_up = sorted({r["meter_id"] for r in rows["event"] if r["code"] == TOPUP_APPLIED})
            if topped_up:
                _book_token_topups(conn, topped_up, now)
        if rows["status"]:
            conn.execute(self._status, rows["status"])
            latest = {}
            for r in rows["status"]:
                if r["meter_id"] not in latest or latest[r["meter_id"]]["seq"] < r["seq"]:
                    latest[r["meter_id"]] = r
            conn.execute(self._balance, list(latest.values()))
        for kind, stmt in (("heartbeat", self._heartbeats), ("ack", self._acks),
                           ("snapshot", self._snapshots)):
            if rows[kind]:
                conn.execute(stmt, rows[kind])
        return readings


def _book_token_topups(conn, meter_ids, now):
    """Mark STS tokens applied from TOPUP_APPLIED events, in the batch's own transaction.

    ``headend.tokens.match_meter_events`` books a token's TOPUP_APPLIED on the
    ledger once the meter reports an event of its value; doing it where the
    events are stored means the booking commits (or not) with the events, and
    a replayed event uplink (claimed already) never gets here twice.
    """
    from headend import tokens  # late: tokens pulls in commands, ledger, STS vending
    with Session(bind=conn, autoflush=False) as session:  # joins conn's transaction
        if not tokens.tables_ready(session):
            return
        for meter_id in meter_ids:
            tokens.match_meter_events(session, meter_id, now)
        session.flush()


# --- sequence gaps ---------------------------------------------------------

# Each meter's stored sequence numbers from its own low mark up, in one statement for
# a chunk of meters: a row per gap (next_seq > seq + 1) and one per meter's top
# (next_seq NULL).  The marks travel as a VALUES list (2 parameters per meter), which
# PostgreSQL and SQLite both read as a CTE with named columns.
_GAPS_SQL = """WITH lows(m, low) AS (VALUES %s),
runs AS (
    SELECT u.meter_id, u.seq,
           LEAD(u.seq) OVER (PARTITION BY u.meter_id ORDER BY u.seq) AS next_seq
    FROM uplinks_seen u JOIN lows ON u.meter_id = lows.m AND u.seq >= lows.low)
SELECT meter_id, seq, next_seq FROM runs WHERE next_seq IS NULL OR next_seq > seq + 1"""

GAP_SCAN_CHUNK = 1000  # meters per statement: 2,000 parameters (SQLite allows 32,766)


def _runs_above(conn, lows):
    """{meter: [gaps {(first, last)}, top stored seq]} for ``lows`` (meter -> lowest seq to read)."""
    ph = "?" if conn.dialect.name == "sqlite" else "%s"
    sql = _GAPS_SQL % ",".join(["(%s, %s)" % (ph, ph)] * len(lows))
    params = []
    for meter_id, low in lows.items():
        params += (meter_id, low)
    out = {}
    for meter_id, seq, next_seq in conn.exec_driver_sql(sql, tuple(params)):
        found = out.setdefault(meter_id, [set(), None])
        if next_seq is None:
            found[1] = seq
        else:
            found[0].add((seq + 1, next_seq - 1))
    return out


def scan_gaps(engine, meter_ids, now, low_marks=None):
    """Bring ``seq_gaps`` up to date for ``meter_ids``; returns (opened, closed) counts.

    ``low_marks`` (meter -> a sequence number known to be stored) bounds the scan
    so it does not re-read a meter's whole history; the caller keeps it
    between scans (``IngestWorker`` does).  Open gaps below the mark are
    always re-checked, so a late message closes its gap; gaps marked
    unrecoverable are re-checked only when they lie inside the scanned range.

    Set-based: a handful of statements per ``GAP_SCAN_CHUNK`` meters, not three per
    meter (a 1M-meter fleet touches ~5,500 meters in a 5-second scan).
    """
    low_marks = low_marks if low_marks is not None else {}
    gaps = M.SeqGap.__table__
    opened = closed = 0
    meter_ids = list(meter_ids)
    with engine.begin() as conn:
        for i in range(0, len(meter_ids), GAP_SCAN_CHUNK):
            chunk = meter_ids[i:i + GAP_SCAN_CHUNK]
            open_by_meter = {}
            for row in conn.execute(
                    select(gaps.c.id, gaps.c.meter_id, gaps.c.first_seq, gaps.c.last_seq,
                           gaps.c.unrecoverable_at)
                    .where(gaps.c.meter_id.in_(chunk), gaps.c.closed_at.is_(None))):
                open_by_meter.setdefault(row.meter_id, []).append(row)
            lows = {}
            for meter_id in chunk:
                low = low_marks.get(meter_id, 0)
                pending = [r.first_seq for r in open_by_meter.get(meter_id, ())
                           if r.unrecoverable_at is None]
                lows[meter_id] = min(low, min(pending) - 1) if pending else low
            runs = _runs_above(conn, lows)
            to_close, new = [], []
            for meter_id in chunk:
                found, top = runs.get(meter_id, (set(), None))
                low = lows[meter_id]
                open_rows = open_by_meter.get(meter_id, ())
                for row in open_rows:
                    # a gap starting above ``low`` is in ``found`` if it is still missing whole
                    if row.first_seq > low and (row.first_seq, row.last_seq) not in found:
                        to_close.append(row.id)
                known = {(r.first_seq, r.last_seq) for r in open_rows}
                new += [{"meter_id": meter_id, "first_seq": f, "last_seq": last,
                         "detected_at": now} for f, last in sorted(found - known)]
                if top is not None:
                    low_marks[meter_id] = top
            if to_close:
                conn.execute(update(gaps).where(gaps.c.id.in_(to_close)).values(closed_at=now))
                closed += len(to_close)
            if new:
                conn.execute(_insert(engine.dialect.name, gaps).on_conflict_do_nothing(), new)
                opened += len(new)
    return opened, closed


def open_gaps(engine, meter_id=None, unrecoverable=True):
    """Unfilled gaps as [(meter_id, first_seq, last_seq)], oldest first.

    ``unrecoverable=False`` leaves out the gaps the meter can no longer fill.
    """
    gaps = M.SeqGap.__table__
    q = select(gaps.c.meter_id, gaps.c.first_seq, gaps.c.last_seq).where(gaps.c.closed_at.is_(None))
    if meter_id is not None:
        q = q.where(gaps.c.meter_id == meter_id)
    if not unrecoverable:
        q = q.where(gaps.c.unrecoverable_at.is_(None))
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(q.order_by(gaps.c.meter_id, gaps.c.first_seq))]


MAX_BACKFILL_ATTEMPTS = 3


def request_backfills(engine, now, grace_s, limit=500, max_attempts=MAX_BACKFILL_ATTEMPTS):
    """Queue a ``backfill`` command for each gap still open ``grace_s`` after it was detected.

    Returns (requested, unrecoverable).  The command (kind ``backfill``,
    fields ``[BF-<gap id>-<attempt>, first_s, last_s]``, docs/protocol.md)
    goes through the durable queue (``headend.commands``); the dispatcher
    signs, sends and retries it, and ``commands.handle_ack`` records the
    meter's answer on the gap.

    - A gap below the oldest sequence the meter said it still holds
      (``held_from`` of an earlier answer) is marked unrecoverable instead.
    - A gap whose last command finished (applied, failed or expired) more
      than ``grace_s`` ago and is still open is asked for again, up to
      ``max_attempts`` commands: the meter keeps queued ranges in RAM only,
      so a reset between its ack and the re-sent uplinks loses the request.
    - The gap row is claimed (``UPDATE ... WHERE backfill_command_id`` is still
      what we read) in the transaction that queues the command, so several
      ingest workers never queue two for one gap.
    - A gap longer than the meter accepts in one command asks for its newest
      ``BACKFILL_MAX_SPAN``; what stays missing becomes a new gap, asked for
      in its turn.

    >>> request_backfills(engine, now=1795737600, grace_s=300)    # doctest: +SKIP
    (1, 0)
    """
    from headend import commands as C  # late: commands imports the firmware auth code
    gaps = M.SeqGap.__table__
    cmds = C.Command.__table__
    requested = lost = 0
    with Session(engine) as session:
        rows = session.execute(
            select(gaps.c.id, gaps.c.meter_id, gaps.c.first_seq, gaps.c.last_seq,
                   gaps.c.backfill_command_id, gaps.c.backfill_attempts, cmds.c.state,
                   cmds.c.finished_at)
            .select_from(gaps.outerjoin(cmds, cmds.c.id == gaps.c.backfill_command_id))
            .where(gaps.c.closed_at.is_(None), gaps.c.unrecoverable_at.is_(None),
                   gaps.c.detected_at <= now - grace_s, gaps.c.backfill_attempts < max_attempts)
            .order_by(gaps.c.id).limit(limit)).all()
        rows = [r for r in rows if r.backfill_command_id is None or (
            r.state in C.FINAL_STATES and (r.finished_at or 0) <= now - grace_s)]
        if not rows:
            return 0, 0
        meters = sorted({r.meter_id for r in rows})
        held_from = dict(session.execute(
            select(gaps.c.meter_id, func.max(gaps.c.held_from))
            .where(gaps.c.meter_id.in_(meters), gaps.c.held_from.is_not(None))
            .group_by(gaps.c.meter_id)).all())
        for row in rows:
            as_read = gaps.c.backfill_command_id.is_(None) if row.backfill_command_id is None \
                else gaps.c.backfill_command_id == row.backfill_command_id
            still = (gaps.c.id == row.id, gaps.c.closed_at.is_(None),
                     gaps.c.unrecoverable_at.is_(None), as_read)
            floor = held_from.get(row.meter_id)
            if floor is not None and row.last_seq < floor:
                if session.execute(update(gaps).where(*still).values(
                        unrecoverable_at=now, held_from=floor)).rowcount:
                    lost += 1
                    C.raise_alert(session, now, row.meter_id, None, "data_lost",
                                  "uplinks s %d..%d are gone: the meter holds s >= %d only"
                                  % (row.first_seq, row.last_seq, floor))
                continue
            attempt = row.backfill_attempts + 1
            command_id = "BF-%d-%d" % (row.id, attempt)
            if not session.execute(update(gaps).where(*still).values(
                    backfill_command_id=command_id, backfill_attempts=attempt)).rowcount:
                continue  # another worker took it, or it closed meanwhile
            first = max(row.first_seq, row.last_seq - (C.BACKFILL_MAX_SPAN - 1))
            C.enqueue(session, row.meter_id, C.BACKFILL, [first, row.last_seq], now,
                      command_id=command_id)
            requested += 1
        session.commit()
    return requested, lost


def known_meters(engine):
    """Registered active meters: {meter_id: unit} (``Wh`` or ``L``)."""
    with engine.connect() as conn:
        rows = conn.execute(select(M.Meter.id, M.Meter.service).where(M.Meter.active.is_(True)))
        return {mid: M.UNIT_OF_SERVICE.get(service, "Wh") for mid, service in rows}
