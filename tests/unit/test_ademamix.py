"""AdEMAMix against the published update rule (Pagliardini et al. 2024, Algorithm 1)."""

import copy
import math

import pytest
import torch

from sequifier.train.ademamix import AdEMAMix, alpha_schedule, beta3_schedule


def reference_steps(theta, grads, lr, b1, b2, b3, alpha, eps, wd, t_alpha=None, t_beta3=None):
    """Algorithm 1 written out in plain floats."""
    m1 = m2 = nu = 0.0
    for t, g in enumerate(grads, start=1):
        a = min(t * alpha / t_alpha, alpha) if t_alpha else alpha
        if t_beta3:
            ls, le = math.log(b1), math.log(b3)
            beta3 = min(math.exp(ls * le / ((1 - t / t_beta3) * le + (t / t_beta3) * ls)), b3)
        else:
            beta3 = b3
        m1 = b1 * m1 + (1 - b1) * g
        m2 = beta3 * m2 + (1 - beta3) * g
        nu = b2 * nu + (1 - b2) * g * g
        m1_hat = m1 / (1 - b1**t)
        nu_hat = nu / (1 - b2**t)
        theta = theta - lr * ((m1_hat + a * m2) / (math.sqrt(nu_hat) + eps) + wd * theta)
    return theta


def run_optimizer(theta, grads, **kwargs):
    p = torch.nn.Parameter(torch.tensor([theta], dtype=torch.float64))
    opt = AdEMAMix([p], **kwargs)
    for g in grads:
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    return p.item()


def test_single_step_matches_hand_computation():
    # t = 1: m1_hat = g, m2 = (1 - b3) g, nu_hat = g^2
    g, theta, lr, alpha, wd = 0.5, 1.0, 0.01, 5.0, 0.1
    b3 = 0.9999
    expected = theta - lr * ((g + alpha * (1 - b3) * g) / (abs(g) + 1e-8) + wd * theta)
    got = run_optimizer(theta, [g], lr=lr, betas=(0.9, 0.999, b3), alpha=alpha, weight_decay=wd)
    assert got == pytest.approx(expected, rel=0, abs=1e-14)


def test_several_steps_match_algorithm_1():
    grads = [0.5, -0.2, 0.3, 0.9, -1.1, 0.05]
    kwargs = {"lr": 0.02, "b1": 0.8, "b2": 0.95, "b3": 0.99, "alpha": 3.0, "eps": 1e-8, "wd": 0.01}
    expected = reference_steps(1.5, grads, **kwargs)
    got = run_optimizer(1.5, grads, lr=0.02, betas=(0.8, 0.95, 0.99), alpha=3.0, weight_decay=0.01)
    assert got == pytest.approx(expected, abs=1e-12)


def test_warmup_schedulers_match_algorithm_1():
    grads = [0.5, -0.2, 0.3, 0.9, -1.1, 0.05]
    expected = reference_steps(1.5, grads, 0.02, 0.8, 0.95, 0.999, 4.0, 1e-8, 0.0, t_alpha=4, t_beta3=5)
    got = run_optimizer(1.5, grads, lr=0.02, betas=(0.8, 0.95, 0.999), alpha=4.0,
                        alpha_warmup=4, beta3_warmup=5)
    assert got == pytest.approx(expected, abs=1e-12)
    # without warm-up the trajectory differs
    plain = run_optimizer(1.5, grads, lr=0.02, betas=(0.8, 0.95, 0.999), alpha=4.0)
    assert abs(plain - got) > 1e-6


def test_schedules_end_points():
    assert alpha_schedule(0, 5.0, 10) == 0.0
    assert alpha_schedule(5, 5.0, 10) == 2.5
    assert alpha_schedule(20, 5.0, 10) == 5.0
    assert beta3_schedule(0, 0.9999, 0.9, 100) == pytest.approx(0.9)
    assert beta3_schedule(100, 0.9999, 0.9, 100) == pytest.approx(0.9999)
    assert beta3_schedule(500, 0.9999, 0.9, 100) == 0.9999
    assert 0.9 < beta3_schedule(50, 0.9999, 0.9, 100) < 0.9999


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = AdEMAMix(model.parameters(), lr=0.01, alpha_warmup=3, beta3_warmup=3)
    x = torch.randn(8, 3)
    for _ in range(2):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    clone = torch.nn.Linear(3, 2)
    clone.load_state_dict(model.state_dict())
    opt2 = AdEMAMix(clone.parameters(), lr=0.01, alpha_warmup=3, beta3_warmup=3)
    # deep copy: load_state_dict may share tensors with the source, like a file round trip won't
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for m, o in ((model, opt), (clone, opt2)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    assert torch.equal(model.weight, clone.weight)


def test_rejects_bad_betas():
    with pytest.raises(ValueError):
        AdEMAMix([torch.nn.Parameter(torch.zeros(1))], betas=(0.9, 0.999))


def test_foreach_step_equals_the_per_parameter_loop():
    # the _foreach path (default) does the same arithmetic as the loop, bit for bit, over
    # parameters of several shapes and dtypes, one of them without a gradient at first
    torch.manual_seed(0)
    shapes = [(4, 3), (7,), (2, 5), (1,)]
    base = [torch.randn(s) for s in shapes] + [torch.randn(3, 3).to(torch.bfloat16)]
    results = []
    for foreach in (True, False):
        params = [torch.nn.Parameter(t.clone()) for t in base]
        opt = AdEMAMix(params, lr=0.01, alpha=3.0, weight_decay=0.1, alpha_warmup=3, beta3_warmup=4,
                       foreach=foreach)
        gen = torch.Generator().manual_seed(1)
        for step in range(6):
            for i, p in enumerate(params):
                p.grad = None if (i == 1 and step < 2) else torch.randn(p.shape, generator=gen).to(p.dtype)
            opt.step()
        results.append(params)
    for a, b in zip(*results):
        assert torch.equal(a, b), (a, b)
