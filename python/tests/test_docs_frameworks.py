"""The framework sections of docs/trainer-protocol.md are the tested examples' code, line for line.

Each example marks its documented part with ``# -- the <section> section of docs/trainer-protocol.md --``
and ``# -- end of section --``; lines ending in ``# test hook`` (a delay that lets a test interrupt a
short run) are left out of the docs. python/tests/frameworks runs the examples themselves.
"""

from __future__ import annotations

import re
import textwrap

import pytest

from conftest import REPO_ROOT

DOC = REPO_ROOT / "docs" / "trainer-protocol.md"
SECTIONS = {
    "HF Trainer in 3 lines": "hf-trainer",
    "Lightning": "lightning-trainer",
    "XGBoost": "xgboost-trainer",
    "PyTorch loop": "pytorch-trainer",
}


def doc_block(title: str) -> str:
    match = re.search(rf"\n### {re.escape(title)}\n+```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"docs/trainer-protocol.md has no '### {title}' section starting with a python block"
    return match.group(1).rstrip("\n")


def example_region(example: str, title: str) -> str:
    source = (REPO_ROOT / "examples" / example / "train.py").read_text()
    match = re.search(rf"\n *# -- the {re.escape(title)} section of docs/trainer-protocol\.md --\n(.*?)\n"
                      r" *# -- end of section --", source.replace(f'"{title}"', title), re.S)
    assert match, f"examples/{example}/train.py marks no '{title}' section"
    lines = [line for line in match.group(1).split("\n") if not line.rstrip().endswith("# test hook")]
    return textwrap.dedent("\n".join(lines))


@pytest.mark.parametrize("title", list(SECTIONS))
def test_doc_section_is_the_example_code(title):
    assert doc_block(title) == example_region(SECTIONS[title], title)


def test_hf_section_has_the_three_kiln_lines():
    block = doc_block("HF Trainer in 3 lines")
    for needle in ("output_dir=ctx.checkpoint_dir", "callbacks=[kiln_trainer.hf.KilnCallback()]",
                   "resume_from_checkpoint=ctx.resume_from"):
        assert needle in block


def test_each_framework_section_states_its_exact_resume_rule():
    text = DOC.read_text()
    for title in SECTIONS:
        body = text.split(f"\n### {title}\n", 1)[1].split("\n### ", 1)[0]
        assert "**Exact resume**" in body, title


def test_pytorch_example_without_torch_says_so_and_exits_2(run_py, tmp_path):
    """temporal.yaml's PyTorch model runs with whatever python it names: without torch the job fails
    at once (exit 2, no retries) with the fix in the log tail."""
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed in this python")
    code = (f"import runpy, sys; sys.argv = [{str(REPO_ROOT / 'examples/pytorch-trainer/train.py')!r}]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    p = run_py(code, events=True)
    assert p.proc.returncode == 2
    assert "needs torch" in p.stderr and "requirements-frameworks.txt" in p.stderr
    assert p.events == []
