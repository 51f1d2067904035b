"""Where nasrun's config tree (``conf/``) is, in a source checkout and in an installed wheel."""

from __future__ import annotations

from pathlib import Path

# nasrun/config/paths.py -> nasrun/
_PACKAGE = Path(__file__).resolve().parent.parent


def config_dir() -> Path:
    """``conf/`` of a source checkout or editable install, else the copy shipped in the wheel.

    The wheel ships the top-level ``conf/`` as the package ``nasrun.conf`` (see ``pyproject.toml``).
    """
    packaged = _PACKAGE / "conf"
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / "conf"
