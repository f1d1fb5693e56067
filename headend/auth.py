"""Users, roles, bearer tokens, and tenant isolation enforced in one place.

Who may do what is ONE table, ``PERMISSIONS`` (action -> roles).  What a
caller may *see* is ONE class, ``Scope``: every API query for meters or
meter data goes through ``Scope.meter`` (one meter, 404 when it is not the
caller's) or ``Scope.meter_ids`` (a subquery of the caller's meters).  A
consumer sees only the meters linked to their consumer record; every other
role sees its tenant's meters; an admin without a tenant is the platform
admin and sees all.  Another tenant's meter answers 404, never 403, so ids
do not leak across tenants.

Tokens: ``login`` turns username/password into a bearer token that expires
(``token_ttl_s``); ``issue_api_token`` makes a long-lived token for
machines (payment gateways, scripts).  Only SHA-256 hashes of tokens are
stored, so a database dump holds no usable credential.  Passwords are
hashed with scrypt (stdlib ``hashlib.scrypt``).

>>> from sqlalchemy.orm import Session                          # doctest: +SKIP
>>> u = create_user(session, "asha", "operator", tenant_id=1, password="s3cret-pass")  # doctest: +SKIP
>>> token, _ = login(session, "asha", "s3cret-pass", now=1795737600, ttl_s=3600)         # doctest: +SKIP
>>> principal_for_token(session, token, now=1795737601).role                           # doctest: +SKIP
'operator'
"""
import hashlib
import hmac
import os
import secrets

from sqlalchemy import BigInteger, Boolean, ForeignKey, String, select
from sqlalchemy.orm import Mapped, mapped_column

from headend import models as M
from headend.db import Base

ADMIN, OPERATOR, TECHNICIAN, CONSUMER, PAYMENT_GATEWAY = (
    "admin", "operator", "technician", "consumer", "payment_gateway")
ROLES = (ADMIN, OPERATOR, TECHNICIAN, CONSUMER, PAYMENT_GATEWAY)

_STAFF = frozenset((ADMIN, OPERATOR, TECHNICIAN))
# action -> roles allowed.  Visibility (which meters) is Scope's job, not this table's.
PERMISSIONS = {
    "meters.read": _STAFF | {CONSUMER},
    "meters.register": frozenset((ADMIN, OPERATOR, TECHNICIAN)),
    "readings.read": _STAFF | {CONSUMER},
    "events.read": _STAFF | {CONSUMER},
    "balance.read": _STAFF | {CONSUMER},
    "commands.read": frozenset((ADMIN, OPERATOR, TECHNICIAN)),
    "commands.topup": frozenset((ADMIN, OPERATOR)),
    "commands.relay": frozenset((ADMIN, OPERATOR)),
    "commands.tariff": frozenset((ADMIN, OPERATOR)),
    "commands.approve": frozenset((ADMIN, OPERATOR)),
    "receipts.read": frozenset((ADMIN, OPERATOR, CONSUMER)),
    "alerts.read": _STAFF,
    "alerts.ack": frozenset((ADMIN, OPERATOR, TECHNICIAN)),
    "audit.read": frozenset((ADMIN,)),
    "payments.post": frozenset((PAYMENT_GATEWAY,)),
    "users.manage": frozenset((ADMIN,)),
}

_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1, "dklen": 32}


class AuthError(ValueError):
    """Credentials missing, wrong or expired (HTTP 401)."""


class Forbidden(PermissionError):
    """Authenticated, but the role may not do this (HTTP 403)."""


class NotVisible(LookupError):
    """No such object for this caller: absent, or another tenant's/consumer's (HTTP 404)."""


class User(Base):
    """A person or machine that calls the API; ``tenant_id`` None only for a platform admin."""
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(M.BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(24))
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"), default=None, index=True)
    consumer_id: Mapped[int | None] = mapped_column(ForeignKey("consumers.id"), default=None)
    password_hash: Mapped[str | None] = mapped_column(String(200), default=None)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class ApiToken(Base):
    """A bearer token, stored as its SHA-256; ``expires_at`` None = API token that does not expire."""
    __tablename__ = "api_tokens"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    label: Mapped[str] = mapped_column(String(64), default="login")
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Principal:
    """The authenticated caller as the API sees it (detached from any session).

    >>> Principal(1, "asha", "operator", tenant_id=7).may("commands.relay")
    True
    """
    __slots__ = ("user_id", "username", "role", "tenant_id", "consumer_id")

    def __init__(self, user_id, username, role, tenant_id=None, consumer_id=None):
        self.user_id, self.username, self.role = user_id, username, role
        self.tenant_id, self.consumer_id = tenant_id, consumer_id

    def may(self, action):
        return self.role in PERMISSIONS[action]

    def require(self, action):
        """Raise Forbidden unless the role may do ``action``."""
        if not self.may(action):
            raise Forbidden("role %s may not %s" % (self.role, action))

    def __repr__(self):
        return "Principal(%r, role=%r, tenant=%r)" % (self.username, self.role, self.tenant_id)


def hash_password(password, salt=None):
    """``scrypt$<salt hex>$<hash hex>``; verify with ``check_password``."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return "scrypt$%s$%s" % (salt.hex(), digest.hex())


def check_password(password, stored):
    try:
        scheme, salt_hex, digest_hex = (stored or "").split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return hmac.compare_digest(digest.hex(), digest_hex)


def _token_hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(session, username, role, tenant_id=None, consumer_id=None, password=None):
    """Add a user; checks the role and that tenant/consumer links make sense for it.

    Raises ValueError with a message naming the problem.
    """
    if role not in ROLES:
        raise ValueError("role must be one of %s, got %r" % (", ".join(ROLES), role))
    if tenant_id is None and role != ADMIN:
        raise ValueError("a %s must belong to a tenant" % role)
    if role == CONSUMER:
        consumer = session.get(M.Consumer, consumer_id) if consumer_id is not None else None
        if consumer is None or consumer.tenant_id != tenant_id:
            raise ValueError("a consumer user needs a consumer_id of the same tenant")
    elif consumer_id is not None:
        raise ValueError("only consumer users link to a consumer record")
    if password is not None and len(password) < 8:
        raise ValueError("password must have at least 8 characters")
    user = User(username=username, role=role, tenant_id=tenant_id, consumer_id=consumer_id,
                password_hash=hash_password(password) if password else None)
    session.add(user)
    session.flush()
    return user


def _issue(session, user, now, expires_at, label):
    token = secrets.token_urlsafe(32)
    session.add(ApiToken(token_sha256=_token_hash(token), user_id=user.id, label=label,
                         created_at=now, expires_at=expires_at))
    session.flush()
    return token


def issue_api_token(session, user, now, label="api"):
    """A long-lived bearer token for ``user`` (shown once; only its hash is kept)."""
    return _issue(session, user, now, None, label)


def login(session, username, password, now, ttl_s):
    """(token, expires_at) for a valid username/password, else AuthError (same message either way)."""
    user = session.scalars(select(User).where(User.username == username)).first()
    if user is None or not user.active or not check_password(password, user.password_hash):
        raise AuthError("wrong username or password")
    expires_at = now + ttl_s
    return _issue(session, user, now, expires_at, "login"), expires_at


def revoke(session, token):
    row = session.get(ApiToken, _token_hash(token))
    if row is not None:
        row.revoked = True


def principal_for_token(session, token, now):
    """The Principal a bearer token stands for, else AuthError."""
    if not token:
        raise AuthError("missing bearer token")
    row = session.get(ApiToken, _token_hash(token))
    if row is None or row.revoked or (row.expires_at is not None and now >= row.expires_at):
        raise AuthError("invalid or expired token")
    user = session.get(User, row.user_id)
    if user is None or not user.active:
        raise AuthError("invalid or expired token")
    return Principal(user.id, user.username, user.role, user.tenant_id, user.consumer_id)


class Scope:
    """What one caller may see; the ONLY place tenant/consumer isolation is decided.

    >>> scope = Scope(Principal(2, "ravi", "consumer", tenant_id=1, consumer_id=5))
    >>> scope.tenant_id
    1
    """

    def __init__(self, principal):
        self.principal = principal
        self.tenant_id = principal.tenant_id

    @property
    def all_tenants(self):
        return self.principal.role == ADMIN and self.tenant_id is None

    def meters_query(self):
        """``select(Meter)`` limited to the caller's meters."""
        q = select(M.Meter)
        p = self.principal
        if p.role == CONSUMER:
            # a consumer without a consumer record sees nothing (consumer_id == NULL is never true)
            return q.where(M.Meter.tenant_id == p.tenant_id, M.Meter.consumer_id == p.consumer_id)
        if p.role == PAYMENT_GATEWAY:
            return q.where(False)
        if self.all_tenants:
            return q
        return q.where(M.Meter.tenant_id == p.tenant_id)

    def meter_ids(self):
        """A subquery of the caller's meter ids, for ``column.in_(scope.meter_ids())``."""
        return self.meters_query().with_only_columns(M.Meter.id).scalar_subquery()

    def meter(self, session, meter_id):
        """The meter ``meter_id`` if the caller may see it, else NotVisible."""
        found = session.scalars(self.meters_query().where(M.Meter.id == meter_id)).first()
        if found is None:
            raise NotVisible("no meter %r" % meter_id)
        return found

    def meter_for_payment(self, session, meter_id):
        """The meter a payment gateway may credit: any active meter of its own tenant.

        A gateway cannot *read* meters (``meters_query`` is empty for it); it may
        only name one in a payment, and only inside its tenant.
        """
        q = select(M.Meter).where(M.Meter.id == meter_id, M.Meter.active.is_(True))
        if not self.all_tenants:
            q = q.where(M.Meter.tenant_id == self.tenant_id)
        found = session.scalars(q).first()
        if found is None:
            raise NotVisible("no meter %r" % meter_id)
        return found

    def tenant_for_write(self, tenant_id=None):
        """The tenant a new object goes to: the caller's own; a platform admin must name one."""
        if self.all_tenants:
            if tenant_id is None:
                raise ValueError("a platform admin must give tenant_id")
            return tenant_id
        if tenant_id is not None and tenant_id != self.tenant_id:
            raise NotVisible("no tenant %r" % tenant_id)
        return self.tenant_id

    def sees_tenant(self, tenant_id):
        return self.all_tenants or tenant_id == self.tenant_id
