"""The ``nasrun`` command: a thin Hydra entry point around ``pipeline.run``.

User mistakes print as one line without a traceback and exit with status 2: a ``UserError``, a
required config value left at ``???``, and the config errors Hydra finds while composing (an
unknown key, a value of the wrong type, a missing config file, a malformed override). In a
multirun a job's error is re-raised so that the sweeper records the trial as failed and goes on.
Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from nasrun import UserError
from nasrun.config import register_configs


def config_dir() -> Path:
    """``conf/`` of a source checkout or editable install, else the copy shipped in the wheel."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"


def _user_error(exc: BaseException) -> Exception | None:
    """The user mistake behind ``exc`` (Hydra's instantiate wraps exceptions of targets)."""
    while exc is not None:
        if isinstance(exc, UserError | MissingMandatoryValue):
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def _message(exc: BaseException) -> str | None:
    """The one line that reports ``exc`` if it is a user mistake, else ``None``."""
    err = _user_error(exc)
    if isinstance(err, UserError):
        return str(err)  # one line by contract
    if err is not None or isinstance(exc, CompactHydraException):
        return _one_line(err or exc)
    return None


def _one_line(exc: BaseException) -> str:
    """A Hydra or OmegaConf error message (several lines, often with a cause) as one line."""
    if isinstance(exc, MissingConfigException) and exc.options:
        # The message goes on to list the options and the config search path, over many lines.
        return f"{str(exc).strip().splitlines()[0]}; options: {', '.join(exc.options)}"
    parts: list[str] = []
    if isinstance(exc, OverrideParseException):
        parts.append(f"{exc.override}:")
    cur: BaseException | None = exc
    while cur is not None:
        lines: list[str] = []
        for line in str(cur).splitlines():
            line = line.strip()
            if line.startswith("full_key:"):
                key = line.split(":", 1)[1].strip()
                if any(key in p for p in [*parts, *lines]):
                    continue
                line = f"(key {key})"
            if line and not line.startswith(("object_type=", "reference_type=", "See https://")):
                lines.append(line)
        if lines:
            parts.append(" ".join(lines) + (";" if cur.__cause__ is not None else ""))
        cur = cur.__cause__
    return " ".join(parts).rstrip(";")


register_configs()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def task(cfg: DictConfig) -> float:
    """Run one nasrun job; return its objective (validation accuracy, %) for sweepers."""
    from nasrun import pipeline  # imported here so that `nasrun --help` stays fast

    hc = HydraConfig.get()
    try:
        return pipeline.run(cfg, Path(hc.runtime.output_dir))
    except Exception as e:
        if _user_error(e) is None or hc.mode == RunMode.MULTIRUN:
            raise
        print(f"nasrun: error: {_message(e)}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Console-script entry point."""
    from nasrun.bo import prepare_sweeper_args  # light: no torch or BoTorch import

    # Lets users type `hydra.sweeper.params.trainer.lr=tag(log, interval(1e-4, 0.3))` unquoted.
    sys.argv[1:] = prepare_sweeper_args(sys.argv[1:])
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        task()  # the user asked for Hydra's full stack traces
        return
    # Hydra reports the errors it finds while composing the config (and a multirun's failed
    # jobs) itself, over several lines with exit status 1; with HYDRA_FULL_ERROR it raises them
    # instead, so that they end here.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        task()
    except Exception as e:
        message = _message(e)
        if message is None:
            raise
        print(f"nasrun: error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        del os.environ["HYDRA_FULL_ERROR"]


if __name__ == "__main__":
    main()
