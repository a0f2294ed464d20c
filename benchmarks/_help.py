"""A module docstring as a command's ``--help`` text: the Sphinx markup that documents it left out."""

from __future__ import annotations

import argparse
import re

# :data:`NAME`, :func:`name`, :class:`~pkg.Name` -> the name as written (a leading ~ dropped); ``code`` -> code.
_ROLE = re.compile(r":\w+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def help_text(doc: str) -> str:
    """``doc`` with Sphinx roles and double-backquoted literals reduced to their text, lines and indents kept."""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", doc))


def described_parser(doc: str) -> argparse.ArgumentParser:
    """A command's parser whose ``--help`` opens with ``doc`` as :func:`help_text`, its lines and indents as written."""
    return argparse.ArgumentParser(description=help_text(doc), formatter_class=argparse.RawDescriptionHelpFormatter)
