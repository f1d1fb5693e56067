"""Downlinks the app applies itself, once ``Meter.apply_command`` found them authentic:
``config`` (one setting for the next boot) and ``ota`` / ``ota_chunk`` (firmware update
into the board's inactive A/B slot), plus the OTA steps at boot (rolled back? on trial?)
and at the first healthy MQTT connection (confirm).  docs/protocol.md has the commands.

Imported by ``firmware.app.main`` only when such a command arrives or the meter was
booted through an A/B selector, so a meter that never sees one does not carry this code
on its heap.

>>> ota_manifest(["OTA-1", "0.5.0", 10, "ab" * 32, 4])["chunk_size"]
3
"""
import binascii

from firmware.app.config import ConfigError, canonical_name
from firmware.core import auth, events, ota
from firmware.core.meter import BAD_VALUE, REFUSED

OTA_MAX_CHUNK = 4096  # bytes per ``ota_chunk`` (RAM: one chunk, ~5.5 KB as base64, at a time)
# Settings the ``config`` downlink may change: those a running meter takes from the
# store at its next boot.  Identity, keys and what the journal keeps from commissioning
# (tariff, pulse constant, interval, opening credit, service) stay with the CLI.
REMOTE_SETTINGS = ("broker_host", "broker_port", "wifi_ssid", "heartbeat_s", "step_s",
                   "energy_source", "modbus_slave", "modbus_period_s", "dlms_physical",
                   "dlms_period_s", "credit", "clock_max_step_s", "sts_paise_per_unit")


def version_code(version):
    """``major.minor.patch`` -> major * 10000 + minor * 100 + patch (event values); 0 otherwise.

    >>> version_code("0.5.1")
    501
    """
    parts = version.split(".") if isinstance(version, str) else []
    if len(parts) != 3:
        return 0
    code = 0
    for p in parts:
        if not p.isdigit() or int(p) > 99:
            return 0
        code = code * 100 + int(p)
    return code


def ota_manifest(fields):
    """The ``core.ota`` manifest of an ``ota`` command's fields
    ``[id, version, size, sha256_hex, chunk_count]``, or None (BAD_VALUE).

    Chunks are ``ceil(size / chunk_count)`` bytes (the last one the rest), at
    most ``OTA_MAX_CHUNK``; a count that this rule cannot give is refused.

    >>> ota_manifest(["OTA-1", "0.5.0", 10, "ab" * 32, 4])["chunk_size"]
    3
    """
    if not isinstance(fields, list) or len(fields) != 5:
        return None
    version, size, digest, count = fields[1], fields[2], fields[3], fields[4]
    for v in (size, count):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            return None
    if not isinstance(version, str) or not isinstance(digest, str):
        return None
    chunk = (size + count - 1) // count
    if chunk > OTA_MAX_CHUNK or (size + chunk - 1) // chunk != count:
        return None
    return {"version": version, "size": size, "chunk_size": chunk, "sha256": digest}


def apply(app, kind, fields, now):
    """Apply an authentic ``config`` / ``ota`` / ``ota_chunk`` command: (result, detail)."""
    if kind == "config":
        return remote_config(app, fields, now)
    return ota_act(app, kind, fields, now)


def remote_config(app, fields, now):
    """``config [id, setting, value]``: save one setting (CLI text syntax) for the next boot."""
    if not isinstance(fields, list) or len(fields) != 3 or not isinstance(fields[1], str) \
            or not isinstance(fields[2], str):
        return BAD_VALUE, "config: [id, setting, value]"
    try:
        name = canonical_name(fields[1])
    except ConfigError as e:
        return BAD_VALUE, str(e)
    if name not in REMOTE_SETTINGS:
        return REFUSED, "config: %s is set over the commissioning CLI only" % name
    try:
        app.config.set_text(name, fields[2], now)
    except ConfigError as e:
        return BAD_VALUE, str(e)
    except OSError as e:
        return REFUSED, "config: could not save: %s" % e
    print("urja: config %s saved by downlink, applies at next boot" % name)
    return auth.OK, "config %s saved: applies next boot" % name


def ota_act(app, kind, fields, now):
    """``ota`` / ``ota_chunk`` (docs/protocol.md "ota"): (result, detail)."""
    o = app.ota
    if o is None:
        return REFUSED, "ota: not booted through an A/B boot selector"
    if kind == "ota":
        manifest = ota_manifest(fields)
        if manifest is None:
            return BAD_VALUE, "ota: [id, version, size, sha256_hex, chunk_count], chunks <= %d B" % (
                OTA_MAX_CHUNK)
        try:
            r = o.begin(manifest, now)
        except ota.OtaStateError as e:
            return REFUSED, str(e)
        if r != ota.R_OK:
            return BAD_VALUE, "ota %s" % ota.REASON_NAMES[r]
        u = o.update
        print("urja: ota %s: %d bytes in %d chunks, next chunk %d" % (
            manifest["version"], manifest["size"], u.chunk_count, u.next_index))
        return auth.OK, "ota %s next chunk %d" % (manifest["version"], u.next_index)
    if not isinstance(fields, list) or len(fields) != 3 or not isinstance(fields[1], int) \
            or not isinstance(fields[2], str):
        return BAD_VALUE, "ota_chunk: [id, index, base64]"
    try:
        data = binascii.a2b_base64(fields[2])
    except ValueError:
        return BAD_VALUE, "ota_chunk: not base64"
    u = o.update
    try:
        r = o.write_chunk(fields[1], data, now)
    except ota.OtaStateError as e:
        return REFUSED, str(e)
    if r == ota.R_DUPLICATE:  # written before (a power cut ate the journal commit)
        return auth.OK, "chunk %d already written" % fields[1]
    if r == ota.R_OUT_OF_ORDER:
        return REFUSED, "ota OUT_OF_ORDER: next chunk %d" % u.next_index
    if r != ota.R_OK:
        print("urja: ota %s refused: %s" % (u.manifest["version"] if u.manifest else "?",
                                            ota.REASON_NAMES[r]))
        return BAD_VALUE, "ota %s" % ota.REASON_NAMES[r]
    if u.state != ota.READY:
        return auth.OK, "chunk %d/%d" % (fields[1], u.chunk_count)
    version = u.manifest["version"]
    r = o.install(now)
    if r != ota.R_OK:
        print("urja: ota %s refused: %s" % (version, ota.REASON_NAMES[r]))
        return BAD_VALUE, "ota %s" % ota.REASON_NAMES[r]
    print("urja: ota %s verified and installed in slot %s, restarting" % (version, u.target))
    app.restart_pending = True
    return auth.OK, "ota %s installed: restarting" % version


def ota_after_boot(app, now):
    """Report what the boot selector did with the last update (rolled back, or on trial)."""
    o = app.ota
    if o is None:
        return
    u = o.update
    if u.state == ota.ROLLED_BACK:
        failed = u.manifest["version"] if u.manifest else "?"
        print("urja: firmware %s did not confirm: rolled back to %s in slot %s" % (
            failed, app.version, o.boot.booted))
        app.meter.log.append(now, events.FW_ROLLED_BACK, version_code(failed))
        u.acknowledge()
        o.save(now)
    elif u.state == ota.PENDING_CONFIRM and o.boot.last_boot == ota.BOOT_TRIAL:
        print("urja: firmware %s on trial in slot %s: confirms once MQTT is connected" % (
            app.version, o.boot.booted))
        app.ota_trial = True


def ota_confirm(app):
    """A healthy start (connected and subscribed): make the trial image permanent."""
    app.ota_trial = False
    now = app.now()
    o = app.ota
    if not o.confirm(now):
        return
    print("urja: firmware %s confirmed in slot %s" % (app.version, o.boot.active))
    app.meter.log.append(now, events.FW_CONFIRMED, version_code(app.version))
    if o.update.state == ota.CONFIRMED:
        o.update.acknowledge()
        o.save(now)
    app.meter_changed(now)
