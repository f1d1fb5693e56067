"""One typed configuration for the head-end: defaults < TOML file < environment < flags.

Every setting has one name, one type and one check.  The same name is used
in all three sources: ``database_url`` in the file, ``URJA_DATABASE_URL`` in
the environment, ``--database-url`` on the command line (``headend/cli.py``).
``load`` collects *every* problem before it fails, and each message says
where the bad value came from, so a misconfigured service stops at start
with one readable error instead of half-starting.  The settings are listed
in docs/CONFIG.md.

>>> s = load(environ={"URJA_API_PORT": "9000"}, flags={"log_level": "debug"})
>>> s.api_port, s.log_level
(9000, 'debug')
>>> try:
...     load(environ={"URJA_API_PORT": "nine"})
... except ConfigError as err:
...     print(err)
configuration error: api_port (env URJA_API_PORT): must be an integer, got 'nine'
"""
import dataclasses
import os
import pathlib
import tomllib

ENV_PREFIX = "URJA_"
CONFIG_ENV = "URJA_CONFIG"          # path of the TOML file when --config is not given
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """Configuration that cannot be used; ``problems`` lists every (setting, source, message)."""

    def __init__(self, problems):
        self.problems = list(problems)
        lines = ["%s (%s): %s" % p for p in self.problems]
        if len(lines) == 1:
            text = "configuration error: " + lines[0]
        else:
            text = "configuration errors:\n  " + "\n  ".join(lines)
        super().__init__(text)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The head-end's settings (all times in integer seconds, shares in percent).

    >>> Settings().disconnect_approval_pct
    5
    """
    database_url: str = "sqlite:///out/urja.db"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    log_level: str = "info"
    # bearer tokens from username/password expire; API tokens made by the CLI do not
    token_ttl_s: int = 8 * 3600
    # a disconnect reaching more than this share of a tenant's active meters within
    # the window needs a second approver (0 = every disconnect needs one)
    disconnect_approval_pct: int = 5
    disconnect_window_s: int = 3600
    # downlink commands queued through the API expire after this long
    # (0: the per-kind defaults of headend.commands, e.g. relay 1 h, top-up 7 days)
    command_ttl_s: int = 0
    # a meter with no uplink for this long counts as non-communicating (3 x 15 min)
    comm_loss_after_s: int = 2700
    # window over which /metrics computes the ingest rate and lag
    metrics_window_s: int = 300
    # header the payment gateway signs (HMAC-SHA256 over the raw body, see headend/payments.py)
    payment_signature_header: str = "X-Urja-Signature"
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    # rows per page of the dashboard's long lists (meters, comm loss, alerts, commands)
    ui_page_size: int = 50
    # the periodic job of ``serve`` raises low_credit_forecast (and tells the consumer)
    # when a meter's forecast credit lasts fewer than this many days (0: job off)
    forecast_alert_days: int = 3
    # how often that job runs
    forecast_interval_s: int = 3600
    # how often ``serve`` runs the alert detectors (credit, tamper, comm loss, leak); 0: off
    alert_checks_interval_s: int = 300
    # ``serve`` queues a ``time`` downlink for a meter whose heartbeat clock differs from
    # the head-end's receive time by more than this (headend.commands.queue_time_syncs)
    time_sync_threshold_s: int = 300
    # how often that rule runs; 0: off
    time_sync_interval_s: int = 600
    # campaigns: cumulative stage shares in percent, the share of a stage that must be
    # APPLIED (firmware: confirmed) before the next starts, and the failed share that halts
    campaign_stages: str = "1,10,100"
    campaign_success_pct: int = 95
    campaign_failure_pct: int = 5
    # how often ``serve`` advances running campaigns; 0: off
    campaign_interval_s: int = 60

    def public(self):
        """The settings as a dict with secrets (passwords in URLs) masked, for logs and ``--json``."""
        d = dataclasses.asdict(self)
        d["database_url"] = _mask_url(self.database_url)
        return d


_CHECKS = {
    "database_url": lambda v: None if v.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql")
    else "must start with sqlite:// or postgresql:// (got %r)" % _mask_url(v),
    "api_host": lambda v: None if v else "must not be empty",
    "api_port": lambda v: None if 1 <= v <= 65535 else "must be 1..65535, got %d" % v,
    "log_level": lambda v: None if v in LOG_LEVELS else "must be one of %s, got %r" % (
        ", ".join(LOG_LEVELS), v),
    "token_ttl_s": lambda v: None if 60 <= v <= 30 * 86400 else
    "must be 60..2592000 s (1 min .. 30 days), got %d" % v,
    "disconnect_approval_pct": lambda v: None if 0 <= v <= 100 else "must be 0..100, got %d" % v,
    "disconnect_window_s": lambda v: None if v >= 60 else "must be >= 60 s, got %d" % v,
    "command_ttl_s": lambda v: None if v == 0 or 60 <= v <= 90 * 86400 else
    "must be 0 (per-kind default) or 60..7776000 s (1 min .. 90 days), got %d" % v,
    "comm_loss_after_s": lambda v: None if v >= 60 else "must be >= 60 s, got %d" % v,
    "metrics_window_s": lambda v: None if 10 <= v <= 86400 else "must be 10..86400 s, got %d" % v,
    "payment_signature_header": lambda v: None if v else "must not be empty",
    "mqtt_host": lambda v: None if v else "must not be empty",
    "mqtt_port": lambda v: None if 1 <= v <= 65535 else "must be 1..65535, got %d" % v,
    "ui_page_size": lambda v: None if 5 <= v <= 1000 else "must be 5..1000, got %d" % v,
    "forecast_alert_days": lambda v: None if 0 <= v <= 60 else "must be 0..60 days, got %d" % v,
    "forecast_interval_s": lambda v: None if 1 <= v <= 86400 else
    "must be 1..86400 s, got %d" % v,
    "alert_checks_interval_s": lambda v: None if v == 0 or 10 <= v <= 86400 else
    "must be 0 (off) or 10..86400 s, got %d" % v,
    "time_sync_threshold_s": lambda v: None if 10 <= v <= 86400 else
    "must be 10..86400 s, got %d" % v,
    "time_sync_interval_s": lambda v: None if v == 0 or 10 <= v <= 86400 else
    "must be 0 (off) or 10..86400 s, got %d" % v,
    "campaign_stages": lambda v: _check_stages(v),
    "campaign_success_pct": lambda v: None if 1 <= v <= 100 else "must be 1..100, got %d" % v,
    "campaign_failure_pct": lambda v: None if 0 <= v <= 100 else "must be 0..100, got %d" % v,
    "campaign_interval_s": lambda v: None if v == 0 or 10 <= v <= 86400 else
    "must be 0 (off) or 10..86400 s, got %d" % v,
}


def _check_stages(text):
    try:
        stages = [int(p, 10) for p in text.split(",")]
    except ValueError:
        return "must be comma-separated whole percentages, e.g. 1,10,100; got %r" % text
    if stages[0] < 1 or stages[-1] != 100 or any(b <= a for a, b in zip(stages, stages[1:])):
        return "must rise from >= 1 to 100, e.g. 1,10,100; got %r" % text
    return None

FIELDS = {f.name: f.type for f in dataclasses.fields(Settings)}


def _mask_url(url):
    # postgresql+psycopg://user:secret@host/db -> postgresql+psycopg://user:***@host/db
    head, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if sep and at and ":" in creds:
        return "%s://%s:***@%s" % (head, creds.split(":", 1)[0], host)
    return url


def _convert(name, value):
    """``value`` (str from env/flags, or a TOML value) as the setting's type, or an error text."""
    kind = FIELDS[name]
    if kind in (int, "int"):
        if isinstance(value, bool):
            return None, "must be an integer, got %r" % value
        if isinstance(value, int):
            return value, None
        if isinstance(value, str):
            try:
                return int(value.strip(), 10), None
            except ValueError:
                pass
        return None, "must be an integer, got %r" % (value,)
    if not isinstance(value, str):
        return None, "must be a string, got %r" % (value,)
    return value, None


def read_file(path):
    """The settings table of a TOML file (top level, or a ``[headend]`` table)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([("config", "file %s" % path, "file not found")])
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([("config", "file %s" % path, "not valid TOML: %s" % err)])
    return data.get("headend", data)


def load(path=None, environ=None, flags=None):
    """Settings from defaults, then the TOML file, then ``URJA_*`` env vars, then ``flags``.

    ``path`` defaults to ``$URJA_CONFIG`` (no file when unset); ``flags`` maps
    setting names to values, ``None`` meaning "not given".  Raises ConfigError
    listing every problem.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    layers = []
    if path:
        layers.append(("file %s" % pathlib.Path(path), read_file(path)))
    layers.append(("env", {k[len(ENV_PREFIX):].lower(): v for k, v in environ.items()
                           if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() in FIELDS}))
    layers.append(("flag", {k: v for k, v in (flags or {}).items() if v is not None}))
    values, problems, source_of = {}, [], {}
    for source, layer in layers:
        for name, raw in layer.items():
            where = "env %s%s" % (ENV_PREFIX, name.upper()) if source == "env" else (
                "flag --%s" % name.replace("_", "-") if source == "flag" else source)
            if name not in FIELDS:
                problems.append((name, where, "unknown setting; known: %s" % ", ".join(FIELDS)))
                continue
            value, err = _convert(name, raw)
            if err:
                problems.append((name, where, err))
                continue
            values[name] = value
            source_of[name] = where
    for name, value in values.items():
        err = _CHECKS[name](value)
        if err:
            problems.append((name, source_of[name], err))
    if problems:
        raise ConfigError(problems)
    return Settings(**values)
