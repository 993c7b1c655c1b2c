"""Zennit composites inside attnlrp's efficient mode give Zennit's own relevance (float64, small CNN)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnlrp
from attnlrp import AlphaBeta, Epsilon, Gamma, ZPlus
from attnlrp.interop.zennit import ZennitRelevanceWarning, import_zennit

zennit = import_zennit()  # zennit's package imports torchvision, which this environment lacks
from zennit import composites as zc  # noqa: E402
from zennit import rules as zr  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402

TARGETS = [0, 3]


def cnn():
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 3 * 3, 16),
            nn.ReLU(),
            nn.Linear(16, 5),
        )
        .double()
        .eval()
    )


def images():
    return torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def by_zennit(model, composite, x):
    """Zennit's relevance, starting from R = the target logit (so that it is comparable to ours)."""
    x = x.clone().requires_grad_()
    with Gradient(model, composite) as attributor:
        _, relevance = attributor(x, lambda out: out * torch.eye(5, dtype=out.dtype)[TARGETS])
    return relevance


def by_attnlrp(model, layer_rules, x):
    x = x.clone().requires_grad_()
    with attnlrp.lrp(model, layer_rules=layer_rules):
        out = model(x)
        out[range(len(TARGETS)), TARGETS].sum().backward()
    return x * x.grad


def rel_err(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max())


COMPOSITES = {
    "gamma-conv/epsilon-linear": lambda: zc.LayerMapComposite([(nn.Conv2d, zr.Gamma(0.25)), (nn.Linear, zr.Epsilon())]),
    "EpsilonPlus": lambda: zc.EpsilonPlus(epsilon=0.1),
    "EpsilonAlpha2Beta1": lambda: zc.EpsilonAlpha2Beta1(),
    "EpsilonGammaBox": lambda: zc.EpsilonGammaBox(low=-4.0, high=4.0),
    "names": lambda: zc.NameMapComposite([(["0"], zr.ZPlus()), (["2", "6", "8"], zr.Gamma(0.5))]),
}


@pytest.mark.parametrize("name", COMPOSITES)
def test_zennit_composite_inside_efficient_mode_equals_zennit(name):
    model, x = cnn(), images()
    theirs = by_zennit(model, COMPOSITES[name](), x)
    ours = by_attnlrp(model, COMPOSITES[name](), x)
    assert rel_err(ours, theirs) < 1e-12


#: our own rules and the Zennit rules they equal
PAIRS = [
    ({nn.Conv2d: Gamma(0.25), nn.Linear: Epsilon()}, [(nn.Conv2d, zr.Gamma(0.25)), (nn.Linear, zr.Epsilon())]),
    ({nn.Conv2d: ZPlus(), nn.Linear: Epsilon(0.25)}, [(nn.Conv2d, zr.ZPlus()), (nn.Linear, zr.Epsilon(0.25))]),
    (
        {nn.Conv2d: AlphaBeta(2, 1), nn.Linear: Gamma(1.0)},
        [(nn.Conv2d, zr.AlphaBeta(2, 1)), (nn.Linear, zr.Gamma(1.0))],
    ),
]


@pytest.mark.parametrize("ours, theirs", PAIRS, ids=["gamma-epsilon", "zplus-epsilon", "alphabeta-gamma"])
def test_our_rules_equal_zennits(ours, theirs):
    model, x = cnn(), images()
    assert rel_err(by_attnlrp(model, ours, x), by_zennit(model, zc.LayerMapComposite(theirs), x)) < 1e-12


def test_relevance_of_zero_inputs_is_reported():
    model, x = cnn(), images()
    x[0, :, 0, 0] = 0.0  # ZBox gives these pixels relevance; x * grad can't carry it
    with pytest.warns(ZennitRelevanceWarning, match="exactly-zero inputs"):
        by_attnlrp(model, zc.EpsilonGammaBox(low=-4.0, high=4.0), x)


def test_canonizers_are_refused_with_advice():
    from zennit.canonizers import SequentialMergeBatchNorm

    with pytest.raises(ValueError, match="canonizer.apply"):
        by_attnlrp(cnn(), zc.EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]), images())
