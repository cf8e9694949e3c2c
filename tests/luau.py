"""Run the Roblox side's Luau modules under a real Luau VM (the ``pluau`` package).

pluau's ``__init__`` uses Python 3.12 syntax, so on 3.11 we load its compiled extension
directly. ``LuauVM`` gives every module a Roblox-like ``script`` (``script.Parent.Name``
resolves to a sibling module) and a global ``require`` that accepts those proxies or plain
module names, so the same sources run in Roblox (via Rojo) and here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rbxenv.luau import load_pluau

REPO = Path(__file__).resolve().parent.parent
ROBLOX = REPO / "roblox"
SRC = ROBLOX / "src"
# Folders whose modules ``require`` can resolve by name (engine modules only compile here).
MODULE_DIRS = [SRC / "shared", SRC / "policies", ROBLOX / "tests"]


pluau = load_pluau()


def luau_files() -> list[Path]:
    """Every Luau source under roblox/ (node_modules excluded)."""
    return sorted(p for p in ROBLOX.rglob("*.luau") if "node_modules" not in p.parts)


def compile_file(path: Path) -> None:
    """Compile one file; raises AssertionError with the compiler's message on a syntax error."""
    assert pluau is not None, "pluau is not installed"
    vm = pluau.Lua()
    try:
        vm.load_chunk(path.read_text(encoding="utf-8"), name="@" + str(path.relative_to(REPO)))
    except Exception as exc:  # pluau raises RuntimeError("syntax error: ...")
        raise AssertionError(f"{path.relative_to(REPO)} does not compile: {exc}") from None


# A Roblox-like ``script`` for each module: ``script.Parent.Foo`` names module Foo. Defined in Luau
# so that module code indexes plain Luau tables (fast) rather than Python objects.
_PRELUDE = """
local loadModule = ...
local cache = {}
local loading = {}
local Folder = {}
Folder.__index = function(_, name)
    return setmetatable({ Name = name, __module = name, Parent = nil }, { __index = function(self, key)
        error("module proxy " .. self.Name .. " has no child " .. tostring(key), 2)
    end })
end
local parent = setmetatable({ Name = "Modules" }, Folder)
local function require(target)
    local name = if type(target) == "string" then target
        elseif type(target) == "table" and rawget(target, "__module") then rawget(target, "__module")
        else error("require: expected a module name or script proxy, got " .. typeof(target), 2)
    if cache[name] ~= nil then
        return cache[name]
    end
    if loading[name] then
        error("require: cyclic dependency on " .. name, 2)
    end
    loading[name] = true
    local chunk = loadModule(name, { Name = name, __module = name, Parent = parent })
    local result = chunk()
    loading[name] = nil
    if result == nil then
        error("module " .. name .. " returned nothing", 2)
    end
    cache[name] = result
    return result
end
return require
"""


class LuauVM:
    """One Luau VM with our module loader installed as the global ``require``."""

    def __init__(self, extra_globals: dict[str, Callable[..., Any]] | None = None) -> None:
        assert pluau is not None, "pluau is not installed"
        self.lua = pluau.Lua()
        self._globals = self.lua.globals()
        for name, fn in (extra_globals or {}).items():
            self._globals.set(name, self.lua.create_function(lambda _lua, args, _fn=fn: [_fn(*args)]))
        loader = self.lua.create_function(self._load_module)
        self.require_fn = self.lua.load_chunk(_PRELUDE, name="=prelude")(loader)[0]
        self._globals.set("require", self.require_fn)

    @staticmethod
    def find_module(name: str) -> Path:
        for folder in MODULE_DIRS:
            path = folder / f"{name}.luau"
            if path.exists():
                return path
        raise FileNotFoundError(f"no Luau module named {name!r} in {[str(d) for d in MODULE_DIRS]}")

    def _load_module(self, _lua: Any, args: tuple[Any, ...]) -> Any:
        # pluau calls Python callbacks as (lua, args_tuple) and returns a list of results
        name, script = args
        path = self.find_module(str(name))
        env = self.lua.create_table()
        meta = self.lua.create_table()
        meta.set("__index", self._globals)
        env.set_metatable(meta)
        env.set("script", script)
        chunk = self.lua.load_chunk(path.read_text(encoding="utf-8"), name="@" + str(path.relative_to(REPO)), env=env)
        return [chunk]  # a callback returns a list of values

    def require(self, name: str) -> Any:
        return self.require_fn(name)[0]

    def eval(self, source: str, *args: Any) -> list[Any]:
        """Run a chunk (``...`` are the args) and return its results."""
        return self.lua.load_chunk(source, name="=eval")(*args)


def to_python(value: Any) -> Any:
    """Convert Luau tables (arrays -> lists, maps -> dicts) and strings to Python values."""
    if pluau is not None and isinstance(value, pluau.Table):
        items = [(to_python(k), to_python(v)) for k, v in value]
        keys = [k for k, _ in items]
        if keys and all(isinstance(k, int) for k in keys) and sorted(keys) == list(range(1, len(keys) + 1)):
            return [v for _, v in sorted(items)]
        return dict(items)
    if pluau is not None and isinstance(value, pluau.String):
        return str(value)
    return value


def spec_cases(spec: str) -> list[str]:
    """Names of the test cases a spec module (roblox/tests/<spec>.luau) defines."""
    vm = LuauVM()
    cases = vm.require(spec)
    return sorted(str(k) for k, _ in cases)


def run_spec_case(spec: str, case: str, **context: Callable[..., Any]) -> None:
    """Run one case of a spec module in a fresh VM; a Luau error becomes an AssertionError."""
    vm = LuauVM()
    ctx = vm.lua.create_table()
    for key, fn in context.items():
        ctx.set(key, vm.lua.create_function(lambda _lua, args, _fn=fn: [_fn(*args)]))
    fn = vm.require(spec).get(case)
    assert fn is not None, f"{spec} has no case {case}"
    try:
        fn(ctx)
    except Exception as exc:  # pluau raises RuntimeError("runtime error: ...")
        raise AssertionError(f"{spec}.{case} failed:\n{exc}") from None
