"Checks of collapse_lab.patching that do not belong in a notebook cell: fault injection, exactness, round trips."
import os
os.environ.setdefault("OMP_NUM_THREADS", "1")
import pytest, torch
import torch.nn.functional as F
torch.set_num_threads(1)

from collapse_lab.interventions import Steer, SubspacePatch, run, intervene
from collapse_lab.ioi import train_ioi, ioi_pairs, S2_POS, HELDOUT_TEMPLATES
from collapse_lab.patching import (patch_direction, patch_subspace, decompose, das, mean_difference_direction,
                                   gradient_direction, logit_diff, patched_logits, patch_metrics, illusion_report,
                                   patching_sweep, save_subspace, load_subspace, fraction_recovered, downstream_map)

@pytest.fixture(scope="module")
def trained():
    model, _ = train_ioi(steps=120, progress=False)
    return model, ioi_pairs(64, seed=3)

def _no_hooks(model): return all(len(hp.fwd_hooks) == 0 for hp in model.hook_dict.values())

def test_decompose_rank_deficient():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 2, generator=g) @ torch.randn(2, 5, generator=g)     # rank 2, used as h @ W
    v = torch.randn(3, 6, generator=g)
    dec = decompose(v, W)
    assert dec.rank == 2
    torch.testing.assert_close(dec.rowspace + dec.nullspace, v)
    torch.testing.assert_close(dec.nullspace @ W, torch.zeros(3, 5), atol=1e-5, rtol=0)
    # the rowspace part lies in the column space of W: projecting it again changes nothing
    torch.testing.assert_close(decompose(dec.rowspace, W).rowspace, dec.rowspace, atol=1e-5, rtol=0)
    # the wrong orientation (W^T) is refused, not silently used
    with pytest.raises(ValueError, match="rows"): decompose(v, W.T)

def test_direction_patch_in_model_matches_formula(trained):
    model, p = trained
    hook, v = "blocks.0.hook_resid_post", torch.randn(64)
    from collapse_lab.interventions import activations
    hb, hs = activations(model, p.base.tokens, hook), activations(model, p.source.tokens, hook)
    want = hb.clone(); want[:, S2_POS] = patch_direction(hb[:, S2_POS], hs[:, S2_POS], v)
    got = {}
    with intervene(model, SubspacePatch(hook, v, p.source.tokens, positions=[S2_POS])):
        from collapse_lab.interventions import activations as acts
        got = acts(model, p.base.tokens, hook)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(patch_subspace(hb, hs, torch.eye(64)), hs, atol=1e-4, rtol=1e-4)

def test_das_restores_weights_and_hooks_after_error(trained):
    model, p = trained
    first = next(model.parameters()); first.requires_grad_(False)        # a mixed requires_grad state to restore
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [q.requires_grad for q in model.parameters()]
    bad = p.counterfactual.clone(); bad[5] = 10_000                       # out-of-vocabulary target: CE fails mid-run
    with pytest.raises(Exception):
        das(model, p.base.tokens, p.source.tokens, "blocks.0.hook_resid_post", answers=bad, steps=5, batch_size=64, progress=False)
    assert _no_hooks(model)
    assert [q.requires_grad for q in model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    first.requires_grad_(True)

def test_das_learns_and_trains_the_patch_it_returns(trained):
    model, p = trained
    hook = "blocks.0.mlp.hook_post"
    res = das(model, p.base.tokens, p.source.tokens, hook, positions=[S2_POS], answers=p.counterfactual,
              steps=40, lr=3e-2, progress=False)
    assert sum(res.losses[-10:]) / 10 < sum(res.losses[:5]) / 5 - 0.1   # gradients flow through the patched activation
    torch.testing.assert_close(res.basis @ res.basis.T, torch.eye(1), atol=1e-5, rtol=0)
    # With lr=0 the basis DAS returns is the one its first loss was computed with: evaluating that basis as a
    # SubspacePatch on the same (seeded) batch gives the same cross-entropy to float precision, so DAS optimises
    # exactly the patch it hands back (a different formula would be off by far more than 1e-5).
    frozen = das(model, p.base.tokens, p.source.tokens, hook, positions=[S2_POS], answers=p.counterfactual,
                 steps=1, lr=0., seed=3, progress=False)
    n = len(p.base.tokens)
    idx = torch.randint(n, (min(64, n),), generator=torch.Generator().manual_seed(3))   # DAS's first batch
    lg = patched_logits(model, p.base.tokens[idx], p.source.tokens[idx], hook, frozen.basis, [S2_POS])
    ce = F.cross_entropy(lg[:, -1], p.counterfactual[idx]).item()
    assert abs(ce - frozen.losses[0]) < 1e-5, (ce, frozen.losses[0])
    with pytest.raises(ValueError, match="positions"):
        das(model, p.base.tokens, p.source.tokens, hook, positions=[40], answers=p.counterfactual, steps=1, progress=False)
    with pytest.raises(ValueError, match="pairs must align"):
        das(model, p.base.tokens, p.source.tokens[:5], hook, answers=p.counterfactual, steps=1, progress=False)
    assert _no_hooks(model)

def test_gradient_direction_matches_finite_difference(trained):
    model, p = trained
    hook, eps = "blocks.0.hook_resid_post", 1e-2
    b = p.base[:8]
    g = gradient_direction(model, b.tokens, b.io, b.s, hook, position=S2_POS)
    base = logit_diff(run(model, b.tokens).detach(), b.io, b.s).mean()
    for i in (0, 7, 33):
        e = torch.zeros(64); e[i] = eps
        ld = logit_diff(run(model, b.tokens, Steer(hook, e, positions=[S2_POS])).detach(), b.io, b.s).mean()
        assert abs((ld - base).item() / eps - g[i].item()) < 0.05 * g.abs().max().item() + 1e-3
    assert _no_hooks(model)

def test_mlp_nullspace_component_has_no_effect(trained):
    model, p = trained
    hook = "blocks.0.mlp.hook_post"
    v = torch.randn(256)
    rep = illusion_report(model, p.base.tokens, p.source.tokens, hook, v, model.blocks[0].mlp.W_out.detach(),
                          p.answer, p.counterfactual, positions=[S2_POS])
    t = rep.table
    assert abs(t.loc["nullspace component", "logit diff"] - t.loc["no patch", "logit diff"]) < 1e-3
    assert 0.15 < t.loc["rowspace component", "|component|^2 / |v|^2"] < 0.4     # 64 of 256 dims
    assert abs(t.loc["full activation", "fraction of full patch"] - 1) < 1e-6

def test_patching_sweep_matches_single_patches(trained):
    model, p = trained
    b = p[:16]
    sw = patching_sweep(model, b.base.tokens, b.source.tokens, b.answer, b.counterfactual, kind="resid_post")
    m = patch_metrics(model, b.base.tokens, b.source.tokens, "blocks.0.hook_resid_post", b.answer, b.counterfactual,
                      positions=[S2_POS])
    assert abs(sw.values[0, S2_POS].item() - m["logit_diff"]) < 1e-4
    heads = patching_sweep(model, b.base.tokens, b.source.tokens, b.answer, b.counterfactual, kind="z", positions=[-1])
    assert heads.values.shape == (2, 4)
    with pytest.raises(ValueError, match="Unknown hook kind"):
        patching_sweep(model, b.base.tokens, b.source.tokens, b.answer, b.counterfactual, kind="resid")

def test_save_load_subspace_roundtrip_and_corruption(tmp_path, trained):
    model, _ = trained
    B = torch.linalg.qr(torch.randn(64, 3)).Q.T.contiguous()
    path = save_subspace(tmp_path / "s.safetensors", B, hook="blocks.0.hook_resid_post", meta={"note": "x"})
    B2, meta = load_subspace(path, model)
    assert torch.equal(B, B2) and meta["hook"] == "blocks.0.hook_resid_post" and meta["kind"] == "subspace"
    data = path.read_bytes(); path.write_bytes(data[:-7])
    with pytest.raises(ValueError): load_subspace(path)
    save_subspace(tmp_path / "w.safetensors", torch.randn(2, 65), hook="blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="65"): load_subspace(tmp_path / "w.safetensors", model)

def test_fraction_recovered():
    assert fraction_recovered(torch.tensor([1., 3.]), 4.0, 0.0) == pytest.approx(0.5)
    assert fraction_recovered(1.0, 2.0, 2.0) != fraction_recovered(1.0, 2.0, 2.0)     # NaN when no reference effect


def test_downstream_map_stacks_every_reader(trained):
    model, _ = trained
    d = downstream_map(model, "blocks.0.hook_resid_pre")
    assert d.site == "residual stream" and d.readers[0] == "blocks.0.attn.W_Q" and d.readers[-1] == "W_U"
    assert "blocks.0.mlp.W_in" in d.readers and "blocks.1.mlp.W_in" in d.readers and d.nullspace_dim == 0
    assert downstream_map(model, "blocks.1.hook_resid_post").readers == ["W_U"]
    # a direction one reader misses is still read by the stack: the single-reader "nullspace" is not disconnected
    q = model.blocks[0].mlp.W_in.detach()[:, :8]                     # 8 of the 256 input columns of MLP 0
    n = decompose(torch.randn(64), q).nullspace
    assert n.norm() > 0.5 and (n @ d.W).norm() > 1e-2 * n.norm() * d.W.norm()
    mlp = downstream_map(model, "blocks.1.mlp.hook_post")
    assert torch.equal(mlp.W, model.blocks[1].mlp.W_out.detach().float().cpu()) and mlp.nullspace_dim == 192
    z = downstream_map(model, "blocks.0.attn.hook_z")
    assert z.W.shape == (16, 4 * 64) and z.readers == ["blocks.0.attn.W_O"]
    with pytest.raises(ValueError, match="hook_resid_pre"): downstream_map(model, "blocks.0.mlp.hook_pre")
    with pytest.raises(ValueError, match="model= and hook="): decompose(torch.randn(64))

def test_illusion_report_variation_is_exact_and_picks_W(trained):
    model, p = trained
    from collapse_lab.interventions import activations
    hook, W = "blocks.0.mlp.hook_post", model.blocks[0].mlp.W_out.detach()
    g = torch.Generator().manual_seed(4)
    v = torch.randn(256, generator=g)
    kw = dict(answer=p.answer, counterfactual=p.counterfactual, positions=[S2_POS])
    auto = illusion_report(model, p.base.tokens, p.source.tokens, hook, v, **kw)
    given = illusion_report(model, p.base.tokens, p.source.tokens, hook, v, W, **kw)
    assert auto.table.equals(given.table) and auto.downstream.readers == ["blocks.0.mlp.W_out"] and auto.note == ""
    u = v / v.norm(); r, n = decompose(u, W)
    dh = (activations(model, p.source.tokens, hook) - activations(model, p.base.tokens, hook))[:, S2_POS]
    cv, cr, cn = dh @ u, dh @ r, dh @ n
    t = auto.table
    assert abs(t.loc["nullspace component", "variation share"] - ((cn * cv).sum() / (cv * cv).sum()).item()) < 1e-4
    assert abs(t.loc["rowspace component", "variation (rms)"] - (cr / r.norm()).pow(2).mean().sqrt().item()) < 1e-3
    assert abs(auto.variation_share("rowspace component") + auto.variation_share("nullspace component") - 1) < 1e-4
    assert abs(t.loc["rowspace component", "|component|^2 / |v|^2"] - (r.norm() ** 2).item()) < 1e-5
    # the residual stream: the report says plainly that the nullspace is empty
    res = illusion_report(model, p.base.tokens, p.source.tokens, "blocks.0.hook_resid_post", torch.randn(64), **kw)
    assert "nullspace is empty" in res.note and "nullspace is empty" in repr(res) and "empty" in res._repr_html_()
    with pytest.raises(ValueError, match="zero vector"):
        illusion_report(model, p.base.tokens, p.source.tokens, hook, torch.zeros(256), **kw)
    with pytest.raises(ValueError, match="counterfactual="):
        illusion_report(model, p.base.tokens, p.source.tokens, hook, v, answer=p.answer)
    assert _no_hooks(model)
