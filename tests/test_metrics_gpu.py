"`collapse_lab.metrics` on CUDA gives the CPU answers (skipped without a GPU)."
import pytest
import torch

import collapse_lab as cl
from collapse_lab import metrics as M
from collapse_lab.hooks import attach

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def pair():
    kw = dict(n_layers=2, d_model=64, n_heads=4, d_vocab=50, n_ctx=16, seed=0)
    return cl.tiny_model(**kw), cl.tiny_model(**kw, device="cuda")


@pytest.fixture(scope="module")
def toks():
    return torch.randint(0, 50, (20, 16), generator=torch.Generator().manual_seed(0))


def test_model_helpers_match_cpu(pair, toks):
    cpu, gpu = pair
    assert torch.allclose(M.model_token_entropy(cpu, toks, progress=False), M.model_token_entropy(gpu, toks, progress=False), atol=1e-3)
    a = M.model_attention_entropy(cpu, toks, batch_size=7, progress=False)
    b = M.model_attention_entropy(gpu, toks, batch_size=7, progress=False)
    assert (a.normalised - b.normalised).abs().max() < 1e-3
    ra, rb = M.model_effective_rank(cpu, toks, progress=False), M.model_effective_rank(gpu, toks, progress=False)
    for h in ra: assert abs(float(ra[h]["effective_rank"]) - float(rb[h]["effective_rank"])) < 1e-2
    y = torch.arange(20) % 4
    na, nb = M.model_neural_collapse(cpu, toks, y, progress=False), M.model_neural_collapse(gpu, toks, y, progress=False)
    assert abs(float(na["nc1"]) - float(nb["nc1"])) < 1e-2 * max(1., float(na["nc1"]))
    adv = torch.randn(20, generator=torch.Generator().manual_seed(1))
    ca, cb = M.model_entropy_covariance(cpu, toks, adv, progress=False), M.model_entropy_covariance(gpu, toks, adv, progress=False)
    assert abs(float(ca["mean"]) - float(cb["mean"])) < 1e-4


def test_spike_found_on_gpu(pair, toks):
    _, gpu = pair
    def spike(x, hook):
        x = x.clone(); x[:, 5, 9] = 4000.; return x
    remove = attach(gpu, "blocks.1.hook_resid_post", spike)
    try: found = M.model_massive_activations(gpu, toks, progress=False)["found"]
    finally: remove()
    assert set(zip(found.layer, found.pos, found.dim)) == {(1, 5, 9)}


def test_tensor_functions_on_gpu_bf16():
    x = torch.randn(8, 16, 100, device="cuda", dtype=torch.bfloat16)
    assert torch.allclose(M.token_entropy(x).cpu(), M.token_entropy(x.cpu()), atol=1e-4)
    assert torch.allclose(M.action_entropy(x, [1, 5, 7]).cpu(), M.action_entropy(x.cpu(), [1, 5, 7]), atol=1e-4)
    assert torch.allclose(M.non_action_mass(x, [1, 5]).cpu(), M.non_action_mass(x.cpu(), [1, 5]), atol=1e-5)
    p = torch.softmax(torch.randn(2, 4, 16, 16, device="cuda").masked_fill(torch.ones(16, 16, device="cuda").triu(1).bool(), float("-inf")), -1)
    assert torch.allclose(M.attention_entropy(p).cpu(), M.attention_entropy(p.cpu()), atol=1e-4)
    a = torch.randn(300, 64, device="cuda")
    assert abs(float(M.effective_rank(a)) - float(M.effective_rank(a.cpu()))) < 1e-2
    y = torch.arange(300, device="cuda") % 3
    assert abs(float(M.neural_collapse(a, y)["nc1"]) - float(M.neural_collapse(a.cpu(), y.cpu())["nc1"])) < 1e-3
    bf = cl.tiny_model(n_layers=1, d_model=32, n_heads=4, d_vocab=30, n_ctx=8, device="cuda", dtype="bfloat16")
    t = torch.randint(0, 30, (4, 8))
    H = M.model_token_entropy(bf, t, progress=False)
    assert H.dtype == torch.float32 and torch.isfinite(H).all()
