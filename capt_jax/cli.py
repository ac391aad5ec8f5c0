"""One shape for every command line, and the one place a user mistake becomes `error: ...` and exit code 2.

    python -m capt_jax.COMMAND [--config FILE] [--config.a.b=value ...] [the command's own flags]

`--config` names an ml_collections config file (default: the command's own, or `capt_jax.config`'s defaults);
`--config.a.b=value` overrides go through config_flags (`capt_jax.config.load_config`); the command's own flags
are absl flags. `--help` lists both: the flags, and the config keys that matter to the command with their
current values. Every `CaptError` raised while parsing or running is printed as one line; a run `Interrupted` by
a signal exits with the signal's code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence

import jax
from absl import flags

from capt_jax.config import KEY_HELP, ConfigDict, ConfigError, load_config
from capt_jax.errors import CaptError, Interrupted, names_cudnn_failure
from capt_jax.host_memory import keep_freed_memory

Define = Callable[[flags.FlagValues], None]
Body = Callable[[ConfigDict, flags.FlagValues], None]


@dataclasses.dataclass(frozen=True)
class Command:
    """A command line: its usage text, its own flags, the config keys its --help lists, its default config file."""

    usage: str
    define: Define = lambda values: None
    keys: tuple[str, ...] = ()
    default_config: str | None = None
    keep_freed_memory: bool = False  # set glibc to keep freed memory first (capt_jax.host_memory): training runs


def split_config_args(argv: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
    """(config file, --config.* overrides, everything else) from a command line."""
    path, overrides, rest = None, [], []
    items = list(argv)
    while items:
        item = items.pop(0)
        if item == "--config":
            if not items:
                raise ConfigError("--config needs a file: --config configs/NAME.py")
            path = items.pop(0)
        elif item.startswith("--config="):
            path = item.split("=", 1)[1]
        elif item.startswith("--config."):
            overrides.append(item)
        else:
            rest.append(item)
    return path, overrides, rest


def parse(command: Command, argv: Sequence[str]) -> tuple[ConfigDict, flags.FlagValues]:
    """The config and the command's parsed flags; a CaptError names what is wrong."""
    path, overrides, rest = split_config_args(argv)
    config = load_config(path or command.default_config, overrides)
    values = flags.FlagValues()
    command.define(values)
    try:
        leftover = values(["capt_jax", *rest])[1:]
    except flags.Error as e:
        raise ConfigError(f"{e} (see --help)") from None
    if leftover:
        raise ConfigError(f"unexpected argument(s) {leftover} (see --help)")
    return config, values


def help_text(command: Command, argv: Sequence[str]) -> str:
    """Usage, the command's flags and the config keys that matter, with their values in the chosen config."""
    values = flags.FlagValues()
    command.define(values)
    path, overrides, _ = split_config_args(argv)
    try:
        config = load_config(path or command.default_config, overrides)
    except CaptError:
        config = load_config(command.default_config)
    lines = [command.usage.strip(), ""]
    own = values.get_help(include_special_flags=False).splitlines()
    own = [line for line in own if line.startswith(" ")]  # without absl's "module:" headings
    if own:
        lines += ["Flags:", *own, ""]
    lines += ["Config (--config FILE, then --config.KEY=VALUE overrides; values shown are the config's):"]
    for key in command.keys:
        value = config
        for part in key.split("."):
            value = value[part]
        lines.append(f"  --config.{key}={value!r}" + (f"\n      {KEY_HELP[key]}" if key in KEY_HELP else ""))
    return "\n".join(lines)


def run(command: Command, body: Body, argv: Sequence[str] | None = None) -> None:
    """Parse, then run `body(config, flags)`; a CaptError exits with code 2 and one `error:` line.

    On a real command line (`argv` None) a command that trains first sets the process's malloc to keep freed
    memory (capt_jax.host_memory); a call from Python with its own `argv` leaves the caller's process as it is.
    """
    _run(command, body, list(sys.argv[1:] if argv is None else argv), real=argv is None)


def _run(command: Command, body: Body, argv: list[str], real: bool) -> None:
    """`run` on the command's own arguments; `real`: they come from the process's command line."""
    if real and command.keep_freed_memory:
        keep_freed_memory()
    if "--help" in argv or "-h" in argv:
        print(help_text(command, argv))
        return
    try:
        config, values = parse(command, argv)
        body(config, values)
    except CaptError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Interrupted as e:  # not an error: said on stdout, with the signal's exit code
        print(e)
        raise SystemExit(e.exit_code) from None
    except jax.errors.JaxRuntimeError as e:  # a failure on the device keeps its traceback, with the way out
        if names_cudnn_failure(str(e)):
            _add_note(e, CUDNN_WAY_OUT)
        raise


CUDNN_WAY_OUT = (
    "capt_jax: cuDNN's attention failed on this machine (its version, the GPU, or these shapes); "
    "--config.model.attention_impl=xla runs XLA's attention instead, with the same results"
)


def _add_note(error: BaseException, note: str) -> None:
    """`error.add_note` (shown under the traceback) where Python has it (3.11+); else the note on stderr."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:
        print(note, file=sys.stderr)


def run_group(usage: str, commands: dict[str, tuple[Command, Body]], argv: Sequence[str] | None = None) -> None:
    """A command of subcommands (`python -m capt_jax.data show ...`): the first argument picks one."""
    real = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in commands:
        _run(*commands[argv[0]], argv[1:], real)
    elif argv and argv[0] in ("--help", "-h"):
        print(f"{usage.strip()}\n\nSubcommands (each takes --help): {', '.join(commands)}")
    elif not argv:
        print(f"error: a subcommand is needed, one of {list(commands)} (see --help)", file=sys.stderr)
        raise SystemExit(2)
    else:
        print(f"error: unknown subcommand {argv[0]!r}; expected one of {list(commands)}", file=sys.stderr)
        raise SystemExit(2)
