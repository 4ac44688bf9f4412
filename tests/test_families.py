"""Every Hugging Face family `cl.tiny_hf_checkpoint` writes: the bridge gives the HF model's logits, steering equals a
plain PyTorch hook on the HF layer, nothing is left behind, and bf16 loads run."""
import pytest
import torch

import collapse_lab as cl
from collapse_lab import core
import families_support as fs
from families_support import FAMILIES

D, V = fs.SIZES["d_model"], fs.SIZES["d_vocab"]


@pytest.fixture(scope="module")
def zoo(one_thread):
    "Each family's checkpoint, built once per test process (shared with the other family tests); models cached."
    return fs.zoo()


def _gen(seed): return torch.Generator().manual_seed(seed)

def _tokens(seed, b=2, p=24):
    "BOS then words, longer than the sliding windows (n_ctx // 4 = 16) of GPT-Neo, Mistral and Gemma 2/3."
    return torch.cat([torch.ones(b, 1, dtype=torch.long), torch.randint(3, V - 1, (b, p - 1), generator=_gen(seed))], 1)


def test_every_family_is_listed():
    assert len(FAMILIES) >= 18 and {"gpt2", "gpt_neox", "llama", "qwen2", "olmo", "gemma3"} <= set(FAMILIES)
    with pytest.raises(ValueError, match="'qwen3'"): cl.tiny_hf_checkpoint("unused", arch="gpt3")


@pytest.mark.parametrize("arch", FAMILIES)
def test_bridge_logits_equal_hf(zoo, arch):
    tokens = _tokens(0)
    with torch.no_grad(): got, want = zoo.model(arch)(tokens), zoo.hf(arch)(tokens).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", FAMILIES)
def test_saved_tokenizer_survives(zoo, arch):
    "The word-level tokenizer the checkpoint saved, not the family's own class (transformers 5 swaps Qwen2's)."
    tok = zoo.model(arch).tokenizer
    assert tok("t5 t7")["input_ids"][-2:] == [5, 7]
    assert (tok.pad_token, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == ("<pad>", 0, 1, 2, V - 1)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "bridge"])
@pytest.mark.parametrize("arch", FAMILIES)
def test_steer_equals_hook_on_hf_layer(zoo, arch, fast):
    "Steer on blocks.0.hook_resid_post == a forward hook adding 2v to the output of the HF model's decoder layer 0."
    model, hf = zoo.model(arch), zoo.hf(arch)
    tokens, v = _tokens(1), torch.randn(D, generator=_gen(2))

    def add(module, inputs, output):
        if isinstance(output, tuple): return (output[0] + 2.0 * v,) + tuple(output[1:])
        return output + 2.0 * v
    handle = fs.decoder_layers(hf)[0].register_forward_hook(add)
    try:
        with torch.no_grad(): want = hf(tokens).logits
    finally: handle.remove()
    with torch.no_grad(): got = cl.run(model, tokens, cl.Steer("blocks.0.hook_resid_post", v, coef=2.0), fast=fast)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    with torch.no_grad(): assert (got - model(tokens)).abs().max() > 1e-3     # the steering did something


@pytest.mark.parametrize("arch", FAMILIES)
def test_runs_leave_no_hook_and_no_change(zoo, arch):
    "After steering (both paths), a sweep and an error inside `intervene`: no hook left anywhere, the weights untouched."
    model, hf = zoo.model(arch), zoo.hf(arch)
    before = fs.state_hash(model), fs.state_hash(hf), fs.torch_hooks(model, hf), fs.hook_point_hooks(model)
    tokens, v = _tokens(3), torch.randn(D, generator=_gen(4))
    steer = cl.Steer("blocks.1.hook_resid_post", v, coef=2.0)
    with torch.no_grad():
        cl.run(model, tokens, steer)
        cl.run(model, tokens, steer, fast=False)
        cl.sweep(model, tokens, cl.Steer("blocks.0.hook_resid_pre", v, coef=torch.linspace(-2, 2, 3)))
    with pytest.raises(RuntimeError, match="boom"), cl.intervene(model, steer), torch.no_grad():
        model(tokens)
        raise RuntimeError("boom")
    assert fs.user_hooks(model) == []
    assert (fs.state_hash(model), fs.state_hash(hf), fs.torch_hooks(model, hf), fs.hook_point_hooks(model)) == before


@pytest.mark.parametrize("arch", FAMILIES)
def test_bf16_load_runs(zoo, arch):
    "bf16 loads and runs on every family (OLMo and OLMo-2 after `load_model` casts their rotary cos/sin)."
    if arch in fs.LOW_PRECISION_REFUSED:
        with pytest.raises(ValueError, match='dtype="float32"'): zoo.model(arch, "bfloat16")
        return
    model, tokens = zoo.model(arch, "bfloat16"), _tokens(5)
    with torch.no_grad(): got, ref = model(tokens), zoo.model(arch)(tokens)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert ((got.float() - ref).norm() / ref.norm()).item() < 3e-2


def test_low_precision_guard_names_the_family(zoo, monkeypatch):
    "A bf16 bridge still failing after the rotary cast is refused at load time, naming the family and the fix."
    monkeypatch.setattr(core, "_dtype_error", lambda model: RuntimeError("expected m1 and m2 to have the same dtype"))
    with pytest.raises(ValueError, match=r"'olmo'.*dtype=\"float32\""):
        cl.load_model(zoo.path("olmo"), device="cpu", dtype="bfloat16")
