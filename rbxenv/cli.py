"""How every command answers: bad input is one line and exit code 2, a runtime failure one line and 1.

Every entry point (the training scripts, ``export_onnx.py``, ``python -m rbxenv.drive / .sim /
.tracks``, ``examples/`` and ``bench/``) refuses bad flags through this module before it starts
any work, so the same mistake reads the same everywhere::

    ppo_continuous.py: error: --num-agents 0: allowed: 1 or more

Standard library only (tyro is imported when used): a refusal costs no torch or numba import.
Exit codes: 0 done, 1 a runtime failure (no game, lost game, timeout, a file that cannot be
written), 2 bad input, 128 + signal number after Ctrl-C (130) or SIGTERM (143).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
HELDOUT_TRACKS = 1000  # len(rbxenv.HELDOUT_TRACK_SEEDS), known here without loading the env (a test checks)


def refuse(prog: str, message: str) -> NoReturn:
    """Bad input: one line on stderr, exit code 2."""
    _exit(prog, "error: " + message, EXIT_BAD_INPUT)


def fail(prog: str, message: str) -> NoReturn:
    """A runtime failure (the input was fine): one line on stderr, exit code 1."""
    _exit(prog, message, EXIT_FAILURE)


def _exit(prog: str, message: str, code: int) -> NoReturn:
    one_line = " ".join(str(message).split())  # messages from elsewhere may hold newlines
    print(f"{prog}: {one_line}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def figure(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    """A measured figure for people: "-" when it does not exist (None, NaN: no lap completed), never "nan"."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:{spec}}{unit}"


# ---------------------------------------------------------------------------------------------------- parsers


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its refusals on one line (argparse prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        refuse(self.prog.removeprefix("python -m "), f"{message} (see --help)")


def tyro_cli(cls: type, prog: str, **kwargs: Any) -> Any:
    """``tyro.cli`` with its refusals on one line instead of tyro's boxed, multi-line panel."""
    import tyro

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = tyro.cli(cls, prog=prog, **kwargs)
    except SystemExit as stop:
        if stop.code in (0, None):  # --help
            raise
        refuse(prog, _tyro_message(captured.getvalue()) + " (see --help)")
    sys.stderr.write(captured.getvalue())  # warnings of a parse that succeeded are not lost
    return args


def _tyro_message(panel: str) -> str:
    """The message inside tyro's panel: its first paragraph, and the option it suggests if any."""
    lines = [re.sub(r"^[│╭╰\s]+|[│╮╯\s]+$", "", line) for line in re.sub(r"\x1b\[[0-9;]*m", "", panel).splitlines()]
    paragraphs, current = [], []
    for line in lines[1:]:  # lines[0] is the title bar
        if not line or set(line) <= set("─"):
            if current:
                paragraphs.append(" ".join(current))
            current = []
        else:
            current.append(line)
    if current:
        paragraphs.append(" ".join(current))
    if not paragraphs:
        return "invalid arguments"
    message = paragraphs[0]
    suggestion = re.search(r"Perhaps you meant:\s+(--[\w-]+)", " ".join(paragraphs[1:]))
    if suggestion:
        message += f"; did you mean {suggestion.group(1)}?"
    return message


# ---------------------------------------------------------------------------------------------------- checks


def at_least(bound: float) -> Callable[[Any], str | None]:
    return lambda v: None if _number(v) and v >= bound else f"allowed: {bound:g} or more"


def above(bound: float) -> Callable[[Any], str | None]:
    return lambda v: None if _number(v) and v > bound else f"allowed: a number above {bound:g}"


def between(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda v: None if _number(v) and low <= v <= high else f"allowed: {low:g} to {high:g}"


def finite(v: Any) -> str | None:
    return None if _number(v) else "allowed: a finite number"


def readable_file(v: Any) -> str | None:
    """An existing, readable regular file (what the file holds is the loader's to judge)."""
    if not os.path.exists(v):
        return "no such file"
    if os.path.isdir(v):
        return "is a directory, not a file"
    try:
        with open(v, "rb") as f:
            f.read(1)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    return None


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check(prog: str, args: Any, rules: dict[str, Callable[[Any], str | None]]) -> None:
    """Refuse (one line, exit 2) the first value of ``args`` that breaks its rule: "--gamma 1.5: allowed: 0 to 1".

    ``rules`` maps a flag ("--num-agents", or a positional's name) to a rule above (the value in,
    what is wrong with it out, or None); the value is
    the attribute of the same name (num_agents). None means "not given" and passes; every item
    of a list or tuple must pass.
    """
    for flag, rule in rules.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        items: Iterable[Any] = value if isinstance(value, list | tuple) else [value]
        for item in items:
            problem = None if item is None else rule(item)
            if problem:
                refuse(prog, f"{flag} {_show(value)}: {problem}")


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(_show, value))
    return repr(value) if isinstance(value, str) and (not value or " " in value) else str(value)
