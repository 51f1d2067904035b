"""``space=`` taken from the genotype file a retraining names, when the command line leaves it out.

A ``genotype.json`` records the search space it belongs to (``"space": "nb201"``), but the space
selects config files of its own (``space=`` and, through ``retrain: ${space}``, the retraining
recipe), so it must be known before Hydra composes the config. ``space_from_genotype`` therefore
reads the ``genotype_path=`` override of a ``task=retrain`` command line and adds ``space=SPACE``
(the file's space) to it; composed that way, ``--cfg job``, ``.hydra/overrides.yaml`` and a resume
all see the space the run uses. A ``space=`` the user typed is kept, and refused if it contradicts
the file.

Only what can be read with certainty is acted on: a file that is missing, not JSON, without a
``space`` or naming a space with no ``conf/space/`` file is left to the run, which reports it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from nasrun import UserError
from nasrun.config.paths import config_dir

#: An option name, as opposed to sweep syntax (``a,b``, ``choice(a, b)``) or an interpolation.
_PLAIN = re.compile(r"[A-Za-z_][\w-]*")


def _override(args: Sequence[str], key: str) -> str | None:
    """The value of the last ``key=value`` override in ``args`` (``+``/``++`` prefixes allowed)."""
    value = None
    for arg in args:
        name, sep, rest = arg.partition("=")
        if sep and name.lstrip("+") == key:
            value = rest.strip().strip("'\"")
    return value


def recorded_space(path: str) -> str | None:
    """The space a genotype file records, if the file can be read and names a space nasrun has."""
    file = Path(path).expanduser()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or not JSON: the run says so, naming the file
    space = data.get("space") if isinstance(data, dict) else None
    if not isinstance(space, str) or not _PLAIN.fullmatch(space):
        return None
    return space if (config_dir() / "space" / f"{space}.yaml").is_file() else None


def space_from_genotype(args: Sequence[str]) -> tuple[list[str], str | None]:
    """Add ``space=SPACE`` to the overrides when ``genotype_path=`` names a file of space SPACE.

    Args:
        args: the command-line arguments (``sys.argv[1:]``).

    Returns:
        The arguments, with ``space=`` added where the user gave none, and the one-line note
        that says so (``None`` when nothing was added).

    Raises:
        UserError: the user's ``space=`` is not the space the genotype file records.
    """
    out = list(args)
    if any(a in ("-h", "--help", "--hydra-help") for a in args):
        return out, None
    path = _override(args, "genotype_path")
    if not path or _override(args, "task") != "retrain":  # only a retraining reads the file
        return out, None
    space = recorded_space(path)
    if space is None:
        return out, None
    chosen = _override(args, "space")
    if chosen is None:
        # Next to genotype_path=: Hydra's argument parser takes the overrides as one run of
        # positional arguments, so one appended after `--cfg job` would be refused.
        at = max(i for i, a in enumerate(args) if a.partition("=")[0].lstrip("+") == "genotype_path")
        out.insert(at + 1, f"space={space}")
        return out, f"space={space}, as recorded in {path}"
    if _PLAIN.fullmatch(chosen) and chosen != space:
        raise UserError(
            f"space={chosen}: {path} is a genotype of space {space!r}, not {chosen!r}; "
            f"drop space={chosen} to retrain it in its own space"
        )
    return out, None
