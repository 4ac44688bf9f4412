"""Every row of `collapse_lab.hooks.EDIT_MEANING`, checked against the plain Hugging Face model edited by hand.

For each hook kind and family (GPT-2, GPT-NeoX sequential and parallel, Llama), an edit attached with
`collapse_lab.hooks.attach` on the TransformerBridge must give the logits of the HF model with the same edit made
by a torch forward hook (or pre-hook) on the equivalent HF module, or inside a hand-written eager attention for the
attention pattern, scores and rotated queries/keys. Where the name cannot mean what it says, `check_edit` must refuse
it. Also: the pattern edit refused where it is discarded (GPT-Neo, OPT), no hook left after a pass that raises, no
stale resid_mid delta, and the notebook's markdown table equal to `EDIT_MEANING`."""
import contextlib, importlib, json, tempfile, warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from collapse_lab import core
from collapse_lab.core import load_model, tiny_hf_checkpoint
from collapse_lab.hooks import EDIT_MEANING, attach, check_edit, check_read, edit_kind, hooked, block_layout

NB = Path(__file__).parents[1] / "nbs" / "00c_hooks.ipynb"
pytestmark = [pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale/hook_normalized"),   # TL's note on ln edits
              pytest.mark.usefixtures("one_thread")]
TOKENS = torch.tensor([[1, 5, 9, 14, 20, 33, 41]])
D, H, DH, DMLP, HEAD, LAYER = 32, 4, 8, 128, 1, 0
POS = 2                  # per-head edits touch one position (the same shift of every key would change nothing)
TOL = 1e-4

# Where each family keeps what a hook name refers to (module paths from the HF causal-LM model / from a block).
FAMILIES = {
    "gpt2": dict(arch="gpt2", blocks="transformer.h", embed="transformer.wte", pos="transformer.wpe",
                 attn="attn", ln2="ln_2", mlp="mlp", o="attn.c_proj", fc="mlp.c_fc", proj="mlp.c_proj",
                 lnf="transformer.ln_f", modeling="gpt2"),
    "neox_seq": dict(arch="gpt_neox", config=dict(use_parallel_residual=False), blocks="gpt_neox.layers",
                     embed="gpt_neox.embed_in", attn="attention", ln2="post_attention_layernorm", mlp="mlp",
                     o="attention.dense", fc="mlp.dense_h_to_4h", proj="mlp.dense_4h_to_h",
                     lnf="gpt_neox.final_layer_norm", modeling="gpt_neox"),
    "pythia": dict(arch="gpt_neox", config=dict(use_parallel_residual=True), blocks="gpt_neox.layers",
                   embed="gpt_neox.embed_in", attn="attention", ln2="post_attention_layernorm", mlp="mlp",
                   o="attention.dense", fc="mlp.dense_h_to_4h", proj="mlp.dense_4h_to_h",
                   lnf="gpt_neox.final_layer_norm", modeling="gpt_neox"),
    "llama": dict(arch="llama", blocks="model.layers", embed="model.embed_tokens", attn="self_attn",
                  ln2="post_attention_layernorm", mlp="mlp", o="self_attn.o_proj", fc="mlp.gate_proj",
                  up="mlp.up_proj", proj="mlp.down_proj", lnf="model.norm", modeling="llama"),
}

# What `check_edit` must refuse, and a phrase its message must hold.
REFUSED = {
    ("pythia", "resid_mid"): "in parallel",
    ("pythia", "pos_embed"): "never fires", ("neox_seq", "pos_embed"): "never fires", ("llama", "pos_embed"): "never fires",
    ("pythia", "rot_q"): "never fires", ("pythia", "rot_k"): "never fires",
    ("neox_seq", "rot_q"): "never fires", ("neox_seq", "rot_k"): "never fires",
}

def _get(root, path:str):
    for part in path.split("."): root = getattr(root, part)
    return root

def _checkpoint(arch:str, config:dict|None=None)->Path:
    path = tiny_hf_checkpoint(Path(tempfile.mkdtemp()) / arch, arch=arch, d_model=D, n_heads=H)
    if config:
        cfg = json.loads((path / "config.json").read_text()); cfg.update(config)
        (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def models(one_thread):
    "family -> (bridge, plain HF model with eager attention, the bridge's logits without edits)."
    out = {}
    for fam, spec in FAMILIES.items():
        path = _checkpoint(spec["arch"], spec.get("config"))
        hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
        bridge = load_model(path, device="cpu")
        with torch.no_grad(): out[fam] = (bridge, hf, bridge(TOKENS))
    return out

# ---------------------------------------------------------------- the edits, on the bridge and on the HF model
g = torch.Generator().manual_seed(0)
V, W = torch.randn(D, generator=g), torch.randn(DMLP, generator=g)
U = 10 * torch.randn(DH, generator=g)   # big: a tiny model's queries and keys are small

def _head_add(a):                       # [batch, pos, head, d_head]
    a = a.clone(); a[:, POS, HEAD] += U; return a

TL_EDIT = {
    **{k: (lambda a, hook: a + V) for k in ("embed", "pos_embed", "resid_pre", "resid_mid", "resid_post", "attn_out",
                                             "mlp_out", "mlp_in", "ln_final")},
    **{k: (lambda a, hook: _head_add(a)) for k in ("q", "k", "v", "z", "rot_q", "rot_k")},
    **{k: (lambda a, hook: a + W) for k in ("mlp_pre", "mlp_pre_linear", "mlp_post")},
    "result": lambda a, hook: torch.cat([a[:, :, :HEAD], torch.zeros_like(a[:, :, HEAD:HEAD + 1]), a[:, :, HEAD + 1:]], 2),
    "pattern": lambda a, hook: 0.5 * a + 0.5 * torch.nn.functional.one_hot(torch.zeros(a.shape[:-1], dtype=torch.long), a.shape[-1]),
    "attn_scores": lambda a, hook: a + 2.0 * (torch.arange(a.shape[-1]) == 0),
}

def _first(out, f):
    "Apply `f` to a module output's hidden states (a tensor or a tuple's first element)."
    return (f(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else f(out)

def _fwd(module, f):
    return module.register_forward_hook(lambda m, args, out: _first(out, f))

def _pre(module, f):
    def hook(m, args, kwargs):
        if args: return (f(args[0]),) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": f(kwargs["hidden_states"])}
    return module.register_forward_pre_hook(hook, with_kwargs=True)

def _slice_add(x, start, u):            # [batch, pos, features]: at position POS
    x = x.clone(); x[:, POS, start:start + len(u)] += u; return x

def _qkv_hook(fam, spec, block, kind):
    "Add U to head HEAD's query, key or value as the projection computes it (before any rotation)."
    which = "qkv".index(kind)
    if fam == "gpt2":                                  # c_attn -> [q | k | v], heads contiguous in each
        return _fwd(block.attn.c_attn, lambda x: _slice_add(x, which * D + HEAD * DH, U))
    if fam in ("neox_seq", "pythia"):                  # query_key_value -> per head [q | k | v]
        return _fwd(block.attention.query_key_value, lambda x: _slice_add(x, HEAD * 3 * DH + which * DH, U))
    return _fwd(getattr(block.self_attn, f"{kind}_proj"), lambda x: _slice_add(x, HEAD * DH, U))

@contextlib.contextmanager
def _eager(spec, attn_module, kind):
    "The family's eager attention, written out by hand, with the edit of `kind` made inside `attn_module`."
    mod = importlib.import_module(f"transformers.models.{spec['modeling']}.modeling_{spec['modeling']}")
    orig = mod.eager_attention_forward
    def eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        mine = module is attn_module
        if mine and kind == "rot_q": query = query.clone(); query[:, HEAD, POS] += U   # [batch, head, pos, d_head]
        if mine and kind == "rot_k": key = key.clone(); key[:, HEAD, POS] += U
        groups = getattr(module, "num_key_value_groups", 1)
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        scores = query @ key.transpose(-1, -2) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
        if attention_mask is not None: scores = scores + attention_mask[..., :key.shape[-2]]
        if mine and kind == "attn_scores": scores = scores + 2.0 * (torch.arange(scores.shape[-1]) == 0)
        pattern = torch.softmax(scores.float(), -1).to(query.dtype)
        if mine and kind == "pattern": pattern = 0.5 * pattern + 0.5 * (torch.arange(pattern.shape[-1]) == 0)
        return (pattern @ value).transpose(1, 2).contiguous(), pattern
    mod.eager_attention_forward = eager
    try: yield
    finally: mod.eager_attention_forward = orig

def hf_reference(fam, hf, kind)->torch.Tensor:
    "Logits of the plain HF model with the edit of `kind` at layer LAYER made by hand."
    spec = FAMILIES[fam]
    block = _get(hf, spec["blocks"])[LAYER]
    hooks, ctx = [], contextlib.nullcontext()
    at = lambda path: _get(block, path)
    if kind == "embed": hooks.append(_fwd(_get(hf, spec["embed"]), lambda x: x + V))
    elif kind == "pos_embed": hooks.append(_fwd(_get(hf, spec["pos"]), lambda x: x + V))
    elif kind == "resid_pre": hooks.append(_pre(block, lambda x: x + V))
    elif kind == "resid_post": hooks.append(_fwd(block, lambda x: x + V))
    elif kind in ("resid_mid", "attn_out"):            # resid_mid: MLP input and skip path = the attention output + V
        hooks.append(_fwd(at(spec["attn"]), lambda x: x + V))
    elif kind == "mlp_out": hooks.append(_fwd(at(spec["mlp"]), lambda x: x + V))
    elif kind == "mlp_in": hooks.append(_pre(at(spec["ln2"]), lambda x: x + V))    # the MLP branch only
    elif kind in ("q", "k", "v"): hooks.append(_qkv_hook(fam, spec, block, kind))
    elif kind == "z": hooks.append(_pre(at(spec["o"]), lambda x: _slice_add(x, HEAD * DH, U)))
    elif kind == "result":                             # head HEAD's contribution gone: its z zeroed before W_O
        hooks.append(_pre(at(spec["o"]), lambda x: torch.cat([x[..., :HEAD * DH], torch.zeros_like(x[..., :DH]),
                                                              x[..., (HEAD + 1) * DH:]], -1)))
    elif kind == "mlp_pre": hooks.append(_fwd(at(spec["fc"]), lambda x: x + W))
    elif kind == "mlp_pre_linear": hooks.append(_fwd(at(spec["up"]), lambda x: x + W))
    elif kind == "mlp_post": hooks.append(_pre(at(spec["proj"]), lambda x: x + W))
    elif kind == "ln_final":                           # normalised + V, then the norm's weight: output + weight * V
        lnf = _get(hf, spec["lnf"])
        hooks.append(_fwd(lnf, lambda x: x + lnf.weight * V))
    elif kind in ("pattern", "attn_scores", "rot_q", "rot_k"): ctx = _eager(spec, at(spec["attn"]), kind)
    else: raise KeyError(kind)
    try:
        with ctx, torch.no_grad(): return hf(TOKENS).logits
    finally:
        for h in hooks: h.remove()

def _name(kind:str)->str:
    return EDIT_MEANING[kind][0].replace(".L.", f".{LAYER}.")

def _cases():
    "(family, kind) pairs whose hook exists on that family (pos_embed: GPT-2 only; the rotary ones refuse it)."
    for fam in FAMILIES:
        for kind in EDIT_MEANING:
            if kind == "mlp_pre_linear" and fam != "llama": continue     # gated MLPs only
            if kind in ("rot_q", "rot_k") and fam == "gpt2": continue     # no rotary embedding
            yield fam, kind

# ---------------------------------------------------------------- the tests
@pytest.mark.parametrize("fam,kind", list(_cases()))
def test_edit_matches_hf(models, fam, kind):
    bridge, hf, clean = models[fam]
    name = _name(kind)
    flag = {"mlp_in": "set_use_hook_mlp_in", "result": "set_use_attn_result"}.get(kind)
    if flag: getattr(bridge, flag)(True)
    try:
        if (fam, kind) in REFUSED:
            with pytest.raises(ValueError, match=REFUSED[fam, kind]): check_edit(bridge, name)
            return
        assert check_edit(bridge, name) == name
        with hooked(bridge, (name, TL_EDIT[kind])), torch.no_grad(): got = bridge(TOKENS)
        want = hf_reference(fam, hf, kind)
        assert (want - clean).abs().max() > 1e-3, f"the reference edit of {kind} changes nothing on {fam}"
        err = (got - want).abs().max().item()
        assert err < TOL, f"{name} on {fam}: logits differ from the HF reference by {err:.2e}"
    finally:
        if flag: getattr(bridge, flag)(False)

def test_clean_bridge_matches_hf(models):
    for fam, (bridge, hf, clean) in models.items():
        with torch.no_grad(): assert (clean - hf(TOKENS).logits).abs().max() < TOL, fam

def test_tl4_alone_moves_only_the_mlp_input(models):
    "Why attach exists: the hook point TransformerLens 4 calls hook_resid_mid misses the skip path."
    bridge, hf, _ = models["gpt2"]
    hp = bridge.hook_dict["blocks.0.hook_resid_mid"]
    handle = hp.add_hook(TL_EDIT["resid_mid"])
    try:
        with torch.no_grad(): tl4 = bridge(TOKENS)
    finally:
        handle.hook.remove(); hp.fwd_hooks.remove(handle)
    assert (tl4 - hf_reference("gpt2", hf, "resid_mid")).abs().max() > 1e-2
    assert (tl4 - hf_reference("gpt2", hf, "mlp_in")).abs().max() < TOL

def test_layouts(models):
    assert [block_layout(models[f][0], 0) for f in FAMILIES] == ["sequential", "sequential", "parallel", "sequential"]

@pytest.mark.parametrize("arch", ["gpt_neo", "opt"])
def test_pattern_edit_refused_where_discarded(arch):
    if arch not in core.HF_FAMILIES: pytest.skip(f"tiny_hf_checkpoint cannot write {arch}")
    bridge = load_model(_checkpoint(arch), device="cpu")
    for kind, works in [("pattern", False), ("attn_scores", False), ("z", True), ("q", True)]:
        name = _name(kind)
        if works: assert check_edit(bridge, name) == name
        else:
            with pytest.raises(ValueError, match=rf"discarded on this {arch} model.*blocks\.0\.attn\.hook_z"): check_edit(bridge, name)
    with torch.no_grad(): clean = bridge(TOKENS)                  # and it really is discarded
    with hooked(bridge, ("blocks.0.attn.hook_pattern", TL_EDIT["pattern"])), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")                           # TransformerLens warns that it ignores the edit
        assert torch.equal(bridge(TOKENS), clean)

@pytest.mark.parametrize("arch", ["gemma2", "olmo2", "granite"])
def test_norms_after_sublayers_and_scaled_residuals(arch):
    """Gemma 2 and OLMo-2 normalise attention's and the MLP's outputs before adding them (OLMo-2 has no norm before
    them); Granite scales them. resid_mid, attn_out and mlp_out still mean the stream and what is added to it."""
    if arch not in core.HF_FAMILIES: pytest.skip(f"tiny_hf_checkpoint cannot write {arch}")
    path = _checkpoint(arch)
    bridge, hf = load_model(path, device="cpu"), AutoModelForCausalLM.from_pretrained(path).eval()
    block = hf.model.layers[LAYER]
    scale = 1 / getattr(hf.config, "residual_multiplier", 1.0)      # Granite adds residual_multiplier * output
    added = dict(attn=getattr(block, "post_attention_layernorm") if arch != "granite" else block.self_attn,
                 mlp=getattr(block, "post_feedforward_layernorm", None) or block.mlp)
    for kind, where in [("resid_mid", "attn"), ("attn_out", "attn"), ("mlp_out", "mlp")]:
        name = check_edit(bridge, _name(kind))
        handle = _fwd(added[where], lambda x: x + scale * V)
        try:
            with torch.no_grad(): want = hf(TOKENS).logits
        finally: handle.remove()
        with hooked(bridge, (name, TL_EDIT[kind])), torch.no_grad(): got = bridge(TOKENS)
        assert (got - want).abs().max() < TOL, f"{name} on {arch}"

def test_refusals_measured_on_other_models():
    "Parallel GPT-J: resid_mid refused, for reading too, naming the hooks to use; TL-native models discard score edits."
    gptj = load_model(_checkpoint("gptj"), device="cpu")
    assert block_layout(gptj, 0) == "parallel"
    for f in (lambda: check_edit(gptj, "blocks.1.hook_resid_mid"), lambda: check_read(gptj, "blocks.1.hook_resid_mid"),
              lambda: attach(gptj, "blocks.1.hook_resid_mid", lambda a, hook: None)):
        with pytest.raises(ValueError, match=r"gptj model: block 1 runs attention and MLP in parallel") as e: f()
        assert all(f"blocks.1.hook_{k}" in str(e.value) for k in ("resid_pre", "attn_out", "mlp_out", "resid_post"))
    native = core.tiny_model(n_layers=1, d_model=32, n_heads=4, d_vocab=50)
    with pytest.raises(ValueError, match="discarded on this TransformerLensNative model"):
        check_edit(native, "blocks.0.attn.hook_attn_scores")
    assert check_edit(native, "blocks.0.attn.hook_pattern") == "blocks.0.attn.hook_pattern"
    assert check_read(native, "blocks.0.attn.hook_attn_scores") == "blocks.0.attn.hook_attn_scores"   # reading works
    with pytest.raises(ValueError, match="nothing to read"): check_read(gptj, "blocks.0.attn.hook_rot_q")

class _Stop(Exception): pass
def _stop(act, hook): raise _Stop

def _hooked_points(bridge):
    "Canonical names of the hook points that carry a hook."
    return sorted({hp.name for hp in bridge.hook_dict.values() if hp.fwd_hooks or hp._forward_hooks})

def test_no_hook_left_after_a_pass_that_raises(models):
    bridge = models["llama"][0]
    for kind in ("resid_mid", "pattern", "z", "resid_post"):
        with pytest.raises(_Stop):
            with hooked(bridge, (_name(kind), TL_EDIT[kind]), ("blocks.1.hook_mlp_out", _stop)), torch.no_grad():
                bridge(TOKENS)
        assert _hooked_points(bridge) == []
    remove = attach(bridge, "blocks.0.hook_resid_mid", TL_EDIT["resid_mid"])
    assert len(_hooked_points(bridge)) == 3        # ln2's input, and the block's input and output that carry the edit
    remove(); remove()
    assert _hooked_points(bridge) == []

def test_no_stale_delta(models):
    "A pass stopped between resid_mid and resid_post must not leave its delta to the next pass."
    bridge, hf, clean = models["gpt2"]
    calls = []
    def steer_first_pass_only(a, hook):
        calls.append(1)
        return a + V if len(calls) == 1 else None
    with hooked(bridge, ("blocks.0.hook_resid_mid", steer_first_pass_only)):
        stop = attach(bridge, "blocks.0.hook_mlp_out", _stop)
        with pytest.raises(_Stop), torch.no_grad(): bridge(TOKENS)
        stop()
        with torch.no_grad(): assert torch.equal(bridge(TOKENS), clean)
    # a steer that stays on: the stopped pass does not add its delta twice
    with hooked(bridge, ("blocks.0.hook_resid_mid", TL_EDIT["resid_mid"])):
        stop = attach(bridge, "blocks.0.hook_mlp_out", _stop)
        with pytest.raises(_Stop), torch.no_grad(): bridge(TOKENS)
        stop()
        with torch.no_grad(): got = bridge(TOKENS)
    assert (got - hf_reference("gpt2", hf, "resid_mid")).abs().max() < TOL

def test_in_place_edit_at_resid_mid(models):
    bridge, hf, _ = models["llama"]
    with hooked(bridge, ("blocks.0.hook_resid_mid", lambda a, hook: (a.add_(V), None)[1])), torch.no_grad(): got = bridge(TOKENS)
    assert (got - hf_reference("llama", hf, "resid_mid")).abs().max() < TOL

def test_table_in_notebook_matches_edit_meaning():
    cells = json.loads(NB.read_text())["cells"]
    table = next("".join(c["source"]) for c in cells if c["cell_type"] == "markdown" and "| kind | hook name |" in "".join(c["source"]))
    rows = [[x.strip() for x in line.strip().strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")][1:]
    assert {k: (n.strip("`"), m) for k, n, m in rows} == EDIT_MEANING
    for kind, (template, _) in EDIT_MEANING.items(): assert edit_kind(template.replace(".L.", ".3.")) == kind
