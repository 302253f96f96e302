"""Every ```python block of the README runs as written, each on its own (a fresh
namespace: a block must define the tensors and models it uses).

The blocks run as a CPU user runs them: ``backend="auto"`` without the Triton
interpreter picks the torch backend (the interpreter would take minutes here; the
kernels are tested against the same code paths elsewhere)."""
import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    code = BLOCKS[index]
    with warnings.catch_warnings():
        # the README's examples must not trip the package's own warnings (for example
        # ANL's "training without its L1 term")
        warnings.filterwarnings("error", module=r"fused_anl(\.|$)")
        warnings.filterwarnings("error", category=UserWarning, message=r".*fused_anl|.*L1 term")
        exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    for expected in re.findall(r"print\(criterion\)\s+# (.+)", code):
        assert expected.strip() in printed, (expected, printed)
