"""Label-wide products a block of rows at a time (xmtc_cli/blocked.py) against torch's own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xmtc_cli import blocked

pytestmark = pytest.mark.usefixtures("single_thread")

ROWS = 2 * blocked.BLOCK + 37  # more than two blocks and a ragged last one


def test_linear_is_torchs_linear_entry_for_entry():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=g)
    weight, bias = torch.randn(ROWS + blocked.BLOCK, 16, generator=g), torch.randn(
        ROWS + blocked.BLOCK, generator=g)
    torch.testing.assert_close(blocked.linear(x, weight, bias), F.linear(x, weight, bias),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(blocked.linear(x, weight), F.linear(x, weight),
                               atol=1e-5, rtol=1e-5)


def test_outer_is_the_weight_gradient_of_a_linear_map():
    g = torch.Generator().manual_seed(1)
    grad, x = torch.randn(7, ROWS + blocked.BLOCK, generator=g), torch.randn(7, 9, generator=g)
    torch.testing.assert_close(blocked.outer(grad, x), grad.t() @ x, atol=1e-5, rtol=1e-5)


def test_expectation_has_autograds_gradient_and_leaves_a_trained_table_to_autograd():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, ROWS + blocked.BLOCK, generator=g, requires_grad=True)
    table = torch.randn(ROWS + blocked.BLOCK, 6, generator=g)
    upstream = torch.randn(2, 3, 6, generator=g)
    probs = logits.softmax(-1)
    got = torch.autograd.grad((blocked.expectation(probs, table) * upstream).sum(), logits,
                              retain_graph=True)
    expected = torch.autograd.grad(((probs @ table) * upstream).sum(), logits)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    trained = table.clone().requires_grad_()
    (blocked.expectation(probs.detach(), trained) * upstream).sum().backward()
    torch.testing.assert_close(trained.grad, probs.detach().flatten(0, 1).t()
                               @ upstream.flatten(0, 1), atol=1e-5, rtol=1e-5)


def test_products_autograd_must_see_are_left_to_torch():
    """Written block by block in place, the product would have no gradient; a weight that
    requires one gets F.linear's."""
    x = torch.randn(2, 4)
    weight = torch.randn(ROWS + blocked.BLOCK, 4, requires_grad=True)
    blocked.linear(x, weight).sum().backward()
    torch.testing.assert_close(weight.grad, x.sum(0).expand_as(weight))
