"""Masters for external meters on a board UART: Modbus RTU (SDM120/SDM630) and DLMS/COSEM.

They own the timing the sans-IO codecs leave out: write a frame, poll the
UART without blocking, retry or give up on a timeout, and never hold the
event loop.  Both return plain integer values in the core's units and keep
counters the heartbeat and the CLI show.

>>> sdm = SdmReader(board.rs485, slave=1, ms=clock_ms)
>>> values = await sdm.read()      # {'voltage_dv': 2300, 'import_wh': 12345, ...} or None

A meter reads one kind of external meter, so each reader imports its own
protocol stack when it is built (Modbus + SDM maps, or HDLC + DLMS): the
other one never reaches the heap.
"""
import asyncio

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

POLL_MS = const(5)
_READ_CHUNK = const(256)


async def _pause(ms):
    await asyncio.sleep(ms / 1000)


def _drain(uart):
    """Drop bytes left over from a late reply, so they cannot pose as the next one."""
    n = 0
    while True:
        data = uart.read(_READ_CHUNK)
        if not data:
            return n
        n += len(data)


async def transact(uart, request, ms, retries=2, bits=10):
    """Run one Modbus ``request`` on ``uart``; returns the finished ``modbus.Transaction``.

    ``bits`` 10 is 8N1 (the SDM120 default), 11 for 8E1/8N2.
    """
    from firmware.protocol import modbus

    tx = modbus.Transaction(request, uart.baud, retries, bits)
    _drain(uart)
    uart.write(tx.start(ms()))
    while not tx.done:
        data = uart.read(_READ_CHUNK)
        if data:
            tx.feed(data)
        frame = tx.poll(ms())
        if frame:
            _drain(uart)
            uart.write(frame)
        if not tx.done:
            await _pause(POLL_MS)
    return tx


class SdmReader:
    """Reads an Eastron meter's register map (``sdm.SDM120`` by default) in planned blocks.

    ``read()`` -> dict of integer values (``None`` for a NaN register), or
    None when a block failed (``error`` says why).
    """

    def __init__(self, uart, slave, ms, register_map=None, retries=2):
        from firmware.protocol import modbus, sdm  # noqa: F401  # loaded here, used in read()

        self.uart = uart
        self.slave = slave
        self.ms = ms
        self.retries = retries
        self.plan = sdm.plan_reads(register_map or sdm.SDM120, sdm.SDM_MAX_READ_REGISTERS)
        self.reads = 0
        self.failures = 0
        self.error = ""

    async def read(self):
        from firmware.protocol import modbus, sdm

        values = {}
        for address, count, entries in self.plan:
            tx = await transact(self.uart, modbus.read_input_registers(self.slave, address, count),
                                self.ms, self.retries)
            resp = tx.response
            if resp is None or not resp.ok:
                self.failures += 1
                self.error = tx.error if resp is None else "exception " + resp.exception_name
                return None
            block = sdm.decode_registers(entries, address, resp)  # indexes like its registers
            for name in block:
                values[name] = block[name]
        self.reads += 1
        self.error = ""
        return values


class DlmsTimeout(Exception):
    """The DLMS meter did not answer in time."""


class DlmsReader:
    """One short association per read: SNRM, AARQ, GET energy and instantaneous values, DISC.

    ``read()`` -> {"energy_import_wh": .., "voltage_mv": .., ...} for the
    quantities the meter has, or None (``error`` says why).
    """

    QUANTITIES = ("energy_import_wh", "voltage_mv", "current_ma", "active_power_w")

    def __init__(self, uart, ms, server_physical=17, password=None, timeout_ms=1500):
        from firmware.protocol import dlms_client, dlms_objects  # noqa: F401  # used in read()

        self.uart = uart
        self.ms = ms
        self.server_physical = server_physical
        self.password = password
        self.timeout_ms = timeout_ms
        self.reads = 0
        self.failures = 0
        self.error = ""

    async def _exchange(self, client, frame):
        self.uart.write(frame)
        deadline = self.ms() + self.timeout_ms
        while self.ms() < deadline:
            data = self.uart.read(_READ_CHUNK)
            if data:
                out, event = client.feed(data)
                if out:
                    self.uart.write(out)
                if event is not None:
                    return event
            else:
                await _pause(POLL_MS)
        raise DlmsTimeout("no answer from the DLMS meter within %d ms" % self.timeout_ms)

    async def read(self):
        from firmware.protocol import dlms_client, dlms_objects

        client = dlms_client.DlmsClient(server_physical=self.server_physical, password=self.password)
        _drain(self.uart)
        try:
            await self._exchange(client, client.connect())
            ev = await self._exchange(client, client.associate())
            if ev.kind != dlms_client.EV_ASSOCIATED:
                raise DlmsTimeout("association rejected")
            values = {}
            for name in self.QUANTITIES:
                obis = dlms_objects.QUANTITIES[name][0]
                value = await self._exchange(client, client.get(3, obis, 2))
                if value.kind != dlms_client.EV_DATA:
                    continue  # the meter lacks this object
                unit = await self._exchange(client, client.get(3, obis, 3))
                if unit.kind == dlms_client.EV_DATA:
                    values[name] = dlms_objects.register_value(value.value, unit.value, name)
            await self._exchange(client, client.disconnect())
        except Exception as e:  # timeouts, protocol and state errors: this read failed
            self.failures += 1
            self.error = "%s: %s" % (type(e).__name__, e)
            return None
        self.reads += 1
        self.error = ""
        return values
