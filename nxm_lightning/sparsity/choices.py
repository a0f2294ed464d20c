"""One way to declare and check a choice among names: a ``Literal`` type, its valid values read from it. Plain Python.

A constructor argument such as ``penalty`` or ``backend`` is typed with a ``Literal`` (so LightningCLI lists the valid
values in ``--help`` and checks them in YAML); :func:`check_choice` refuses anything else in the same words everywhere,
for callers that bypass the CLI.
"""

from __future__ import annotations

from typing import Any, get_args


def choices_of(choice_type: Any) -> tuple[str, ...]:
    """The valid values of a ``Literal[...]`` type, in their declared order."""
    return get_args(choice_type)


def check_choice(argument: str, value: object, choice_type: Any) -> None:
    """Raise ``ValueError`` naming ``argument`` and listing the valid values unless ``value`` is one of them.

    Args:
        argument: the argument's name, as the user writes it (``"saliency"``).
        value: what was given.
        choice_type: the ``Literal[...]`` type that declares the valid values.
    """
    valid = choices_of(choice_type)
    if value not in valid:
        raise ValueError(f"{argument}={value!r} is not one of {valid}. Valid values: {', '.join(valid)}.")
