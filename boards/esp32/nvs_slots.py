"""Journal slots in the ESP32's NVS (esp32.NVS blobs ``j0`` / ``j1``).

NVS itself is log-structured and power-fail safe per key: ``set_blob`` +
``commit`` either lands whole or leaves the old value.  We still keep two
slots (and the journal's CRC) because (1) the journal must behave the same
on storage that is not atomic (the unix files, a raw flash partition),
(2) a CRC also catches flash bit rot and a half-upgraded format, and (3) an
NVS blob larger than one page spans several pages, and keeping the previous
record whole in another key costs little.
"""
import esp32

from boards.hal import SlotStorage

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

DEFAULT_CAPACITY = const(4111)  # journal's 4096-byte payload limit + 15 bytes of framing
_KEYS = ("j0", "j1")


class NvsSlots(SlotStorage):
    """Two NVS blobs in ``namespace``; ``capacity`` bounds the read buffer (bytes).

    >>> journal = Journal(NvsSlots("urja"))
    """

    def __init__(self, namespace="urja", capacity=DEFAULT_CAPACITY):
        self.nvs = esp32.NVS(namespace)
        self.buf = bytearray(capacity)  # preallocated: boots read without heap churn

    def read(self, slot):
        try:
            n = self.nvs.get_blob(_KEYS[slot], self.buf)
        except OSError:  # ESP_ERR_NVS_NOT_FOUND (or larger than capacity: unusable anyway)
            return None
        return bytes(self.buf[:n])

    def write(self, slot, data):
        self.nvs.set_blob(_KEYS[slot], data)
        self.nvs.commit()
