"""Text batches on every family: prompts of different lengths are left-padded, so `positions=[-1]` steers and
`logits[:, -1]` reads each prompt's own last token — equal to a plain PyTorch hook on the HF model run on that
prompt alone — on the fast path, the bridge, in `sweep` and in `activations`."""
import pytest
import torch

import collapse_lab as cl
import families_support as fs
from families_support import FAMILIES

D = fs.SIZES["d_model"]


pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = ["t5 t7 t9", "t11 t13 t15 t17 t19 t21 t23 t25 t27", "t30 t31 t32 t33 t34"]
HOOK = "blocks.0.hook_resid_post"


def _v(): return torch.randn(D, generator=torch.Generator().manual_seed(3))

def _hf_last(hf, ids, v, coef):
    "HF logits at the last token of one unpadded prompt, `coef * v` added to decoder layer 0's output there."
    def add(module, inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone(); h[:, -1] += coef * v
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
    handle = fs.decoder_layers(hf)[0].register_forward_hook(add)
    try:
        with torch.no_grad(): return hf(ids[None]).logits[0, -1]
    finally: handle.remove()


@pytest.mark.parametrize("arch", FAMILIES)
def test_text_batch_hits_each_prompts_last_token(arch):
    model, hf, v = fs.family_model(arch), fs.zoo().hf(arch), _v()
    assert HOOK in cl.fastpath.fast_sites(model)                    # every family takes the fast path (OPT, Falcon too)
    ids = cl.prompt_list(model, TEXTS)
    assert len({len(i) for i in ids}) == 3                          # three lengths: the batch is padded
    want = torch.stack([_hf_last(hf, i, v, 2.0) for i in ids])
    steer = cl.Steer(HOOK, v, coef=2.0, positions=[-1])
    for fast in (True, False):
        with torch.no_grad(): got = cl.run(model, TEXTS, steer, fast=fast)[:, -1]
        torch.testing.assert_close(got, want, atol=2e-4, rtol=0)
    swept = cl.sweep(model, TEXTS, cl.Steer(HOOK, v, coef=torch.tensor([0., 2.]), positions=[-1]))
    torch.testing.assert_close(swept[1][:, -1], want, atol=2e-4, rtol=0)
    plain = torch.stack([_hf_last(hf, i, v, 0.0) for i in ids])
    torch.testing.assert_close(swept[0][:, -1], plain, atol=2e-4, rtol=0)
    assert (want - plain).abs().max() > 1e-3                        # the steering did something


@pytest.mark.parametrize("arch", FAMILIES)
def test_padded_tensor_with_mask_equals_text(arch):
    "A right-padded [batch, pos] tensor with its mask gives what the same prompts as text give."
    model = fs.family_model(arch)
    ids = cl.prompt_list(model, TEXTS)
    L = max(len(i) for i in ids)
    pad = model.tokenizer.pad_token_id
    right = torch.full((len(ids), L), pad); mask = torch.zeros(len(ids), L, dtype=torch.long)
    for r, i in enumerate(ids): right[r, :len(i)], mask[r, :len(i)] = i, 1
    with torch.no_grad():
        torch.testing.assert_close(cl.run(model, right, attention_mask=mask)[:, -1], cl.run(model, TEXTS)[:, -1], atol=2e-4, rtol=0)
    with pytest.raises(ValueError, match="attention_mask"): cl.run(model, right)   # padded, no mask: refused
    acts = cl.activations(model, TEXTS, HOOK)[:, -1]
    for r, i in enumerate(ids):
        torch.testing.assert_close(acts[r], cl.activations(model, i[None], HOOK)[0, -1], atol=2e-4, rtol=0)


@pytest.mark.parametrize("arch", FAMILIES)
def test_pattern_clamp_takes_effect_or_is_refused(arch):
    "A previous-token clamp of head 0: downstream hook_z follows it (z = pattern @ v), or the family refuses it and names hook_z."
    model = fs.family_model(arch)
    tokens = torch.randint(3, fs.SIZES["d_vocab"] - 1, (2, 6), generator=torch.Generator().manual_seed(4))
    pat = "blocks.0.attn.hook_pattern"
    clamp = cl.Clamp(pat, cl.previous_token_pattern(6), heads=[0])
    if arch in ("gpt_neo", "gptj", "opt"):                          # TransformerLens hands attention to the HF module
        with pytest.raises(ValueError, match="hook_z"): cl.run(model, tokens, clamp)
        return
    z = cl.activations(model, tokens, "blocks.0.attn.hook_z", clamp)[:, :, 0]
    v = cl.activations(model, tokens, "blocks.0.attn.hook_v")[:, :, 0]   # head 0 reads key-value head 0
    torch.testing.assert_close(z, cl.previous_token_pattern(6) @ v, atol=1e-5, rtol=0)
    assert (z - cl.activations(model, tokens, "blocks.0.attn.hook_z")[:, :, 0]).abs().max() > 1e-4
