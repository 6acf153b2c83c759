"""The argument parser every pipeline uses: a usage error is one line with a pointer to
--help (exit 2), and --help shows each flag's default."""
from __future__ import annotations

import argparse
import sys

EXIT_USER = 2


class HelpFormatter(argparse.RawTextHelpFormatter):
    """The docstring's examples kept as written; "(default: X)" added where a flag has a
    default its help does not already state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False
                or default == argparse.SUPPRESS
                or action.nargs == 0 or not (action.option_strings or action.nargs == "?")):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str) -> None:  # argparse would print the whole usage first
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER)


def add_mlflow_uri(group) -> None:
    """--mlflow-uri, with the older --tracking-uri kept as a hidden alias."""
    group.add_argument("--mlflow-uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, "
                                            "else sqlite:///{storage}/mlflow.db)")
    group.add_argument("--tracking-uri", dest="mlflow_uri", help=argparse.SUPPRESS)


def add_dry_run(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--dry-run", action="store_true",
                   help=f"print {what} and exit: no Ray, data, weights or MLflow")
