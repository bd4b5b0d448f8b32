# -*- test-case-name: tests.config -*-
"""The node's configuration: TOML parsed once into frozen, typed objects.

Every key, its type and its default are documented in ``etc/msgplatform.toml``
(a test keeps that file and :func:`default_config` equal). An unknown key, a
wrong type or an out-of-range value raises :class:`ConfigError`, whose text
names the key path: ``limits.max_body: expected an integer >= 64, got 'x'``.

With no config file the node runs the two development-only demo apps of
docs/operations.md §1 (appcodes 1001 and 1002). A config file replaces them: it must
name its own apps.
"""

from daojia_msg.config import model, urls
from daojia_msg.config.model import *  # noqa: F403
from daojia_msg.config.parse import load_config, parse_config
from daojia_msg.config.urls import *  # noqa: F403

__all__ = [*model.__all__, *urls.__all__, "load_config", "parse_config"]
