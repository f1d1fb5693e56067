"""Payment behaviour: when a consumer recharges, and how much.

A consumer reacts to what the meter shows (and the SMS the utility sends):

- ``regular``: recharges within hours of the low-credit warning (state LOW);
- ``late``: waits until emergency credit has started, then takes up to two days;
- ``after_disconnect``: pays only once the relay has opened, then quickly
  (the reconnect-latency KPI is about these).

The payment becomes an authenticated top-up command (``firmware.core.auth``)
that the in-process head-end sends to the meter over a network with a delay.

>>> import random
>>> h = HABITS["after_disconnect"]
>>> h.trigger_state == credit.DISCONNECTED
True
>>> 1800 <= h.reaction_delay(random.Random(1)) <= 6 * 3600
True
"""
from firmware.core import credit

EXPIRY_S = 7 * 86400  # a top-up command stays valid for a week (retries through outages)


class Habit:
    """The credit state that makes the consumer pay, and how long they take (seconds)."""

    def __init__(self, name, trigger_state, delay_lo_s, delay_hi_s):
        self.name = name
        self.trigger_state = trigger_state
        self.delay_lo_s = delay_lo_s
        self.delay_hi_s = delay_hi_s

    def reaction_delay(self, rnd):
        return rnd.randint(self.delay_lo_s, self.delay_hi_s)


HABITS = {
    "regular": Habit("regular", credit.LOW, 600, 12 * 3600),
    "late": Habit("late", credit.EMERGENCY, 3600, 48 * 3600),
    "after_disconnect": Habit("after_disconnect", credit.DISCONNECTED, 1800, 6 * 3600),
}


def choose_habit(rnd, shares):
    """A habit name drawn with the scenario's percentage shares (fixed name order)."""
    x = rnd.randrange(100)
    acc = 0
    for name in ("regular", "late", "after_disconnect"):
        acc += shares.get(name, 0)
        if x < acc:
            return name
    return "regular"


def topup_amount(rnd, amounts, needed_paise):
    """A recharge amount from the scenario's list, at least what reconnection needs.

    ``needed_paise`` is what the consumer owes on the meter's display
    (emergency credit used and debt); someone who was cut off pays enough to
    get power back, rounded up to a whole Rs 100.
    """
    amount = rnd.choice(amounts)
    if amount <= needed_paise:
        amount = (needed_paise // 10000 + 1) * 10000 + rnd.choice(amounts)
    return amount


def topup_id(meter_id, n):
    """The head-end's payment reference; part of the signed command."""
    return "UPI-%s-%d" % (meter_id, n)
