"""Registry of benchmark suites.

A suite is a module in this package exposing

* ``NAME`` (str): the sub-command, ``difflinalg bench NAME``;
* ``DESCRIPTION`` (str): one line for ``difflinalg bench list`` and ``--help``;
* ``add_arguments(parser)``: adds its options to an ``argparse.ArgumentParser``;
* ``run(args) -> int``: runs it and returns the exit status.

To add a suite, write ``suites/<name>.py`` and add ``"<name>"`` to :data:`SUITE_MODULES`.
Modules are imported only when the command line is built, not when ``difflinalg`` is.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["SUITE_MODULES", "load_suites"]

SUITE_MODULES: tuple[str, ...] = ("householder", "nn_orthogonal", "spectral", "sqrtm",
                                   "factorize", "contract", "sparse")

_REQUIRED = ("NAME", "DESCRIPTION", "add_arguments", "run")


def load_suites() -> dict[str, ModuleType]:
    """The registered suites by ``NAME``, in registration order."""
    suites: dict[str, ModuleType] = {}
    for module_name in SUITE_MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        missing = [attr for attr in _REQUIRED if not hasattr(module, attr)]
        if missing:
            raise TypeError(f"bench suite {module.__name__}: missing {', '.join(missing)}")
        suites[module.NAME] = module
    return suites
