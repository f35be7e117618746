"""The command-line reference (docs/cli.md), written from the argument parsers themselves so that it cannot drift.

``python -m advquery.cli.reference > docs/cli.md`` rewrites it; a test compares the file with this output.
"""
import argparse
import sys


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def _invocation(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest.upper()}`" + (" ..." if action.nargs in ("+", "*") else "")
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return f"`{names}`"
    metavar = action.metavar or (f"{{{','.join(map(str, action.choices))}}}" if action.choices else action.dest.upper())
    return f"`{names} {metavar}`"


def _section(path: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    lines = [f"{'#' * level} `{path}`", ""]
    if parser.description:
        lines += [" ".join(parser.description.split()), ""]
    usage = argparse.HelpFormatter(parser.prog, width=100)  # a fixed width: the same file on every terminal
    usage.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    lines += ["```", usage.format_help().strip(), "```", ""]
    rows = [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    if rows:
        lines += ["| argument | meaning |", "|---|---|"]
        for a in rows:
            text = " ".join((a.help or "").split()).replace("|", "\\|").replace("%%", "%")
            if a.default not in (None, False, argparse.SUPPRESS) and "default" not in text and a.option_strings:
                text += f" (default: {a.default})"
            lines.append(f"| {_invocation(a)} | {text} |")
        lines.append("")
    for name, sub in _subcommands(parser):
        lines += _section(f"{path} {name}", sub, level + 1)
    return lines


def markdown_reference(parser: argparse.ArgumentParser) -> str:
    """Every command, its usage and each option with its help, as markdown."""
    head = ["# Command-line reference", "",
            "Generated from the argument parsers by `python -m advquery.cli.reference > docs/cli.md`; "
            "`advquery COMMAND --help` prints the same.", ""]
    return "\n".join(head + _section(parser.prog, parser, 2)).rstrip() + "\n"


if __name__ == "__main__":
    from .main import build_parser

    sys.stdout.write(markdown_reference(build_parser()))
