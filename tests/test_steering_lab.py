"SteeringLab: no hook left after many slider moves, update latency, errors shown in the panel."
import statistics, time, torch, pytest
import collapse_lab as cl
from collapse_lab.bandit import Bandits, TokenRendering
from collapse_lab.steering_lab import SteeringLab

HOOK = "blocks.1.hook_resid_post"

@pytest.fixture(scope="module")
def agent():
    "The tutorial's agent shape (3 layers, d_model 64, 4 heads, 5 arms, horizon 30); weights do not matter here."
    r = TokenRendering(5)
    return cl.tiny_model(n_layers=3, d_model=64, n_heads=4, d_vocab=r.d_vocab, n_ctx=r.n_ctx(30), seed=0)

def _torch_hooks(model)->int:
    "PyTorch hooks on every module (TransformerLens wires a few of its own on the first forward pass)."
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

def _hooked(model, baseline:int)->bool:
    return any(hp.fwd_hooks for hp in model.hook_dict.values()) or _torch_hooks(model) != baseline

def test_thousand_slider_moves_leave_no_hooks(agent):
    lab = SteeringLab(agent, HOOK, torch.randn(64), Bandits(2, 5, 30, seed=0))
    base = _torch_hooks(agent)
    g = torch.Generator().manual_seed(0)
    for i in range(1000):
        lab.coef.value = round(float(torch.empty(1).uniform_(-10, 10, generator=g)), 2)
        if i % 250 == 0: lab.position.value = "last position" if i % 500 == 0 else "all positions"
    assert not _hooked(agent, base)
    assert not any(hp.fwd_hooks for hp in agent.hook_dict.values())     # the check the issue names
    assert lab.error.value == ""
    assert len(lab.timings) >= 1000

def test_update_latency(agent, capsys):
    "Slider move to recomputed distribution: one forward pass on cached tokens (target < 50 ms on CPU)."
    lab = SteeringLab(agent, HOOK, torch.randn(64), Bandits(2, 5, 30, seed=0))
    lab.timings.clear()
    t = []
    for i in range(60):
        t0 = time.perf_counter(); lab.coef.value = (i % 20) / 2; t.append(time.perf_counter() - t0)
    compute, total = statistics.median(lab.timings) * 1e3, statistics.median(t) * 1e3
    with capsys.disabled(): print(f"\nSteeringLab update: median {compute:.1f} ms to the distribution, {total:.1f} ms incl. redraw")
    assert compute < 250, compute      # generous: the machine is shared; the target on a free core is < 50 ms

def test_errors_stay_in_the_panel(agent):
    lab = SteeringLab(agent, HOOK, torch.randn(64), Bandits(2, 5, 30, seed=0))
    base = _torch_hooks(agent)
    for bad, msg in [("nan", "outside"), ("", "not a number"), ("1,5", "not a number"), ("-1e6", "outside")]:
        lab.coef_text.value = bad
        assert msg in lab.error.value, (bad, lab.error.value)
    lab.steps.value = "40"; lab.play_episode()
    assert "context" in lab.error.value          # 40 steps do not fit the agent's 60-token context
    lab.steps.value = "3.5"; lab.play_episode()
    assert "whole number" in lab.error.value
    lab.vector = torch.full((64,), float("nan")); lab.coef.value = 1.0
    assert "NaN" in lab.error.value             # a broken vector is reported, not raised
    assert not _hooked(agent, base)

def test_hook_dropdown_moves_the_steering(agent):
    lab = SteeringLab(agent, HOOK, torch.randn(64) * 5, torch.tensor([0, 1, 6, 2, 7]), action_tokens=[1, 2, 3, 4, 5])
    lab.coef.value = 3.
    d1 = lab.dist.clone()
    lab.hook.value = "blocks.0.hook_resid_post"
    assert not torch.allclose(d1, lab.dist)
    ref = cl.run(agent, lab.tokens, cl.Steer("blocks.0.hook_resid_post", lab.vector, coef=3.))[0, -1]
    torch.testing.assert_close(lab.dist, cl.metrics.action_distribution(ref, [1, 2, 3, 4, 5]), atol=1e-5, rtol=1e-4)
