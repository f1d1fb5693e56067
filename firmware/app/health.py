"""Task liveness for the watchdog, and the shell's accelerated clock (pure: times come in).

``Liveness``: every task calls ``beat(name, now_ms)`` once per loop; the
poll task feeds the hardware watchdog only while ``stale(now_ms)`` is empty.
A task that hangs (a blocked read, a loop that stopped) stops beating, the
feeding stops, and the board resets; the journal restores the meter.

>>> live = Liveness()
>>> live.register("metering", max_silence_ms=5000, now_ms=0)
>>> live.beat("metering", 1000); live.stale(5999)
[]
>>> live.stale(6001)
['metering']
"""


class Liveness:
    """Last beat time and allowed silence per task, in monotonic ms."""

    def __init__(self):
        # three lists in registration order, not dicts by name: a handful of tasks, and
        # lists take half the heap
        self.names = []
        self.last = []
        self.allowed = []

    def register(self, name, max_silence_ms, now_ms):
        if name not in self.names:
            self.names.append(name)
            self.last.append(now_ms)
            self.allowed.append(max_silence_ms)
        i = self.names.index(name)
        self.last[i] = now_ms
        self.allowed[i] = max_silence_ms

    def beat(self, name, now_ms):
        if name in self.names:  # a task not registered (run on its own in a test) is not watched
            self.last[self.names.index(name)] = now_ms

    def stale(self, now_ms):
        """Names of the tasks silent for longer than they are allowed."""
        last, allowed = self.last, self.allowed
        return [n for i, n in enumerate(self.names) if now_ms - last[i] > allowed[i]]


class AcceleratedClock:
    """Meter time = the board clock + (factor - 1) x the monotonic time since start.

    ``factor`` 1 is real time.  With 300, a 900 s interval passes in 3 s of
    wall time, so tests and benches run a day in minutes while the shell's
    code paths stay exactly those of a real meter.  A board clock jump (time
    sync, the unix control socket's ``clock T``) moves meter time with it.

    >>> c = AcceleratedClock(board_now=lambda: 1000, ticks_ms=lambda: 2000, factor=10)
    >>> c.now()
    1000
    """

    def __init__(self, board_now, ticks_ms, factor=1):
        if not isinstance(factor, int) or factor < 1:
            raise ValueError("time factor must be a whole number >= 1, got %r" % (factor,))
        self.board_now = board_now
        self.ticks_ms = ticks_ms
        self.factor = factor
        self.start_ms = ticks_ms()

    def elapsed_ms(self):
        return self.ticks_ms() - self.start_ms

    def now(self):
        return self.board_now() + (self.factor - 1) * self.elapsed_ms() // 1000

    def wall_s(self, meter_s):
        """Wall seconds (float, for asyncio.sleep) that ``meter_s`` meter seconds take."""
        return meter_s / self.factor
