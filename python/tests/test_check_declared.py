"""gradproof.check on the ops declared after softmax (activations, losses, nll_loss,
cross_entropy, matmul, dropout, embedding): the cases of tests/cli/check_cases.py, which the
command runs too (ctest cli.check_declared.*). Right gradients pass; each broken one fails, named;
each bad input is a ValueError with the command's message."""
import os
import re
import sys

import numpy as np
import pytest

import gradproof

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "cli"))
import check_cases  # noqa: E402

CASES = check_cases.cases()
# The ops whose check is tested elsewhere (test_check.py and the cli.check_* ctests).
TESTED_ELSEWHERE = {"bn", "ln", "gn", "in", "rms", "softmax", "log_softmax", "linear"}


def test_every_op_of_check_has_a_case():
    """A new op that gets check through its declaration needs its cases here."""
    missing = set(gradproof.check_ops()) - TESTED_ELSEWHERE - {c.op for c in CASES}
    assert not missing, f"ops that check knows, without a case in check_cases.py: {sorted(missing)}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_right_gradients_pass(case):
    arrays, options = check_cases.call(case)
    r = gradproof.check(case.op, **arrays, **options)
    assert r.passed, str(r)
    assert sorted(o.name for o in r.outputs) == sorted(case.grads)


BROKEN = [(c, g, a, w) for c in CASES for (g, a, w) in c.broken]


@pytest.mark.parametrize("case,grad,array,what", BROKEN,
                         ids=[f"{c.name}-{g}-{w}" for c, g, a, w in BROKEN])
def test_a_broken_gradient_fails_named(case, grad, array, what):
    grads = dict(case.grads)
    grads[grad] = array
    arrays, options = check_cases.call(case, grads=grads)
    r = gradproof.check(case.op, **arrays, **options)
    assert not r.passed
    assert {o.name: o.passed for o in r.outputs} == {g: g != grad for g in case.grads}, str(r)


BAD = [(c, w, ch, m) for c in CASES for (w, ch, m) in c.bad]


@pytest.mark.parametrize("case,what,changes,message", BAD,
                         ids=[f"{c.name}-{w}" for c, w, ch, m in BAD])
def test_a_bad_input_is_refused(case, what, changes, message):
    arrays, options = check_cases.call(case, changes)
    with pytest.raises(ValueError) as e:
        gradproof.check(case.op, **arrays, **options)
    assert re.search(message, str(e.value)), (what, str(e.value))
