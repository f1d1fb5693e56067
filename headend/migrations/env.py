"""Alembic environment: one migration history for every table on headend.db.Base.

The URL is, in order: ``config.attributes["url"]`` (set by
``headend.migrations.upgrade``), ``-x url=...`` on the command line,
``URJA_DATABASE_URL``, the SQLite default.  ``version_table_schema`` follows
``-x schema=`` / ``config.attributes["schema"]`` so tests can migrate a
private PostgreSQL schema.
"""
import importlib

from alembic import context
from sqlalchemy import text

from headend.db import Base, database_url, make_engine

# Every module that defines tables must be imported so autogenerate sees it.
# Modules owned by other work streams may not exist yet on a given checkout.
for _name in ("headend.models", "headend.ledger", "headend.commands", "headend.payments",
              "headend.alerts", "headend.auth", "headend.guardrails", "headend.reconcile",
              "headend.vee", "headend.tokens", "headend.channel", "headend.ota",
              "headend.campaigns"):
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as err:
        if err.name != _name:
            raise

config = context.config
target_metadata = Base.metadata


def _url():
    xargs = context.get_x_argument(as_dictionary=True)
    return config.attributes.get("url") or xargs.get("url") or database_url()


def _schema():
    xargs = context.get_x_argument(as_dictionary=True)
    return config.attributes.get("schema") or xargs.get("schema")


def run_migrations_offline():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=_url().startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    engine = config.attributes.get("engine") or make_engine(_url())
    schema = _schema()
    with engine.connect() as conn:
        if schema:
            conn.execute(text('CREATE SCHEMA IF NOT EXISTS "%s"' % schema))
            conn.execute(text('SET search_path TO "%s"' % schema))
            conn.commit()
        context.configure(connection=conn, target_metadata=target_metadata,
                          render_as_batch=conn.dialect.name == "sqlite",
                          version_table_schema=schema)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
