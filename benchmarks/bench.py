"""Intervention benchmarks: forward passes with one Steer / SubspacePatch against the bare HF forward, batched sweeps,
steered generation against `transformers.generate`, training with a clamp, SteeringLab updates and east_vector memory.

Every figure is the median of repeated runs in one process; the variants compared in one table are interleaved
(A, B, C, A, B, C, ... with the order rotated each round), so drift of the machine hits them alike.

    python benchmarks/bench.py                  # CPU set (what `make bench` runs)
    python benchmarks/bench.py --set gpu        # GPT-2 small and Pythia-1.4B shapes, bf16, batch 32 x 128, on CUDA
    python benchmarks/bench.py --only forward,sweep --reps 5
"""
from __future__ import annotations
import argparse, gc, json, os, platform, statistics, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import collapse_lab as cl
from collapse_lab import fastpath

RESULTS = []   # (section, name, value, unit, note)
JSON = {}      # "path" and "info" once main() knows them: every figure is written as soon as it is measured


def record(section, name, value, unit, note=""):
    RESULTS.append(dict(section=section, name=name, value=value, unit=unit, note=note))
    print(f"  {name:<58} {value:>10.3f} {unit:<4} {note}", flush=True)
    if JSON.get("path"): Path(JSON["path"]).write_text(json.dumps(dict(info=JSON["info"], results=RESULTS), indent=1))


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def bench(fns:dict, device, reps:int, warmup:int=2)->dict:
    "Seconds of each callable in every round, A/B interleaved with the order rotated every round."
    names = list(fns)
    for _ in range(warmup):
        for n in names: fns[n]()
    sync(device)
    times = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            sync(device); t0 = time.perf_counter()
            fns[n]()
            sync(device); times[n].append(time.perf_counter() - t0)
    return times


def med(ts): return statistics.median(ts)


def ratio(ts, base):
    "Median over rounds of the ratio within each round (paired: drift of a shared machine cancels)."
    return statistics.median(a / b for a, b in zip(ts, base))


# ---------------------------------------------------------------------------------------------- models
SHAPES = {
    # name: (arch, HF config kwargs)
    "cpu-small": ("gpt2", dict(n_layer=4, n_embd=256, n_head=8, vocab_size=4096, n_positions=256)),
    "cpu-small-neox": ("gpt_neox", dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=8, intermediate_size=1024,
                                        vocab_size=4096, max_position_embeddings=256, rotary_pct=0.25)),
    "gpt2-small": ("gpt2", dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)),
    "pythia-1.4b": ("gpt_neox", dict(num_hidden_layers=24, hidden_size=2048, num_attention_heads=16, intermediate_size=8192,
                                     vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25,
                                     use_parallel_residual=True)),
    # the layer counts of GPT-2 small and Pythia-1.4B at a width where a 1 x 2 forward is cheap (per-call costs)
    "gpt2-12-layers-narrow": ("gpt2", dict(n_layer=12, n_embd=64, n_head=4, vocab_size=256, n_positions=64)),
    "neox-24-layers-narrow": ("gpt_neox", dict(num_hidden_layers=24, hidden_size=64, num_attention_heads=4,
                                               intermediate_size=256, vocab_size=256, max_position_embeddings=64,
                                               rotary_pct=0.25, use_parallel_residual=True)),
}
PERCALL_SHAPES = ["gpt2-12-layers-narrow", "neox-24-layers-narrow"]
CLASSES = {"gpt2": ("GPT2Config", "GPT2LMHeadModel"), "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM")}


def build(shape:str, device, dtype):
    """Random weights of `shape` from a transformers config (no download): the bare HF model (HF's default attention,
    SDPA) and a TransformerBridge around a second model with the same weights."""
    import transformers
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    arch, kw = SHAPES[shape]
    cfg_cls, model_cls = (getattr(transformers, c) for c in CLASSES[arch])
    torch.manual_seed(0)
    cfg = cfg_cls(**kw)
    with torch.device(device):   # initialise on the device: a 1.4B model initialises in seconds on a GPU
        hf = model_cls(cfg).to(dtype=dtype).eval()
        twin = model_cls(cfg_cls(**kw)).to(dtype=dtype).eval()
    twin.load_state_dict(hf.state_dict())
    bridge = build_bridge_from_module(twin, model_cls.__name__, hf_config=twin.config).eval()
    return hf, bridge, cfg


def blocks_of(hf):
    return hf.transformer.h if hasattr(hf, "transformer") else hf.gpt_neox.layers


# ---------------------------------------------------------------------------------------------- forward
def forward_set(shape, device, dtype, batch, seq, reps):
    print(f"\n[forward] {shape}  {str(dtype).removeprefix('torch.')}  batch {batch} x {seq}  on {device}", flush=True)
    hf, model, cfg = build(shape, device, dtype)
    d, L = model.cfg.d_model, model.cfg.n_layers
    layer = L // 2
    hook = f"blocks.{layer}.hook_resid_post"
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g).to(device)
    v = torch.randn(d, generator=g).to(device)
    steer = cl.Steer(hook, v, coef=4.0)
    src = cl.activations(model, torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g).to(device), hook)
    patch = cl.SubspacePatch(hook, torch.randn(8, d, generator=g), src)
    vd = v.to(dtype)

    def add(mod, args, out):
        return (out[0] + 4.0 * vd,) + tuple(out[1:]) if isinstance(out, tuple) else out + 4.0 * vd

    def hf_plain(): return hf(input_ids=tokens, use_cache=False).logits
    def hf_hooked():
        h = blocks_of(hf)[layer].register_forward_hook(add)
        try: return hf(input_ids=tokens, use_cache=False).logits
        finally: h.remove()

    fns = {
        "bare HF forward": hf_plain,
        "bare HF + plain torch steering hook": hf_hooked,
        "bridge forward, no hooks": lambda: model(tokens),
        "bridge + Steer (run, fast=False)": lambda: cl.run(model, tokens, steer, fast=False),
        "bridge run_with_cache of one hook": lambda: model.run_with_cache(tokens, names_filter=hook),
        "collapse_lab run + Steer (fast path)": lambda: cl.run(model, tokens, steer),
        "bridge + SubspacePatch (fast=False)": lambda: cl.run(model, tokens, patch, fast=False),
        "collapse_lab run + SubspacePatch (fast path)": lambda: cl.run(model, tokens, patch),
        "collapse_lab activations of one hook (fast path)": lambda: cl.activations(model, tokens, hook),
    }
    with torch.no_grad():
        # the fast path and the plain hook compute the same thing as the bridge
        a, b = cl.run(model, tokens, steer).float(), cl.run(model, tokens, steer, fast=False).float()
        err = ((a - b).norm() / b.norm()).item()
        hooked = hf_hooked().float()
        err_hf = ((a - hooked).norm() / hooked.norm()).item()
        t = bench(fns, device, reps)
    base = t["bare HF forward"]
    record(f"forward {shape}", "bare HF forward", med(base) * 1e3, "ms")
    for n, s in t.items():
        if n != "bare HF forward": record(f"forward {shape}", n, ratio(s, base), "x", f"({med(s)*1e3:.2f} ms)")
    # the fast path's own per-call cost (checks, hook functions, attaching and removing hooks), on a 1 x 2 input
    # where the forward itself is small: fast-path run minus the same forward with the hand-written hook
    tiny_t = tokens[:1, :2]
    def hf_hooked_tiny():
        h = blocks_of(hf)[layer].register_forward_hook(add)
        try: return hf(input_ids=tiny_t, use_cache=False).logits
        finally: h.remove()
    with torch.no_grad():
        t1 = bench({"plain hook, 1 x 2 tokens": hf_hooked_tiny, "fast path, 1 x 2 tokens": lambda: cl.run(model, tiny_t, steer)},
                   device, 5 * reps)
    record(f"forward {shape}", "fast path's own cost per call (1 x 2 tokens)",
           (med(t1["fast path, 1 x 2 tokens"]) - med(t1["plain hook, 1 x 2 tokens"])) * 1e6, "us",
           f"(plain hook {med(t1['plain hook, 1 x 2 tokens'])*1e3:.2f} ms)")
    record(f"forward {shape}", "rel. error fast vs bridge logits (Steer)", err, "")
    record(f"forward {shape}", "rel. error fast vs plain HF hook logits", err_hf, "")
    del hf, model, src; gc.collect()
    if device.type == "cuda": torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- sweep
def entropy_last(logits):
    return torch.distributions.Categorical(logits=logits[:, -1].float()).entropy().mean()


def sweep_set(shape, device, dtype, batch, seq, reps, n_coef=16):
    print(f"\n[sweep] {shape}  {n_coef} coefficients  batch {batch} x {seq}  on {device}", flush=True)
    if shape == "tiny-native":   # the tutorials' kind of model: tiny, where per-pass overhead dominates
        model = cl.tiny_model(n_layers=2, d_model=64, n_heads=8, d_vocab=64, n_ctx=seq, device=str(device))
    else:
        hf, model, cfg = build(shape, device, dtype)
    d = model.cfg.d_model
    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g).to(device)
    v = torch.randn(d, generator=g)
    coefs = torch.linspace(-8, 8, n_coef)
    steer = cl.Steer(hook, v, coef=coefs)

    def separate(fast=True):
        return [entropy_last(cl.run(model, tokens, cl.Steer(hook, v, coef=float(c)), fast=fast)) for c in coefs]
    # the physical limit: one bare forward of the folded batch (n_coef x batch rows, coefficient blocks consecutive,
    # as `sweep` lays them out), the metric taken per block; no steering (an add per row costs nothing beside it)
    bare = hf if shape in SHAPES else fastpath.bare_model(model)
    folded = tokens.repeat(n_coef, 1)
    def bare_folded():
        logits = fastpath.hf_logits(bare(input_ids=folded, **({"use_cache": False} if shape in SHAPES else {})))
        return [entropy_last(c) for c in logits.view(n_coef, batch, *logits.shape[1:])]
    fns = {"16 separate passes (fast path)": separate,
           "bare forward of the folded batch (16*batch rows)": bare_folded,
           "16 separate passes through the bridge (fast=False)": lambda: separate(fast=False),
           "sweep, one batched pass (max_batch=16*batch)": lambda: cl.sweep(model, tokens, steer, metric=entropy_last,
                                                                             max_batch=n_coef * batch),
           "sweep, default max_batch": lambda: cl.sweep(model, tokens, steer, metric=entropy_last),
           "sweep, chunks of 4 coefficients": lambda: cl.sweep(model, tokens, steer, metric=entropy_last, max_batch=4 * batch)}
    with torch.no_grad():
        one = torch.stack(separate()).float()
        batched = cl.sweep(model, tokens, steer, metric=entropy_last, max_batch=n_coef * batch).stacked().float()
        err = (one - batched).abs().max().item()
        t = bench(fns, device, reps, warmup=1)
    sep = t["16 separate passes (fast path)"]
    record(f"sweep {shape}", "16 separate passes", med(sep) * 1e3, "ms")
    for n, s in t.items():
        if n != "16 separate passes (fast path)":
            record(f"sweep {shape}", f"speed-up of {n}", 1 / ratio(s, sep), "x", f"({med(s)*1e3:.1f} ms)")
    record(f"sweep {shape}", "speed-up of sweep default over 16 bridge passes",
           1 / ratio(t["sweep, default max_batch"], t["16 separate passes through the bridge (fast=False)"]), "x")
    limit = t["bare forward of the folded batch (16*batch rows)"]
    for n in ("sweep, default max_batch", "sweep, one batched pass (max_batch=16*batch)"):
        record(f"sweep {shape}", f"{n} / bare forward of the folded batch", ratio(t[n], limit), "x")
    record(f"sweep {shape}", "max |entropy difference| batched vs separate", err, "nats")
    if device.type == "cuda":
        for mb in (4 * batch, n_coef * batch):
            torch.cuda.reset_peak_memory_stats(device); base = torch.cuda.memory_allocated(device)
            with torch.no_grad(): cl.sweep(model, tokens, steer, metric=entropy_last, max_batch=mb)
            record(f"sweep {shape}", f"peak extra GPU memory, max_batch={mb}", (torch.cuda.max_memory_allocated(device) - base) / 2**20, "MiB")
    del model, bare; gc.collect()
    if device.type == "cuda": torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- per call
def percall_set(shape, device, dtype, reps):
    """What a call costs beyond its forward: `run` + Steer / SubspacePatch on a 1 x 2 input, against the bare HF model
    with the same steering as a hand-written forward hook (attached and removed per call, as `run` does). The per-call
    overhead is the median over rounds of the difference within each round. Its parts that grow with depth (checks
    over every hook point, per-layer work) show at 12 and 24 layers."""
    print(f"\n[per call] {shape}  1 x 2 tokens  on {device}", flush=True)
    hf, model, cfg = build(shape, device, dtype)
    d, L = model.cfg.d_model, model.cfg.n_layers
    hook = f"blocks.{L // 2}.hook_resid_post"
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, model.cfg.d_vocab, (1, 2), generator=g).to(device)
    v = torch.randn(d, generator=g).to(device)
    steer = cl.Steer(hook, v, coef=4.0)
    patch = cl.SubspacePatch(hook, torch.randn(8, d, generator=g), cl.activations(model, tokens.flip(-1), hook))
    vd = v.to(dtype)
    def add(mod, args, out):
        return (out[0] + 4.0 * vd,) + tuple(out[1:]) if isinstance(out, tuple) else out + 4.0 * vd
    def hf_hooked():
        h = blocks_of(hf)[L // 2].register_forward_hook(add)
        try: return hf(input_ids=tokens, use_cache=False).logits
        finally: h.remove()
    fns = {"bare HF forward": lambda: hf(input_ids=tokens, use_cache=False).logits,
           "bare HF + plain torch steering hook": hf_hooked,
           "run, no intervention": lambda: cl.run(model, tokens),
           "run + Steer": lambda: cl.run(model, tokens, steer),
           "run + SubspacePatch": lambda: cl.run(model, tokens, patch)}
    with torch.no_grad(): t = bench(fns, device, reps, warmup=20)
    base, hooked = t["bare HF forward"], t["bare HF + plain torch steering hook"]
    diff = lambda ts, ref: statistics.median(a - b for a, b in zip(ts, ref)) * 1e6
    record(f"per call {shape}", "bare HF forward, 1 x 2 tokens", med(base) * 1e6, "us")
    record(f"per call {shape}", "bare HF + plain steering hook, 1 x 2 tokens", med(hooked) * 1e6, "us")
    record(f"per call {shape}", "run, no intervention: beyond the bare HF forward", diff(t["run, no intervention"], base), "us")
    for n in ("run + Steer", "run + SubspacePatch"):
        record(f"per call {shape}", f"{n}: beyond the plain-hook forward", diff(t[n], hooked), "us", f"({med(t[n])*1e6:.0f} us)")
    del hf, model; gc.collect()


# ---------------------------------------------------------------------------------------------- training
def train_set(device, reps, batch=32, seq=32):
    print(f"\n[train] attention-only tiny model, clamp on blocks.0.attn.hook_pattern head 2, batch {batch} x {seq} on {device}", flush=True)
    model = cl.tiny_model(n_layers=2, d_model=64, n_heads=8, d_vocab=64, n_ctx=seq, attn_only=True, device=str(device)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 64, (batch, seq), generator=g).to(device)
    clamp = cl.Clamp("blocks.0.attn.hook_pattern", cl.previous_token_pattern(seq), heads=[2])

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(tokens, return_type="loss")
        loss.backward()
        opt.step()

    def step_clamped():
        with cl.intervene(model, clamp): step()

    with cl.intervene(model, clamp):
        def step_in_context(): step()
        t = bench({"plain step": step, "step inside intervene (context entered once)": step_in_context}, device, reps)
    t2 = bench({"plain step": step, "step with intervene entered per step": step_clamped}, device, reps)
    record("train clamp", "plain training step", med(t["plain step"]) * 1e3, "ms")
    record("train clamp", "clamped step / plain (context entered once)",
           ratio(t["step inside intervene (context entered once)"], t["plain step"]), "x")
    record("train clamp", "clamped step / plain (intervene per step)",
           ratio(t2["step with intervene entered per step"], t2["plain step"]), "x")
    # the clamp's own cost, measured alone on the pattern it edits (forward and backward through it)
    pat = torch.softmax(torch.randn(batch, 8, seq, seq, device=device), -1).requires_grad_()
    hook = clamp.make_hook(model)
    def clamp_alone(): hook(pat, None).sum().backward()
    def copy_alone(): (pat * 1).sum().backward()
    t3 = bench({"clamp hook, fwd + bwd": clamp_alone, "a plain copy, fwd + bwd": copy_alone}, device, reps)
    record("train clamp", "the clamp hook alone, forward + backward", med(t3["clamp hook, fwd + bwd"]) * 1e3, "ms",
           f"= {med(t3['clamp hook, fwd + bwd']) / med(t['plain step']):.1%} of a plain step")


# ---------------------------------------------------------------------------------------------- widgets
def steering_lab_set(device, reps):
    """SteeringLab update (slider value -> recomputed distribution and redrawn panel), timed in Python, on the agent the
    EAST tutorial trains (`train_agent` defaults: 3 layers, d_model 64; k=5 arms, horizon 30; trained briefly here,
    the weights do not change the cost). Skipped when the widget module is missing."""
    try:
        from collapse_lab.steering_lab import SteeringLab
        from collapse_lab.bandit import Bandits, train_agent
    except ImportError as e:
        print(f"\n[steering lab] skipped: {e}"); return
    print(f"\n[steering lab] update callback, the EAST tutorial's agent, on {device}", flush=True)
    agent, _ = train_agent(k=5, horizon=30, steps=3, batch=8, seed=0, progress=False)
    agent = agent.to(device)
    lab = SteeringLab(agent, "blocks.1.hook_resid_post", torch.randn(agent.cfg.d_model), Bandits(4, 5, 30, seed=0))
    vals = iter([(-1) ** i * (1 + (i % 80) * 0.1) for i in range(100_000)])   # every value a new slider step
    def slide(): lab.coef.value = next(vals)
    n0 = len(lab.timings)
    t = bench({"slider change": slide}, device, reps)
    record("widget SteeringLab", "slider change -> recomputed distribution + redraw", med(t["slider change"]) * 1e3, "ms")
    inner = lab.timings[n0:]
    record("widget SteeringLab", "its own timing: change -> distribution (median)", statistics.median(inner) * 1e3, "ms")
    assert lab.error.value == "", lab.error.value


# ---------------------------------------------------------------------------------------------- east_vector
EAST_CHILD = r"""
import os, sys, threading, time, torch, json
sys.path.insert(0, {root!r})
import collapse_lab as cl
from collapse_lab.steering import east_vector
dev = torch.device({device!r})
n = {n}
PAGE = os.sysconf("SC_PAGE_SIZE")
def rss(): return int(open("/proc/self/statm").read().split()[1]) * PAGE
model = cl.tiny_model(n_layers=2, d_model=256, n_heads=8, d_vocab=512, n_ctx=32, device=str(dev))
g = torch.Generator().manual_seed(0)
prompts = torch.randint(0, 512, (n, 24), generator=g)
H = torch.rand(n, generator=g)
east_vector(model, prompts[:64], H[:64], "blocks.1.hook_resid_post", progress=False)   # warm
if dev.type == "cuda": torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); gpu0 = torch.cuda.memory_allocated()
peak, done = [rss()], False
def sample():
    while not done: peak[0] = max(peak[0], rss()); time.sleep(0.001)
th = threading.Thread(target=sample); base = rss(); th.start()
east_vector(model, prompts, H, "blocks.1.hook_resid_post", batch_size=64, progress=False)
done = True; th.join()
gpu = (torch.cuda.max_memory_allocated() - gpu0) if dev.type == "cuda" else 0
print(json.dumps(dict(rss_bytes=peak[0] - base, gpu_bytes=gpu)))
"""


def east_set(device):
    print(f"\n[east_vector] peak memory over 1,000 and 10,000 prompts (d_model 256, 24 tokens) on {device}", flush=True)
    try: import collapse_lab.steering  # noqa
    except ImportError as e: print("  skipped:", e); return
    import subprocess
    out = {}
    for n in (1000, 10000):
        code = EAST_CHILD.format(root=str(Path(__file__).resolve().parents[1]), device=str(device), n=n)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        if r.returncode: print("  failed:", r.stderr[-600:]); return
        out[n] = json.loads(r.stdout.strip().splitlines()[-1])
        record("east_vector", f"peak RSS above the start of the call, {n} prompts", out[n]["rss_bytes"] / 2**20, "MiB")
        if device.type == "cuda": record("east_vector", f"peak extra GPU memory, {n} prompts", out[n]["gpu_bytes"] / 2**20, "MiB")
    per_vec = 9000 * 256 * 4 / 2**20
    record("east_vector", "peak RSS growth 1k -> 10k prompts", (out[10000]["rss_bytes"] - out[1000]["rss_bytes"]) / 2**20, "MiB",
           f"(9,000 more float32 vectors of 256 = {per_vec:.1f} MiB)")


# ---------------------------------------------------------------------------------------------- generate
def generate_set(shape, device, dtype, batch, seq, reps, new=32, n_coef=16):
    """Steered greedy generation of `new` tokens against `transformers`' own `generate` (greedy, same prompts,
    unsteered), and `n_coef` steering coefficients generated in one batch against one generation per coefficient."""
    print(f"\n[generate] {shape}  {str(dtype).removeprefix('torch.')}  batch {batch} x {seq} prompt + {new} new tokens on {device}",
          flush=True)
    hf, model, cfg = build(shape, device, dtype)
    d, L = model.cfg.d_model, model.cfg.n_layers
    layer = L // 2
    hook = f"blocks.{layer}.hook_resid_post"
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(3, model.cfg.d_vocab, (batch, seq), generator=g).to(device)
    mask = torch.ones_like(tokens)
    v = torch.randn(d, generator=g).to(device)
    coef = 4.0
    steer = cl.Steer(hook, v, coef=coef)
    vd = v.to(dtype)

    def add(mod, args, out):
        return (out[0] + coef * vd,) + tuple(out[1:]) if isinstance(out, tuple) else out + coef * vd

    hf_kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=new, min_new_tokens=None, pad_token_id=0,
                 eos_token_id=None)
    def hf_plain(): return hf.generate(tokens, **hf_kw)[:, seq:]
    def hf_hooked():
        h = blocks_of(hf)[layer].register_forward_hook(add)
        try: return hf.generate(tokens, **hf_kw)[:, seq:]
        finally: h.remove()
    def ours(*ivs, **kw): return cl.generate(model, tokens, *ivs, max_new_tokens=new, greedy=True, **kw).tokens

    fns = {"HF generate, greedy, unsteered": hf_plain,
           "HF generate + plain torch steering hook": hf_hooked,
           "collapse_lab generate, no intervention": lambda: ours(),
           "collapse_lab generate + Steer (fast path)": lambda: ours(steer),
           "collapse_lab generate + Steer, fast=False": lambda: ours(steer, fast=False)}
    with torch.no_grad():
        same = (ours(steer).cpu() == hf_hooked().cpu()).float().mean().item()
        path = {f: cl.generate(model, tokens[:1, :4], steer, max_new_tokens=2, fast=f).path for f in (True, False)}
        t = bench(fns, device, reps, warmup=1)
    base = t["HF generate, greedy, unsteered"]
    sec = f"generate {shape}"
    record(sec, "HF generate, greedy, unsteered", med(base) * 1e3, "ms", f"({new / med(base):.0f} tokens/s per row)")
    for n, s in t.items():
        if n != "HF generate, greedy, unsteered":
            note = f"({med(s)*1e3:.1f} ms" + (f", path {path[True]})" if n.endswith("(fast path)") else
                                               f", path {path[False]})" if n.endswith("fast=False") else ")")
            record(sec, n, ratio(s, base), "x", note)
    record(sec, "fraction of new tokens equal to HF generate + hook", same, "")

    # n_coef coefficients in one batched generation vs one generation per coefficient (sampling on, one seed)
    coefs = torch.linspace(-8, 8, n_coef)
    swept = cl.Steer(hook, v, coef=coefs)
    def separate(): return [cl.generate(model, tokens, cl.Steer(hook, v, coef=float(c)), max_new_tokens=new, seed=0).tokens
                            for c in coefs]
    def batched(): return cl.generate(model, tokens, swept, max_new_tokens=new, seed=0).tokens
    with torch.no_grad():
        one, many = torch.cat(separate()), batched()
        diff = (one != many).any(-1).float().mean().item()
        t2 = bench({"separate": separate, "batched": batched}, device, max(2, reps // 3), warmup=1)
    record(sec, f"{n_coef} separate sampled generations", med(t2["separate"]) * 1e3, "ms")
    record(sec, f"speed-up of one batched generation of {n_coef} coefficients", 1 / ratio(t2["batched"], t2["separate"]), "x",
           f"({med(t2['batched'])*1e3:.1f} ms)")
    record(sec, "fraction of rows differing, batched vs separate", diff, "")
    del hf, model; gc.collect()
    if device.type == "cuda": torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- main
def versions():
    import transformers, transformer_lens
    v = dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
             transformer_lens=__import__("importlib.metadata").metadata.version("transformer-lens"), machine=platform.machine(),
             threads=torch.get_num_threads())
    if torch.cuda.is_available(): v["gpu"] = torch.cuda.get_device_name(0)
    return v


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--device", default=None, help="default: cpu for --set cpu, cuda for --set gpu (cpu if none)")
    p.add_argument("--only", default="forward,percall,sweep,generate,train,widgets,east", help="comma-separated sections")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--json", default=None, help="write all figures here")
    a = p.parse_args(argv)
    only = set(a.only.split(","))
    if a.set == "gpu":
        device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        shapes, batch, seq, reps = ["gpt2-small", "pythia-1.4b"], 32, 128, a.reps or 20
        if device.type != "cuda":
            print("no CUDA device: running the GPU set's code path on CPU with small shapes (a dry run, not GPU figures)")
            shapes, batch, seq, reps = ["cpu-small", "cpu-small-neox"], 4, 32, a.reps or 3
    else:
        device, dtype = torch.device(a.device or "cpu"), torch.float32
        shapes, batch, seq, reps = ["cpu-small", "cpu-small-neox"], 4, 64, a.reps or 25
    info = versions() | dict(set=a.set, device=str(device), dtype=str(dtype), batch=batch, seq=seq, reps=reps,
                             date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print("collapse_lab benchmarks:", json.dumps(info), flush=True)
    JSON.update(path=a.json, info=info)
    t0 = time.time()
    failed = []
    def section(name, fn, *args):
        "Run one section; a failure is reported and the others still run (one GPU lease, one try)."
        try: fn(*args)
        except Exception as e:
            import traceback
            failed.append(name)
            print(f"\n!! {name} failed: {type(e).__name__}: {e}\n" + "".join(traceback.format_exc().splitlines(True)[-6:]), flush=True)
            gc.collect()
            if device.type == "cuda": torch.cuda.empty_cache()
    if "forward" in only:
        for s in shapes: section(f"forward {s}", forward_set, s, device, dtype, batch, seq, reps)
    if "percall" in only:
        for s in PERCALL_SHAPES: section(f"per call {s}", percall_set, s, device, dtype, 10 * (a.reps or 20))
    if "sweep" in only:
        sb, ss = (batch, seq) if device.type == "cuda" else (4, 32)   # CPU: keep it short
        for s in (["tiny-native"] if device.type == "cpu" else []) + shapes:
            section(f"sweep {s}", sweep_set, s, device, dtype, sb, ss, max(3, reps // 3))
    if "generate" in only:
        gb, gs = (batch, seq) if device.type == "cuda" else (4, 32)   # CPU: 4 prompts of 32 tokens, 32 new tokens
        for s in shapes: section(f"generate {s}", generate_set, s, device, dtype, gb, gs, max(3, reps // 3))
    if "train" in only: section("train", train_set, device, 3 * reps)
    if "widgets" in only: section("widgets", steering_lab_set, device, reps)
    if "east" in only: section("east", east_set, device)
    print(f"\nall benchmarks took {time.time() - t0:.0f} s" + (f"; FAILED: {failed}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
