"""The board interface the firmware programs against (never ``machine`` directly).

Each platform (``boards/esp32``, ``boards/unix``) implements these classes;
the firmware receives an instance and calls only the methods documented here.
"""


class SlotStorage:
    """Two (or more) independently written slots of persistent bytes.

    The journal (``firmware.core.journal``) writes whole records into slot 0
    or 1 and reads them back after a reset.  A board implements:

    - ``read(slot)`` -> the bytes last written to ``slot``, or ``None`` when the
      slot was never written.  After a power cut in the middle of ``write`` it
      may return a prefix of the new data, or anything else: the journal checks
      magic, length and CRC, so the storage need not be atomic.
    - ``write(slot, data)`` -> ``None``; replaces the slot's contents.  Raise
      ``OSError`` on a hardware failure.

    Writing one slot must never disturb the other: that is the whole point of
    keeping two.

    >>> class RamSlots(SlotStorage):
    ...     def __init__(self): self.slots = [None, None]
    ...     def read(self, slot): return self.slots[slot]
    ...     def write(self, slot, data): self.slots[slot] = bytes(data)
    """

    def read(self, slot: int):
        raise NotImplementedError

    def write(self, slot: int, data) -> None:
        raise NotImplementedError
