"""Build a component from its config group, with one clear line for a key it does not take.

A schema stops a misspelt key at compose time, but ``+group.key=value`` (which Hydra's own error
message suggests) adds the key anyway, and the constructor then fails with a ``TypeError`` deep
inside ``hydra.utils.instantiate``. ``build`` reports that as a ``UserError`` naming the key, the
config group and the valid keys.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nasrun import UserError

_UNEXPECTED = re.compile(r"got an unexpected keyword argument '(\w+)'")


def build(cfg: DictConfig, group: str, **kwargs: Any) -> Any:
    """Instantiate ``cfg.<group>``; call the result with ``kwargs`` if any (a ``_partial_`` config).

    Args:
        cfg: the composed config.
        group: the config group, e.g. ``"search"``.
        **kwargs: arguments for a partial's call (``space=...``, ``seed=...``).

    Returns:
        The component, or ``None`` if the group is unset (``search=null``).

    Raises:
        UserError: the group's config holds a key that the component's constructor does not take.
    """
    node = cfg.get(group)
    if node is None:
        return None
    try:
        obj = instantiate(node)
        return obj(**kwargs) if kwargs else obj
    except Exception as e:
        key = _unexpected_key(e)
        if key is None or key not in node:
            raise  # not a config key: a bug, keep the traceback
        raise UserError(
            f"{group}.{key}: unknown key for {_option(group, node)}; valid keys: {', '.join(_valid_keys(node, key))}"
        ) from None


def _unexpected_key(exc: BaseException | None) -> str | None:
    """The keyword named by an "unexpected keyword argument" ``TypeError`` in ``exc``'s chain."""
    while exc is not None:
        if isinstance(exc, TypeError) and (m := _UNEXPECTED.search(str(exc))):
            return m.group(1)
        exc = exc.__cause__ or exc.__context__
    return None


def chosen(group: str) -> str | None:
    """``group=option`` as chosen for this run (on the command line or by default), when Hydra runs it.

    For messages that say what the user did (``search=p_darts``) rather than which key holds the
    value that does not fit; ``None`` outside a Hydra run (tests, the Python API).
    """
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return f"{group}={choice}"
    return None


def _option(group: str, node: DictConfig) -> str:
    """``group=option`` as chosen when Hydra knows it, else the target."""
    return chosen(group) or f"{group} ({node.get('_target_', '?')})"


def _valid_keys(node: DictConfig, bad: str) -> list[str]:
    """The keys the group's schema declares (else the node's other keys), without ``_target_`` etc."""
    schema = OmegaConf.get_type(node)
    if schema is not None and dataclasses.is_dataclass(schema):
        keys = [f.name for f in dataclasses.fields(schema)]
    else:
        keys = [str(k) for k in node.keys() if k != bad]
    return [k for k in keys if not k.startswith("_")]
