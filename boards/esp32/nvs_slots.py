"""Journal slots in the ESP32's NVS (esp32.NVS blobs, two keys per journal).

NVS itself is log-structured and power-fail safe per key: ``set_blob`` +
``commit`` either lands whole or leaves the old value.  We still keep two
slots (and the journal's CRC) because (1) the journal must behave the same
on storage that is not atomic (the unix files, a raw flash partition),
(2) a CRC also catches flash bit rot and a half-upgraded format, and (3) an
NVS blob larger than one page spans several pages, and keeping the previous
record whole in another key costs little.

NVS spreads its writes over all pages of the ``nvs`` partition (ESP-IDF's
wear levelling for key/value data, what ESPHome's preferences use too), so
small journals written often -- the outbox's 27-byte release cursor -- cost
one NVS entry each, never a sector erase of their own.
"""
import esp32

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

DEFAULT_CAPACITY = const(4111)  # journal's 4096-byte payload limit + 15 bytes of framing
_KEYS = const(("j0", "j1"))


class NvsSlots:
    """A ``boards.hal.SlotStorage``: two NVS blobs ``keys`` in ``namespace``.

    ``capacity`` bounds a slot's size (bytes).

    The read buffer is allocated per read, not kept: slots are read only at
    boot, and a journal of 8 KB would otherwise hold 8 KB of heap for good.

    >>> journal = Journal(NvsSlots("urja"))
    >>> cursor = Journal(NvsSlots("urja", 64, ("o0", "o1")))
    """

    def __init__(self, namespace="urja", capacity=DEFAULT_CAPACITY, keys=_KEYS):
        if len(keys) != 2:
            raise ValueError("NvsSlots needs two keys, got %r" % (keys,))
        self.nvs = esp32.NVS(namespace)
        self.capacity = capacity
        self.keys = keys

    def read(self, slot):
        buf = bytearray(self.capacity)
        try:
            n = self.nvs.get_blob(self.keys[slot], buf)
        except OSError:  # ESP_ERR_NVS_NOT_FOUND (or larger than capacity: unusable anyway)
            return None
        return bytes(buf[:n])

    def write(self, slot, data):
        if len(data) > self.capacity:
            # refused before NVS stores a record that read() could never load back
            raise OSError(28, "NVS slot %s: %d bytes exceed its %d-byte capacity"
                          % (self.keys[slot], len(data), self.capacity))
        self.nvs.set_blob(self.keys[slot], data)
        self.nvs.commit()
