"""The ``nasrun`` command: a thin Hydra entry point around ``pipeline.run``.

User mistakes (``UserError``) print as one line without a traceback; in a multirun the error is
re-raised so that the sweeper records the trial as failed and goes on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from nasrun import UserError
from nasrun.config import register_configs


def config_dir() -> Path:
    """``conf/`` of a source checkout or editable install, else the copy shipped in the wheel."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"


def _user_error(exc: BaseException) -> UserError | None:
    """The ``UserError`` behind ``exc`` (Hydra's instantiate wraps exceptions of targets)."""
    while exc is not None:
        if isinstance(exc, UserError):
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


register_configs()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def task(cfg: DictConfig) -> float:
    """Run one nasrun job; return its objective (validation accuracy, %) for sweepers."""
    from nasrun import pipeline  # imported here so that `nasrun --help` stays fast

    hc = HydraConfig.get()
    try:
        return pipeline.run(cfg, Path(hc.runtime.output_dir))
    except Exception as e:
        err = _user_error(e)
        if err is None or hc.mode == RunMode.MULTIRUN:
            raise
        print(f"nasrun: error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Console-script entry point."""
    from nasrun.bo import prepare_sweeper_args  # light: no torch or BoTorch import

    # Lets users type `hydra.sweeper.params.trainer.lr=tag(log, interval(1e-4, 0.3))` unquoted.
    sys.argv[1:] = prepare_sweeper_args(sys.argv[1:])
    task()


if __name__ == "__main__":
    main()
