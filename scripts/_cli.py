"""Command-line plumbing the scripts share: one --flag per Config field, and errors without tracebacks."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from helpers.config import Config
from helpers.unet import UNetConfig

SKIP = {"model", "preset", "dataset", "seed"}  # the scripts give these their own flags


def _converter(annotation):
    """A string -> value converter for a dataclass field's type (tuples as '16,32,64', 'none')."""
    text = str(annotation)

    def convert(s: str):
        if "None" in text and s.lower() in ("none", "null", ""):
            return None
        if "tuple" in text:  # 'none' is () for a tuple that cannot be None (--ema-lengths none: off)
            number = float if "float" in text else int
            return () if s.lower() == "none" else tuple(number(v) for v in s.split(",") if v.strip())
        return float(s) if "float" in text else int(s) if "int" in text else s

    convert.__name__ = text  # argparse names the type in "invalid ... value" errors
    return convert


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per Config / UNetConfig field (default: the preset's value)."""
    group = parser.add_argument_group("hyperparameters (default: the preset's value)")
    for cls in (Config, UNetConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in SKIP:
                continue
            flag = "--" + f.name.replace("_", "-")
            if hints[f.name] is bool:  # not given: absent (SUPPRESS), so that "none" can set a field to None
                group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
            else:
                group.add_argument(flag, dest=f.name, type=_converter(hints[f.name]), default=argparse.SUPPRESS,
                                   metavar=f.name.upper())


def overrides_from(args: argparse.Namespace) -> dict:
    """The Config fields given on the command line."""
    names = {f.name for cls in (Config, UNetConfig) for f in dataclasses.fields(cls)} - SKIP
    return {k: v for k, v in vars(args).items() if k in names}


def fail(message: str, code: int = 2) -> typing.NoReturn:
    """Print `error: message` to stderr and exit with `code` (2: bad input, as argparse does)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
