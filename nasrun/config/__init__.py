"""Typed schemas for the config groups, registered in Hydra's ConfigStore."""

from __future__ import annotations

from nasrun.config.schema import register_configs

__all__ = ["register_configs"]
