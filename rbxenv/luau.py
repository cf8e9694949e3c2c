"""The Luau VM binding (``pluau``), loaded so that it works on Python 3.11.

pluau's package ``__init__`` uses Python 3.12 syntax (``type X = ...``), so on 3.11 we load its
compiled extension ``_pluau`` directly. Used by ``export_onnx.py --luau`` (parity check of the
generated policy module) and by the tests of the Roblox side.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_pluau() -> ModuleType | None:
    """pluau's compiled module, or None when pluau is not installed (it is a dev dependency)."""
    if "_pluau" in sys.modules:
        return sys.modules["_pluau"]
    spec = importlib.util.find_spec("pluau")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(location) / f"_pluau{suffix}"
            if path.exists():
                ext = importlib.util.spec_from_file_location("_pluau", path)
                assert ext is not None and ext.loader is not None
                module = importlib.util.module_from_spec(ext)
                ext.loader.exec_module(module)
                sys.modules["_pluau"] = module
                return module
    return None
