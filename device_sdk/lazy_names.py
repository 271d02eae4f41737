"""Public names that load on first use (PEP 562), for the packages that offer many.

``import device_sdk`` (and the concierge and DPS packages) must not pay for
what a configuration never uses: cryptography, HTTP, the SQLite outbox, the
asyncio face. Each package maps its public names to the modules that define
them and loads one on first use, then keeps it in the package's namespace,
so later lookups are plain attribute reads. The import goes through the
import statement's own path (``importlib.import_module`` is not it), so
``python -X importtime`` still shows what each name costs.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, MutableMapping

__all__ = ["load_name", "public_dir"]


def load_name(
    namespace: MutableMapping[str, object], package: str, homes: Mapping[str, str], name: str
) -> object:
    """The value of ``name`` from its home module; a home named ``<package>.<name>`` is a
    submodule and is the value itself. AttributeError for a name the package lacks."""
    home = homes.get(name)
    if home is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    __import__(home)
    module = sys.modules[home]
    value: object = module if home == f"{package}.{name}" else getattr(module, name)
    namespace[name] = value
    return value


def public_dir(namespace: Mapping[str, object], public: list[str]) -> list[str]:
    """What ``dir()`` shows for a package with lazy names: loaded or not."""
    return sorted(set(namespace) | set(public))
