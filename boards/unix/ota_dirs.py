"""A/B firmware slots for the unix board: two image folders and a boot selector.

Layout under ``state_dir``::

    a/  b/          image folders (what ``python -m tools.build DEST`` writes, plus main.py)
    download.img    the image being downloaded: a packed folder (``pack_image``)
    boot/           journal slots holding the boot choice and the update state

Boot state and update state sit in *one* journal record, so "switch" (arm the
new slot + state PENDING_CONFIRM) and "roll back" are each a single atomic
commit.  The selector plays the ESP-IDF bootloader's part: it picks the slot,
spends a trial boot or rolls back, then runs that slot's ``main``::

    micropython boards/unix/ota_dirs.py STATE_DIR [args for main ...]

The image's ``main`` calls ``OtaDirs(state_dir).confirm()`` once its
self-test passed (e.g. it reached the broker); a new image that does not
confirm is left on the next boot.
"""
import sys

if __name__ == "__main__":  # run as the boot selector: make the boot copy of the code importable
    _parts = sys.argv[0].replace("\\", "/").split("/")
    _BOOT_ROOT = "/".join(_parts[:-3]) or "."
    sys.path.append(_BOOT_ROOT)

import json
import os
import struct

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

from boards.unix.flash import FileSlots
from firmware.core import ota
from firmware.core.journal import Journal

SLOTS = ("a", "b")
DEFAULT_CAPACITY = const(2097152)  # 2 MiB, the size of an ESP32 OTA app partition in a 4 MiB layout
IMAGE_MAGIC = b"UIMG\x01"
_COPY_PIECE = const(1024)
_S_IFMT = const(0o170000)
_S_IFDIR = const(0o040000)


class ImageError(ValueError):
    """A packed image that does not unpack (truncated, bad magic, unsafe path)."""


def _is_dir(path):
    try:
        return os.stat(path)[0] & _S_IFMT == _S_IFDIR
    except OSError:
        return False


def _files_under(root, prefix=""):
    """Relative paths of every file under ``root``, sorted (the pack order must not depend on the OS)."""
    names = os.listdir(root + "/" + prefix if prefix else root)
    names.sort()
    out = []
    for name in names:
        rel = prefix + "/" + name if prefix else name
        if _is_dir(root + "/" + rel):
            out.extend(_files_under(root, rel))
        else:
            out.append(rel)
    return out


def pack_image(src_dir):
    """The bytes of folder ``src_dir`` as one image: magic, then per file
    ``u16 path length | path | u32 size | data``, then ``u16 0``.

    >>> blob = pack_image("out/image")      # on the host, before hashing and sending
    """
    parts = [IMAGE_MAGIC]
    for rel in _files_under(src_dir.rstrip("/")):
        with open(src_dir.rstrip("/") + "/" + rel, "rb") as f:
            data = f.read()
        name = rel.encode()
        parts.append(struct.pack(">H", len(name)) + name + struct.pack(">I", len(data)))
        parts.append(data)
    parts.append(struct.pack(">H", 0))
    return b"".join(parts)


def _safe_path(name):
    """The image-relative path, or ImageError for anything that could escape the slot folder."""
    try:
        rel = name.decode()
    except UnicodeError:
        raise ImageError("image path is not UTF-8")
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            raise ImageError("unsafe path in image: %r" % rel)
    return rel


def remove_tree(path):
    """Delete ``path`` and everything under it; a missing path is fine."""
    if not _is_dir(path):
        try:
            os.remove(path)
        except OSError:
            pass
        return
    for name in os.listdir(path):
        remove_tree(path + "/" + name)
    os.rmdir(path)


def _makedirs(path):
    built = ""
    for part in path.split("/"):
        built = built + "/" + part if built or path.startswith("/") else part
        if part and not _is_dir(built):
            os.mkdir(built)


def unpack_image(image, dest_dir):
    """Write the packed image read from ``image`` (an image slot) into ``dest_dir``, emptied first."""
    remove_tree(dest_dir)
    os.mkdir(dest_dir)
    off = len(IMAGE_MAGIC)
    if image.read(0, off) != IMAGE_MAGIC:
        raise ImageError("not a packed image (bad magic)")
    while True:
        head = image.read(off, 2)
        if len(head) != 2:
            raise ImageError("image truncated at byte %d" % off)
        n = struct.unpack(">H", head)[0]
        off += 2
        if n == 0:
            return
        name = image.read(off, n)
        size_b = image.read(off + n, 4)
        if len(name) != n or len(size_b) != 4:
            raise ImageError("image truncated at byte %d" % off)
        rel = _safe_path(name)
        size = struct.unpack(">I", size_b)[0]
        off += n + 4
        target = dest_dir + "/" + rel
        if "/" in rel:
            _makedirs(target[:target.rfind("/")])
        with open(target, "wb") as f:
            left = size
            while left:
                piece = image.read(off, min(left, _COPY_PIECE))
                if not piece:
                    raise ImageError("image truncated in %s" % rel)
                f.write(piece)
                off += len(piece)
                left -= len(piece)


class FileImage:
    """An image slot (``write(offset, data)`` / ``read(offset, n)``) backed by one file."""

    def __init__(self, path):
        self.path = path

    def clear(self):
        open(self.path, "wb").close()

    def write(self, offset, data):
        try:
            f = open(self.path, "r+b")
        except OSError:  # first chunk: no file yet
            f = open(self.path, "wb")
        try:
            f.seek(offset)
            f.write(data)
        finally:
            f.close()

    def read(self, offset, n):
        try:
            f = open(self.path, "rb")
        except OSError:
            return b""
        try:
            f.seek(offset)
            return f.read(n)
        finally:
            f.close()


class OtaDirs:
    """The unix board's OTA: download into the inactive folder, switch, confirm.

    >>> o = OtaDirs("/tmp/meter-1/ota")
    >>> o.begin(manifest)                      # ota.R_OK; o.update.next_index says where to resume
    >>> o.write_chunk(0, first_chunk)          # ... each chunk in order; the last one verifies
    >>> o.install()                            # READY -> PENDING_CONFIRM; now reboot
    >>> OtaDirs("/tmp/meter-1/ota").confirm()  # in the new image, after its self-test
    """

    def __init__(self, state_dir, capacity=DEFAULT_CAPACITY, trial_boots=ota.DEFAULT_TRIAL_BOOTS):
        self.dir = state_dir.rstrip("/") or "/"
        self.capacity = capacity
        self.trial_boots = trial_boots
        if not _is_dir(self.dir):
            _makedirs(self.dir)
        self.image = FileImage(self.dir + "/download.img")
        self.journal = Journal(FileSlots(self.dir + "/boot"))
        self.boot = ota.BootState(SLOTS)
        self.update = ota.Update()
        payload = self.journal.load()
        if payload is not None:
            data = json.loads(payload)
            self.boot = ota.BootState.from_state(data["boot"])
            self.update = ota.Update.from_state(data["update"])

    def slot_path(self, slot):
        return self.dir + "/" + slot

    def save(self, now=0):
        """Commit boot and update state as one journal record (``now`` feeds the wear counter)."""
        data = {"boot": self.boot.to_state(), "update": self.update.to_state()}
        self.journal.commit(json.dumps(data).encode(), now)

    def begin(self, manifest, now=0):
        """Start or resume a download; an ``ota.R_*`` code (OtaStateError while one is pending)."""
        reason = self.update.begin(manifest, self.capacity)
        if reason == ota.R_OK and self.update.next_index == 0:
            self.image.clear()  # a fresh download: no stale tail from an older, longer image
        if reason == ota.R_OK:
            self.save(now)
        return reason

    def write_chunk(self, index, data, now=0):
        """Write chunk ``index``; after the last one, verify the SHA-256.  An ``ota.R_*`` code."""
        reason = self.update.add_chunk(index, data, self.image)
        if self.update.state == ota.VERIFYING:
            reason = self.update.verify(self.image)
        if reason in (ota.R_OK, ota.R_BAD_HASH, ota.R_IO_ERROR):
            self.save(now)
        return reason

    def install(self, now=0):
        """Unpack the verified image into the inactive folder and arm it for a trial boot."""
        target = self.boot.inactive
        if self.update.state != ota.READY:
            raise ota.OtaStateError("OTA: install needs READY, not %s" % self.update.state_name)
        try:
            unpack_image(self.image, self.slot_path(target))
        except (ImageError, OSError):
            self.update.fail(ota.R_BAD_IMAGE)
            self.save(now)
            return ota.R_BAD_IMAGE
        self.boot.arm(target, self.trial_boots)
        self.update.switched(target)
        self.save(now)  # one commit: a cut before it leaves the old slot active
        return ota.R_OK

    def confirm(self, now=0):
        """Call after the self-test passed.  True when this boot made the new slot permanent."""
        if not self.boot.confirm():
            return False
        if self.update.state == ota.PENDING_CONFIRM:
            self.update.confirmed()
        self.save(now)
        return True

    def select(self, now=0):
        """The boot selector's decision: the folder to run now (spends a trial boot or rolls back).

        An update still VERIFYING or READY at boot was cut off before ``install``
        committed: it is aborted (FAILED, ABORTED), so the next ``ota`` starts
        afresh instead of being refused for ever (the ESP32 does the same).
        """
        slot = self.boot.select()
        if self.boot.last_boot == ota.BOOT_ROLLED_BACK and self.update.state == ota.PENDING_CONFIRM:
            self.update.rolled_back()
        else:
            aborted = self.update.abort_uninstalled()
            if aborted is not None:
                print("urja: ota: %s was verified but not installed before a reset: aborted"
                      % aborted)
        self.save(now)  # before the image runs: a crashing image must not get its trial back
        return self.slot_path(slot)


# An image's entry module (``main.py`` in the slot folder): the meter app, told its version
# and the A/B state folder (the selector's argument) so it can take ``ota`` commands and
# confirm itself once healthy.
ENTRY = """import sys
from firmware.app.main import main
main(%r, sys.argv[1])
"""


def write_entry(image_dir, version):
    """Write the meter app's ``main.py`` for firmware ``version`` into ``image_dir``."""
    with open(image_dir.rstrip("/") + "/main.py", "w") as f:
        f.write(ENTRY % (version,))


def _forget_firmware_modules():
    # The selector imported the boot copy of firmware/boards; the image must use its own.
    for name in list(sys.modules):
        if name in ("firmware", "boards", "main") or name.startswith("firmware.") \
                or name.startswith("boards."):
            del sys.modules[name]


def boot(state_dir, drop_paths=()):
    """Select the slot, put it first on ``sys.path`` and run its ``main`` module."""
    path = OtaDirs(state_dir).select()
    for p in drop_paths:
        while p in sys.path:
            sys.path.remove(p)
    _forget_firmware_modules()
    sys.path.insert(0, path)
    __import__("main")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: micropython boards/unix/ota_dirs.py STATE_DIR [args for main ...]")
        sys.exit(2)
    _script_dir = "/".join(_parts[:-1]) or "."
    boot(sys.argv[1], (_BOOT_ROOT, _script_dir))
