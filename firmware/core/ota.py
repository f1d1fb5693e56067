"""OTA firmware update: the download state machine and the A/B boot choice.

Pure logic.  The image bytes go to an injected *image slot* (the board's
inactive A/B slot) with two methods:

- ``write(offset, data)`` -> None: store ``data`` at byte ``offset``; writing
  the same bytes again must be harmless (a resumed download rewrites the chunk
  a power cut may have torn).  Raise ``OSError`` on failure.
- ``read(offset, n)`` -> bytes: up to ``n`` bytes from ``offset``.

Flow (one transition table, ``TRANSITIONS``)::

    IDLE -begin-> DOWNLOADING -chunk...-> VERIFYING -hash ok-> READY -switch->
    PENDING_CONFIRM -confirm-> CONFIRMED       (or -rollback-> ROLLED_BACK)
                        VERIFYING -bad hash-> FAILED (the active slot untouched)

Chunks arrive in order; ``next_index`` survives a reset through
``to_state()`` so the download resumes where it stopped.  The SHA-256 is
computed by reading the whole image back from the slot, so it also catches
bytes the flash did not keep, and needs no hash state across resets.

``BootState`` is the A/B choice a boot selector makes: a newly installed slot
gets ``trial_boots`` boots to call ``confirm()``; a boot after that rolls back.

>>> u = Update()
>>> u.begin({"version": "1.2.0", "size": 3, "chunk_size": 2,
...          "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}, 4096)
0
>>> u.add_chunk(0, b"ab", slot), u.add_chunk(1, b"c", slot)
(0, 0)
>>> u.verify(slot), u.state_name
(0, 'READY')
"""
import binascii
import hashlib

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

# Update states.
IDLE = const(0)
DOWNLOADING = const(1)
VERIFYING = const(2)
READY = const(3)
PENDING_CONFIRM = const(4)
CONFIRMED = const(5)
FAILED = const(6)
ROLLED_BACK = const(7)
STATE_NAMES = ("IDLE", "DOWNLOADING", "VERIFYING", "READY", "PENDING_CONFIRM",
               "CONFIRMED", "FAILED", "ROLLED_BACK")

# Events.
BEGIN = const(0)
CHUNK = const(1)
LAST_CHUNK = const(2)
HASH_OK = const(3)
HASH_BAD = const(4)
SWITCH = const(5)
CONFIRM = const(6)
ROLLBACK = const(7)
ABORT = const(8)
ACK = const(9)
EVENT_NAMES = ("BEGIN", "CHUNK", "LAST_CHUNK", "HASH_OK", "HASH_BAD", "SWITCH",
               "CONFIRM", "ROLLBACK", "ABORT", "ACK")

# The whole machine.  Anything not listed raises OtaStateError.
TRANSITIONS = {
    (IDLE, BEGIN): DOWNLOADING,
    (DOWNLOADING, BEGIN): DOWNLOADING,  # same manifest resumes, another restarts
    (CONFIRMED, BEGIN): DOWNLOADING,
    (FAILED, BEGIN): DOWNLOADING,
    (ROLLED_BACK, BEGIN): DOWNLOADING,
    (DOWNLOADING, CHUNK): DOWNLOADING,
    (DOWNLOADING, LAST_CHUNK): VERIFYING,
    (VERIFYING, HASH_OK): READY,
    (VERIFYING, HASH_BAD): FAILED,
    (READY, SWITCH): PENDING_CONFIRM,
    (PENDING_CONFIRM, CONFIRM): CONFIRMED,
    (PENDING_CONFIRM, ROLLBACK): ROLLED_BACK,
    (DOWNLOADING, ABORT): FAILED,
    (VERIFYING, ABORT): FAILED,
    (READY, ABORT): FAILED,
    (CONFIRMED, ACK): IDLE,
    (FAILED, ACK): IDLE,
    (ROLLED_BACK, ACK): IDLE,
}
# Not listed on purpose: BEGIN in PENDING_CONFIRM (the inactive slot *is* the
# rollback target until the new image confirms) and BEGIN in VERIFYING/READY
# (finish or abort the verified image first).

# Result / reason codes.
R_OK = const(0)
R_DUPLICATE = const(1)  # chunk already written: harmless, nothing done
R_OUT_OF_ORDER = const(2)  # a gap: resend from next_index
R_BAD_INDEX = const(3)  # outside 0 .. chunk_count - 1
R_BAD_LENGTH = const(4)
R_BAD_MANIFEST = const(5)
R_TOO_LARGE = const(6)  # image larger than the slot
R_BAD_HASH = const(7)
R_IO_ERROR = const(8)
R_BAD_IMAGE = const(9)  # hash fine but the board could not install it
R_NOT_CONFIRMED = const(10)  # rolled back: the new image never confirmed
R_ABORTED = const(11)
REASON_NAMES = ("OK", "DUPLICATE", "OUT_OF_ORDER", "BAD_INDEX", "BAD_LENGTH",
                "BAD_MANIFEST", "TOO_LARGE", "BAD_HASH", "IO_ERROR", "BAD_IMAGE",
                "NOT_CONFIRMED", "ABORTED")

MAX_CHUNK_SIZE = const(65536)
MAX_VERSION_LEN = const(32)
_HEX = "0123456789abcdef"


class OtaError(ValueError):
    """Base of the OTA errors."""


class OtaStateError(OtaError):
    """An event the current state does not allow (e.g. a chunk while IDLE)."""


def check_manifest(manifest, capacity):
    """R_OK, R_BAD_MANIFEST or R_TOO_LARGE for a manifest dict and a slot of ``capacity`` bytes.

    >>> check_manifest({"version": "1.0", "size": 10, "chunk_size": 4, "sha256": "ab" * 32}, 8)
    6
    """
    if not isinstance(manifest, dict):
        return R_BAD_MANIFEST
    version = manifest.get("version")
    size = manifest.get("size")
    chunk = manifest.get("chunk_size")
    digest = manifest.get("sha256")
    if not isinstance(version, str) or not 0 < len(version) <= MAX_VERSION_LEN:
        return R_BAD_MANIFEST
    # type() is int, not isinstance: True is an int too
    if type(size) is not int or size < 1 or type(chunk) is not int:
        return R_BAD_MANIFEST
    if not 0 < chunk <= MAX_CHUNK_SIZE:
        return R_BAD_MANIFEST
    if not isinstance(digest, str) or len(digest) != 64:
        return R_BAD_MANIFEST
    for ch in digest.lower():
        if ch not in _HEX:
            return R_BAD_MANIFEST
    if size > capacity:
        return R_TOO_LARGE
    return R_OK


def _manifest_copy(m):
    return {"version": m["version"], "size": m["size"], "chunk_size": m["chunk_size"],
            "sha256": m["sha256"].lower()}


class Update:
    """One firmware download into the inactive slot, resumable across resets.

    Data problems (a bad chunk, a bad hash) come back as ``R_*`` codes; an
    event the state forbids raises ``OtaStateError``.  ``reason`` holds why
    the update ended in FAILED / ROLLED_BACK.

    >>> u = Update.from_state(saved)      # after a reset
    >>> u.state_name, u.next_index        # ('DOWNLOADING', 17): ask for chunk 17
    """

    def __init__(self):
        self.state = IDLE
        self.reason = R_OK
        self.manifest = None
        self.next_index = 0
        self.target = None  # the board's name of the slot switched to (e.g. "b", "ota_1")

    @property
    def state_name(self):
        return STATE_NAMES[self.state]

    @property
    def reason_name(self):
        return REASON_NAMES[self.reason]

    @property
    def chunk_count(self):
        if self.manifest is None:
            return 0
        cs = self.manifest["chunk_size"]
        return (self.manifest["size"] + cs - 1) // cs

    def chunk_len(self, index):
        """Bytes chunk ``index`` must hold: chunk_size, the last one the remainder."""
        m = self.manifest
        if m is None:
            return 0
        return min(m["chunk_size"], m["size"] - index * m["chunk_size"])

    def _manifest(self) -> dict:
        m = self.manifest
        if m is None:  # only a damaged saved state gets here
            raise OtaStateError("OTA: %s without a manifest" % self.state_name)
        return m

    def _fire(self, event):
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise OtaStateError("OTA: %s not allowed in %s" % (EVENT_NAMES[event], self.state_name))
        self.state = nxt

    def _require(self, event):
        if (self.state, event) not in TRANSITIONS:
            raise OtaStateError("OTA: %s not allowed in %s" % (EVENT_NAMES[event], self.state_name))

    def begin(self, manifest, capacity):
        """Start (or resume) downloading the image ``manifest`` describes into a slot of ``capacity`` bytes.

        The same manifest again while DOWNLOADING keeps ``next_index`` (resume);
        a different one restarts at chunk 0.  A bad manifest changes nothing.
        """
        self._require(BEGIN)
        reason = check_manifest(manifest, capacity)
        if reason != R_OK:
            return reason
        m = _manifest_copy(manifest)
        if self.state == DOWNLOADING and self.manifest == m:
            return R_OK
        self._fire(BEGIN)
        self.manifest, self.next_index, self.reason = m, 0, R_OK
        return R_OK

    def add_chunk(self, index, data, slot):
        """Write chunk ``index`` to ``slot`` if it is the next one; an ``R_*`` code."""
        self._require(CHUNK)
        if index < 0 or index >= self.chunk_count:
            return R_BAD_INDEX
        if index < self.next_index:
            return R_DUPLICATE
        if index > self.next_index:
            return R_OUT_OF_ORDER
        if len(data) != self.chunk_len(index):
            return R_BAD_LENGTH
        try:
            slot.write(index * self._manifest()["chunk_size"], data)
        except OSError:
            self.fail(R_IO_ERROR)
            return R_IO_ERROR
        self.next_index += 1
        self._fire(LAST_CHUNK if self.next_index == self.chunk_count else CHUNK)
        return R_OK

    def verify(self, slot):
        """Hash the image read back from ``slot``: READY when it matches the manifest, else FAILED."""
        self._require(HASH_OK)
        m = self._manifest()
        h = hashlib.sha256()
        off, size, step = 0, m["size"], m["chunk_size"]
        try:
            while off < size:
                piece = slot.read(off, min(step, size - off))
                if not piece:
                    break  # short image: the hash below cannot match
                h.update(piece)
                off += len(piece)
        except OSError:
            self.fail(R_IO_ERROR)
            return R_IO_ERROR
        if off == size and binascii.hexlify(h.digest()).decode() == m["sha256"]:
            self._fire(HASH_OK)
            return R_OK
        self._fire(HASH_BAD)
        self.reason = R_BAD_HASH
        return R_BAD_HASH

    def fail(self, reason=R_ABORTED):
        """Give up before the switch (download cancelled, I/O error, image the board rejects)."""
        self._fire(ABORT)
        self.reason = reason

    def abort_uninstalled(self):
        """At boot: an update still VERIFYING or READY was cut off by a reset before the
        board's install committed; abort it (FAILED, ABORTED) so the next ``ota`` starts
        afresh instead of being refused.  Returns the aborted version ("?" without a
        manifest) for the console, or None when there was nothing to abort."""
        if self.state != VERIFYING and self.state != READY:
            return None
        version = self.manifest["version"] if self.manifest else "?"
        self.fail(R_ABORTED)
        return version

    def switched(self, target=None):
        """The board marked slot ``target`` to boot on trial: wait for its confirm()."""
        self._fire(SWITCH)
        self.target = target

    def confirmed(self):
        """The new firmware passed its self-test and confirmed."""
        self._fire(CONFIRM)

    def rolled_back(self):
        """The boot selector went back to the old slot: the new image never confirmed."""
        self._fire(ROLLBACK)
        self.reason = R_NOT_CONFIRMED

    def acknowledge(self):
        """The outcome was reported upstream: forget it and go IDLE."""
        self._fire(ACK)
        self.manifest, self.next_index, self.reason, self.target = None, 0, R_OK, None

    def to_state(self):
        return {"state": self.state, "reason": self.reason, "manifest": self.manifest,
                "next_index": self.next_index, "target": self.target}

    @classmethod
    def from_state(cls, data):
        u = cls()
        state = data["state"]
        if type(state) is not int or not 0 <= state < len(STATE_NAMES):
            raise OtaError("OTA: unknown saved state %r" % (state,))
        u.state, u.reason = state, data["reason"]
        u.manifest = data["manifest"]
        u.next_index = data["next_index"]
        u.target = data.get("target")
        return u


# Why the selector booted the slot it did.
BOOT_NORMAL = const(0)  # the confirmed slot
BOOT_TRIAL = const(1)  # a new slot on trial, not yet confirmed
BOOT_ROLLED_BACK = const(2)  # trial boots used up: back on the confirmed slot
BOOT_NAMES = ("NORMAL", "TRIAL", "ROLLED_BACK")
DEFAULT_TRIAL_BOOTS = const(1)


class BootState:
    """Which of two slots boots: the confirmed one, or a newly installed one on trial.

    Persist it after ``select()`` and *before* running the image: the spent
    trial boot must be on record, or an image that crashes at once would be
    retried for ever.

    >>> b = BootState(("a", "b"))
    >>> b.arm("b"); b.select()
    'b'
    >>> b.select()                      # no confirm() in between
    'a'
    >>> BOOT_NAMES[b.last_boot]
    'ROLLED_BACK'
    """

    def __init__(self, slots=("a", "b"), active=None):
        self.slots = (slots[0], slots[1])
        self.active = slots[0] if active is None else active
        self.pending = None
        self.boots_left = 0
        self.booted = None
        self.last_boot = BOOT_NORMAL

    def other(self, slot):
        return self.slots[1] if slot == self.slots[0] else self.slots[0]

    @property
    def inactive(self):
        """The slot a download may overwrite."""
        return self.other(self.active)

    def arm(self, slot, trial_boots=DEFAULT_TRIAL_BOOTS):
        """Boot ``slot`` on trial for up to ``trial_boots`` boots."""
        if slot != self.inactive:
            raise OtaStateError("OTA: can only arm the inactive slot %r, not %r" % (self.inactive, slot))
        if self.pending is not None:
            raise OtaStateError("OTA: slot %r is already pending confirmation" % (self.pending,))
        if trial_boots < 1:
            raise OtaError("OTA: trial_boots must be at least 1")
        self.pending, self.boots_left = slot, trial_boots

    def select(self):
        """The slot to boot now; spends a trial boot or rolls back."""
        if self.pending is not None:
            if self.boots_left > 0:
                self.boots_left -= 1
                self.booted, self.last_boot = self.pending, BOOT_TRIAL
                return self.pending
            self.pending, self.last_boot = None, BOOT_ROLLED_BACK
        else:
            self.last_boot = BOOT_NORMAL
        self.booted = self.active
        return self.active

    def confirm(self):
        """The running slot is good.  True when this made a trial slot the active one.

        Safe to call on every boot (like ESP-IDF's mark_app_valid_cancel_rollback).
        """
        if self.pending is not None and self.booted == self.pending:
            self.active, self.pending, self.boots_left = self.pending, None, 0
            self.last_boot = BOOT_NORMAL
            return True
        return False

    def to_state(self):
        return {"slots": list(self.slots), "active": self.active, "pending": self.pending,
                "boots_left": self.boots_left, "booted": self.booted, "last_boot": self.last_boot}

    @classmethod
    def from_state(cls, data):
        b = cls(data["slots"], data["active"])
        b.pending, b.boots_left = data["pending"], data["boots_left"]
        b.booted, b.last_boot = data["booted"], data["last_boot"]
        return b
