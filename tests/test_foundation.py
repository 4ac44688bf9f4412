"Foundation checks that need more than a notebook cell: HF checkpoints on disk, fault injection, bad input."
import hashlib

import pytest
import torch

import collapse_lab as cl
from collapse_lab.interventions import activations

ARCHS = ["gpt2", "gpt_neox", "llama"]


@pytest.fixture(scope="module", params=ARCHS)
def hf_pair(request, tmp_path_factory):
    "A small HF checkpoint on disk, loaded twice: as the bare HF model and through `load_model`."
    import transformers
    path = cl.tiny_hf_checkpoint(tmp_path_factory.mktemp(request.param), arch=request.param, n_layers=2, d_model=32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    return request.param, hf, cl.load_model(path, device="cpu")


def _blocks(hf):
    "The HF model's list of transformer blocks."
    for attr in ("transformer.h", "gpt_neox.layers", "model.layers"):
        obj = hf
        try:
            for part in attr.split("."): obj = getattr(obj, part)
            return obj
        except AttributeError: continue
    raise AssertionError("unknown HF layout")


def _hooks_left(model):
    return [n for n, hp in model.hook_dict.items() if hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks]


def _state_hash(model):
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_load_model_matches_hf(hf_pair):
    arch, hf, model = hf_pair
    tokens = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-5, rtol=0)


def test_steer_equals_plain_pytorch_hook(hf_pair):
    "Steer on blocks.1.hook_resid_post == a forward hook adding the same vector to HF block 1's output."
    arch, hf, model = hf_pair
    tokens = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    v = torch.randn(32, generator=torch.Generator().manual_seed(2))

    def add(module, inputs, output):
        if isinstance(output, tuple): return (output[0] + 3.0 * v,) + output[1:]
        return output + 3.0 * v
    handle = _blocks(hf)[1].register_forward_hook(add)
    try:
        with torch.no_grad(): expected = hf(tokens).logits
    finally: handle.remove()
    with torch.no_grad(): got = cl.run(model, tokens, cl.Steer("blocks.1.hook_resid_post", v, coef=3.0))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got - model(tokens)).abs().max() > 1e-3  # the steering did something


def test_sweep_equals_runs_on_hf(hf_pair):
    arch, hf, model = hf_pair
    tokens = torch.randint(3, 100, (3, 7), generator=torch.Generator().manual_seed(3))
    v = torch.randn(32, generator=torch.Generator().manual_seed(4))
    coefs = torch.linspace(-6, 6, 7)
    res = cl.sweep(model, tokens, cl.Steer("blocks.0.hook_resid_post", v, coef=coefs), max_batch=8)
    for c, logits in zip(coefs, res.values):
        with torch.no_grad(): one = cl.run(model, tokens, cl.Steer("blocks.0.hook_resid_post", v, coef=float(c)))
        torch.testing.assert_close(logits, one, atol=1e-5, rtol=0)


def test_subspace_patch_full_rank_is_activation_patch(hf_pair):
    arch, hf, model = hf_pair
    hook = "blocks.1.hook_resid_pre"
    base, src = (torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(s)) for s in (5, 6))
    full_patch = cl.Clamp(hook, activations(model, src, hook))
    sub_patch = cl.SubspacePatch(hook, torch.randn(32, 32, generator=torch.Generator().manual_seed(7)), src)
    with torch.no_grad():
        torch.testing.assert_close(cl.run(model, base, sub_patch), cl.run(model, base, full_patch), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def tiny():
    return cl.tiny_model(n_layers=2, d_model=32, n_heads=4, d_vocab=50, n_ctx=16)


class Boom(Exception): pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_exception_inside_hook_leaves_no_hook_and_same_weights(tiny, exc):
    before = _state_hash(tiny)
    tokens = torch.randint(0, 50, (2, 8))
    ivs = [cl.Steer("blocks.0.hook_resid_post", torch.ones(32)),
           cl.SubspacePatch("blocks.1.hook_resid_pre", torch.eye(32)[:3], tokens),
           cl.Clamp("blocks.0.attn.hook_pattern", cl.previous_token_pattern(8), heads=[1]),
           cl.Clamp("blocks.1.hook_resid_post", lambda act: (_ for _ in ()).throw(exc("inside a hook")))]
    with pytest.raises(exc):
        with cl.intervene(tiny, *ivs):
            tiny(tokens)
    assert _hooks_left(tiny) == []
    assert _state_hash(tiny) == before


def test_failed_validation_adds_no_hook(tiny):
    with pytest.raises(ValueError):
        with cl.intervene(tiny, cl.Steer("blocks.0.hook_resid_post", torch.ones(32)),
                          cl.Steer("blocks.1.hook_resid_post", torch.ones(31))):
            pass
    assert _hooks_left(tiny) == []


BAD = [
    (lambda: cl.Steer("blocks.0.hook_resid_post", torch.ones(31)), "size 31 but blocks.0.hook_resid_post activations have last dimension 32"),
    (lambda: cl.Steer("blocks.0.hook_resid_post", torch.tensor([float("nan")] * 32)), "NaN or inf"),
    (lambda: cl.Steer("blocks.0.hook_resid_post", torch.ones(32), coef=float("inf")), "not finite"),
    (lambda: cl.Steer("blocks.0.hook_resid_post", torch.ones(32), coef=torch.tensor([1.0, float("nan")])), "NaN or inf"),
    (lambda: cl.SubspacePatch("blocks.0.hook_resid_post", torch.tensor([[1.0] * 31 + [float("inf")]]), torch.zeros(1, 8, dtype=torch.long)), "NaN or inf"),
    (lambda: cl.SubspacePatch("blocks.0.hook_resid_post", torch.ones(2, 32), torch.zeros(1, 8, dtype=torch.long)), "rank-deficient"),
    (lambda: cl.SubspacePatch("blocks.0.hook_resid_post", torch.ones(1, 16), torch.zeros(1, 8, dtype=torch.long)), "basis vectors have size 16"),
    (lambda: cl.Steer("blocks.0.hook_resid_post", torch.ones(32), positions=[8]), "positions [8] out of range"),
    (lambda: cl.Steer("blocks.0.hook_resid_post", torch.ones(32), positions=[-9]), "positions [-9] out of range"),
    (lambda: cl.Clamp("blocks.0.attn.hook_pattern", cl.previous_token_pattern(8), heads=[4]), "heads [4] out of range"),
    (lambda: cl.Ablate("blocks.0.hook_resid_post", heads=[0]), "has no head axis"),
    (lambda: cl.Steer("blocks.0.hook_resid_pots", torch.ones(32)), "'blocks.0.hook_resid_post'"),
    (lambda: cl.Clamp("blocks.0.attn.hook_pattern", torch.ones(3, 3), heads=[0]), "cannot broadcast"),
]


@pytest.mark.parametrize("make,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_names_the_value(tiny, make, message):
    tokens = torch.randint(0, 50, (2, 8))
    with pytest.raises(ValueError) as e:
        cl.run(tiny, tokens, make())
    assert message in str(e.value)
    assert _hooks_left(tiny) == []


def test_vectors_follow_activation_dtype(tiny):
    "A float64 vector steering a float32 model is cast to the activation's dtype."
    tokens = torch.randint(0, 50, (2, 8))
    v = torch.randn(32, dtype=torch.float64)
    out = cl.run(tiny, tokens, cl.Steer("blocks.0.hook_resid_post", v))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, cl.run(tiny, tokens, cl.Steer("blocks.0.hook_resid_post", v.float())))


def test_uncached_hub_name_fails_with_one_message(monkeypatch):
    from collapse_lab import core
    monkeypatch.setattr(core, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(OSError) as e:
        cl.load_model("collapse-lab/definitely-not-cached")
    assert "'collapse-lab/definitely-not-cached'" in str(e.value) and "local checkpoint folder" in str(e.value)
    assert e.value.__cause__ is None
