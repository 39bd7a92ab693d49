"""AdEMAMix optimizer (Pagliardini, Ablin, Grangier 2024, "The AdEMAMix Optimizer:
Better, Faster, Older", Algorithm 1).

Adam keeps one EMA of the gradient; a single EMA cannot both react to recent gradients
and remember old ones. AdEMAMix mixes a fast EMA m1 (beta1) with a slow EMA m2
(beta3, e.g. 0.9999) weighted by alpha:

    m1 = b1 m1 + (1 - b1) g            m2 = b3 m2 + (1 - b3) g
    v  = b2 v  + (1 - b2) g^2
    theta -= lr * ((m1 / (1 - b1^t) + alpha * m2) / (sqrt(v / (1 - b2^t)) + eps)
                   + weight_decay * theta)

m2 is not bias-corrected (by design: early on it is small, so the mix starts as Adam).
Because a very slow EMA destabilises the start of training, alpha and beta3 can be
warmed up over `alpha_warmup` / `beta3_warmup` steps with the paper's schedulers.
"""

import math
from collections.abc import Iterable, Sequence

import torch
from torch.optim import Optimizer


def alpha_schedule(step: int, alpha_end: float, warmup: int | None) -> float:
    """Linear warm-up of alpha from 0 to alpha_end over `warmup` steps."""
    if not warmup:
        return alpha_end
    return min(step * alpha_end / warmup, alpha_end)


def beta3_schedule(step: int, beta3_end: float, beta_start: float, warmup: int | None) -> float:
    """Warm-up of beta3 from beta_start to beta3_end, linear in the EMA's half-life.

    f(t) = min(exp(ln(b_start) ln(b_end) / ((1 - t/T) ln(b_end) + (t/T) ln(b_start))), b_end)
    """
    if not warmup:
        return beta3_end
    frac = step / warmup
    log_start, log_end = math.log(beta_start), math.log(beta3_end)
    mixed = (1.0 - frac) * log_end + frac * log_start
    return min(math.exp(log_start * log_end / mixed), beta3_end)


class AdEMAMix(Optimizer):
    """AdEMAMix with decoupled weight decay (scaled by lr, as in Algorithm 1)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        beta3_warmup: int | None = None,
        alpha_warmup: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        foreach: bool = True,
    ):
        betas = tuple(float(b) for b in betas)
        if len(betas) != 3:
            raise ValueError(f"AdEMAMix needs three betas (beta1, beta2, beta3), got {betas}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdEMAMix betas must lie in [0, 1), got {betas}")
        if lr < 0 or eps < 0 or weight_decay < 0 or alpha < 0:
            raise ValueError("AdEMAMix lr, eps, weight_decay and alpha must be >= 0")
        defaults = {
            "lr": lr, "betas": betas, "alpha": alpha, "beta3_warmup": beta3_warmup,
            "alpha_warmup": alpha_warmup, "eps": eps, "weight_decay": weight_decay,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2, beta3_end = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            # parameters stepped together: same step count (so the same bias corrections
            # and schedules), device and dtype (what one _foreach kernel takes)
            batches: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdEMAMix does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg_fast"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_slow"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1  # a CPU scalar: reading it does not wait for the GPU
                t = int(state["step"].item())
                if not group.get("foreach", True):
                    alpha = alpha_schedule(t, group["alpha"], group["alpha_warmup"])
                    beta3 = beta3_schedule(t, beta3_end, beta1, group["beta3_warmup"])
                    self._update(p, p.grad, state, t, lr, beta1, beta2, beta3, alpha, eps, wd)
                    continue
                batches.setdefault((t, p.device, p.dtype, type(p)), []).append(p)
            for (t, _, _, _), params in batches.items():
                alpha = alpha_schedule(t, group["alpha"], group["alpha_warmup"])
                beta3 = beta3_schedule(t, beta3_end, beta1, group["beta3_warmup"])
                self._update_foreach(params, t, lr, beta1, beta2, beta3, alpha, eps, wd)
        return loss

    def _update_foreach(self, params, t, lr, beta1, beta2, beta3, alpha, eps, wd):
        """`_update` for many parameters at once: each line one _foreach kernel over all
        of them, instead of about ten kernels per parameter (the same arithmetic)."""
        grads = [p.grad for p in params]
        m1 = [self.state[p]["exp_avg_fast"] for p in params]
        m2 = [self.state[p]["exp_avg_slow"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_lerp_(m1, grads, 1.0 - beta1)
        torch._foreach_lerp_(m2, grads, 1.0 - beta3)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)
        bias1 = 1.0 - beta1**t
        bias2 = 1.0 - beta2**t
        denom = torch._foreach_div(v, bias2)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        update = torch._foreach_div(m1, bias1)
        torch._foreach_add_(update, m2, alpha=alpha)
        torch._foreach_div_(update, denom)
        if wd:
            torch._foreach_add_(update, params, alpha=wd)
        torch._foreach_add_(params, update, alpha=-lr)

    @staticmethod
    def _update(p, grad, state, t, lr, beta1, beta2, beta3, alpha, eps, wd):
        m1, m2, v = state["exp_avg_fast"], state["exp_avg_slow"], state["exp_avg_sq"]
        m1.lerp_(grad, 1.0 - beta1)
        m2.lerp_(grad, 1.0 - beta3)
        v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        bias1 = 1.0 - beta1**t
        bias2 = 1.0 - beta2**t
        denom = (v / bias2).sqrt_().add_(eps)
        update = (m1 / bias1).add_(m2, alpha=alpha).div_(denom)
        if wd:
            update.add_(p, alpha=wd)
        p.add_(update, alpha=-lr)
