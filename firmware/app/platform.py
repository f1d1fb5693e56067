"""Per-platform storage and extra links the board interface does not (yet) name.

``boards.hal.Board`` gives the journal's slots and one RS485 UART.  The shell
also needs slots for its configuration, segments for the outbox, a UART for
the CLI and, optionally, a second meter link (DLMS).  Until the HAL grows
those (see the issue-4 report), this module is the one place that picks
them per platform, importing the board package lazily so the ESP32 build
never loads unix code and vice versa.

>>> parts = board_parts(board)
>>> parts.config_slots, parts.outbox_segments, parts.outbox_slots, parts.cli, parts.dlms
"""
import os

from firmware.core.outbox import RamSegments, RamSlots


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


def _env(name):
    getenv = getattr(os, "getenv", None)
    return getenv(name) if getenv is not None else None


def board_parts(board):
    if board.platform == "unix":
        from boards.unix.flash import FileSlots
        from boards.unix.hal import PtyUart
        from boards.unix.outbox_files import file_outbox_storage

        state = board.state_dir  # type: ignore[attr-defined]  # the unix board has one
        segments, cursor = file_outbox_storage(state + "/outbox")
        cli_path = _env("URJA_CLI_PTY")
        dlms_path = _env("URJA_DLMS_PTY")
        return BoardParts(FileSlots(state + "/config"), segments, cursor,
                          PtyUart(cli_path, 115200) if cli_path else None,
                          PtyUart(dlms_path, 9600) if dlms_path else None)
    from boards.esp32.nvs_slots import NvsSlots

    # No flash-segment driver for the outbox on the ESP32 yet: RAM keeps the
    # shell running, but readings do not survive a reset there (reported).
    return BoardParts(NvsSlots("urjacfg"), RamSegments(4, 4096), RamSlots(), persistent=False)
