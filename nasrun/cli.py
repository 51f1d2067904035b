"""The ``nasrun`` command: a thin Hydra entry point around ``pipeline.run``.

User mistakes print as one line without a traceback and exit with status 2: a ``UserError``, a
required config value left at ``???``, and the config errors Hydra finds while composing (an
unknown key, a value of the wrong type, a missing config file, a malformed override). In a
multirun a job's error is re-raised so that the sweeper records the trial as failed and goes on.
Anything else (a bug) keeps its traceback. A single run refused before any work leaves no run
folder behind (``run_guard.undo_refused_run``).

Before Hydra sees the command line, ``main`` rewrites it where the user's intent needs it: the
sweeper's search spaces (``prepare_sweeper_args``) and the space of a retrained genotype file
(``space_from_genotype``).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from nasrun import StoppedWithFirstProcess, UserError
from nasrun.config import config_dir, register_configs
from nasrun.config.run_guard import holds_checkpoints, undo_refused_run
from nasrun.config.space_choice import space_from_genotype


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
        return _unknown_option(exc)
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


_NOT_FOUND = re.compile(r"(?:In '([^']+)': )?Could not find '([^']+)/([^'/]+)'")


def _unknown_option(exc: MissingConfigException) -> str:
    """``group=name: no such option`` with the options a user can choose, for an unknown option.

    Hydra's message goes on over many lines (the options, the config search path), and its options
    include the ConfigStore's ``*_schema`` entries, which type-check a group but are no choice.
    """
    first = str(exc).strip().splitlines()[0]
    match = _NOT_FOUND.match(first)
    if match is None:
        return f"{first}; options: {', '.join(exc.options or [])}"
    where, group, name = match.groups()
    options = [o for o in exc.options or [] if not (o.endswith("_schema") and o in _stored(group))]
    # Named in a config file rather than on the command line (or conf/config.yaml): say which file.
    origin = f"{where}: " if where not in (None, "config", "hydra/config") else ""
    return f"{origin}{group}={name}: no such option; options: {', '.join(options)}"


def _stored(group: str) -> set[str]:
    """The names of the ConfigStore's configs in ``group``."""
    try:
        return {n.removesuffix(".yaml") for n in ConfigStore.instance().list(group)}
    except OSError:  # no such group in the store
        return set()


def config_groups() -> str:
    """The groups of ``conf/config.yaml``'s defaults list with their options, for ``nasrun --help``.

    Hydra's own list (``$APP_CONFIG_GROUPS``) also shows what the ConfigStore holds, the
    ``*_schema`` configs that type-check each group; these are read from the config files.
    """
    conf = config_dir()
    primary = OmegaConf.to_container(OmegaConf.load(conf / "config.yaml"), resolve=False)
    lines = []
    for entry in primary.get("defaults", []) if isinstance(primary, dict) else []:
        if not isinstance(entry, dict) or len(entry) != 1:
            continue  # the schema and _self_
        ((key, default),) = entry.items()
        group = str(key)
        # Skips `override hydra/...`, `optional a/b@c` and other entries that are not a user's choice.
        if not group.isidentifier():
            continue
        options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        if not options:
            continue
        shown = ", ".join(f"{o} (default)" if o == default else o for o in options)
        if isinstance(default, str) and default.startswith("${"):  # e.g. retrain: ${space}
            shown += f" (default: as {default[2:-1]})"
        lines.append(f"  {group}: {shown}")
    return "\n".join(lines)


register_configs()
# conf/hydra/help/nasrun.yaml calls it; registered here because `nasrun --help` composes the help
# config in this process, after this module is imported.
OmegaConf.register_new_resolver("nasrun_config_groups", config_groups, replace=True)


def _interrupted(run_dir: Path) -> str:
    """What to say after Ctrl-C: how to resume the run in ``run_dir``, if it checkpointed."""
    if not holds_checkpoints(run_dir):
        return f"interrupted before the first checkpoint; nothing to resume in {run_dir}"
    kept = [a for a in sys.argv[1:] if not a.startswith(("resume=", "hydra.run.dir="))]
    command = shlex.join(["nasrun", *kept, f"hydra.run.dir={run_dir}", "resume=true"])
    return f"interrupted; {run_dir} keeps the last checkpoint. Resume with: {command}"


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def task(cfg: DictConfig) -> dict[str, float]:
    """Run one nasrun job; return its numeric results, of which a sweeper picks its objective."""
    from nasrun import pipeline  # imported here so that `nasrun --help` stays fast

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    rank = _data_parallel_rank()
    if rank is not None:  # the launcher stops the other processes with SIGTERM when one fails
        signal.signal(signal.SIGTERM, _stopped_by_launcher)
    try:
        return pipeline.run(cfg, run_dir)
    except StoppedWithFirstProcess:
        return {}  # another process of this run reports its end
    except KeyboardInterrupt:
        if hc.mode == RunMode.MULTIRUN:
            raise
        print(f"nasrun: {_interrupted(run_dir)}", file=sys.stderr)
        sys.exit(130)
    except _PeerStopped:
        if rank == 0:
            print(f"nasrun: error: {_peer_failed(run_dir)}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        if rank is not None and _collective_failed(e):
            if rank == 0:
                print(f"nasrun: error: {_peer_failed(run_dir)}", file=sys.stderr)
            sys.exit(1)
        if _user_error(e) is None or hc.mode == RunMode.MULTIRUN:
            raise
        undo_refused_run(run_dir)  # refused before any work: no trace of it
        print(f"nasrun: error: {_message(e)}", file=sys.stderr)
        sys.exit(2)


class _PeerStopped(Exception):
    """The launcher (torchrun) stopped this process because another process of the job ended."""


def _stopped_by_launcher(signum: int, frame: object) -> None:
    raise _PeerStopped


def _torchrun_processes() -> int:
    """How many processes torchrun started this one among (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _data_parallel_rank() -> int | None:
    """This process's rank when it is one of several started by torchrun, else ``None``."""
    return int(os.environ.get("RANK", "0") or 0) if _torchrun_processes() > 1 else None


def _collective_failed(exc: BaseException) -> bool:
    """Whether ``exc`` says that a collective call lost another process (it died or hung)."""
    import torch.distributed as dist

    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer")
    )


def _peer_failed(run_dir: Path) -> str:
    """The one line the first process prints when another process of a data-parallel job failed."""
    if not holds_checkpoints(run_dir):
        return "another process of this data-parallel job failed (its own output says why); no checkpoint yet"
    kept = [a for a in sys.argv[1:] if not a.startswith("resume=")]
    command = shlex.join(
        [
            "torchrun",
            "--nproc-per-node",
            os.environ.get("LOCAL_WORLD_SIZE", "N"),
            "-m",
            "nasrun",
            *kept,
            "resume=true",
        ]
    )
    return (
        f"another process of this data-parallel job failed (its own output says why); {run_dir} keeps "
        f"the last checkpoint. Resume with: {command}"
    )


def _skip_hydra_group_listing() -> None:
    """Spare ``nasrun --help`` Hydra's own list of config groups, which our template never shows.

    Hydra fills ``$APP_CONFIG_GROUPS`` and ``$HYDRA_CONFIG_GROUPS`` for every help template,
    copying the whole ConfigStore (every schema) once per group: 1.5 s of the 2 s that
    ``nasrun --help`` took. conf/hydra/help/nasrun.yaml lists the groups itself
    (``nasrun_config_groups``); ``--hydra-help`` still gets Hydra's lists.
    """
    from hydra._internal.hydra import Hydra

    Hydra.format_config_groups = lambda self, predicate, compact=True: ""  # type: ignore[method-assign]


def _shared_folder_missing(args: list[str]) -> str | None:
    """Why a data-parallel start cannot go on: its processes would each name their own run folder.

    The default folder's name holds the start time, which the processes of a ``torchrun`` job read
    a moment apart; they must share one folder, named on the command line.
    """
    processes = _torchrun_processes()
    if processes <= 1 or "trainer.distributed=off" in args or {"-m", "--multirun"} & set(args):
        return None
    if any(a.startswith(("hydra.run.dir=", "--help", "-h", "--cfg", "-c")) for a in args):
        return None
    return (
        f"started as one of {processes} processes (torchrun): give hydra.run.dir=PATH, "
        "the run folder they share (only the first process writes it)"
    )


def main() -> None:
    """Console-script entry point."""
    from nasrun.bo import prepare_sweeper_args  # light: no torch or BoTorch import

    # Lets users type `hydra.sweeper.params.trainer.lr=tag(log, interval(1e-4, 0.3))` unquoted.
    sys.argv[1:] = prepare_sweeper_args(sys.argv[1:])
    # The space of a retrained genotype.json, when the user chose none: before Hydra composes.
    try:
        sys.argv[1:], note = space_from_genotype(sys.argv[1:])
    except UserError as e:
        print(f"nasrun: error: {e}", file=sys.stderr)
        sys.exit(2)
    if note:
        print(f"nasrun: {note}", file=sys.stderr)  # stderr: `--cfg job` prints YAML on stdout
    shared = _shared_folder_missing(sys.argv[1:])
    if shared:
        print(f"nasrun: error: {shared}", file=sys.stderr)
        sys.exit(2)
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        _skip_hydra_group_listing()
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        task()  # the user asked for Hydra's full stack traces
        return
    # Hydra reports the errors it finds while composing the config (and a multirun's failed
    # jobs) itself, over several lines with exit status 1; with HYDRA_FULL_ERROR it raises them
    # instead, so that they end here.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        task()
    except KeyboardInterrupt:
        # A single run says how to resume inside ``task``; this is a sweep or the start-up.
        print(
            "nasrun: interrupted (a sweep resumes when run again with the same hydra.sweep.dir)",
            file=sys.stderr,
        )
        sys.exit(130)
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
