"""Notifications: alert -> message text in the consumer's language -> a channel.

Channels (all ``Notifier``: ``send(message) -> Delivery``):

* ``LogNotifier``: the default; one JSON line per message to a file (or the log).
* ``WebhookNotifier``: HTTP POST of the message as JSON (operators' tools),
  retried with backoff on connection errors, 429 and 5xx; a 4xx is final.
* ``SmsGatewayNotifier``: generic Indian SMS gateway shape::

      POST <url>   Authorization: Bearer <api_key>   Content-Type: application/json
      {"sender": "URJAPP", "to": "+919800000001", "text": "...", "unicode": true,
       "ref": "alert-42"}
      2xx = accepted; the gateway's DLT template id goes in ``extra`` if it needs one

* ``WhatsAppNotifier``: the WhatsApp Cloud API text message::

      POST https://graph.facebook.com/v20.0/<phone_number_id>/messages
      Authorization: Bearer <token>
      {"messaging_product": "whatsapp", "to": "919800000001", "type": "text",
       "text": {"body": "..."}}

  (shape as used by public Cloud API clients, e.g. the ws-cloud-api npm
  package and PFython's "WhatsApp Cloud API barebones sender" gist; a
  business-initiated conversation needs an approved template in production.)

Which notifiers the service uses comes from the environment (secrets are not
settings): ``consumer_notifier_from_env`` picks SMS (``URJA_SMS_URL`` +
``URJA_SMS_API_KEY``), else WhatsApp (``URJA_WHATSAPP_URL`` +
``URJA_WHATSAPP_TOKEN``), else a ``LogNotifier`` writing to ``URJA_NOTIFY_LOG``
(or the log); ``operator_notifier_from_env`` a webhook (``URJA_OPERATOR_WEBHOOK``)
or the same log.  A number that sent STOP to the channel gets no alert message.

Templates: ``headend/templates/<language>/<name>.txt`` (``string.Template``,
``$field``), Hindi (``hi``) and English (``en``); an unknown language falls
back to English.  Money is shown in rupees from integer paise, no floats.

>>> format_rupees(-1205)
'-12.05'
>>> render("low_credit", "en", meter_id="UJ-1", balance="41.50")[:36]
'Urja: meter UJ-1 balance is Rs 41.50'
"""
import json
import logging
import os
import string
import time

import re

import httpx
from sqlalchemy import select

from headend import alerts
from headend import channel
from headend import models as M

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
LANGUAGES = ("hi", "en")
FALLBACK = "en"
RETRY_STATUS = (429, 500, 502, 503, 504)
# kinds told to the consumer; the forecast's warning goes only to them (operators
# see it on the dashboard), the others fall back to the operators without a phone
CONSUMER_KINDS = alerts.CONSUMER_KINDS + (alerts.LOW_CREDIT_FORECAST,)
CONSUMER_ONLY_KINDS = (alerts.LOW_CREDIT_FORECAST,)
_HOURS_RE = re.compile(r"^(\d+) h$")

log = logging.getLogger("urja.notify")


class NotifyError(ValueError):
    """A missing template or field, or a bad notifier setting."""


def format_rupees(paise):
    """Integer paise as rupees with two decimals (``12345 -> '123.45'``)."""
    sign = "-" if paise < 0 else ""
    r, p = divmod(abs(paise), 100)
    return "%s%d.%02d" % (sign, r, p)


def render(name, language, **fields):
    """Text of template ``name`` in ``language`` (fallback English) with ``fields`` filled in."""
    lang = language if language in LANGUAGES else FALLBACK
    path = os.path.join(TEMPLATES, lang, name + ".txt")
    if not os.path.exists(path):
        raise NotifyError("no template %r for language %r" % (name, lang))
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    try:
        return string.Template(text).substitute(fields)
    except KeyError as err:
        raise NotifyError("template %s/%s needs field %s" % (lang, name, err))


class Message:
    """One notification: recipient (phone or None for operators), language, text, reference."""
    __slots__ = ("to", "language", "text", "ref", "kind", "meter_id")

    def __init__(self, to, language, text, ref, kind, meter_id=None):
        self.to = to
        self.language = language
        self.text = text
        self.ref = ref
        self.kind = kind
        self.meter_id = meter_id

    def to_dict(self):
        return {"to": self.to, "language": self.language, "text": self.text, "ref": self.ref,
                "kind": self.kind, "meter_id": self.meter_id}


class Delivery:
    """Result of one send: ok, attempts made, last HTTP status (None for non-HTTP), error text."""
    __slots__ = ("ok", "attempts", "status", "error")

    def __init__(self, ok, attempts=1, status=None, error=None):
        self.ok = ok
        self.attempts = attempts
        self.status = status
        self.error = error

    def __repr__(self):
        return "Delivery(ok=%s, attempts=%d, status=%s, error=%r)" % (
            self.ok, self.attempts, self.status, self.error)


class Notifier:
    """Interface: ``send(message) -> Delivery``; never raises for a delivery failure."""

    def send(self, message):
        raise NotImplementedError


class LogNotifier(Notifier):
    """Append each message as one JSON line to ``path`` (or the ``urja.notify`` log if None)."""

    def __init__(self, path=None):
        self.path = path

    def send(self, message):
        line = json.dumps(message.to_dict(), ensure_ascii=False)
        if self.path is None:
            log.info("%s", line)
        else:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        return Delivery(True)


class HttpNotifier(Notifier):
    """POST a JSON body with retries: ``retries`` extra attempts, backoff doubling from ``backoff_s``."""

    def __init__(self, url, headers=None, retries=3, backoff_s=0.5, timeout_s=5.0, client=None,
                 sleep=time.sleep):
        if not isinstance(retries, int) or retries < 0:
            raise NotifyError("retries: must be an integer >= 0")
        self.url = url
        self.headers = dict(headers or {})
        self.retries = retries
        self.backoff_s = backoff_s
        self.client = client or httpx.Client(timeout=timeout_s)
        self.sleep = sleep

    def body(self, message):
        return message.to_dict()

    def send(self, message):
        body = self.body(message)
        delay = self.backoff_s
        status = None
        error = None
        for attempt in range(1, self.retries + 2):
            try:
                resp = self.client.post(self.url, json=body, headers=self.headers)
                status = resp.status_code
                if 200 <= status < 300:
                    return Delivery(True, attempt, status)
                error = "HTTP %d" % status
                if status not in RETRY_STATUS:
                    return Delivery(False, attempt, status, error)
            except httpx.HTTPError as err:
                error = "%s: %s" % (type(err).__name__, err)
            if attempt <= self.retries:
                self.sleep(delay)
                delay *= 2
        return Delivery(False, self.retries + 1, status, error)


class WebhookNotifier(HttpNotifier):
    """POST the message (``Message.to_dict``) as JSON to an operator webhook."""


class SmsGatewayNotifier(HttpNotifier):
    """SMS through an HTTP gateway (shape in the module docstring)."""

    def __init__(self, url, api_key, sender="URJAPP", extra=None, **kw):
        headers = {"Authorization": "Bearer " + api_key}
        super().__init__(url, headers=headers, **kw)
        self.sender = sender
        self.extra = dict(extra or {})

    def body(self, message):
        if not message.to:
            raise NotifyError("SMS needs a phone number")
        b = {"sender": self.sender, "to": message.to, "text": message.text,
             "unicode": not message.text.isascii(), "ref": message.ref}
        b.update(self.extra)
        return b


class WhatsAppNotifier(HttpNotifier):
    """WhatsApp Cloud API text message (shape in the module docstring)."""

    def __init__(self, url, token, **kw):
        super().__init__(url, headers={"Authorization": "Bearer " + token}, **kw)

    def body(self, message):
        if not message.to:
            raise NotifyError("WhatsApp needs a phone number")
        return {"messaging_product": "whatsapp", "to": message.to.lstrip("+"), "type": "text",
                "text": {"body": message.text}}


def _hours_fields(detail):
    """``"60 h"`` (the forecast alert's detail) -> days and hours for the template."""
    m = _HOURS_RE.match(detail or "")
    hours = int(m.group(1)) if m else 0
    return {"hours": hours, "days": hours // 24}


def consumer_language(session, phone, consumer):
    """The language a number chose on the channel (HINDI/ENGLISH), else the consumer record's."""
    try:
        sub = session.get(channel.Subscriber, channel.normalise_phone(phone))
    except channel.ChannelError:
        sub = None
    return (sub.language if sub is not None and sub.language else None) or consumer.language


def messages_for(session, alert):
    """The messages an alert produces: the consumer's (in their language) or the operators'."""
    ref = "alert-%d" % alert.id
    target = alert.meter_id or "tenant %d (storm)" % alert.tenant_id
    if alert.kind in CONSUMER_KINDS and alert.meter_id and not alert.storm:
        meter = session.get(M.Meter, alert.meter_id)
        consumer = session.get(M.Consumer, meter.consumer_id) if meter.consumer_id else None
        if consumer is not None and consumer.phone:
            bal = session.execute(select(M.MeterBalance.balance_paise).where(
                M.MeterBalance.meter_id == alert.meter_id)).scalar()
            lang = consumer_language(session, consumer.phone, consumer)
            text = render(alert.kind, lang, meter_id=alert.meter_id,
                          balance=format_rupees(bal or 0), detail=alert.detail,
                          **_hours_fields(alert.detail))
            return [Message(consumer.phone, lang, text, ref, alert.kind, alert.meter_id)]
        if alert.kind in CONSUMER_ONLY_KINDS:
            return []
    text = render("operator", FALLBACK, severity=alert.severity, kind=alert.kind, target=target,
                  detail=alert.detail, opened_at=alert.opened_at, count=alert.count)
    return [Message(None, FALLBACK, text, ref, alert.kind, alert.meter_id)]


def notify_outcomes(session, outcomes, consumer=None, operator=None):
    """Send what ``raise_alert`` outcomes say should be sent; returns [(Message, Delivery)].

    Consumer messages go to ``consumer`` (SMS/WhatsApp), the rest to
    ``operator`` (webhook); both default to a ``LogNotifier``.  A number that
    opted out on the channel (STOP) is skipped (its Delivery says so).  An alert
    is marked ``notified`` once a channel accepted it.  The caller commits.
    """
    consumer = consumer or LogNotifier()
    operator = operator or LogNotifier()
    sent = []
    for out in outcomes:
        if not out.notify or out.alert.notified:
            continue
        session.flush()
        for msg in messages_for(session, out.alert):
            if msg.to and is_opted_out(session, msg.to):
                sent.append((msg, Delivery(False, 0, None, "opted out (sent STOP)")))
                continue
            via = consumer if msg.to else operator
            try:
                d = via.send(msg)
            except NotifyError as err:
                d = Delivery(False, 0, None, str(err))
            sent.append((msg, d))
            if d.ok:
                out.alert.notified = True
    return sent


def is_opted_out(session, phone):
    """True when ``phone`` sent STOP to the channel (a number we cannot parse: not opted out)."""
    try:
        return channel.opted_out(session, phone)
    except channel.ChannelError:
        return False


def consumer_notifier_from_env(environ=None):
    """The consumers' channel: SMS gateway, else WhatsApp, else a log (module docstring)."""
    env = os.environ if environ is None else environ
    if env.get("URJA_SMS_URL") and env.get("URJA_SMS_API_KEY"):
        return SmsGatewayNotifier(env["URJA_SMS_URL"], env["URJA_SMS_API_KEY"],
                                  sender=env.get("URJA_SMS_SENDER") or "URJAPP")
    if env.get("URJA_WHATSAPP_URL") and env.get("URJA_WHATSAPP_TOKEN"):
        return WhatsAppNotifier(env["URJA_WHATSAPP_URL"], env["URJA_WHATSAPP_TOKEN"])
    return LogNotifier(env.get("URJA_NOTIFY_LOG") or None)


def operator_notifier_from_env(environ=None):
    """The operators' channel: ``URJA_OPERATOR_WEBHOOK``, else a log."""
    env = os.environ if environ is None else environ
    if env.get("URJA_OPERATOR_WEBHOOK"):
        return WebhookNotifier(env["URJA_OPERATOR_WEBHOOK"])
    return LogNotifier(env.get("URJA_NOTIFY_LOG") or None)
