"""Optional dependencies: import them where they are used, with an install hint when absent.

The base install (2D search, retraining, evaluation, export) needs none of them; each extra of
``pyproject.toml`` names what a feature adds, e.g. ``pip install 'autodeeplab[ray]'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra provides it."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``extra`` and ``feature``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{feature} needs the '{module.split('.')[0]}' package ({err}): "
            f"pip install 'autodeeplab[{extra}]'"
        ) from None
