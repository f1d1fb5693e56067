"""The parts of ``firmware.protocol.dlms`` a meter reading registers never uses.

APDU tags, association results and diagnostics, Data-Access-Result codes under
their public names (``dlms`` uses them as private consts), the conformance
bits, the code -> text tables (rejections, errors: messages only) and the
selective-access builders for profile reads.  ``dlms`` hands these out through
its module ``__getattr__`` (``dlms.DAR_NAMES``, ``from firmware.protocol.dlms
import entry_access``).

>>> from firmware.protocol.dlms import CONF_GET, DEFAULT_CONFORMANCE
>>> bool(DEFAULT_CONFORMANCE & CONF_GET)
True
"""
from firmware.protocol.dlms_data import DateTime, encode_datetime

AARQ = 0x60
AARE = 0x61
RLRQ = 0x62
GET_REQUEST = 0xC0
GET_RESPONSE = 0xC4
EXCEPTION_RESPONSE = 0xD8
CONFIRMED_SERVICE_ERROR = 0x0E
INITIATE_REQUEST = 0x01
INITIATE_RESPONSE = 0x08
CONTEXT_LN = 1
CONTEXT_SN = 2
MECHANISM_NONE = 0
MECHANISM_LLS = 1
ACCEPTED = 0
REJECTED_PERMANENT = 1
REJECTED_TRANSIENT = 2
DIAG_SOURCE_USER = 1
DIAG_SOURCE_PROVIDER = 2
DIAG_NULL = 0
DIAG_NO_REASON = 1
DIAG_CONTEXT_NOT_SUPPORTED = 2
DIAG_MECHANISM_NOT_RECOGNISED = 11
DIAG_MECHANISM_REQUIRED = 12
DIAG_AUTHENTICATION_FAILURE = 13
DIAG_AUTHENTICATION_REQUIRED = 14
DAR_SUCCESS = 0
DAR_HARDWARE_FAULT = 1
DAR_TEMPORARY_FAILURE = 2
DAR_READ_WRITE_DENIED = 3
DAR_OBJECT_UNDEFINED = 4
DAR_OBJECT_CLASS_INCONSISTENT = 9
DAR_OBJECT_UNAVAILABLE = 11
DAR_TYPE_UNMATCHED = 12
DAR_SCOPE_OF_ACCESS_VIOLATED = 13
DAR_DATA_BLOCK_UNAVAILABLE = 14
DAR_LONG_GET_ABORTED = 15
DAR_NO_LONG_GET_IN_PROGRESS = 16
DAR_DATA_BLOCK_NUMBER_INVALID = 19
DAR_OTHER_REASON = 250

# Conformance block bits (Blue Book numbering: bit 0 is the MSB of 24 bits).
def _bit(n):
    return 1 << (23 - n)


CONF_GENERAL_PROTECTION = _bit(1)
CONF_GENERAL_BLOCK_TRANSFER = _bit(2)
CONF_ATTRIBUTE0_WITH_SET = _bit(8)
CONF_PRIORITY_MANAGEMENT = _bit(9)
CONF_ATTRIBUTE0_WITH_GET = _bit(10)
CONF_BLOCK_TRANSFER_WITH_GET = _bit(11)
CONF_BLOCK_TRANSFER_WITH_SET = _bit(12)
CONF_BLOCK_TRANSFER_WITH_ACTION = _bit(13)
CONF_MULTIPLE_REFERENCES = _bit(14)
CONF_DATA_NOTIFICATION = _bit(16)
CONF_ACCESS = _bit(17)
CONF_GET = _bit(19)
CONF_SET = _bit(20)
CONF_SELECTIVE_ACCESS = _bit(21)
CONF_EVENT_NOTIFICATION = _bit(22)
CONF_ACTION = _bit(23)

DIAGNOSTIC_NAMES = {
    DIAG_NULL: "null",
    DIAG_NO_REASON: "no reason given",
    DIAG_CONTEXT_NOT_SUPPORTED: "application context name not supported",
    DIAG_MECHANISM_NOT_RECOGNISED: "authentication mechanism name not recognised",
    DIAG_MECHANISM_REQUIRED: "authentication mechanism name required",
    DIAG_AUTHENTICATION_FAILURE: "authentication failure (wrong password)",
    DIAG_AUTHENTICATION_REQUIRED: "authentication required",
}

DAR_NAMES = {
    DAR_SUCCESS: "success", DAR_HARDWARE_FAULT: "hardware fault",
    DAR_TEMPORARY_FAILURE: "temporary failure", DAR_READ_WRITE_DENIED: "read-write denied",
    DAR_OBJECT_UNDEFINED: "object undefined",
    DAR_OBJECT_CLASS_INCONSISTENT: "object class inconsistent",
    DAR_OBJECT_UNAVAILABLE: "object unavailable", DAR_TYPE_UNMATCHED: "type unmatched",
    DAR_SCOPE_OF_ACCESS_VIOLATED: "scope of access violated",
    DAR_DATA_BLOCK_UNAVAILABLE: "data block unavailable",
    DAR_LONG_GET_ABORTED: "long get aborted",
    DAR_NO_LONG_GET_IN_PROGRESS: "no long get in progress",
    DAR_DATA_BLOCK_NUMBER_INVALID: "data block number invalid",
    DAR_OTHER_REASON: "other reason",
}


def entry_access(from_entry: int, to_entry: int = 0, from_column: int = 1, to_column: int = 0) -> bytes:
    """Selective access by entry (selector 2) for a profile buffer; 0 means 'to the last'."""
    return (b"\x02\x02\x04"
            + b"\x06" + from_entry.to_bytes(4, "big") + b"\x06" + to_entry.to_bytes(4, "big")
            + b"\x12" + from_column.to_bytes(2, "big") + b"\x12" + to_column.to_bytes(2, "big"))


CLOCK_OBIS = b"\x00\x00\x01\x00\x00\xff"


def range_access(from_dt: DateTime, to_dt: DateTime) -> bytes:
    """Selective access by range (selector 1) on the clock column, all columns selected."""
    restricting = (b"\x02\x04\x12\x00\x08\x09\x06" + CLOCK_OBIS + b"\x0f\x02\x12\x00\x00")
    return (b"\x01\x02\x04" + restricting
            + b"\x09\x0c" + encode_datetime(from_dt) + b"\x09\x0c" + encode_datetime(to_dt)
            + b"\x01\x00")


# what ``dlms.__getattr__`` hands out under ``dlms``'s name
PUBLIC = (
    "AARQ", "AARE", "RLRQ", "GET_REQUEST", "GET_RESPONSE", "EXCEPTION_RESPONSE",
    "CONFIRMED_SERVICE_ERROR", "INITIATE_REQUEST", "INITIATE_RESPONSE", "CONTEXT_LN",
    "CONTEXT_SN", "MECHANISM_NONE", "MECHANISM_LLS", "ACCEPTED", "REJECTED_PERMANENT",
    "REJECTED_TRANSIENT", "DIAG_SOURCE_USER", "DIAG_SOURCE_PROVIDER", "DIAG_NULL",
    "DIAG_NO_REASON", "DIAG_CONTEXT_NOT_SUPPORTED", "DIAG_MECHANISM_NOT_RECOGNISED",
    "DIAG_MECHANISM_REQUIRED", "DIAG_AUTHENTICATION_FAILURE", "DIAG_AUTHENTICATION_REQUIRED",
    "DAR_SUCCESS", "DAR_HARDWARE_FAULT", "DAR_TEMPORARY_FAILURE", "DAR_READ_WRITE_DENIED",
    "DAR_OBJECT_UNDEFINED", "DAR_OBJECT_CLASS_INCONSISTENT", "DAR_OBJECT_UNAVAILABLE",
    "DAR_TYPE_UNMATCHED", "DAR_SCOPE_OF_ACCESS_VIOLATED", "DAR_DATA_BLOCK_UNAVAILABLE",
    "DAR_LONG_GET_ABORTED", "DAR_NO_LONG_GET_IN_PROGRESS", "DAR_DATA_BLOCK_NUMBER_INVALID",
    "DAR_OTHER_REASON", "CONF_GENERAL_PROTECTION", "CONF_GENERAL_BLOCK_TRANSFER",
    "CONF_ATTRIBUTE0_WITH_SET", "CONF_PRIORITY_MANAGEMENT", "CONF_ATTRIBUTE0_WITH_GET",
    "CONF_BLOCK_TRANSFER_WITH_GET", "CONF_BLOCK_TRANSFER_WITH_SET",
    "CONF_BLOCK_TRANSFER_WITH_ACTION", "CONF_MULTIPLE_REFERENCES", "CONF_DATA_NOTIFICATION",
    "CONF_ACCESS", "CONF_GET", "CONF_SET", "CONF_SELECTIVE_ACCESS", "CONF_EVENT_NOTIFICATION",
    "CONF_ACTION", "DIAGNOSTIC_NAMES", "DAR_NAMES", "entry_access", "CLOCK_OBIS",
    "range_access",
)
