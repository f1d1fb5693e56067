"""Database plumbing shared by every head-end module: one declarative Base,
engine/session factories, and the URL rules.

SQLite is the embedded default (demo, single node); PostgreSQL is the
production database.  Both run the same models and the same test suite.

    URJA_DATABASE_URL=postgresql+psycopg://user@127.0.0.1:5432/urja
    URJA_DATABASE_URL=sqlite:///out/urja.db        (default)

>>> engine = make_engine("sqlite://")          # in-memory, for a quick look
"""
import os

from sqlalchemy import create_engine, event
from sqlalchemy.orm import DeclarativeBase, sessionmaker

DEFAULT_URL = "sqlite:///out/urja.db"


class Base(DeclarativeBase):
    """Every head-end table derives from this (one metadata, one migration history)."""


def database_url(url=None):
    """The URL to use: explicit argument, else URJA_DATABASE_URL, else the SQLite default."""
    return url or os.environ.get("URJA_DATABASE_URL") or DEFAULT_URL


def make_engine(url=None, **kwargs):
    """An Engine for ``url``; SQLite gets WAL and foreign keys so it behaves like a server."""
    url = database_url(url)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        folder = os.path.dirname(url[len("sqlite:///"):])
        if folder:
            os.makedirs(folder, exist_ok=True)
    engine = create_engine(url, future=True, **kwargs)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()
    return engine


def make_sessionmaker(engine):
    return sessionmaker(bind=engine, expire_on_commit=False, future=True)
