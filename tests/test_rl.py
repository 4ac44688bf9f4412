"""collapse_lab.rl's losses against an independent transcription of the official Clip-Cov / KL-Cov semantics
(PRIME-RL Entropy-Mechanism-of-RL, as merged into verl's core_algos.py), on random batches."""
import math
import pytest
import torch
from collapse_lab import rl


def _batch(seed, n=24, L=5):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, L, generator=g) * 3
    new = old + 0.3 * torch.randn(n, L, generator=g)
    adv = torch.randn(n, 1, generator=g).expand(n, L)
    mask = torch.rand(n, L, generator=g) > 0.15
    return new, old, adv, mask


def _ref_kl_cov(new, old, adv, mask, k, coef):
    "Unclipped -A rho on every token; + coef |log rho| on the max(1, int(k N)) valid tokens of largest Cov; token-mean."
    l = -adv * torch.exp(new - old)
    a, p = adv[mask], new[mask]
    cov = (a - a.mean()) * (p - p.mean())
    top = cov.topk(max(1, int(len(cov) * k))).indices
    flat = l[mask].clone()
    flat[top] = flat[top] + coef * (new - old)[mask][top].abs()
    return flat.sum() / mask.sum()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k,coef", [(2e-3, 1.), (0.1, 3.)])
def test_kl_cov_matches_official_semantics(seed, k, coef):
    new, old, adv, mask = _batch(seed)
    loss, st = rl.policy_loss(new, old, adv, mask=mask, cfg=rl.RLConfig(method="kl_cov", kl_cov_ratio=k, kl_coef=coef))
    assert loss.item() == pytest.approx(_ref_kl_cov(new, old, adv, mask, k, coef).item(), rel=1e-5)
    assert st["n_selected"] == max(1, int(k * int(mask.sum())))


@pytest.mark.parametrize("seed", range(4))
def test_clip_cov_zeroes_only_unclipped_in_window_tokens(seed):
    new, old, adv, mask = _batch(seed)
    cfg = rl.RLConfig(method="clip_cov", clip_cov_ratio=0.05, clip_cov_low=0.05, clip_cov_high=2.)
    new = new.clone().requires_grad_()
    loss, st = rl.policy_loss(new, old, adv, mask=mask, cfg=cfg, generator=torch.Generator().manual_seed(seed))
    loss.backward()
    ratio = torch.exp(new.detach() - old)
    l1, l2 = -adv * ratio, -adv * ratio.clamp(0.8, 1.2)
    clipped = (l2 > l1) & mask
    a, p = adv[mask].mean(), new.detach()[mask].mean()
    cov = (adv - a) * (new.detach() - p)
    cand = mask & ~clipped & (cov > 0.05) & (cov < 2.)
    zero = (new.grad == 0) & mask & ~clipped                # tokens without gradient that PPO did not clip
    assert st["n_selected"] == min(max(1, int(0.05 * int(mask.sum()))), int(cand.sum()))
    assert int(zero.sum()) == st["n_selected"] and bool((zero <= cand).all())
    # the rest is verl's vanilla token-mean loss
    keep = mask & ~zero
    assert loss.item() == pytest.approx((torch.maximum(l1, l2) * keep).sum().item() / int(mask.sum()), rel=1e-5)


def test_grpo_advantages_match_verl_formula():
    r = torch.tensor([[1., 0., 1., 1., 0., 0., 0., 0.]])
    expect = (r - r.mean()) / (r.std() + 1e-6)
    assert torch.allclose(rl.grpo_advantages(r), expect)
    assert math.isclose(float(rl.grpo_advantages(r).std()), 1.0, rel_tol=1e-4)
