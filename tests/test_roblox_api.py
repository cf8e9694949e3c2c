"""Every engine class, member and enum the Roblox side uses exists in the Roblox API and is not
deprecated, as published in the ``@rbxts/types`` npm package (generated from Roblox's API dump;
``roblox/package.json`` pins it, ``cd roblox && npm ci`` installs it).

Nothing here runs Roblox, so this is what keeps the engine layer (``roblox/src/engine``,
``roblox/src/server``) honest: a misspelt property, a removed member (``Workspace.FilteringEnabled``)
or a deprecated one (``RaycastParams.FilterDescendantsInstances``) fails here instead of in Studio.

How a use is found: ``Enum.X.Y``; class names in ``Instance.new`` / ``GetService`` / ``IsA`` /
``FindFirstChildWhichIsA`` and in type annotations; ``x.Member`` and ``x:Method(`` where the
receiver's type is known from an annotation (``part: BasePart``, a table field ``primary:
BasePart``), a constructor (``Instance.new("Part")``, ``RaycastParams.new()``), ``GetService`` or a
global (``workspace``, ``game``); datatype constructors (``CFrame.lookAt``, ``Vector3.zero``); and
any ``:Method(`` call on a receiver of unknown type that is not one of our own Luau functions.
The properties set in ``default.project.json`` are checked on their service's class too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROBLOX = ROOT / "roblox"
TYPES = ROBLOX / "node_modules" / "@rbxts" / "types" / "include"
ENGINE_DIRS = [ROBLOX / "src" / "engine", ROBLOX / "src" / "server"]

# Globals of a Roblox script and the API type they are.
GLOBALS = {"workspace": "Workspace", "game": "DataModel", "script": "Script"}
# Luau libraries and our own module tables: not engine receivers.
LUAU_LIBS = {"math", "string", "table", "task", "coroutine", "os", "debug", "utf8", "bit32", "buffer"}


@dataclass
class Api:
    members: dict[str, dict[str, bool]] = field(default_factory=dict)  # type -> member -> deprecated
    bases: dict[str, list[str]] = field(default_factory=dict)
    deprecated_types: set[str] = field(default_factory=set)
    enums: dict[str, dict[str, bool]] = field(default_factory=dict)  # enum -> item -> deprecated

    def chain(self, name: str) -> list[str]:
        out, todo = [], [name]
        while todo:
            t = todo.pop()
            if t not in out:
                out.append(t)
                todo.extend(self.bases.get(t, []))
        return out

    def member(self, type_name: str, member: str) -> bool | None:
        """None if the type (or its bases) lacks the member, else whether it is deprecated."""
        for t in self.chain(type_name):
            if member in self.members.get(t, {}):
                return self.members[t][member]
        return None

    def anywhere(self, member: str) -> list[bool]:
        return [m[member] for m in self.members.values() if member in m]


_INTERFACE = re.compile(r"^(?:declare\s+)?interface\s+(\w+)(?:<[^{]*?>)?(?:\s+extends\s+([^{]+))?\s*\{")
_MEMBER = re.compile(r"^\s+(?:readonly\s+|get\s+|set\s+)*(\w+)\s*[?]?\s*[:(<]")


def _parse_interfaces(text: str, api: Api) -> None:
    current: str | None = None
    doc: list[str] = []
    in_doc = False
    for line in text.splitlines():
        if current is None:
            m = _INTERFACE.match(line)
            if m:
                current = m.group(1)
                if "@deprecated" in "".join(doc):
                    api.deprecated_types.add(current)
                bases = [re.sub(r"<.*", "", b).strip() for b in (m.group(2) or "").split(",") if b.strip()]
                api.bases.setdefault(current, []).extend(bases)
                api.members.setdefault(current, {})
                doc = []
                continue
        elif line.startswith("}"):
            current, doc = None, []
            continue
        stripped = line.strip()
        if stripped.startswith("/**"):
            in_doc, doc = True, [stripped]
            if stripped.endswith("*/"):
                in_doc = False
            continue
        if in_doc:
            doc.append(stripped)
            in_doc = not stripped.endswith("*/")
            continue
        if current is not None:
            m = _MEMBER.match(line)
            if m and not m.group(1).startswith("_nominal"):
                deprecated = "@deprecated" in "".join(doc)
                members = api.members[current]
                members[m.group(1)] = members.get(m.group(1), True) and deprecated  # overloads: any live one
            if stripped:
                doc = []


def _parse_enums(text: str, api: Api) -> None:
    enum: str | None = None
    doc: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        m = re.match(r"export namespace (\w+) \{", stripped)
        if m:
            enum = m.group(1)
            api.enums.setdefault(enum, {})
            continue
        if stripped.startswith("/**") or stripped.startswith("*"):
            doc = [] if stripped.startswith("/**") else doc
            doc.append(stripped)
            continue
        m = re.match(r"export const (\w+):", stripped)
        if m and enum:
            api.enums[enum][m.group(1)] = "@deprecated" in "".join(doc)
        if stripped and not stripped.startswith("export interface") and not stripped.startswith("Name:"):
            doc = [] if not stripped.startswith(("Value:", "EnumType:", "}")) else doc


@pytest.fixture(scope="module")
def api() -> Api:
    files = [TYPES / "roblox.d.ts", TYPES / "generated" / "None.d.ts", TYPES / "generated" / "enums.d.ts"]
    if not all(f.exists() for f in files):
        pytest.skip(
            "\n\n*** SKIPPED: the Roblox API check needs roblox/node_modules/@rbxts/types: run `cd roblox && npm ci` "
            "(node + npm; .ci/run does it) ***\n"
        )
    result = Api()
    _parse_interfaces(files[0].read_text(encoding="utf-8"), result)
    _parse_interfaces(files[1].read_text(encoding="utf-8"), result)
    _parse_enums(files[2].read_text(encoding="utf-8"), result)
    return result


# ------------------------------------------------------------------------------------------ the sources


def _blank(match: re.Match[str]) -> str:
    """The match replaced by spaces, newlines kept (line numbers stay right)."""
    return re.sub(r"[^\n]", " ", match.group(0))


def _strip(src: str, strings: bool) -> str:
    """Source with comments (and, if ``strings``, the contents of string literals) blanked."""
    src = re.sub(r"--\[(=*)\[.*?\]\1\]", _blank, src, flags=re.S)
    src = re.sub(r"--[^\n]*", _blank, src)
    if strings:
        src = re.sub(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|`[^`]*`', lambda m: '"' + _blank(m)[1:-1] + '"', src)
    return src


def _engine_sources() -> dict[Path, tuple[str, str]]:
    """path -> (code without comments, code without comments or string contents)."""
    out = {}
    for d in ENGINE_DIRS:
        for p in sorted(d.glob("*.luau")):
            text = p.read_text(encoding="utf-8")
            out[p] = (_strip(text, strings=False), _strip(text, strings=True))
    return out


def _own_functions() -> set[str]:
    """Names of every function our Luau defines (methods of our modules are not engine calls)."""
    names: set[str] = set()
    for p in (ROBLOX / "src").rglob("*.luau"):
        text = p.read_text(encoding="utf-8")
        names.update(re.findall(r"function\s+[\w.]+[.:](\w+)\s*\(", text))
        names.update(re.findall(r"^\s*(\w+)\s*=\s*function", text, flags=re.M))
        names.update(re.findall(r"\b(\w+):\s*\(self", text))  # methods declared in type tables
    return names


def _local_types(src: str) -> set[str]:
    return set(re.findall(r"\btype\s+(\w+)", src))


def _receiver_types(src: str, api: Api) -> dict[str, set[str]]:
    """Identifier -> API types it is declared or constructed as, in one file."""
    types: dict[str, set[str]] = {}

    def add(name: str, t: str) -> None:
        if t in api.members:
            types.setdefault(name, set()).add(t)

    # annotations `name: Type` / `name: { Type }` (not method calls `obj:Method(`)
    for name, t in re.findall(r"\b(\w+)\s*:\s*\{?\s*([A-Z]\w*)\b(?!\s*[.(])", src):
        add(name, t)
    for name, t in re.findall(r"\blocal\s+(\w+)(?:\s*:\s*\w+\??)?\s*=\s*Instance\.new\(\"(\w+)\"\)", src):
        add(name, t)
    for name, t in re.findall(r"\blocal\s+(\w+)\s*=\s*game:GetService\(\"(\w+)\"\)", src):
        add(name, t)
    for name, t in re.findall(r"\blocal\s+(\w+)\s*=\s*([A-Z]\w*)\.new\(", src):
        if t != "Instance":
            add(name, t)
    for name, t in GLOBALS.items():
        add(name, t)
    # a name also declared with one of our types (or a Luau type) elsewhere in the file is not
    # typed reliably by name alone: leave it to the untyped checks
    ambiguous = set(re.findall(r"\b(\w+)\s*:\s*\{?\s*(?:[A-Z]\w*\.|[a-z])", src))
    ambiguous |= {n for n, t in re.findall(r"\b(\w+)\s*:\s*\{?\s*([A-Z]\w*)\b(?!\s*[.(])", src) if t not in api.members}
    return {n: t for n, t in types.items() if n not in ambiguous or n in GLOBALS}


@dataclass
class Finding:
    where: str
    what: str


def _check(api: Api) -> tuple[list[Finding], int]:
    problems: list[Finding] = []
    checked = 0
    own = _own_functions()

    def bad(path: Path, src: str, pos: int, what: str) -> None:
        line = src.count("\n", 0, pos) + 1
        problems.append(Finding(f"{path.relative_to(ROOT)}:{line}", what))

    for path, (with_strings, src) in _engine_sources().items():
        local = _local_types(src)
        # enums
        for m in re.finditer(r"\bEnum\.(\w+)\.(\w+)", src):
            checked += 1
            items = api.enums.get(m.group(1))
            if items is None:
                bad(path, src, m.start(), f"Enum.{m.group(1)} is not in the API")
            elif m.group(2) not in items:
                bad(path, src, m.start(), f"Enum.{m.group(1)}.{m.group(2)} is not in the API")
            elif items[m.group(2)]:
                bad(path, src, m.start(), f"Enum.{m.group(1)}.{m.group(2)} is deprecated")
        # class names in strings
        for m in re.finditer(
            r"(?:Instance\.new|GetService|IsA|FindFirstChildWhichIsA|FindFirstAncestorWhichIsA)\(\"(\w+)\"",
            with_strings,
        ):
            checked += 1
            if m.group(1) not in api.members:
                bad(path, src, m.start(), f"class {m.group(1)} is not in the API")
            elif m.group(1) in api.deprecated_types:
                bad(path, src, m.start(), f"class {m.group(1)} is deprecated")
        # engine types in annotations (ours are declared with `type`, module types are qualified)
        for m in re.finditer(r"(?::|::|\{)\s*([A-Z]\w*)\b(?!\s*[.(=])", src):
            name = m.group(1)
            if name in local or name in {"Config", "WorldAdapter"}:
                continue
            prefix = src[max(0, m.start() - 1) : m.start() + 1]
            if prefix.endswith("{") and not re.match(r"\{\s*[A-Z]\w*\s*\??\s*\}", src[m.start() :]):
                continue  # a table constructor, not a type
            checked += 1
            if name not in api.members:
                bad(path, src, m.start(), f"type {name} is not in the API")
            elif name in api.deprecated_types:
                bad(path, src, m.start(), f"type {name} is deprecated")
        # members on receivers of known type, and datatype constructors
        types = _receiver_types(src, api)
        # `.Member` anywhere, `:Method(` only (a colon without a call is a type annotation); a
        # receiver right after `.` or `:` is a field, not a global or a datatype name
        for m in re.finditer(r"(?<!\w)(\w+)\??\s*(?:(\.)\s*(\w+)\b|(:)\s*(\w+)\s*\()", src):
            field, recv = m.start() > 0 and src[m.start() - 1] in ".:", m.group(1)
            sep, member = (m.group(2), m.group(3)) if m.group(2) else (m.group(4), m.group(5))
            if recv in LUAU_LIBS or recv == "Enum" or recv[0].isdigit():
                continue
            if field and recv not in types:
                continue  # a field of a table we could not type
            if recv in types and not (field and recv in GLOBALS):
                for t in types[recv]:
                    checked += 1
                    state = api.member(t, member)
                    if state is None:
                        bad(path, src, m.start(), f"{t} has no member {member}")
                    elif state:
                        bad(path, src, m.start(), f"{t}.{member} is deprecated")
            elif f"{recv}Constructor" in api.members and sep == ".":
                checked += 1
                state = api.member(f"{recv}Constructor", member)
                if state is None:
                    bad(path, src, m.start(), f"{recv}.{member} is not in the API")
                elif state:
                    bad(path, src, m.start(), f"{recv}.{member} is deprecated")
            elif sep == ":" and member not in own:
                # a method of some engine object we could not type: it must exist and be live somewhere
                checked += 1
                found = api.anywhere(member)
                if not found:
                    bad(path, src, m.start(), f"method {member} is not in the API")
                elif all(found):
                    bad(path, src, m.start(), f"method {member} is deprecated everywhere in the API")
    return problems, checked


def test_engine_code_uses_only_live_roblox_api(api: Api) -> None:
    problems, checked = _check(api)
    assert checked >= 150, f"the scan found only {checked} engine uses: the parser lost track of the sources"
    assert not problems, "\n".join(f"{p.where}: {p.what}" for p in problems)


def test_project_file_sets_only_live_properties(api: Api) -> None:
    tree = json.loads((ROBLOX / "default.project.json").read_text(encoding="utf-8"))["tree"]
    problems = []
    for name, node in tree.items():
        if not isinstance(node, dict):
            continue
        cls = node.get("$className", name)
        for prop in node.get("$properties", {}):
            state = api.member(cls, prop)
            if state is None:
                problems.append(f"{cls}.{prop} is not in the API")
            elif state:
                problems.append(f"{cls}.{prop} is deprecated")
    assert not problems, problems


def test_the_check_catches_what_it_claims(api: Api) -> None:
    """The parsed API knows the facts this check exists for (so a parser regression cannot pass
    everything): removed, deprecated and live members, enum items, inheritance."""
    assert api.member("Workspace", "FilteringEnabled") is None  # discontinued
    assert api.member("RaycastParams", "FilterDescendantsInstances") is True  # deprecated
    assert api.member("RaycastParams", "FilterType") is True
    assert api.member("RaycastParams", "IncludeInstances") is False
    assert api.member("Part", "AssemblyLinearVelocity") is False  # inherited from BasePart
    assert api.member("BasePart", "Velocity") is True
    assert api.member("VehicleSeat", "ThrottleFloat") is False
    assert api.member("HttpService", "CreateWebStreamClient") is False
    assert api.enums["WebStreamClientType"]["WebSocket"] is False
    assert api.enums["RaycastFilterType"]["Blacklist"] is True  # a legacy name, deprecated
    # and the scanner flags them in source
    sample = ROBLOX / "src" / "engine" / "_api_probe.luau"
    try:
        sample.write_text(
            "local p = RaycastParams.new()\np.FilterDescendantsInstances = {}\n"
            "local part: BasePart = nil :: any\npart.Velocity = Vector3.zero\nworkspace.FilteringEnabled = true\n"
            'local s = Instance.new("Sparkles2")\nlocal e = Enum.RaycastFilterType.Blacklist\n',
            encoding="utf-8",
        )
        found = {p.what for p in _check(api)[0] if p.where.startswith("roblox/src/engine/_api_probe")}
    finally:
        sample.unlink()
    assert found == {
        "RaycastParams.FilterDescendantsInstances is deprecated",
        "BasePart.Velocity is deprecated",
        "Workspace has no member FilteringEnabled",
        "class Sparkles2 is not in the API",
        "Enum.RaycastFilterType.Blacklist is deprecated",
    }, found
