"""The package ships what typed users need: py.typed, stubs that cover the native module, and
every public name documented."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import holdfast
from holdfast import _native


def test_py_typed_and_stubs_ship_with_the_module() -> None:
    package = Path(holdfast.__file__).parent
    assert (package / "py.typed").exists()
    stub = package / "_native.pyi"
    tree = ast.parse(stub.read_text())
    declared = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            declared.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared.add(node.target.id)
    public = {name for name in dir(_native) if not name.startswith("_")}
    assert public == declared, f"stub out of date: missing {public - declared}, extra {declared - public}"


def test_public_api_is_documented() -> None:
    for name in holdfast.__all__:
        obj = getattr(holdfast, name)
        assert inspect.getdoc(obj), f"holdfast.{name} has no docstring"


def test_native_module_uses_the_c_api_version() -> None:
    assert _native.API_VERSION == 5
