"""The ingest's hot path: reading uplinks straight from MQTT frames, in C when it is built.

``ReadingReader`` is a drop-in for ``mqtt_fast.FrameReader`` (a connection's
``reader_factory``).  Its ``feed(data)`` returns (publishes, other packets)
like FrameReader's, except that runs of reading uplinks the C scanner
(``headend/_fastingest.c``) took come back as one ``Readings`` item each: the
bodies ``IngestWorker.classify`` would have returned for them, and their QoS 1
packet ids.  Every other frame -- other kinds, dead letters, control packets,
malformed bytes -- goes through ``mqtt_fast.parse_frame`` and the usual
classify, in arrival order, so the scanner only ever *accepts*: a frame it is
not sure about is the reference's to decide (headend/tests/test_fastscan.py
holds the two to the same results).

Why C: per reading uplink, parsing the frame (1.4 us), decoding and checking
the CBOR body (5.5 us) and classifying it cost the worker ~8 us of Python on
this machine; the scanner does all of it in ~1 us (docs/SCALING.md).  The
extension is optional (pyproject.toml): ``available()`` says whether it was
built, and without it the ingest runs the pure-Python path unchanged.

>>> reader = ReadingReader(lambda: {"UJ-1": "Wh"})          # doctest: +SKIP
>>> pubs, others = reader.feed(socket_bytes)                # doctest: +SKIP
"""
from firmware.protocol import messages
from headend import fastdecode
from headend.mqtt_fast import MAX_PACKET, FrameReader

try:
    from headend import _fastingest
except ImportError:  # not built (no C compiler at install): the Python path serves
    _fastingest = None

# The C code is written for this reading schema (the one fastdecode checks for) and
# this topic prefix; if ``messages`` ever says otherwise it is not used at all.
if _fastingest is not None and not (
        fastdecode._READING_FAST and _fastingest.FORMAT == messages.FORMAT
        and _fastingest.RECORD_LEN == messages.READING_RECORD_LEN
        and messages.PREFIX == "urja/v1/"):
    _fastingest = None

# store.py's batch arrays in C, or None
claim_arrays = _fastingest.claim_arrays if _fastingest is not None else None


def available():
    """True when the C scanner is built, importable and written for ``messages``' schema."""
    return _fastingest is not None


class Readings:
    """Consecutive reading uplinks the scanner took: ``bodies`` (decoded, classified, each
    with ``kind``) and ``ids`` (the QoS 1 packet ids among them, in arrival order)."""
    __slots__ = ("bodies", "ids")

    def __init__(self, bodies, ids):
        self.bodies, self.ids = bodies, ids

    def __repr__(self):
        return "Readings(%d bodies, %d ids)" % (len(self.bodies), len(self.ids))


class ReadingReader(FrameReader):
    """Incremental MQTT v5 reader that decodes reading uplinks in C.

    ``units()`` returns the current registry as a dict meter id -> unit (the
    worker replaces its dict when it reloads the registry): a reading of a
    meter missing from it, or in another unit, is left to the reference.
    """

    def __init__(self, units, max_packet=MAX_PACKET):
        if _fastingest is None:
            raise RuntimeError("headend._fastingest is not built: reinstall with a C compiler "
                               "(pip install -e .), or use mqtt_fast.FrameReader")
        super().__init__(max_packet)
        self.units = units

    def _take(self, buf, pos, pubs):
        """The run of reading frames at ``pos`` the scanner takes, as one Readings item."""
        bodies, ids = [], []
        pos = _fastingest.scan(buf, pos, self.max_packet, self.units(), bodies, ids)
        if bodies:
            pubs.append(Readings(bodies, ids))
        return pos
