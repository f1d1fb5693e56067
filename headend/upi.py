"""UPI payment links (``upi://pay?...``) and their QR codes, per NPCI's UPI Linking Specification.

NPCI "UPI Linking Specifications" (v1.6, section 1.2) define the deep link
the consumer's UPI app opens (Android intent, or a QR scanned by the app)::

    upi://pay?pa=<payee VPA>&pn=<payee name>&am=<amount in rupees>&tn=<note>
             &tr=<reference>&cu=INR

``pa`` and ``pn`` are mandatory; ``am`` is a decimal rupee string (``200.00``);
``tr`` is the payee's reference for reconciliation; ``cu`` is always INR.
Values are percent-encoded (space as ``%20``, as in the spec's sample link);
``@`` stays literal in the VPA, as every published sample writes it.  The
field order is fixed so the same request always gives the same bytes (and
the same QR).

The QR is a plain QR code (ISO/IEC 18004) holding the link text, made with
``segno`` (pure Python, writes PNG itself).

>>> payment_link("pmc.water@okbank", "PMC Water", 20000, "Recharge UJ-1", "UJ1A2B3C")
'upi://pay?pa=pmc.water@okbank&pn=PMC%20Water&am=200.00&tn=Recharge%20UJ-1&tr=UJ1A2B3C&cu=INR'
"""
import io
import re
from urllib.parse import quote

import segno

VPA_RE = re.compile(r"^[A-Za-z0-9._-]{2,256}@[A-Za-z0-9.-]{2,64}$")
REF_RE = re.compile(r"^[A-Za-z0-9]{1,35}$")   # alphanumeric: survives every PSP app unescaped
MAX_AMOUNT_PAISE = 10 ** 7                    # Rs 1 lakh, the ordinary per-transaction UPI limit
MAX_NOTE = 50                                 # apps truncate longer notes


class UpiError(ValueError):
    """A link that a UPI app would refuse: bad VPA, amount, reference or note."""


def rupees_text(paise):
    """Integer paise as the link's decimal rupee amount (``20050 -> '200.50'``), no floats."""
    return "%d.%02d" % divmod(paise, 100)


def payment_link(vpa, payee_name, amount_paise, note, ref):
    """The ``upi://pay`` link asking for ``amount_paise`` to ``vpa``, referenced ``ref``.

    >>> payment_link("a.b@upi", "Urja", 100, "x", "R1")
    'upi://pay?pa=a.b@upi&pn=Urja&am=1.00&tn=x&tr=R1&cu=INR'
    """
    if not isinstance(vpa, str) or not VPA_RE.match(vpa):
        raise UpiError("pa: %r is not a UPI address (name@handle)" % (vpa,))
    if not payee_name or len(payee_name) > 99:
        raise UpiError("pn: payee name is mandatory (1..99 characters)")
    if not isinstance(amount_paise, int) or isinstance(amount_paise, bool) \
            or not 100 <= amount_paise <= MAX_AMOUNT_PAISE:
        raise UpiError("am: amount must be integer paise from 100 to %d" % MAX_AMOUNT_PAISE)
    if not isinstance(ref, str) or not REF_RE.match(ref):
        raise UpiError("tr: reference must be 1..35 letters and digits")
    if len(note) > MAX_NOTE:
        raise UpiError("tn: note longer than %d characters" % MAX_NOTE)
    fields = (("pa", vpa), ("pn", payee_name), ("am", rupees_text(amount_paise)),
              ("tn", note), ("tr", ref), ("cu", "INR"))
    return "upi://pay?" + "&".join("%s=%s" % (k, quote(v, safe="@")) for k, v in fields)


def qr_png(text, scale=6):
    """A PNG (bytes) of a QR code holding ``text``; error correction M, 4-module quiet zone.

    >>> qr_png("upi://pay?pa=a@b&pn=X")[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    out = io.BytesIO()
    segno.make(text, error="m", micro=False).save(out, kind="png", scale=scale, border=4)
    return out.getvalue()
