"""One unit per loss term: the Triton dispatch, the torch twins, the reference and the
facts table (kernels/_codes.py TERMS) know the same terms, and every loss uses them."""
import ast
import inspect
import math
import textwrap

import pytest

import fused_anl
from fused_anl import _hyper, _torch_terms, reference
from fused_anl import _registry as R
from fused_anl.kernels import _codes as C
from fused_anl.kernels import _terms


def _dispatched(fn, var):
    """The term codes a Triton dispatcher compares ``var`` (ACTIVE / PASSIVE) with, and
    the unit each branch calls."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn.fn)))
    out = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name) and node.test.left.id == var):
            code = getattr(C, node.test.comparators[0].id)
            calls = [n.func.id for n in ast.walk(node) if isinstance(n, ast.Call)
                     and isinstance(n.func, ast.Name)]
            out[code] = calls
    return out


def _real(table):
    return {code: t for code, t in table.items() if t.name != "none"}


@pytest.mark.parametrize("var,table", [("ACTIVE", C.ACTIVE_TERMS), ("PASSIVE", C.PASSIVE_TERMS)])
def test_triton_dispatch_matches_table(var, table):
    epi = _dispatched(_terms.epilogue, var)
    elem = _dispatched(_terms.elementwise, var)
    real = _real(table)
    assert set(epi) == set(real)
    assert set(elem) == {c for c, t in real.items() if t.per_element}
    for code, t in real.items():
        assert epi[code] == [f"{t.name}_epilogue"], (t.name, epi[code])
        if t.per_element:
            assert elem[code] == [f"{t.name}_elementwise"], (t.name, elem[code])


@pytest.mark.parametrize("kind", ["active", "passive"])
def test_torch_twins_match_table_and_triton(kind):
    table = C.ACTIVE_TERMS if kind == "active" else C.PASSIVE_TERMS
    units = _torch_terms.ACTIVE if kind == "active" else _torch_terms.PASSIVE
    assert set(units) == set(table)
    for code, t in table.items():
        elem, epi = units[code]
        if t.name == "none":
            assert elem is None and epi is None
            continue
        assert epi.__name__ == f"{t.name}_epilogue"
        assert hasattr(_terms, epi.__name__)
        assert (elem is not None) == t.per_element, t.name
        if elem is not None:
            assert elem.__name__ == f"{t.name}_elementwise"
            assert hasattr(_terms, elem.__name__)


def test_triton_units_are_the_tables():
    """No Triton unit without a row in the table (nor a row without its units)."""
    names = {n for n in vars(_terms) if n.endswith(("_epilogue", "_elementwise"))}
    names -= {"epilogue", "elementwise"}
    want = {f"{t.name}_epilogue" for t in C.TERMS if t.name != "none"}
    want |= {f"{t.name}_elementwise" for t in C.TERMS if t.per_element}
    assert names == want


def test_reference_matches_table():
    assert set(reference.ACTIVE) == set(_real(C.ACTIVE_TERMS))
    assert set(reference.PASSIVE) == set(_real(C.PASSIVE_TERMS))
    for code, fn in list(reference.ACTIVE.items()) + list(reference.PASSIVE.items()):
        table = C.ACTIVE_TERMS if fn in reference.ACTIVE.values() else C.PASSIVE_TERMS
        assert fn.__name__ == f"_{table[code].name}"


def test_codes_are_the_tables():
    """Every A_/P_ constant of kernels/_codes.py has a row, and the rows are unique."""
    for prefix, table in (("A_", C.ACTIVE_TERMS), ("P_", C.PASSIVE_TERMS)):
        consts = {v for k, v in vars(C).items() if k.startswith(prefix) and k[2:].isupper()
                  and isinstance(v, int)}
        assert consts == set(table)
    assert len({(t.kind, t.code) for t in C.TERMS}) == len(C.TERMS)
    assert len({(t.kind, t.name) for t in C.TERMS}) == len(C.TERMS)


def test_every_loss_uses_declared_terms_and_every_term_is_used():
    used = set()
    # the row losses, the row parts of the batch losses (ANL-CE-ER: NCE + NNCE) and the
    # variants (CE with label smoothing)
    for spec in (list(fused_anl.LOSSES.values()) + list(R.ROW_PARTS.values())
                 + list(R.VARIANTS.values())):
        a, p = spec.terms
        assert a.kind == "active" and p.kind == "passive"
        assert (a.name, p.name) != ("none", "none")
        # a loss takes exactly its terms' hyperparameters (and alpha/beta when it has both)
        want = set(a.hyper) | set(p.hyper)
        if a.name != "none" and p.name != "none":
            want |= {"alpha", "beta"}
        assert set(spec.hyper) == want, spec.name
        assert spec.focal == (a.focal or p.focal)
        used |= {("active", a.code), ("passive", p.code)}
    declared = {(t.kind, t.code) for t in C.TERMS if t.name != "none"}
    assert declared <= used, declared - used


def test_needs_stats2_from_table():
    for spec in fused_anl.LOSSES.values():
        a, p = spec.terms
        assert C.needs_stats2(spec.active, spec.passive) == (a.stats2 or p.stats2)
    # the terms whose sums need the final lse (kernels/_terms.py module docstring)
    assert {t.name for t in C.TERMS if t.stats2} >= {"nfl", "nnce", "nnfl", "rce"}


def test_constants_derived_from_table():
    h = R.resolve_hyper(R.LOSSES["anl_fl"], dict(p_min=1e-3, gamma=0.5))
    v = _hyper.constants(h, C.P_NNFL, C.A_NFL)
    assert v[C.H_LOG_PMIN] == math.log(1e-3)
    assert v[C.H_A_NNFL] == -((1 - 1e-3) ** 0.5) * math.log(1e-3)
    assert v[C.H_GAMMA] == 0.5 and v[C.H_ALPHA] == 1.0
    h = R.resolve_hyper(R.LOSSES["agce"], {})
    assert _hyper.constants(h, C.P_AGCE)[C.H_C_PASS] == (6.0 + 1.0) ** 1.5


@pytest.mark.parametrize("name,kw,msg", [
    ("anl_ce", dict(p_min=1.0), "p_min must lie in"),
    ("fl", dict(gamma=-1.0), "gamma must be >= 0"),
    ("anl_fl", dict(gamma=-1.0), "gamma must be >= 0"),
    ("gce", dict(q=0.0), "q must be > 0"),
    ("agce", dict(a=0.0), "a must be > 0"),
    ("aul", dict(a=1.0), "a must be > 1"),
    ("nce_ael", dict(a=-1.0), "a must be > 0"),
])
def test_validation_from_table(name, kw, msg):
    with pytest.raises(ValueError, match=msg):
        R.resolve_hyper(R.LOSSES[name], kw)


def test_kernel_lists_of_elementwise_terms_match_table():
    """kernels/row_loss.py takes which terms have an elementwise factor (``HAS_EA`` /
    ``HAS_EB``), which pairs share one p-coefficient (``ONE_P``), whose passive part is
    p times a select (``SELECT_B``) and whose active e is the present-class indicator
    (``PRESENT_A``) from the table (``_E_PARTS``, built from ``per_element``,
    ``separate_p``, ``p_select`` and ``e_present``), and spells out no list of term
    codes of its own: a term left out of such a list would lose its ``c3 e_j`` part of
    the gradient (``_grad_combine`` skips ``c3 * e`` for the others), one wrongly sharing
    a p-coefficient would add AMSE's nearly cancelling parts after another term's, and
    RCE not taken as a select would weight its set's indicator (its e in the kernels)
    as if it were p."""
    from pathlib import Path
    from fused_anl.kernels import row_loss
    parts = row_loss._E_PARTS.value
    assert len(parts) == len(C.ACTIVE_TERMS) * len(C.PASSIVE_TERMS)
    for (a, p), (ea, eb, one_p, select_b, present_a) in parts.items():
        at, pt = C.ACTIVE_TERMS[a], C.PASSIVE_TERMS[p]
        assert (ea, eb) == (at.per_element, pt.per_element), (at.name, pt.name)
        assert one_p == (ea and eb and not at.separate_p and not pt.separate_p), (at.name, pt.name)
        assert select_b == pt.p_select and not at.p_select, (at.name, pt.name)
        assert present_a == at.e_present and not pt.e_present, (at.name, pt.name)
    assert parts[(C.A_NCE, C.P_RCE)][4] and not parts[(C.A_NFL, C.P_RCE)][4]
    assert parts[(C.A_NCE, C.P_NNCE)][2] and not parts[(C.A_NCE, C.P_AMSE)][2]
    assert parts[(C.A_NCE, C.P_RCE)][3] and not parts[(C.A_NCE, C.P_NNCE)][3]
    src = (Path(_terms.__file__).parent / "row_loss.py").read_text()
    found = 0
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for tgt in targets:
                if isinstance(tgt, ast.Name) and tgt.id in ("HAS_EA", "HAS_EB", "ONE_P",
                                                            "SELECT_B", "PRESENT_A"):
                    codes = [n.id for n in ast.walk(node.value)
                             if isinstance(n, ast.Name) and n.id[:2] in ("A_", "P_")]
                    assert not codes, (tgt.id, codes)
                    found += 1
    assert found >= 5, found  # the check saw the assignments
