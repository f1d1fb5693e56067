"""Outbox segments as files, written the way flash is: appended page by page, never rewritten.

``seg<N>.bin`` in a directory is one erase sector: ``erase`` removes the
file, ``write`` appends unbuffered in page-sized pieces, so a process killed
mid-write leaves a torn tail exactly as a power cut leaves half-programmed
flash.  Writing anywhere but the current end raises: that is the rule NOR
flash imposes and the outbox must keep.  Uses only ``open`` and ``os``
calls the MicroPython unix port has.  The outbox's cursor journal uses
``FileSlots`` in the same directory (``slot0.bin`` / ``slot1.bin``).
"""
import os

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

from boards.unix.flash import FileSlots

_PAGE_SIZE = const(256)
_DEFAULT_SEGMENT_COUNT = const(8)
_DEFAULT_SEGMENT_SIZE = const(4096)


class FileSegments:
    """``segment_count`` segment files of at most ``segment_size`` bytes in ``directory``.

    >>> flash = FileSegments("/tmp/urja-meter-1/outbox", 8, 4096)
    >>> flash.write(0, 0, b"record"); flash.read(0, 0, 100)
    b'record'
    """

    def __init__(self, directory, segment_count=_DEFAULT_SEGMENT_COUNT,
                 segment_size=_DEFAULT_SEGMENT_SIZE, page_size=_PAGE_SIZE):
        self.directory = directory.rstrip("/") or "/"
        self.segment_count = segment_count
        self.segment_size = segment_size
        self.page_size = page_size
        try:
            os.mkdir(self.directory)
        except OSError:
            pass  # already there; a real failure shows up on the first write

    def path(self, seg):
        if not 0 <= seg < self.segment_count:
            raise ValueError("no segment %r: segments are 0..%d" % (seg, self.segment_count - 1))
        return "%s/seg%d.bin" % (self.directory, seg)

    def read(self, seg, offset, n):
        try:
            f = open(self.path(seg), "rb")
        except OSError:
            return b""
        try:
            f.seek(offset)
            return f.read(n)
        finally:
            f.close()

    def write(self, seg, offset, data):
        if offset + len(data) > self.segment_size:
            raise OSError(28, "write past the end of " + self.path(seg))
        try:
            have = os.stat(self.path(seg))[6]  # st_size: the bytes programmed so far
        except OSError:  # ENOENT: erased
            have = 0
        if offset != have:
            raise OSError(5, "%s: write at %d but %d bytes are programmed (flash cannot rewrite)"
                          % (self.path(seg), offset, have))
        view = memoryview(data)
        f = open(self.path(seg), "ab", buffering=0)  # one os write() per flash page
        try:
            start = 0
            while start < len(view):
                stop = min(len(view), start + self.page_size - (offset + start) % self.page_size)
                if f.write(view[start:stop]) != stop - start:
                    raise OSError(28, "short write to " + self.path(seg))
                start = stop
        finally:
            f.close()

    def erase(self, seg):
        try:
            os.remove(self.path(seg))
        except OSError:
            pass  # already erased

    def erase_all(self):
        """Remove every segment file (tests use it to clean up)."""
        for seg in range(self.segment_count):
            self.erase(seg)


def file_outbox_storage(directory, segment_count=_DEFAULT_SEGMENT_COUNT,
                        segment_size=_DEFAULT_SEGMENT_SIZE):
    """(segments, cursor slots) for ``Outbox`` in one directory.

    >>> box = Outbox(*file_outbox_storage("/tmp/urja-meter-1/outbox"))
    """
    return FileSegments(directory, segment_count, segment_size), FileSlots(directory)
