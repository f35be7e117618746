"""The ``advquery`` command: one sub-command per job."""
import argparse
import sys

from .. import __version__
from . import demo, eval as eval_cmd, index, protect, search, ui, verify
from .common import CommandError, OneLineParser, command_environment, error


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="advquery", description="Adversarial queries against content-based image "
                           "retrieval: protect photos from retrieval, measure retrieval robustness.")
    parser.add_argument("--version", action="version", version=f"advquery {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (protect, verify, demo, index, search, eval_cmd, ui):
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    with command_environment():
        try:
            args = build_parser().parse_args(argv)
        except CommandError as exc:  # a bad option: one line, before any work
            error(str(exc))
            return 2
        return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
