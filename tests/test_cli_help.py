"""`handgrad SUB --help`: every option that has a default says it."""

import argparse
import re

import pytest

from handgrad import cli


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def entry(help_text: str, action: argparse.Action) -> str:
    """The help block of `action` in `help_text`: its first line and the indented lines below it."""
    name = action.option_strings[0] if action.option_strings else action.metavar or action.dest
    lines = help_text.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^  {re.escape(name)}(\s|,|$)", line):
            block = [line]
            for more in lines[i + 1:]:
                if not more.startswith("    "):
                    break
                block.append(more)
            return " ".join(block)
    raise AssertionError(f"{name} not in the help")


def has_default(action: argparse.Action) -> bool:
    """An option whose default a user should know: not unset (None), not an on/off switch, not --help."""
    return action.default is not None and action.default is not argparse.SUPPRESS and \
        not isinstance(action.default, bool)


@pytest.mark.parametrize("name", list(subparsers()))
def test_every_option_with_a_default_shows_it_in_help(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    sub = subparsers()[name]
    text = sub.format_help()
    with_default = [a for a in sub._actions if has_default(a)]
    for action in with_default:
        assert "default" in entry(text, action), (name, action.dest, entry(text, action))


def test_the_help_shows_the_values_themselves():
    helps = {name: " ".join(sub.format_help().split()) for name, sub in subparsers().items()}
    assert "(default: 1e-06)" in helps["lr-find"] and "(default: 10)" in helps["lr-find"]
    assert "(default: 3)" in helps["predict"] and "(default: kaiming)" in helps["train"]
    assert "(default: 16,32,64)" in helps["trace"] and "(default: 5)" in helps["bench"]
    assert "(default: None)" not in " ".join(helps.values())  # no default means none is shown
