"""The board's storage and links, gathered once at boot for the shell.

Everything comes from the board interface (``boards.hal.Board``):
``journal_slots("config")`` and ``journal_slots("outbox")``,
``outbox_segments()``, ``cli_uart()`` and ``dlms_uart()``.  The one policy
decided here: a board without usable outbox flash (none in its board file,
or an ESP32 whose partition table lacks the ``outbox`` partition) keeps the
outbox in RAM so the meter still meters, credits and reports while online,
and says so at boot (``persistent`` False: readings do not survive a reset).

>>> parts = board_parts(board)
>>> parts.config_slots, parts.outbox_segments, parts.outbox_slots, parts.cli, parts.dlms
"""


class BoardParts:
    """What ``board_parts`` found; ``cli`` / ``dlms`` are ``boards.hal.Uart``-like or None."""

    def __init__(self, config_slots, outbox_segments, outbox_slots, cli=None, dlms=None,
                 persistent=True):
        self.config_slots = config_slots
        self.outbox_segments = outbox_segments
        self.outbox_slots = outbox_slots
        self.cli = cli
        self.dlms = dlms
        self.persistent = persistent


def board_parts(board):
    segments = None
    try:
        segments = board.outbox_segments()
    except OSError as e:
        print("urja: outbox flash unusable (%s): outbox in RAM, readings lost on reset" % (e,))
    if segments is None:
        if board.config.get("outbox") is None:
            print("urja: board has no outbox flash: outbox in RAM, readings lost on reset")
        # imported only here: a board with outbox flash never loads the RAM stand-ins
        from firmware.core.ramflash import RamSegments, RamSlots
        segments, cursor, persistent = RamSegments(4, 4096), RamSlots(), False
    else:
        cursor, persistent = board.journal_slots("outbox"), True
    return BoardParts(board.journal_slots("config"), segments, cursor, board.cli_uart(),
                      board.dlms_uart(), persistent)


def board_ota(board, ota_dir):
    """The board's A/B firmware slots for the ``ota`` downlink, or None where not wired yet.

    The unix board: ``boards.unix.ota_dirs.OtaDirs`` on ``ota_dir`` (the folder
    the boot selector ran this image from).  The ESP32: the partition table's
    OTA app partitions, ``boards.esp32.ota_partition.OtaPartitions`` with the
    update journaled in NVS (``ota_dir`` only says the image takes updates);
    None, said on the console, without OTA partitions.  Imported only then: a
    meter not booted for A/B does not pay for it in heap.
    """
    if board.config.get("platform") == "esp32":
        from boards.esp32.ota_partition import board_ota_slots
        return board_ota_slots(board)
    if board.config.get("platform") != "unix":
        print("urja: ota: no A/B slots wired for board %s" % board.name)
        return None
    from boards.unix.ota_dirs import OtaDirs
    return OtaDirs(ota_dir)
