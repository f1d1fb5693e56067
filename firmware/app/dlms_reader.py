"""The DLMS/COSEM client for an external meter on a board UART (HDLC, IS 15959 profile).

It owns the timing the sans-IO codecs leave out: write a frame, poll the UART
without blocking, give up on a timeout, and never hold the event loop.  It
returns plain integer values in the core's units and keeps counters the
heartbeat and the CLI show.

>>> dlms = DlmsReader(board.dlms_uart(), ms=clock_ms)
>>> values = await dlms.read()     # {'energy_import_wh': 12345, 'voltage_mv': 230000, ...} or None

A meter reads one kind of external meter: this module (and the HDLC + DLMS
stack it imports when a reader is built) or ``sdm_reader``, never both.
"""
import asyncio

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

_POLL_MS = const(5)
_READ_CHUNK = const(256)
# what a DLMS read asks the meter for (``dlms_objects`` names)
# (one str, split per read: a tuple constant would be built on the heap at import)
_QUANTITIES = const("energy_import_wh voltage_mv current_ma active_power_w")
# dlms_client's events (private consts there too: compiled away, no names on the meter)
_EV_ASSOCIATED = const(2)
_EV_DATA = const(4)


def __getattr__(name):
    # DlmsTimeout (an Exception: the DLMS meter did not answer in time, or refused the
    # association) is made on first use and kept in the module dict: held from import
    # on, the class would cost heap a meter whose reads succeed never needs.  Raise
    # sites here call ``__getattr__("DlmsTimeout")``.
    if name == "DlmsTimeout":
        g = globals()
        if name not in g:
            g[name] = type(name, (Exception,), {})
        return g[name]
    raise AttributeError(name)


class DlmsReader:
    """One short association per read: SNRM, AARQ, GET energy and instantaneous values, DISC.

    ``read()`` -> {"energy_import_wh": .., "voltage_mv": .., ...} for the
    quantities the meter has, or None (``error`` says why).
    """

    def __init__(self, uart, ms, address=17, password=None, timeout_ms=1500):
        # ``address``: the meter's HDLC physical address (server lower address)
        from firmware.protocol import dlms_client, dlms_objects  # noqa: F401  # used in read()

        self.uart = uart
        self.ms = ms
        self.address = address
        self.password = password
        self.timeout_ms = timeout_ms
        self.reads = 0
        self.failures = 0
        self.error = ""

    async def _request(self, client, frame):
        self.uart.write(frame)
        deadline = self.ms() + self.timeout_ms
        while self.ms() < deadline:
            data = self.uart.read(_READ_CHUNK)
            if data:
                out, event = client.feed(data)  # event: (kind, value)
                if out:
                    self.uart.write(out)
                if event is not None:
                    return event
            else:
                await asyncio.sleep(_POLL_MS / 1000)
        raise __getattr__("DlmsTimeout")(
            "no answer from the DLMS meter within %d ms" % self.timeout_ms)

    async def read(self):
        from firmware.protocol import dlms_client, dlms_objects

        client = dlms_client.DlmsClient(address=self.address, password=self.password)
        # drop bytes left over from a late reply, so they cannot pose as the next one
        while self.uart.read(_READ_CHUNK):
            pass
        try:
            await self._request(client, client.connect())
            # only the kind: a local holding the AARE would keep it alive for the whole read
            kind = (await self._request(client, client.associate()))[0]
            if kind != _EV_ASSOCIATED:
                raise __getattr__("DlmsTimeout")("association rejected")
            values = {}
            for name in _QUANTITIES.split():
                obis = dlms_objects.register(name)[0]
                kind, value = await self._request(client, client.get(3, obis, 2))
                if kind != _EV_DATA:
                    continue  # the meter lacks this object
                kind, unit = await self._request(client, client.get(3, obis, 3))
                if kind == _EV_DATA:
                    values[name] = dlms_objects.register_value(value, unit, name)
            await self._request(client, client.disconnect())
        except Exception as e:  # timeouts, protocol and state errors: this read failed
            self.failures += 1
            self.error = "%s: %s" % (type(e).__name__, e)
            return None
        self.reads += 1
        self.error = ""
        return values
