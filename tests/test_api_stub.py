"""The written-out API (fused_anl/__init__.pyi, generated from the registry) agrees with
the registry and with the runtime signatures that help() shows."""
import ast
import inspect
from pathlib import Path

import fused_anl
from fused_anl import _stubgen

STUB = Path(fused_anl.__file__).with_name("__init__.pyi")


def test_checked_in_stub_is_current():
    assert STUB.read_text() == _stubgen.render(), (
        "fused_anl/__init__.pyi is stale: run `python -m fused_anl._stubgen > "
        "fused_anl/__init__.pyi`")


def _stub_defs():
    tree = ast.parse(STUB.read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    return funcs, classes


def _names(args):
    return [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]


def test_every_public_name_is_in_the_stub_with_the_runtime_signature():
    funcs, classes = _stub_defs()
    text = STUB.read_text()
    for name in fused_anl.__all__:
        assert name in funcs or name in classes or f" as {name}" in text, name
    for name, spec in fused_anl.LOSSES.items():
        for fname in (name, f"linear_{name}"):
            runtime = list(inspect.signature(getattr(fused_anl, fname)).parameters)
            assert _names(funcs[fname].args) == runtime, fname
        init = next(n for n in classes[spec.module].body
                    if isinstance(n, ast.FunctionDef) and n.name == "__init__")
        runtime = ["self"] + list(inspect.signature(getattr(fused_anl, spec.module)).parameters)
        assert _names(init.args) == runtime, spec.module


def test_help_shows_real_signatures_and_documented_keywords():
    assert "alpha=1.0" in str(inspect.signature(fused_anl.ANLCELoss))
    doc = fused_anl.anl_ce.__doc__
    for word in ("alpha", "beta", "p_min", "reduction", "ignore_index", "weight", "backend",
                 "inplace_backward", "double_backward", "process_group", "Shape"):
        assert word in doc, word
