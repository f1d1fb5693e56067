"""Alembic migrations of the head-end schema.

    alembic -c headend/migrations/alembic.ini upgrade head      (uses URJA_DATABASE_URL)

or from Python (tests, ``urja-headend migrate``):

>>> upgrade("sqlite:///out/urja.db")                          # doctest: +SKIP
"""
import pathlib

from alembic import command
from alembic.config import Config

INI = pathlib.Path(__file__).with_name("alembic.ini")


def alembic_config(url=None, schema=None, engine=None):
    """An Alembic Config for this folder; ``schema`` migrates into a private PostgreSQL schema."""
    cfg = Config(str(INI))
    cfg.set_main_option("script_location", str(INI.parent))
    if url:
        cfg.attributes["url"] = url
    if schema:
        cfg.attributes["schema"] = schema
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def upgrade(url=None, revision="head", schema=None, engine=None):
    """Bring the database at ``url`` (default URJA_DATABASE_URL) up to ``revision``."""
    command.upgrade(alembic_config(url, schema, engine), revision)


def downgrade(url=None, revision="base", schema=None, engine=None):
    command.downgrade(alembic_config(url, schema, engine), revision)
