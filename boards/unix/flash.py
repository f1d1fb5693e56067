"""Journal slots as two files, written the way flash is: page by page, in place.

No temp-file-and-rename on purpose: a process killed in the middle of
``write`` leaves a torn slot (the first pages of the new record, or an empty
file), exactly the damage a power cut does to flash, so the power-cut test
exercises the journal's recovery instead of the filesystem's.  Uses only
``open`` and the ``os`` calls MicroPython's unix port has.
"""
import os

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

_PAGE_SIZE = const(256)


class FileSlots:
    """A ``boards.hal.SlotStorage``: ``slot0.bin`` / ``slot1.bin`` in ``directory``.

    ``directory`` is created if missing (one level).

    >>> slots = FileSlots("/tmp/urja-meter-1")
    >>> slots.write(0, b"record")
    >>> slots.read(0), slots.read(1)
    (b'record', None)
    """

    def __init__(self, directory, page_size=_PAGE_SIZE):
        self.directory = directory.rstrip("/") or "/"
        self.page_size = page_size
        try:
            os.mkdir(self.directory)
        except OSError:
            pass  # already there; a real failure shows up on the first write

    def path(self, slot):
        if slot not in (0, 1):
            raise ValueError("no slot %r: slots are 0 and 1" % (slot,))
        return "%s/slot%d.bin" % (self.directory, slot)

    def read(self, slot):
        try:
            f = open(self.path(slot), "rb")
        except OSError:  # ENOENT: never written
            return None
        try:
            return f.read()
        finally:
            f.close()

    def write(self, slot, data):
        view = memoryview(data)
        # buffering=0: each page is one os-level write(), like one flash page program.
        f = open(self.path(slot), "wb", buffering=0)
        try:
            for start in range(0, len(view), self.page_size):
                page = view[start:start + self.page_size]
                if f.write(page) != len(page):  # unbuffered files may write short
                    raise OSError(28, "short write to " + self.path(slot))
        finally:
            f.close()

    def erase(self):
        """Remove both slot files (tests use it to clean up)."""
        for slot in (0, 1):
            try:
                os.remove(self.path(slot))
            except OSError:
                pass
