"""No host-device synchronisation on the intervention path.

On a GPU every read of a device tensor's value on the host (`.item()`, `bool(t)`, `float(t)`, `.tolist()`, `if t.any()`,
`nonzero`, `masked_select`, ...) waits for the device to finish everything queued before it. A hook that does one
per layer turns an asynchronous forward pass into a series of stalls. On the CPU such reads are free, but they pass
through the same dispatcher ops (`aten._local_scalar_dense`, `aten.nonzero`, ...), so a dispatch mode that records
them shows, without a GPU, every place that would synchronise on one.

What is checked: a forward pass under each intervention (Steer, with positions and per-row coefficients;
SubspacePatch; Clamp; Ablate; `sweep`; steered `generate`), on a TransformerLens-native model and on a hub-family
checkpoint, reads no more device values than the same pass without an intervention (an intervention that the fast path cannot apply runs
through the bridge, which reads one value fewer than transformers' forward). `sweep` builds each chunk's
intervention from the validated one without validating it again (validation reads the tensors). The reads the bare pass does
are the input checks of `as_prompts` (token ids inside the vocabulary, no unmarked padding), which run on a host copy
of the tokens (one device-to-host copy when the tokens live on the GPU, none for tokenizer output), and the
transformers model's own mask checks. One read is allowed, and asserted: a `Clamp` whose value is a function checks
that the function returned finite values, one read per call (an opt-in to arbitrary user code, where a NaN would
otherwise spread silently).

An intervention also keeps its tensors converted for the model's device (and a SubspacePatch its orthonormal basis),
so running it again copies nothing from host memory to the GPU (such a copy, too, waits for the GPU): checked on the
CPU with float64 tensors on a float32 model, where the dtype conversion stands in for the copy. Where CUDA exists, the
same cases run on the GPU under torch's own sync-debug mode, which counts reads and copies alike."""
import collections, tempfile, warnings
import pytest, torch
from torch.utils._python_dispatch import TorchDispatchMode

import collapse_lab as cl
from collapse_lab.interventions import Steer, SubspacePatch, Clamp, Ablate, run, activations, sweep

torch.set_num_threads(1)

# ops whose result the host must read (a synchronisation on CUDA)
HOST_READS = {"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.nonzero.default", "aten.equal.default",
              "aten.masked_select.default", "aten._unique2.default", "aten.item.default"}

class HostReads(TorchDispatchMode):
    "Count the dispatcher ops that read a tensor's value on the host."
    def __init__(self):
        super().__init__(); self.n = collections.Counter()
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in HOST_READS: self.n[str(func)] += 1
        return func(*args, **(kwargs or {}))

def reads(f)->int:
    "Host reads of `f()`, after one call outside the count (first-call validation and caches)."
    f()
    with HostReads() as r: f()
    return sum(r.n.values())

@pytest.fixture(scope="module", params=["tl", "gpt2"])
def model(request):
    if request.param == "tl": return cl.tiny_model(n_layers=2, d_model=32, n_heads=2, d_vocab=50, n_ctx=16, seed=0)
    return cl.load_model(cl.tiny_hf_checkpoint(tempfile.mkdtemp(), arch="gpt2"), device="cpu")

def test_the_recorder_sees_host_reads():
    "The recorder is not blind: a hook that calls .item() is counted."
    m = cl.tiny_model(n_layers=1, d_model=16, n_heads=2, d_vocab=20, n_ctx=8, seed=0)
    x = torch.randint(0, 20, (2, 5))
    def item_hook(act, hook): act.abs().max().item(); return act
    with_item = lambda: m.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_resid_pre", item_hook)])
    assert reads(with_item) == reads(lambda: m(x)) + 1

def test_interventions_read_nothing_on_the_host(model):
    "Built once (construction validates its tensors: reads, once per intervention), then each pass reads nothing more."
    d, h = model.cfg.d_model, "blocks.1.hook_resid_pre"
    x = torch.randint(1, 40, (2, 6))
    v = torch.randn(d, generator=torch.Generator().manual_seed(0))
    src = activations(model, x.flip(0), h)
    cases = {
        "Steer": (x, Steer(h, v, 3.0)),
        "Steer at positions": (x, Steer(h, v, 3.0, positions=[-1])),
        "Steer, a coefficient per row": (torch.cat([x, x]), Steer(h, v, torch.tensor([1., 2.]))),
        "SubspacePatch": (x, SubspacePatch(h, v[None], src, positions=[-1])),
        "Clamp (tensor)": (x, Clamp("blocks.0.attn.hook_pattern", torch.eye(6), heads=[0])),
        "Ablate zero": (x, Ablate(h, "zero", positions=[-1])),
        "Ablate mean": (x, Ablate(h, "mean")),
        "two at once": (x, [Steer(h, v, 2.0), Ablate("blocks.0.hook_resid_post", "zero", positions=[0])]),
    }
    extra = {k: reads(lambda: run(model, p, iv)) - reads(lambda: run(model, p)) for k, (p, iv) in cases.items()}
    steer = Steer(h, v, torch.tensor([0., 1., 2., 4.]))
    extra["sweep, 4 coefficients"] = reads(lambda: sweep(model, x, steer)) - reads(lambda: run(model, x.repeat(4, 1)))
    gen = lambda *iv: cl.generate(model, x, *iv, max_new_tokens=6, greedy=True)
    st = Steer(h, v, 3.0)
    extra["generate, 6 tokens, steered"] = reads(lambda: gen(st)) - reads(gen)
    assert all(n <= 0 for n in extra.values()), f"host reads per pass beyond the bare pass: {extra}"
    assert reads(lambda: run(model, x)) <= 5      # the input checks (on a host copy) and transformers' own mask checks

COPIES = {"aten._to_copy.default", "aten.linalg_qr.default"}

class Calls(TorchDispatchMode):
    "Count the dispatcher ops named in `names`."
    def __init__(self, names):
        super().__init__(); self.names, self.n = names, 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += str(func) in self.names
        return func(*args, **(kwargs or {}))

def copies(f)->int:
    "Conversions (`.to(device/dtype)`) and QR factorisations of `f()`, after one call outside the count."
    f()
    with Calls(COPIES) as c: f()
    return c.n

def test_a_rerun_copies_nothing(model):
    """An intervention keeps its tensors converted for the model's device, so running it again copies nothing to the GPU
    (a copy from host memory waits for the GPU) and does not orthonormalise its basis again. On the CPU a dtype
    conversion takes the place of the device copy: float64 tensors on a float32 model are converted on the first run
    only. Editing a tensor in place, or replacing it, is seen."""
    d, h = model.cfg.d_model, "blocks.1.hook_resid_pre"
    x = torch.randint(1, 40, (2, 6))
    v = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    src = activations(model, x.flip(0), h).double()
    ivs = {"Steer": Steer(h, v.clone(), 3.0), "Steer, coefficients per row": Steer(h, v.clone(), torch.tensor([1., 2.], dtype=torch.float64)),
           "SubspacePatch": SubspacePatch(h, v[None].clone(), src, positions=[-1]),
           "Clamp": Clamp("blocks.0.attn.hook_pattern", torch.eye(6, dtype=torch.float64), heads=[0])}
    rows = lambda iv: torch.cat([x, x]) if "per row" in iv else x
    extra = {k: copies(lambda: run(model, rows(k), iv)) - copies(lambda: run(model, rows(k))) for k, iv in ivs.items()}
    assert all(n <= 0 for n in extra.values()), f"conversions per rerun: {extra}"
    # the kept copies follow the tensors: an in-place edit, a replaced tensor
    steer = ivs["Steer"]
    with torch.no_grad():
        run(model, x, steer); steer.vector.mul_(-2)
        torch.testing.assert_close(run(model, x, steer), run(model, x, Steer(h, -2 * v, 3.0)))
        steer.vector = v.flip(0)
        torch.testing.assert_close(run(model, x, steer), run(model, x, Steer(h, v.flip(0), 3.0)))
        patch = ivs["SubspacePatch"]
        run(model, x, patch); patch.basis = torch.randn(2, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(run(model, x, patch), run(model, x, SubspacePatch(h, patch.basis.clone(), src, positions=[-1])))

def cuda_syncs(f)->int:
    "Synchronising CUDA calls of `f()` as torch's sync-debug mode reports them (device-to-host reads and copies from pageable host memory), after one call outside the count."
    f(); torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try: f()
        finally: torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(x.message) for x in w)

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.set_sync_debug_mode")
@pytest.mark.parametrize("kind", ["tl", "gpt2"])
def test_on_cuda_interventions_add_no_synchronisation(kind):
    "Where CUDA exists: the same cases on the GPU, counted by torch's own sync-debug mode (which also sees host-to-GPU copies)."
    m = (cl.tiny_model(n_layers=2, d_model=32, n_heads=2, d_vocab=50, n_ctx=16, seed=0, device="cuda") if kind == "tl"
         else cl.load_model(cl.tiny_hf_checkpoint(tempfile.mkdtemp(), arch="gpt2"), device="cuda"))
    d, h = m.cfg.d_model, "blocks.1.hook_resid_pre"
    x = torch.randint(1, 40, (2, 6))   # host tokens, as a tokenizer gives them: the one copy to the GPU is the bare pass's
    v = torch.randn(d, generator=torch.Generator().manual_seed(0))
    src = activations(m, x.flip(0), h)
    cases = {"Steer": (x, Steer(h, v, 3.0)), "Steer at positions": (x, Steer(h, v, 3.0, positions=[-1])),
             "Steer, a coefficient per row": (torch.cat([x, x]), Steer(h, v, torch.tensor([1., 2.]))),
             "SubspacePatch": (x, SubspacePatch(h, v[None], src, positions=[-1])),
             "Clamp (tensor)": (x, Clamp("blocks.0.attn.hook_pattern", torch.eye(6), heads=[0])),
             "Ablate zero": (x, Ablate(h, "zero", positions=[-1])), "Ablate mean": (x, Ablate(h, "mean"))}
    extra = {k: cuda_syncs(lambda: run(m, p, iv)) - cuda_syncs(lambda: run(m, p)) for k, (p, iv) in cases.items()}
    steer = Steer(h, v, torch.tensor([0., 1., 2., 4.]))
    extra["sweep, 4 coefficients"] = cuda_syncs(lambda: sweep(m, x, steer)) - cuda_syncs(lambda: run(m, x.repeat(4, 1)))
    gen, st = (lambda *iv: cl.generate(m, x, *iv, max_new_tokens=6, greedy=True)), Steer(h, v, 3.0)
    extra["generate, 6 tokens, steered"] = cuda_syncs(lambda: gen(st)) - cuda_syncs(gen)
    assert all(n <= 0 for n in extra.values()), f"synchronisations per pass beyond the bare pass: {extra}"

def test_a_clamp_function_is_checked_with_one_read(model):
    "The one allowed read: a function's output is checked for NaN/inf once per call."
    x = torch.randint(1, 40, (2, 6))
    fn = Clamp("blocks.0.attn.hook_pattern", lambda a: a[:, :1].mean(1, keepdim=True).expand_as(a[:, :1]), heads=[0])
    fixed = Clamp("blocks.0.attn.hook_pattern", torch.eye(6), heads=[0])
    assert reads(lambda: run(model, x, fn)) == reads(lambda: run(model, x, fixed)) + 1
