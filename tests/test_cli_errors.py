"""Every bad input of tests/cli_error_cases.py: exit 2 with one line naming it, in a second
or two, and nothing made (no storage folder, data, weights or run folder)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from cli_error_cases import CASES, REPO, make_inputs, run_case


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """All cases at once (each is a short subprocess)."""
    root = tmp_path_factory.mktemp("cli-errors")
    inputs = make_inputs(root)
    cases = [c for c in CASES if not (c.needs_no_cuda and torch.cuda.is_available())]
    with ThreadPoolExecutor(4) as pool:
        return {o.case.id: o for o in pool.map(lambda c: run_case(c, root, inputs), cases)}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_exit_2(case, outcomes):
    if case.id not in outcomes:
        pytest.skip("this machine has CUDA")
    out = outcomes[case.id]
    assert out.code == 2, out.stderr
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error: ") and case.expect in out.stderr, out.stderr
    assert not out.storage_made  # checked before any data, weights or run folder


def test_every_case_is_in_docs_errors():
    text = (REPO / "docs" / "errors.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing, f"docs/errors.md lacks {missing}: run python -m tools.errors_doc"
