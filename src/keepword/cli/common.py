"""What every subcommand needs: the settings and the store."""

from __future__ import annotations

import argparse

from sqlalchemy import Engine

from keepword.config import Settings, load_config, resolve_config_path
from keepword.store.db import open_store


def settings_from(args: argparse.Namespace) -> Settings:
    return load_config(resolve_config_path(getattr(args, "config", None)))


def engine_from(settings: Settings) -> Engine:
    return open_store(settings.keepword.effective_database_url())
