"The fast path (plain PyTorch hooks on the bare model) against the bridge path, on every architecture the tests build."
import pytest
import torch
from torch.utils.hooks import RemovableHandle

import collapse_lab as cl
from collapse_lab import fastpath, interventions
from collapse_lab.interventions import activations

ARCHS = ["gpt2", "gpt_neox", "llama", "native"]
KINDS = ["hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out"]
D = 32


@pytest.fixture(scope="module", params=ARCHS)
def model(request, tmp_path_factory):
    if request.param == "native":
        return cl.tiny_model(n_layers=2, d_model=D, n_heads=4, d_vocab=100, n_ctx=16)
    path = cl.tiny_hf_checkpoint(tmp_path_factory.mktemp(request.param), arch=request.param, n_layers=2, d_model=D)
    return cl.load_model(path, device="cpu")


@pytest.fixture
def spy(monkeypatch):
    "Counts the runs that take the fast path."
    calls = []
    real = interventions.fast_forward
    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(interventions, "fast_forward", counting)
    return calls


def _gen(seed): return torch.Generator().manual_seed(seed)
def _tokens(seed, b=3, p=9): return torch.randint(3, 100, (b, p), generator=_gen(seed))


def _torch_hooks(model):
    "Number of plain torch hooks on every module reachable from the bridge or its bare view."
    mods = list(model.modules())
    bare = fastpath.bare_model(model)
    if bare is not None: mods += list(bare.modules())
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in mods)


def _tl_hooks(model):
    return [n for n, hp in model.hook_dict.items() if hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks]


def test_every_block_boundary_is_a_fast_site(model):
    sites = set(fastpath.fast_sites(model))
    want = {f"blocks.{L}.{k}" for L in range(2) for k in KINDS}
    assert want <= sites, f"missing fast sites: {sorted(want - sites)}"
    assert "blocks.0.attn.hook_pattern" not in sites


def test_bare_model_shares_parameters_and_matches_logits(model):
    bare = fastpath.bare_model(model)
    assert {id(p) for p in bare.parameters()} <= {id(p) for p in model.parameters()}
    toks = _tokens(0)
    with torch.no_grad():
        out = bare(input_ids=toks)
        out = out.logits if hasattr(out, "logits") else out
        torch.testing.assert_close(out, model(toks), atol=1e-5, rtol=0)


def _interventions(hook, seed):
    v = torch.randn(D, generator=_gen(seed))
    src = _tokens(seed + 1)
    return {
        "steer": cl.Steer(hook, v, coef=3.0),
        "steer_last": cl.Steer(hook, v, coef=-2.0, positions=[-1]),
        "subspace": cl.SubspacePatch(hook, torch.randn(3, D, generator=_gen(seed + 2)), src),
        "subspace_pos": cl.SubspacePatch(hook, torch.randn(2, D, generator=_gen(seed + 3)), src, positions=[0, -1]),
        "clamp": cl.Clamp(hook, torch.randn(D, generator=_gen(seed + 4)), positions=[2]),
        "ablate": cl.Ablate(hook, "mean"),
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layer", [0, 1])
def test_fast_run_equals_bridge_run(model, kind, layer, spy):
    hook = f"blocks.{layer}.{kind}"
    toks = _tokens(10 + layer)
    clean = model(toks).detach()
    for what, iv in _interventions(hook, 20 + layer).items():
        with torch.no_grad():
            n = len(spy)
            fast = cl.run(model, toks, iv)
            assert len(spy) > n, f"{what} at {hook} did not take the fast path"
            slow = cl.run(model, toks, iv, fast=False)
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0, msg=lambda m: f"{what} at {hook}: {m}")
        assert (fast - clean).abs().max() > 1e-4, f"{what} at {hook} changed nothing"


def test_several_interventions_and_activations(model, spy):
    toks = _tokens(30)
    ivs = [cl.Steer("blocks.0.hook_resid_post", torch.randn(D, generator=_gen(31)), coef=2.0),
           cl.Ablate("blocks.1.hook_attn_out", "zero"),
           cl.Steer("blocks.1.hook_mlp_out", torch.randn(D, generator=_gen(32)), positions=[1, 3])]
    before = _torch_hooks(model)
    with torch.no_grad():
        torch.testing.assert_close(cl.run(model, toks, *ivs), cl.run(model, toks, *ivs, fast=False), atol=1e-5, rtol=0)
        for hook in ("blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"):   # (activations stops the pass at `hook`)
            torch.testing.assert_close(activations(model, toks, hook, *ivs),
                                       activations(model, toks, hook, *ivs, fast=False), atol=1e-5, rtol=0)
    assert len(spy) >= 3
    assert _torch_hooks(model) == before and _tl_hooks(model) == []


def test_fast_sweep_equals_bridge_sweep(model, spy):
    toks = _tokens(40)
    steer = cl.Steer("blocks.1.hook_resid_pre", torch.randn(D, generator=_gen(41)), coef=torch.linspace(-6, 6, 5))
    fast = cl.sweep(model, toks, steer, max_batch=7)
    assert len(spy) == 3   # 5 coefficients, 2 per pass of 7 rows
    slow = cl.sweep(model, toks, steer, max_batch=7, fast=False)
    torch.testing.assert_close(fast.stacked(), slow.stacked(), atol=1e-5, rtol=0)


def test_gradients_match_through_fast_path(model):
    toks = _tokens(50)
    iv = cl.Steer("blocks.0.hook_resid_post", torch.randn(D, generator=_gen(51)), coef=1.5)
    grads = []
    for fast in (True, False):
        model.zero_grad()
        logits = cl.run(model, toks, iv, fast=fast)
        torch.log_softmax(logits, -1)[..., 5].sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    model.zero_grad()
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads): torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_hook_left_on_bridge_forces_bridge_path(model, spy):
    toks = _tokens(60)
    v = torch.randn(D, generator=_gen(61))
    with torch.no_grad():
        clean = model(toks)
        with cl.intervene(model, cl.Steer("blocks.0.hook_resid_post", v, coef=-3.0)):
            both = cl.run(model, toks, cl.Steer("blocks.0.hook_resid_post", v, coef=3.0))
    assert spy == []
    torch.testing.assert_close(both, clean, atol=1e-5, rtol=0)


def test_hooks_added_between_fast_runs_are_seen(model, spy):
    """The scan for hooks left on the bridge's hook points is skipped while torch's hook counter stands still; a hook
    added with TransformerLens's add_hook, or with torch's register_forward_hook by a hook function during a fast run,
    is still seen by the next run, and removing it brings the fast path back. The hooks TransformerLens leaves on the
    wrapped modules after run_with_cache do not turn the fast path off."""
    toks = _tokens(62)
    v = torch.randn(D, generator=_gen(63))
    st = cl.Steer("blocks.0.hook_resid_post", v, coef=3.0)
    b = fastpath.bare_view(model)
    with torch.no_grad():
        want = cl.run(model, toks, st)
        cl.run(model, toks, st)
        assert b.clean_at == RemovableHandle.next_id and len(spy) == 2   # the next run skips the scan
        hp = model.hook_dict["blocks.1.hook_resid_pre"]
        hp.add_hook(lambda act, hook: act.flip(-1))
        try: flipped = cl.run(model, toks, st)
        finally: hp.remove_hooks()
        assert len(spy) == 2, "a TransformerLens hook was left out: the run took the fast path"
        assert not torch.allclose(flipped, want, atol=1e-3)
        torch.testing.assert_close(cl.run(model, toks, st), want, atol=1e-5, rtol=0)
        assert len(spy) == 3
        model.run_with_cache(toks, names_filter="blocks.1.hook_resid_pre")   # leaves TransformerLens's own hooks on modules
        torch.testing.assert_close(cl.run(model, toks, st), want, atol=1e-5, rtol=0)
        assert len(spy) == 4, "the fast path went off after run_with_cache"
        left = []
        def leaves_a_hook(act, hook):       # a fast hook that hooks the bridge mid-run
            left.append(hp.register_forward_hook(lambda mod, i, o: o.flip(-1))); return act
        cl.run(model, toks, st, cl.Clamp("blocks.1.hook_resid_post", lambda act: leaves_a_hook(act, None)))
        try: again = cl.run(model, toks, st)
        finally: left[0].remove()
        assert len(spy) == 5, "the hook added during the last fast run was not seen"
        assert not torch.allclose(again, want, atol=1e-3)


@pytest.mark.parametrize("edit", [False, True], ids=["reading hook", "editing hook"])
def test_first_run_inside_a_hook_context_keeps_the_fast_path(tmp_path, edit, spy):
    """The bare view is verified against the bridge: built during a first run that a user's hook is part of, it was
    verified against the hooked bridge (an editing hook: 'fast path off' for good; a reading hook: taken for one of
    TransformerLens's own, so the fast path went off once it was removed). It is now built on a later, unhooked run."""
    model = cl.load_model(cl.tiny_hf_checkpoint(tmp_path, arch="gpt2", n_layers=2, d_model=D), device="cpu")
    toks, seen = _tokens(64), []
    st = cl.Steer("blocks.0.hook_resid_post", torch.randn(D, generator=_gen(65)), coef=2.0)
    fn = (lambda act, hook: act.flip(-1)) if edit else (lambda act, hook: seen.append(1))
    with torch.no_grad():
        with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", fn)]): cl.run(model, toks, st)
        assert spy == [] and (edit or seen)                  # that run went through the bridge, with the hook
        torch.testing.assert_close(cl.run(model, toks, st), cl.run(model, toks, st, fast=False), atol=1e-5, rtol=0)
    assert len(spy) == 1 and fastpath.fast_applies(model, ["blocks.0.hook_resid_post"])


def test_non_fast_hook_uses_bridge(model, spy):
    toks = _tokens(70)
    iv = cl.Clamp("blocks.0.attn.hook_pattern", cl.previous_token_pattern(9), heads=[1])
    with torch.no_grad(): out = cl.run(model, toks, iv)
    assert spy == [] and out.shape[:2] == toks.shape


class Boom(Exception): pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("kind", ["hook_resid_pre", "hook_resid_post"])
def test_exception_in_fast_hook_leaves_no_hook(model, exc, kind, spy):
    toks = _tokens(80)
    before_torch, before_tl = _torch_hooks(model), _tl_hooks(model)
    ivs = [cl.SubspacePatch("blocks.1.hook_resid_pre", torch.eye(D)[:3], toks),
           cl.Steer("blocks.0.hook_resid_post", torch.ones(D)),
           cl.Clamp(f"blocks.1.{kind}", lambda act: (_ for _ in ()).throw(exc("inside a fast hook")))]
    with pytest.raises(exc):
        cl.run(model, toks, *ivs)
    assert spy, "the run did not take the fast path"
    assert _torch_hooks(model) == before_torch
    assert _tl_hooks(model) == before_tl == []
    with torch.no_grad():  # and the model still runs clean
        torch.testing.assert_close(cl.run(model, toks), model(toks), atol=1e-5, rtol=0)


def test_bad_input_on_fast_site_names_the_value(model):
    with pytest.raises(ValueError, match="size 31 but blocks.0.hook_resid_post"):
        cl.run(model, _tokens(90), cl.Steer("blocks.0.hook_resid_post", torch.ones(31)))
    assert _tl_hooks(model) == []


def test_train_mode_follows_the_bridge(model):
    bare = fastpath.bare_model(model)
    try:
        model.train()
        cl.run(model, _tokens(95), cl.Steer("blocks.0.hook_resid_post", torch.ones(D)))
        assert all(m.training for m in bare.modules())
    finally:
        model.eval()
    cl.run(model, _tokens(95), cl.Steer("blocks.0.hook_resid_post", torch.ones(D)))
    assert not any(m.training for m in bare.modules())


def test_fast_path_follows_training_of_the_bridge(model):
    "After optimiser steps through the bridge (which updates its split q/k/v copies), fast still equals bridge."
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    toks = _tokens(100)
    iv = cl.Steer("blocks.1.hook_resid_post", torch.randn(D, generator=_gen(101)), coef=2.0)
    with torch.no_grad(): before = cl.run(model, toks, iv)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    try:
        for _ in range(2):
            opt.zero_grad()
            model(toks, return_type="loss").backward()
            opt.step()
        with torch.no_grad():
            fast, slow = cl.run(model, toks, iv), cl.run(model, toks, iv, fast=False)
        assert (fast - before).abs().max() > 1e-3   # the weights did change
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    finally:
        model.zero_grad()
        model.load_state_dict(saved)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_bf16_model_keeps_its_fast_sites(arch, tmp_path):
    "In bf16 the bare view (SDPA) and the bridge (eager) round differently; the fast path must still apply."
    model = cl.load_model(cl.tiny_hf_checkpoint(tmp_path, arch=arch, n_layers=2, d_model=D), device="cpu", dtype="bfloat16")
    assert {f"blocks.{L}.{k}" for L in range(2) for k in KINDS} <= set(fastpath.fast_sites(model))
    toks = _tokens(110)
    iv = cl.Steer("blocks.1.hook_resid_pre", torch.randn(D, generator=_gen(111)), coef=2.0)
    with torch.no_grad():
        fast, slow = cl.run(model, toks, iv).float(), cl.run(model, toks, iv, fast=False).float()
    assert fast.dtype == slow.dtype and ((fast - slow).norm() / slow.norm()).item() < 2e-2
