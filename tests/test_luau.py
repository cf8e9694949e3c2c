"""The Roblox side's Luau under a real Luau VM (pluau): every file compiles, the pure modules pass
their specs (roblox/tests/*.spec.luau), and the rules agree with the simulator's test vectors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from luau import REPO, ROBLOX, luau_files, pluau, run_spec_case, spec_cases

pytestmark = pytest.mark.skipif(pluau is None, reason="pluau is not installed (pip install -r requirements-dev.txt)")


def _read_file(relpath: str) -> str:
    path = (REPO / str(relpath)).resolve()
    assert REPO in path.parents, f"readFile outside the repository: {relpath}"
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", luau_files(), ids=lambda p: str(p.relative_to(ROBLOX)))
def test_compiles(path: Path) -> None:
    from luau import compile_file

    compile_file(path)


def test_every_module_is_found() -> None:
    # A syntax error anywhere fails CI: make sure the file list is not silently empty.
    names = {p.name for p in luau_files()}
    assert {"Protocol.luau", "Rules.luau", "Trainer.server.luau", "RobloxWorld.luau"} <= names


SPECS = sorted(p.name.removesuffix(".luau") for p in (ROBLOX / "tests").glob("*.spec.luau"))
CASES = [(spec, case) for spec in SPECS for case in (spec_cases(spec) if pluau is not None else [])]


@pytest.mark.parametrize(("spec", "case"), CASES, ids=[f"{s.removesuffix('.spec')}::{c}" for s, c in CASES])
def test_spec(spec: str, case: str) -> None:
    run_spec_case(spec, case, readFile=_read_file)
