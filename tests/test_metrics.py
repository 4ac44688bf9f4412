"Checks of `collapse_lab.metrics` that do not belong in notebook cells: fault injection, batch-size invariance, dtypes, harder known answers."
import math

import numpy as np
import pytest
import torch

import collapse_lab as cl
from collapse_lab import metrics as M
from collapse_lab.hooks import attach


def n_hooks(model):
    "Hooks on the model's hook points (each point once: hook_dict also lists aliases)."
    return sum(len(hp.fwd_hooks) for hp in {id(hp): hp for hp in model.hook_dict.values()}.values())


@pytest.fixture(scope="module")
def model():
    return cl.tiny_model(n_layers=3, d_model=32, n_heads=4, d_vocab=24, n_ctx=10, seed=3)


@pytest.fixture(scope="module")
def toks():
    return torch.randint(0, 24, (13, 10), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("layer,pos,dim", [(0, 0, 0), (1, 9, 31), (2, 4, 17)])
def test_spike_found_at_its_exact_layer_position_dimension(model, toks, layer, pos, dim):
    def spike(x, hook):
        x = x.clone(); x[:, pos, dim] = -3000.; return x
    remove = attach(model, f"blocks.{layer}.hook_resid_post", spike)
    try:
        found = M.model_massive_activations(model, toks, batch_size=5, progress=False)["found"]
    finally:
        remove()
    assert found.layer.min() == layer
    at = found[found.layer == layer]
    assert set(zip(at.pos, at.dim)) == {(pos, dim)}
    assert sorted(at.seq) == list(range(len(toks)))
    assert (at.value == -3000.).all()


def test_results_do_not_depend_on_batch_size(model, toks):
    a = M.model_attention_entropy(model, toks, batch_size=1, progress=False)
    b = M.model_attention_entropy(model, toks, batch_size=100, progress=False)
    assert np.allclose(a.entropy, b.entropy, atol=1e-5) and np.allclose(a.normalised, b.normalised, atol=1e-5)
    r1 = M.model_effective_rank(model, toks, batch_size=2, progress=False)
    r2 = M.model_effective_rank(model, toks, batch_size=13, progress=False)
    for h in r1:
        assert abs(float(r1[h]["effective_rank"]) - float(r2[h]["effective_rank"])) < 1e-3
    assert torch.allclose(M.model_token_entropy(model, toks, batch_size=4, progress=False),
                          M.model_token_entropy(model, toks, batch_size=13, progress=False), atol=1e-5)


def test_streamed_rank_equals_direct_svd(model, toks):
    r = M.model_effective_rank(model, toks, hooks=["blocks.2.hook_resid_post"], batch_size=3, progress=False)
    with torch.no_grad(), M.capture(model, ["blocks.2.hook_resid_post"]) as a:
        model(toks)
        s = M.singular_values(a["blocks.2.hook_resid_post"])
    assert torch.allclose(r["blocks.2.hook_resid_post"]["singular_values"][:len(s)], s, rtol=1e-3, atol=1e-4)


def test_error_mid_stream_leaves_no_hook(model, toks):
    before = n_hooks(model)
    calls = {"n": 0}
    def fail_on_second_batch(x, hook):
        calls["n"] += 1
        if calls["n"] == 2: raise RuntimeError("injected failure")
    remove = attach(model, "blocks.1.hook_resid_post", fail_on_second_batch)
    with_injected = n_hooks(model)
    assert with_injected == before + 1
    try:
        for fn in (lambda: M.model_attention_entropy(model, toks, batch_size=4, progress=False),
                   lambda: M.model_massive_activations(model, toks, batch_size=4, progress=False),
                   lambda: M.model_effective_rank(model, toks, batch_size=4, progress=False)):
            calls["n"] = 0
            with pytest.raises(RuntimeError, match="injected failure"): fn()
            assert n_hooks(model) == with_injected      # only the injected hook remains
    finally:
        remove()
    assert n_hooks(model) == before


def test_trajectory_restores_weights_after_a_bad_checkpoint(model, toks):
    orig = {k: v.clone() for k, v in model.state_dict().items()}
    good = {k: v + 0.01 for k, v in orig.items()}
    bad = dict(good); k0 = next(iter(bad)); bad[k0] = torch.zeros(3)   # wrong shape
    with pytest.raises(RuntimeError):
        M.massive_activation_trajectory(model, {0: good, 10: bad}, toks, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, orig[k]), k
    df = M.massive_activation_trajectory(model, {0: orig, 5: good}, toks[:4], progress=False)
    assert list(df.step.unique()) == [0, 5] and len(df) == 2 * model.cfg.n_layers


def test_bf16_model_entropies():
    m32 = cl.tiny_model(n_layers=1, d_model=32, n_heads=4, d_vocab=24, n_ctx=8, seed=0)
    m16 = cl.tiny_model(n_layers=1, d_model=32, n_heads=4, d_vocab=24, n_ctx=8, seed=0, dtype="bfloat16")
    t = torch.randint(0, 24, (4, 8), generator=torch.Generator().manual_seed(0))
    h32 = M.model_token_entropy(m32, t, progress=False)
    h16 = M.model_token_entropy(m16, t, progress=False)
    assert h16.dtype == torch.float32
    assert torch.allclose(h16, h32, atol=0.05)
    r = M.model_action_entropy(m16, t, [1, 2, 3], progress=False)
    assert torch.allclose(r["probs"].sum(-1), torch.ones(4), atol=1e-5)
    assert ((r["entropy"] >= 0) & (r["entropy"] <= math.log(3) + 1e-5)).all()


def test_fit_emergence_log_increase_regime():
    t = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 8000, 16000, 32000])
    y = M.emergence_curve(t, A=3., lam=0., gamma=1e-2, t0=1., K=4.)
    fit = M.fit_emergence(t, y)
    assert fit["r2"] > 0.999
    assert np.allclose(M.emergence_curve(t, *(fit[k] for k in ("A", "lam", "gamma", "t0", "K"))), y, atol=0.05 * y.std())
    with pytest.raises(ValueError, match="finite"): M.fit_emergence(t, np.where(t == 4, np.nan, y))


def test_neural_collapse_invariances_and_self_duality():
    g = torch.Generator().manual_seed(0)
    C, d = 4, 10
    y = torch.arange(C).repeat_interleave(25)
    H = torch.randn(C, d, generator=g)[y] + 0.3 * torch.randn(len(y), d, generator=g)
    base = M.neural_collapse(H, y)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    moved = M.neural_collapse(7 * H @ Q + 3, y)          # NC1/NC2 ignore scale, rotation and translation
    for k in ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle"):
        assert abs(float(base[k]) - float(moved[k])) < 1e-4 * max(1., abs(float(base[k]))), k
    mu = torch.stack([H[y == c].mean(0) for c in range(C)])
    nc = M.neural_collapse(H, y, W=5 * (mu - H.mean(0)))     # classifier = centred class means: NC3 = 0
    assert float(nc["nc3"]) < 1e-8


def test_model_collapse_closed_forms_other_sizes():
    sim = M.simulate_model_collapse(n_generations=6, d=5, T=40, sigma=0.5, n_trials=3000, seed=1)
    assert np.allclose(sim["replace"], sim["replace_closed"], rtol=0.08)
    assert np.allclose(sim["accumulate"], sim["accumulate_closed"], rtol=0.08)
    cf = M.model_collapse_closed_form(1000, d=5, T=40, sigma=0.5)
    assert cf["accumulate"][-1] < cf["accumulate"][0] * math.pi ** 2 / 6 + 1e-12
    assert cf["replace"][-1] == pytest.approx(1000 * cf["replace"][0])


def test_cov_selections_edge_cases():
    cov = torch.tensor([[0.1, 2.0, 3.0, -1.0], [6.0, 0.5, 1.5, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, True]])
    assert not M.clip_cov_select(cov, mask, ratio=0.5, low=10., high=20.).any()     # no candidates: nothing
    sel = M.clip_cov_select(cov, mask, ratio=1.0, low=1., high=5.)
    assert sel.tolist() == [[False, True, True, False], [False, False, False, False]]  # masked 1.5 excluded
    sel = M.clip_cov_select(cov, mask, ratio=1.0, low=2., high=5.)                   # strict: 2.0 on the bound is out
    assert sel.tolist() == [[False, False, True, False], [False, False, False, False]]
    assert int(M.kl_cov_select(cov, mask, ratio=1e-4).sum()) == 1                    # max(1, floor(k N))
    with pytest.raises(ValueError, match="ratio"): M.kl_cov_select(cov, mask, ratio=0.)
    sel = M.kl_cov_select(cov, mask, ratio=2 / 7)
    assert sel.tolist() == [[False, False, True, False], [True, False, False, False]]
    with pytest.raises(ValueError, match="ratio"): M.kl_cov_select(cov, ratio=1.5)
    with pytest.raises(ValueError, match="low"): M.clip_cov_select(cov, low=5., high=1.)


def test_bad_inputs_name_the_bad_value(model, toks):
    with pytest.raises(ValueError, match="layer=7"): M.model_massive_activations(model, toks, layers=[7], progress=False)
    with pytest.raises(ValueError, match="batch_size=0"): M.model_token_entropy(model, toks, batch_size=0, progress=False)
    with pytest.raises(ValueError, match=r"\[24\]"): M.model_action_entropy(model, toks, [0, 24], progress=False)
    with pytest.raises(ValueError, match="labels"): M.neural_collapse(torch.randn(5, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="logvar"): M.kl_per_dim(torch.zeros(3, 2), torch.zeros(3, 3))


def test_attention_entropy_normalisations_against_direct_formulas(model, toks):
    "Both named maxima, computed here from the patterns by hand: log(q+1) keys visible ('visible') and log T ('context')."
    T = toks.shape[1]
    with torch.no_grad(), M.capture(model, ["blocks.2.attn.hook_pattern"]) as a:
        model(toks)
    p = a["blocks.2.attn.hook_pattern"].double()
    H = -(p * p.clamp_min(1e-300).log()).sum(-1)[..., 1:]                        # [n, head, q>=1]
    vis = (H / torch.log(torch.arange(2., T + 1, dtype=torch.float64))).mean((0, 2))
    ctx = (H / math.log(T)).mean((0, 2))
    for by, want in (("visible", vis), ("context", ctx)):
        df = M.model_attention_entropy(model, toks, layers=[2], by=by, batch_size=5, progress=False)
        assert np.allclose(df.normalised.values, want.numpy(), atol=1e-5), (by, df.normalised.values, want)
    with pytest.raises(ValueError, match="'tokens'"): M.model_attention_entropy(model, toks, by="tokens", progress=False)
