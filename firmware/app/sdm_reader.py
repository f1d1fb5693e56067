"""The Modbus RTU master for an Eastron meter (SDM120/SDM630) on a board UART.

It owns the timing the sans-IO codec leaves out: write a frame, poll the
UART without blocking, retry or give up on a timeout, and never hold the
event loop.  It returns plain integer values in the core's units and keeps
counters the heartbeat and the CLI show.

>>> sdm = SdmReader(board.rs485, slave=1, ms=clock_ms)
>>> values = await sdm.read()      # {'voltage_dv': 2300, 'import_wh': 12345, ...} or None

A meter reads one kind of external meter: this module (and the Modbus stack it
imports when a reader is built) or ``dlms_reader``, never both, so the other
one's code and names never reach the heap.
"""
import asyncio

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

_POLL_MS = const(5)
_READ_CHUNK = const(256)
_BITS = const(10)  # 8N1, the SDM120's default (11 for 8E1/8N2)
_MAX_READ = const(80)  # sdm.SDM_MAX_READ_REGISTERS: Eastron's limit per request


class SdmReader:
    """Reads an Eastron meter's register map (``sdm.SDM120`` by default) in planned blocks.

    ``read()`` -> dict of integer values (``None`` for a NaN register), or
    None when a block failed (``error`` says why).  ``entries`` is a register
    map in ``sdm``'s format.
    """

    def __init__(self, uart, slave, ms, entries=None, retries=2):
        from firmware.protocol import modbus, sdm  # noqa: F401  # loaded here, used in read()

        self.uart = uart
        self.slave = slave
        self.ms = ms
        self.retries = retries
        self.plan = sdm.plan_reads(entries or sdm.SDM120, _MAX_READ)
        self.reads = 0
        self.failures = 0
        self.error = ""

    async def read(self):
        from firmware.protocol import modbus, sdm

        uart = self.uart
        values = {}
        for address, count, entries in self.plan:
            # one Modbus transaction: write the request, poll the UART without blocking,
            # resend or give up on a timeout (``modbus.Transaction``)
            tx = modbus.Transaction(modbus.read_input_registers(self.slave, address, count),
                                    uart.baud, self.retries, _BITS)
            while uart.read(_READ_CHUNK):  # a late reply's bytes must not pose as this one
                pass
            uart.write(tx.start(self.ms()))
            while not tx.done:
                data = uart.read(_READ_CHUNK)
                if data:
                    tx.feed(data)
                frame = tx.poll(self.ms())
                if frame:
                    while uart.read(_READ_CHUNK):
                        pass
                    uart.write(frame)
                if not tx.done:
                    await asyncio.sleep(_POLL_MS / 1000)
            resp = tx.response
            if resp is None or not resp.ok:
                self.failures += 1
                self.error = tx.error if resp is None else "exception %s" % resp.exception_name
                return None
            block = sdm.decode_registers(entries, address, resp)  # indexes like its registers
            for name in block:
                values[name] = block[name]
        self.reads += 1
        self.error = ""
        return values
