"""``urja-headend``: run and operate the head-end from a shell.

Exit codes: 0 done; 1 the operation was refused or found nothing (unknown
meter, held for approval, missing tables); 2 bad usage or configuration.
Every command takes ``--json`` for scripts; settings come from
``--config FILE`` / ``URJA_*`` / flags (headend/config.py, docs/CONFIG.md).
"""
import argparse
import getpass
import json
import sys
import time

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from headend import auth as A
from headend import config
from headend import guardrails as G
from headend import models as M

EXAMPLES = """examples:
  urja-headend migrate                                  create/upgrade the schema
  urja-headend --database-url postgresql+psycopg://urja@db/urja serve --port 8080
  urja-headend meters add UJ-0001 --tenant PMC --service water --account PMC-77 --name "Asha"
  urja-headend meters list --tenant PMC --json
  urja-headend users add asha --role operator --tenant PMC --password-stdin < pw.txt
  urja-headend users token upi-gw                      print a long-lived API token
  urja-headend topup UJ-0001 50000                      queue a Rs 500.00 top-up (paise)
  urja-headend commands --meter UJ-0001 --state QUEUED
  urja-headend report --json                            fleet health for a cron job
  urja-headend campaigns --help                         staged tariff/config/firmware roll-outs
"""

CAMPAIGN_EXAMPLES = """examples:
  urja-headend campaigns image-add build/fw-1.1.0.bin --version 1.1.0
  urja-headend campaigns create --tenant PMC --kind config --args heartbeat_s 600
  urja-headend campaigns create --tenant PMC --kind tariff --args "$(cat tariff.json)" \\
      --stages 1,10,100 --success-pct 95 --failure-pct 5
  urja-headend campaigns create --tenant PMC --kind firmware --args 1.1.0 --as asha
  urja-headend campaigns approve 3 --as ravi            a firmware campaign needs a second person
  urja-headend campaigns list --tenant PMC --state RUNNING --json
  urja-headend campaigns show 3 --json                  per-stage progress
  urja-headend campaigns advance                        one round now (serve does it every
                                                        campaign_interval_s)
  urja-headend campaigns cancel 3 --reason "wrong tariff"
"""


class CliError(Exception):
    """A refusal the user can act on; printed without a traceback, exit code ``code``."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def build_parser():
    p = argparse.ArgumentParser(prog="urja-headend", description="Urja prepaid metering head-end",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML settings file (default: $URJA_CONFIG)")
    p.add_argument("--database-url", help="SQLAlchemy URL (sqlite:///... or postgresql+psycopg://...)")
    p.add_argument("--log-level", choices=config.LOG_LEVELS)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    # --json is accepted before or after the command name
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", parents=[common],
                       help="run the HTTP API (uvicorn) and the periodic jobs (forecast alert, alert detectors)")
    s.add_argument("--host", dest="api_host")
    s.add_argument("--port", dest="api_port", type=int)

    sub.add_parser("migrate", parents=[common],
                   help="bring the database schema up to date (Alembic)")

    m = sub.add_parser("meters", parents=[common], help="list or register meters")
    msub = m.add_subparsers(dest="action", required=True, metavar="ACTION")
    ml = msub.add_parser("list", parents=[common], help="list meters")
    ml.add_argument("--tenant", help="tenant code")
    ml.add_argument("--limit", type=int, default=1000)
    ma = msub.add_parser("add", parents=[common], help="register a meter")
    ma.add_argument("meter_id")
    ma.add_argument("--tenant", required=True, help="tenant code (created if new, with --tenant-name)")
    ma.add_argument("--tenant-name")
    ma.add_argument("--service", choices=M.SERVICES, default="electricity")
    ma.add_argument("--account", help="consumer account number (created if new)")
    ma.add_argument("--name", help="consumer name (with --account)")

    u = sub.add_parser("users", parents=[common], help="add users and issue API tokens")
    usub = u.add_subparsers(dest="action", required=True, metavar="ACTION")
    ua = usub.add_parser("add", parents=[common], help="add a user")
    ua.add_argument("username")
    ua.add_argument("--role", required=True, choices=A.ROLES)
    ua.add_argument("--tenant", help="tenant code (all roles but a platform admin)")
    ua.add_argument("--account", help="consumer account number (role consumer)")
    ua.add_argument("--password-stdin", action="store_true", help="read a password from stdin")
    ut = usub.add_parser("token", parents=[common],
                         help="issue a long-lived API token for a user")
    ut.add_argument("username")
    ut.add_argument("--label", default="api")

    t = sub.add_parser("topup", parents=[common],
                       help="queue a top-up command (amount in paise)")
    t.add_argument("meter_id")
    t.add_argument("amount_paise", type=int)

    c = sub.add_parser("commands", parents=[common], help="list downlink commands")
    c.add_argument("--meter")
    c.add_argument("--state", choices=("QUEUED", "SENT", "DELIVERED", "APPLIED", "FAILED",
                                        "EXPIRED", "CANCELLED"))
    c.add_argument("--limit", type=int, default=50)

    sub.add_parser("report", parents=[common],
                   help="fleet summary: comm health, command queue, approvals, dead letters")

    cp = sub.add_parser("campaigns", parents=[common], epilog=CAMPAIGN_EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        help="staged tariff, config and firmware campaigns",
                        description="Staged roll-outs over a tenant's meters "
                                    "(headend/campaigns.py).  --as USER acts as a registered "
                                    "user (role and tenant from the users table); without it "
                                    "the shell user acts as a platform admin.")
    cpsub = cp.add_subparsers(dest="action", required=True, metavar="ACTION")
    cl = cpsub.add_parser("list", parents=[common], help="list campaigns")
    cl.add_argument("--tenant", help="tenant code")
    cl.add_argument("--state", choices=("PENDING_APPROVAL", "RUNNING", "HALTED", "COMPLETED",
                                        "REJECTED", "CANCELLED"))
    cl.add_argument("--limit", type=int, default=50)
    cs = cpsub.add_parser("show", parents=[common], help="one campaign with per-stage progress")
    cs.add_argument("campaign_id", type=int)
    cc = cpsub.add_parser("create", parents=[common], help="create a campaign")
    cc.add_argument("--tenant", required=True, help="tenant code")
    cc.add_argument("--kind", required=True, choices=("tariff", "config", "firmware"))
    cc.add_argument("--args", nargs="+", required=True,
                    help="tariff: JSON; config: SETTING VALUE; firmware: VERSION")
    cc.add_argument("--meters", help="comma-separated meter ids (default: all active meters)")
    cc.add_argument("--stages", help="cumulative percentages, e.g. 1,10,100 "
                                     "(default campaign_stages)")
    cc.add_argument("--success-pct", type=int)
    cc.add_argument("--failure-pct", type=int)
    cc.add_argument("--as", dest="as_user", help="act as this registered user")
    for name, text in (("approve", "approve a firmware campaign (not its creator)"),
                       ("reject", "reject a campaign waiting for approval"),
                       ("cancel", "cancel a campaign: no further stage starts")):
        d = cpsub.add_parser(name, parents=[common], help=text)
        d.add_argument("campaign_id", type=int)
        d.add_argument("--reason")
        d.add_argument("--as", dest="as_user", help="act as this registered user")
    cpsub.add_parser("advance", parents=[common],
                     help="advance running campaigns once (confirmations, stages, halts)")
    ci = cpsub.add_parser("image-add", parents=[common], help="store a firmware image for OTA")
    ci.add_argument("path")
    ci.add_argument("--version", required=True, help="what the meter's heartbeat fw will say")
    cpsub.add_parser("images", parents=[common], help="list stored firmware images")
    return p


def _settings(args):
    flags = {"database_url": args.database_url, "log_level": args.log_level,
             "api_host": getattr(args, "api_host", None), "api_port": getattr(args, "api_port", None)}
    return config.load(args.config, flags=flags)


def _cli_principal():
    # the shell user acts as a platform admin; the audit log names them
    return A.Principal(0, "cli:%s" % getpass.getuser(), A.ADMIN)


def _tenant(session, code):
    tenant = session.scalars(select(M.Tenant).where(M.Tenant.code == code)).first()
    if tenant is None:
        raise CliError("no tenant %r" % code)
    return tenant


def cmd_migrate(settings, args, engine):
    from headend import migrations
    migrations.upgrade(settings.database_url)
    import headend.api  # noqa: F401 - imports every module with tables
    from headend.db import Base
    have = set(inspect(engine).get_table_names())
    missing = sorted(set(Base.metadata.tables) - have)
    out = {"database_url": settings.public()["database_url"], "missing_tables": missing}
    if missing:
        out["error"] = "tables without a migration yet: %s" % ", ".join(missing)
    return out, 1 if missing else 0


def cmd_meters(settings, args, engine):
    with Session(engine) as s:
        if args.action == "list":
            q = select(M.Meter, M.Tenant.code).join(M.Tenant).order_by(M.Meter.id).limit(args.limit)
            if args.tenant:
                q = q.where(M.Tenant.code == args.tenant)
            rows = [{"id": m.id, "tenant": code, "service": m.service, "active": m.active,
                     "consumer_id": m.consumer_id} for m, code in s.execute(q)]
            return rows, 0
        tenant = s.scalars(select(M.Tenant).where(M.Tenant.code == args.tenant)).first()
        if tenant is None:
            if not args.tenant_name:
                raise CliError("no tenant %r; give --tenant-name to create it" % args.tenant)
            tenant = M.Tenant(code=args.tenant, name=args.tenant_name)
            s.add(tenant)
            s.flush()
        if s.get(M.Meter, args.meter_id) is not None:
            raise CliError("meter %s is already registered" % args.meter_id)
        consumer_id = None
        if args.account:
            c = s.scalars(select(M.Consumer).where(M.Consumer.tenant_id == tenant.id,
                                                   M.Consumer.account_no == args.account)).first()
            if c is None:
                c = M.Consumer(tenant_id=tenant.id, account_no=args.account,
                               name=args.name or args.account)
                s.add(c)
                s.flush()
            consumer_id = c.id
        s.add(M.Meter(id=args.meter_id, tenant_id=tenant.id, consumer_id=consumer_id,
                      service=args.service, active=True))
        G.audit(s, _cli_principal(), "meter.register", "ok", int(time.time()),
                tenant_id=tenant.id, meter_id=args.meter_id, service=args.service)
        s.commit()
        return {"id": args.meter_id, "tenant": tenant.code, "service": args.service,
                "consumer_id": consumer_id}, 0


def cmd_users(settings, args, engine):
    with Session(engine) as s:
        if args.action == "token":
            user = s.scalars(select(A.User).where(A.User.username == args.username)).first()
            if user is None:
                raise CliError("no user %r" % args.username)
            token = A.issue_api_token(s, user, int(time.time()), label=args.label)
            s.commit()
            return {"username": user.username, "token": token}, 0
        tenant_id = _tenant(s, args.tenant).id if args.tenant else None
        consumer_id = None
        if args.account:
            c = s.scalars(select(M.Consumer).where(M.Consumer.tenant_id == tenant_id,
                                                   M.Consumer.account_no == args.account)).first()
            if c is None:
                raise CliError("no consumer account %r in tenant %s" % (args.account, args.tenant))
            consumer_id = c.id
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
        try:
            user = A.create_user(s, args.username, args.role, tenant_id, consumer_id, password)
        except ValueError as err:
            raise CliError(str(err), 2)
        G.audit(s, _cli_principal(), "user.add", "ok", int(time.time()), tenant_id=tenant_id,
                username=args.username, role=args.role)
        s.commit()
        return {"username": user.username, "role": user.role, "tenant": args.tenant}, 0


def cmd_topup(settings, args, engine):
    from headend import commands as C
    now = int(time.time())
    with Session(engine) as s:
        meter = s.get(M.Meter, args.meter_id)
        if meter is None:
            raise CliError("no meter %r" % args.meter_id)
        if args.amount_paise <= 0:
            raise CliError("amount_paise must be > 0 (paise: 50000 = Rs 500.00)", 2)

        def enqueue(session, meter_id, kind, fields, at):
            return C.enqueue(session, meter_id, kind, fields, at,
                             ttl_s=settings.command_ttl_s or None).id
        request = G.request_commands(s, _cli_principal(), meter.tenant_id, "topup", [meter.id],
                                     [args.amount_paise], now,
                                     G.DisconnectPolicy.from_settings(settings), enqueue)
        s.commit()
        return request.as_dict(), 0


def cmd_commands(settings, args, engine):
    from headend import commands as C
    with Session(engine) as s:
        q = select(C.Command).order_by(C.Command.created_at.desc(), C.Command.id).limit(args.limit)
        if args.meter:
            q = q.where(C.Command.meter_id == args.meter)
        if args.state:
            q = q.where(C.Command.state == args.state)
        return [c.as_dict() for c in s.scalars(q)], 0


def cmd_report(settings, args, engine):
    from headend import commands as C
    now = int(time.time())
    since = now - settings.comm_loss_after_s
    with Session(engine) as s:
        recent = select(M.UplinkSeen.meter_id).where(M.UplinkSeen.received_at > since)
        tenants = []
        for t in s.scalars(select(M.Tenant).order_by(M.Tenant.code)):
            active = s.scalar(select(func.count()).select_from(M.Meter).where(
                M.Meter.tenant_id == t.id, M.Meter.active.is_(True)))
            talking = s.scalar(select(func.count()).select_from(M.Meter).where(
                M.Meter.tenant_id == t.id, M.Meter.active.is_(True), M.Meter.id.in_(recent)))
            tenants.append({"tenant": t.code, "active_meters": active,
                            "communicating": talking, "silent": active - talking})
        queue = dict.fromkeys(C.STATES, 0)
        queue.update(dict(s.execute(select(C.Command.state, func.count())
                                    .group_by(C.Command.state)).all()))
        pending = s.scalar(select(func.count()).select_from(G.CommandRequest)
                           .where(G.CommandRequest.state == G.PENDING_APPROVAL))
        dead = s.scalar(select(func.count()).select_from(M.DeadLetter)
                        .where(M.DeadLetter.received_at > now - 86400))
    return {"at": now, "tenants": tenants, "command_queue": queue,
            "awaiting_approval": pending, "dead_letters_24h": dead}, 0


def _campaign_principal(session, args):
    if not getattr(args, "as_user", None):
        return _cli_principal()
    user = session.scalars(select(A.User).where(A.User.username == args.as_user,
                                                A.User.active.is_(True))).first()
    if user is None:
        raise CliError("no active user %r" % args.as_user)
    return A.Principal(user.id, user.username, user.role, user.tenant_id, user.consumer_id)


def cmd_campaigns(settings, args, engine):
    from headend import campaigns as CP
    from headend import ota
    now = int(time.time())
    with Session(engine) as s:
        def out(c):
            return dict(c.as_dict(), progress=CP.stage_summary(s, c))

        def visible(principal):
            c = s.get(CP.Campaign, args.campaign_id)
            if c is None or not A.Scope(principal).sees_tenant(c.tenant_id):
                raise CliError("no campaign %d" % args.campaign_id)
            return c
        if args.action == "list":
            q = select(CP.Campaign).order_by(CP.Campaign.id.desc()).limit(args.limit)
            if args.tenant:
                q = q.where(CP.Campaign.tenant_id == _tenant(s, args.tenant).id)
            if args.state:
                q = q.where(CP.Campaign.state == args.state)
            return [out(c) for c in s.scalars(q)], 0
        if args.action == "show":
            return out(visible(_cli_principal())), 0
        if args.action == "images":
            return [i.as_dict() for i in s.scalars(select(M.FirmwareImage)
                                                    .order_by(M.FirmwareImage.created_at))], 0
        if args.action == "image-add":
            try:
                with open(args.path, "rb") as f:
                    data = f.read()
                image = ota.add_image(s, args.version, data, now, _cli_principal().username)
            except (OSError, ota.OtaError) as err:
                raise CliError(str(err), 2 if isinstance(err, OSError) else 1)
            G.audit(s, _cli_principal(), "firmware.add", "ok", now, version=args.version,
                    size=image.size, sha256=image.sha256)
            s.commit()
            return image.as_dict(), 0
        if args.action == "advance":
            moved = CP.advance(s, now)
            s.commit()
            return {"at": now, "moved": [{"campaign_id": c, "what": w} for c, w in moved]}, 0
        principal = _campaign_principal(s, args)
        try:
            if args.action == "create":
                principal.require(CP.PERMISSION["create"])
                tenant = _tenant(s, args.tenant)
                scope = A.Scope(principal)
                if not scope.sees_tenant(tenant.id):
                    raise CliError("no tenant %r" % args.tenant)
                meter_ids = None
                if args.meters:
                    meter_ids = [m.strip() for m in args.meters.split(",") if m.strip()]
                    for mid in meter_ids:
                        meter = s.get(M.Meter, mid)
                        if meter is None or meter.tenant_id != tenant.id:
                            raise CliError("no meter %r in tenant %s" % (mid, tenant.code))
                try:
                    stages = [int(p) for p in args.stages.split(",")] if args.stages else None
                except ValueError:
                    raise CliError("--stages: comma-separated whole percentages", 2)
                rules = CP.StageRules.from_settings(settings, stages, args.success_pct,
                                                    args.failure_pct)
                campaign = CP.create(s, principal, tenant.id, args.kind, meter_ids, args.args,
                                     now, rules)
                s.commit()
                return out(campaign), 1 if campaign.state == CP.PENDING_APPROVAL else 0
            principal.require(CP.PERMISSION["create" if args.action == "cancel" else "approve"])
            campaign = visible(principal)
            try:
                CP.decide(s, principal, campaign, args.action, now, reason=args.reason)
            finally:
                s.commit()  # the decision, or the audit row of its refusal
            return out(campaign), 0
        except A.Forbidden as err:
            raise CliError(str(err))
        except G.GuardrailError as err:
            raise CliError(str(err), 2 if err.code == "bad_request" else 1)


def _print_human(command, data):
    if command == "report":
        print("tenant   active  communicating  silent")
        for t in data["tenants"]:
            print("%-8s %6d  %13d  %6d" % (t["tenant"], t["active_meters"], t["communicating"],
                                           t["silent"]))
        print("command queue: " + ", ".join("%s=%d" % kv for kv in data["command_queue"].items()))
        print("awaiting approval: %d   dead letters (24 h): %d" % (data["awaiting_approval"],
                                                                  data["dead_letters_24h"]))
        return
    rows = data if isinstance(data, list) else [data]
    if not rows:
        print("(none)")
    for row in rows:
        print("  ".join("%s=%s" % (k, v) for k, v in row.items()))


COMMANDS = {"migrate": cmd_migrate, "meters": cmd_meters, "users": cmd_users,
            "topup": cmd_topup, "commands": cmd_commands, "report": cmd_report,
            "campaigns": cmd_campaigns}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except config.ConfigError as err:
        print("urja-headend: %s" % err, file=sys.stderr)
        return 2
    if args.command == "serve":
        import uvicorn
        from headend import jobs
        from headend.api import create_app
        app = create_app(settings)
        # periodic jobs (forecast alert, alert detectors) run in this process next to the API
        running = [job.start() for job in jobs.jobs_from_settings(app.state.engine, settings)]
        try:
            uvicorn.run(app, host=settings.api_host, port=settings.api_port,
                        log_level=settings.log_level)
        finally:
            for job in running:
                job.stop()
        return 0
    from headend.db import make_engine
    engine = make_engine(settings.database_url)
    try:
        data, code = COMMANDS[args.command](settings, args, engine)
    except CliError as err:
        if args.json:
            print(json.dumps({"error": str(err)}))
        print("urja-headend: %s" % err, file=sys.stderr)
        return err.code
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(data, sort_keys=True))
    else:
        _print_human(args.command, data)
        if isinstance(data, dict) and data.get("error"):
            print("urja-headend: %s" % data["error"], file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
