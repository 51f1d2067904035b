"""The config tree's location and the typed schemas of its groups, registered in Hydra's ConfigStore.

Whoever composes ``config_dir()``'s configs (the CLI, ``pipeline.named_genotype``, tests) calls
``register_configs()`` first: the YAML files name the ``*_schema`` configs it stores.
"""

from __future__ import annotations

from nasrun.config.paths import config_dir
from nasrun.config.schema import register_configs

__all__ = ["config_dir", "register_configs"]
