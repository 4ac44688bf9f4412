"PatchingLab driven from Python: the numbers it shows, heat-map clicks, DAS training, errors shown in the panel."
import os
os.environ.setdefault("OMP_NUM_THREADS", "1")
import pytest, torch
torch.set_num_threads(1)

from collapse_lab.ioi import train_ioi, ioi_pairs, decode, S2_POS
from collapse_lab.patching import logit_diff, patched_logits, patching_sweep, decompose
from collapse_lab.patching_lab import PatchingLab, downstream_weights

@pytest.fixture(scope="module")
def lab():
    model, _ = train_ioi(steps=120, progress=False)
    p = ioi_pairs(16, seed=2)
    g = torch.Generator().manual_seed(0)
    return PatchingLab(model, p.base.tokens, p.source.tokens, p.answer, p.counterfactual, labels=p.base.order,
                       decode=decode, saved={"v": torch.randn(64, generator=g), "bad": torch.randn(3, 65, generator=g)},
                       das_steps=15), p

def _no_hooks(model): return all(len(hp.fwd_hooks) == 0 for hp in model.hook_dict.values())

def _ld(lab, p, i, basis, hook, pos):
    return logit_diff(patched_logits(lab.model, p.base.tokens[i:i+1], p.source.tokens[i:i+1], hook, basis, [pos]),
                      p.answer[i:i+1], p.counterfactual[i:i+1]).item()

def test_css_classes(lab):
    lab, _ = lab
    for w, c in ((lab.pair, "pair"), (lab.kind, "hook"), (lab.layer, "layer"), (lab.position, "position"),
                 (lab.subspace, "subspace"), (lab.component, "component"), (lab.bars, "bars"), (lab.heatmap, "heatmap"),
                 (lab.error, "error"), (lab.train_button, "train"), (lab.widget, "lab")):
        assert f"cl-patching-{c}" in w._dom_classes
    assert all("cl-patching-cell" in b._dom_classes for row in lab.cells for b in row)

def test_click_selects_site_and_heatmap_values(lab):
    lab, p = lab
    lab.pair.value = 3
    lab.cells[1][S2_POS].click()
    assert (lab.layer.value, lab.position.value) == (1, S2_POS)
    assert lab.result["hook"] == f"blocks.1.hook_{lab.kind.value}"
    sel = [(l, q) for l, row in enumerate(lab.cells) for q, b in enumerate(row) if "cl-patching-cell-selected" in b._dom_classes]
    assert sel == [(1, S2_POS)]
    sw = patching_sweep(lab.model, p.base.tokens[3:4], p.source.tokens[3:4], p.answer[3:4], p.counterfactual[3:4], kind=lab.kind.value)
    torch.testing.assert_close(lab.heat, sw.effect)
    assert lab.cells[0][S2_POS].description == f"{sw.effect[0, S2_POS].item():.2f}"

def test_saved_subspace_components_match_direct_computation(lab):
    lab, p = lab
    lab.pair.value = 1; lab.kind.value = "resid_post"; lab.select(0, S2_POS)
    lab.subspace.value = "saved: v"
    for comp in ("whole", "rowspace", "nullspace"):
        lab.component.value = comp
        v = lab.saved["v"][None]
        if comp != "whole":
            dec = decompose(v, downstream_weights(lab.model, "resid_post", 0))
            v = dec.rowspace if comp == "rowspace" else dec.nullspace
        if comp == "nullspace" and v.norm() < 1e-6:
            assert "empty" in lab.error.value; continue
        assert lab.error.value == ""
        assert abs(lab.result["subspace"] - _ld(lab, p, 1, v, "blocks.0.hook_resid_post", S2_POS)) < 1e-4
    lab.component.value = "whole"
    assert _no_hooks(lab.model)

def test_mlp_nullspace_does_nothing_and_rowspace_full_subspace(lab):
    lab, p = lab
    lab.kind.value = "mlp_post"; lab.subspace.value = "full"; lab.component.value = "nullspace"
    assert lab.result["rank"] == 256 - 64
    assert abs(lab.result["subspace"] - lab.result["base"]) < 1e-4
    lab.component.value = "rowspace"
    assert lab.result["rank"] == 64 and abs(lab.result["subspace"] - lab.result["full"]) < 1e-3
    lab.component.value = "whole"; lab.kind.value = "resid_post"

def test_errors_show_in_panel_not_raised(lab):
    lab, _ = lab
    lab.subspace.value = "saved: bad"
    assert "width" in lab.error.value and "65" in lab.error.value
    lab.subspace.value = "DAS"
    assert "train DAS" in lab.error.value
    lab.select(9, 0)
    assert "outside" in lab.error.value
    lab.subspace.value = "full"
    assert lab.error.value == ""
    assert _no_hooks(lab.model)

def test_train_das_button(lab):
    lab, p = lab
    lab.select(0, S2_POS); lab.subspace.value = "mean difference"
    lab.train_button.click()                  # from any subspace: trains, then shows DAS
    assert lab.subspace.value == "DAS" and "DAS" in lab.status.value
    assert lab.error.value == "" and lab.result["rank"] == 1
    basis = lab._cache[("das", "blocks.0.hook_resid_post", S2_POS)]
    assert abs(lab.result["subspace"] - _ld(lab, p, lab.pair.value, basis, "blocks.0.hook_resid_post", S2_POS)) < 1e-4
    lab.pair.value = 0                        # cached: no retraining needed for another pair
    assert lab.error.value == ""
    lab.subspace.value = "full"
    assert _no_hooks(lab.model)

def test_bad_construction(lab):
    lab, p = lab
    with pytest.raises(ValueError, match="kinds"):
        PatchingLab(lab.model, p.base.tokens, p.source.tokens, p.answer, p.counterfactual, kinds=("resid",))

def test_saved_subspace_from_file(lab, tmp_path):
    lab, p = lab
    from collapse_lab.patching import save_subspace
    B = torch.linalg.qr(torch.randn(64, 2)).Q.T.contiguous()
    path = save_subspace(tmp_path / "b.safetensors", B, hook="blocks.0.hook_resid_post")
    lab2 = PatchingLab(lab.model, p.base.tokens, p.source.tokens, p.answer, p.counterfactual, saved={"file": path},
                       kinds=("resid_post",))
    lab2.select(0, S2_POS); lab2.subspace.value = "saved: file"
    assert lab2.error.value == "" and lab2.result["rank"] == 2
    assert abs(lab2.result["subspace"] - _ld(lab2, p, 0, B, "blocks.0.hook_resid_post", S2_POS)) < 1e-4


def test_answer_of_wrong_length_refused_before_any_work(lab):
    lab, p = lab
    calls = []
    h = lab.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"answer has 5 entries but there are 16 base prompts.*length 16"):
            PatchingLab(lab.model, p.base.tokens, p.source.tokens, p.answer[:5], p.counterfactual)
        with pytest.raises(ValueError, match="counterfactual has 17 entries"):
            PatchingLab(lab.model, p.base.tokens, p.source.tokens, p.answer, torch.cat([p.counterfactual, p.counterfactual[:1]]))
    finally: h.remove()
    assert calls == []     # refused before a forward pass

def test_components_effects_and_variation_at_mlp_site(lab):
    lab, p = lab
    lab.pair.value = 2; lab.kind.value = "mlp_post"; lab.select(0, S2_POS)
    lab.subspace.value = "mean difference"; lab.component.value = "whole"
    comps = lab.result["components"]
    assert set(comps) == {"whole", "rowspace", "nullspace"} and lab.error.value == ""
    assert abs(comps["nullspace"]["logit_diff"] - lab.result["base"]) < 1e-4           # W_out's nullspace: no effect
    assert abs(comps["whole"]["logit_diff"] - lab.result["subspace"]) < 1e-5
    assert abs(comps["rowspace"]["variation_share"] + comps["nullspace"]["variation_share"] - 1) < 1e-4
    assert abs(comps["rowspace"]["norm_share"] + comps["nullspace"]["norm_share"] - 1) < 1e-4
    assert "blocks.0.mlp.W_out" in lab.components.value and "nullspace dim 192" in lab.components.value
    lab.kind.value = "resid_post"
    assert "nullspace is empty" in lab.components.value
    lab.subspace.value = "full"
    assert lab.result["components"] == {} and lab.components.value == ""
    assert _no_hooks(lab.model)
