"""`generate`: greedy steered generation equals `transformers.generate` with a hand-written hook, on every family
`tiny_hf_checkpoint` writes (three and Falcon under COLLAPSE_LAB_QUICK=1); the fast, bridge and no-cache paths
agree; `positions` and `apply_to` mean what the docstring says; coefficient batches equal separate runs with
sampling on; temperatures by row, by kind and by step; stops; errors; no hook left behind."""
import math

import pytest
import torch
from torch import nn

import collapse_lab as cl
from collapse_lab import generation as gen
from collapse_lab.prompts import pad_id

QUICK = cl.quick()
CORE = ["gpt2", "gpt_neox", "llama"]
FAMILIES = CORE + (["falcon"] if QUICK else [f for f in cl.HF_FAMILIES if f not in CORE])
TEXTS = ["t5 t7 t9", "t11 t12 t13 t14 t15 t16 t17", "t20"]       # three lengths: left padding, mask, position ids
D = 32
RESID = "blocks.1.hook_resid_post"


pytestmark = pytest.mark.usefixtures("one_thread")


class Zoo:
    def __init__(self, root): self.root, self.cache = root, {}
    def __call__(self, arch):
        "(bridge, plain HF model) of family `arch`, built once."
        if arch not in self.cache:
            import transformers
            if arch == "native":
                self.cache[arch] = (cl.tiny_model(n_layers=2, d_model=D, n_heads=4, d_vocab=100, n_ctx=32), None)
            else:
                path = cl.tiny_hf_checkpoint(self.root / arch, arch=arch, d_model=D)
                self.cache[arch] = (cl.load_model(path, device="cpu"),
                                    transformers.AutoModelForCausalLM.from_pretrained(path).eval())
        return self.cache[arch]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory): return Zoo(tmp_path_factory.mktemp("generation"))


def _gen(seed): return torch.Generator().manual_seed(seed)
def _vec(seed, d=D): return torch.randn(d, generator=_gen(seed))


def decoder_layers(hf:nn.Module)->nn.ModuleList:
    "The HF model's decoder layers: the first ModuleList as long as the model is deep."
    n = hf.config.num_hidden_layers
    return next(m for m in hf.modules() if isinstance(m, nn.ModuleList) and len(m) == n)


def _coef(model, v):
    "A coefficient that moves the residual stream by about twice its norm (the text changes, the logits stay finite)."
    with torch.no_grad(): norm = cl.activations(model, TEXTS, RESID).norm(dim=-1).mean()
    return float(2 * norm / v.norm())


def torch_hooks(model):
    mods = list(model.modules())
    bare = cl.fastpath.bare_model(model)
    if bare is not None: mods += list(bare.modules())
    return [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in mods]


def user_hooks(model):
    return [n for n, hp in model.hook_dict.items() if any(not h.is_permanent for h in hp.fwd_hooks + hp.bwd_hooks)]


# ---------------------------------------------------------------------------------------------- against HF
@pytest.mark.parametrize("arch", FAMILIES)
def test_greedy_steered_equals_hf_generate(zoo, arch):
    model, hf = zoo(arch)
    v = _vec(0, model.cfg.d_model)
    coef = _coef(model, v)
    def add(mod, args, out): return (out[0] + coef * v,) + tuple(out[1:]) if isinstance(out, tuple) else out + coef * v
    p = cl.as_prompts(model, TEXTS)
    eos = hf.generation_config.eos_token_id
    h = decoder_layers(hf)[1].register_forward_hook(add)
    try:
        with torch.no_grad():
            want = hf.generate(p.tokens, attention_mask=p.attention_mask, do_sample=False, max_new_tokens=10,
                               pad_token_id=pad_id(model))[:, p.tokens.shape[1]:]
    finally: h.remove()
    g = cl.generate(model, TEXTS, cl.Steer(RESID, v, coef=coef), max_new_tokens=10, greedy=True, stop=eos)
    assert g.tokens.shape == want.shape and torch.equal(g.tokens, want), f"{g.path}:\n{g.tokens}\n{want}"
    assert g.text == [model.tokenizer.decode(t[:n]) for t, n in zip(want, g.lengths)]
    if arch in CORE:
        assert g.path == "fast"
        assert not torch.equal(cl.generate(model, TEXTS, max_new_tokens=10, greedy=True, stop=eos).tokens, g.tokens)


# ---------------------------------------------------------------------------------------------- paths agree
def _mixed(model):
    d = model.cfg.d_model
    src = cl.activations(model, [[30, 31, 32]], "blocks.0.hook_resid_post")
    return [cl.Steer(RESID, _vec(1, d), coef=3.0),
            cl.SubspacePatch("blocks.0.hook_resid_post", torch.randn(2, d, generator=_gen(2)), src, positions=[-1]),
            cl.Clamp("blocks.0.hook_mlp_out", _vec(3, d), positions=[-1]),
            cl.Ablate("blocks.1.hook_attn_out", "mean")]


@pytest.mark.parametrize("arch", CORE + ["native"])
def test_fast_bridge_and_recompute_paths_agree(zoo, arch):
    model, _ = zoo(arch)
    ivs = _mixed(model)
    texts = TEXTS if arch != "native" else [[5, 7, 9], [11, 12, 13, 14, 15, 16, 17], [20]]
    runs = {kw: cl.generate(model, texts, *ivs, max_new_tokens=8, greedy=True, return_logits=True, **dict(kw))
            for kw in [(), (("fast", False),), (("use_cache", False),), (("use_cache", False), ("fast", False))]}
    first = runs[()]
    assert first.path == ("fast" if arch != "native" else "recompute")
    for kw, g in runs.items():
        assert torch.equal(g.tokens, first.tokens), kw
        torch.testing.assert_close(g.logits, first.logits, atol=1e-4, rtol=0, msg=lambda m: f"{kw}: {m}")
    clean = cl.generate(model, texts, max_new_tokens=8, greedy=True, return_logits=True)
    assert (clean.logits - first.logits).abs().max() > 1e-2


def test_bridge_kv_cache_path_on_gpt_neox(zoo):
    "GPT-NeoX's bridge fills the HF cache: a non-fast hook (hook_z) steps the bridge with it, equal to re-running."
    model, _ = zoo("gpt_neox")
    assert gen._bridge_cache_ok(model) and not gen._bridge_cache_ok(zoo("gpt2")[0])
    iv = cl.Ablate("blocks.0.attn.hook_z", heads=[1, 2])
    a = cl.generate(model, TEXTS, iv, max_new_tokens=8, greedy=True, return_logits=True)
    b = cl.generate(model, TEXTS, iv, max_new_tokens=8, greedy=True, return_logits=True, use_cache=False)
    assert (a.path, b.path) == ("bridge", "recompute")
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=0)
    clean = cl.generate(model, TEXTS, max_new_tokens=8, greedy=True, return_logits=True)
    assert (clean.logits - a.logits).abs().max() > 1e-3


def test_hooks_already_on_the_bridge_are_honoured(zoo):
    "Inside someone's `intervene` the fast path is off; their hook and generate's own both act."
    model, _ = zoo("gpt2")
    v = _vec(4)
    want = cl.generate(model, TEXTS, cl.Steer(RESID, v, coef=2.), max_new_tokens=6, greedy=True)
    with cl.intervene(model, cl.Steer(RESID, v, coef=1.)):
        got = cl.generate(model, TEXTS, cl.Steer(RESID, v, coef=1.), max_new_tokens=6, greedy=True)
    assert got.path != "fast" and torch.equal(got.tokens, want.tokens)


# ---------------------------------------------------------------------------------------------- positions, apply_to
def _by_hand(model, prompt, v, coef, positions_at, n=6):
    "Greedy loop re-running the whole sequence, steering positions_at(T) (absolute) at sequence length T."
    seq = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            pos = positions_at(seq.shape[1])
            ivs = [cl.Steer(RESID, v, coef=coef, positions=pos)] if pos else []
            seq = torch.cat([seq, cl.run(model, seq, *ivs)[:, -1].argmax(-1, keepdim=True)], 1)
    return seq[0, len(prompt):]


@pytest.mark.parametrize("case", ["last", "prompt", "generated", "absolute", "second_last"])
@pytest.mark.parametrize("arch", ["gpt2", "native"])
def test_positions_and_apply_to_mean_what_the_docs_say(zoo, arch, case):
    model, _ = zoo(arch)
    prompt, v = [5, 7, 9, 11, 13], _vec(5, model.cfg.d_model)
    P, coef = len(prompt), 3.0 if arch == "gpt2" else 8.0
    positions, apply_to, at = {
        "last": ([-1], "all", lambda T: list(range(P - 1, T))),              # last prompt token + every new token
        "prompt": (None, "prompt", lambda T: list(range(P))),                # prefill only
        "generated": (None, "generated", lambda T: list(range(P, T))),       # new tokens' own positions only
        "absolute": ([1, P + 1], "all", lambda T: [p for p in (1, P + 1) if p < T]),   # token P+1 is the 2nd new one
        "second_last": ([-2], "all", lambda T: [P - 2]),                      # prefill only
    }[case]
    got = cl.generate(model, [prompt], cl.Steer(RESID, v, coef=coef, positions=positions), max_new_tokens=6,
                      greedy=True, apply_to=apply_to)
    assert torch.equal(got.tokens[0], _by_hand(model, prompt, v, coef, at)), case


def test_padded_batch_refuses_positions_from_the_start(zoo):
    model, _ = zoo("gpt2")
    with pytest.raises(ValueError, match="padded on the left"):
        cl.generate(model, TEXTS, cl.Steer(RESID, _vec(6), positions=[0, -1]))
    cl.generate(model, ["t5 t6", "t7 t8"], cl.Steer(RESID, _vec(6), positions=[0]), max_new_tokens=2)   # one length: fine


# ---------------------------------------------------------------------------------------------- coefficient batches
@pytest.mark.parametrize("arch", ["gpt2", "native"])
def test_coefficient_batch_equals_separate_runs_with_sampling(zoo, arch):
    model, _ = zoo(arch)
    prompts = TEXTS if arch != "native" else [[5, 7, 9], [11, 12, 13, 14, 15, 16, 17], [20]]
    coefs = torch.tensor([-4., 0., 2., 6.])
    v = _vec(7, model.cfg.d_model)
    kw = dict(max_new_tokens=10, seed=11, top_k=40, top_p=0.95, temperature=torch.tensor([1.5, 1.0, 0.7]),
              return_entropies=True, stop=[3])
    batched = cl.generate(model, prompts, cl.Steer(RESID, v, coef=coefs, positions=[-1]), **kw)
    assert len(batched) == 12 and batched.row_coefs.tolist() == sum(([c] * 3 for c in coefs.tolist()), [])
    for c, coef in enumerate(coefs.tolist()):
        one = cl.generate(model, prompts, cl.Steer(RESID, v, coef=coef, positions=[-1]), **kw)
        rows = slice(3 * c, 3 * c + 3)
        n = one.tokens.shape[1]
        assert torch.equal(batched.tokens[rows, :n], one.tokens), coef
        assert (batched.tokens[rows, n:] == pad_id(model)).all()
        assert torch.equal(batched.lengths[rows], one.lengths) and batched.stopped[rows] == one.stopped
        torch.testing.assert_close(batched.entropies[rows, :n], one.entropies, atol=1e-4, rtol=0, equal_nan=True)
    assert len({tuple(t.tolist()) for t in batched.tokens}) > 6            # the samples are not all alike


def test_seeds(zoo):
    model, _ = zoo("gpt2")
    a, b, c = (cl.generate(model, TEXTS, max_new_tokens=8, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    # prompt b's stream does not depend on the other prompts of the batch
    assert torch.equal(cl.generate(model, TEXTS[:2] + ["t40 t41"], max_new_tokens=8, seed=1).tokens[:2], a.tokens[:2])


# ---------------------------------------------------------------------------------------------- temperatures
def test_per_row_temperature_zero_is_greedy(zoo):
    model, _ = zoo("gpt2")
    greedy = cl.generate(model, TEXTS, max_new_tokens=8, greedy=True)
    mixed = cl.generate(model, TEXTS, cl.Steer(RESID, _vec(8), coef=torch.tensor([0., 0.])), max_new_tokens=8,
                        temperature=torch.tensor([0., 1., 0., 0., 0., 2.]), seed=3)
    assert torch.equal(mixed.tokens[[0, 2, 3, 4]], greedy.tokens[[0, 2, 0, 1]])


def test_kind_temperature_distribution(zoo):
    """2,000 independent first tokens of one prompt: the action kind's frequency is its mass at the rest temperature,
    and within the kind the tokens follow softmax(logits / T_action)."""
    model, _ = zoo("gpt2")
    actions = tuple(range(20, 30))
    n, T_rest, T_act = 2000, 1.3, 0.25
    g = cl.generate(model, ["t5 t7 t9"] * n, max_new_tokens=1, seed=0, return_logits=True,
                    temperature={actions: T_act, "rest": T_rest})
    logits = g.logits[0, 0]
    p_rest = torch.softmax(logits / T_rest, -1)
    first = g.tokens[:, 0]
    is_act = torch.isin(first, torch.tensor(actions))
    mass = p_rest[list(actions)].sum().item()
    assert abs(is_act.float().mean().item() - mass) < 4 * math.sqrt(mass * (1 - mass) / n) + 1e-3
    want = torch.softmax(logits[list(actions)] / T_act, -1)
    got = torch.bincount(first[is_act] - 20, minlength=10).float() / is_act.sum()
    assert (got - want).abs().max() < 0.1
    others = first[~is_act]
    want_o = p_rest.clone(); want_o[list(actions)] = 0; want_o /= want_o.sum()
    got_o = torch.bincount(others, minlength=len(logits)).float() / len(others)
    assert 0.5 * (got_o - want_o).abs().sum() < 0.1                      # total variation distance


def test_one_temperature_for_every_kind_is_plain_sampling(zoo):
    model, _ = zoo("gpt2")
    a = cl.generate(model, TEXTS, max_new_tokens=8, seed=5, temperature={(20, 21, 22): 0.8, 50: 0.8, "rest": 0.8})
    b = cl.generate(model, TEXTS, max_new_tokens=8, seed=5, temperature=0.8)
    assert torch.equal(a.tokens, b.tokens)


def test_callable_temperature(zoo):
    model, _ = zoo("gpt2")
    seen = []
    def temp(step, tokens):
        seen.append(tuple(tokens.shape))
        return 0. if step < 4 else {(5, 6, 7): 0., "rest": 1.}
    g = cl.generate(model, TEXTS, max_new_tokens=8, seed=2, temperature=temp)
    greedy = cl.generate(model, TEXTS, max_new_tokens=8, greedy=True)
    assert torch.equal(g.tokens[:, :4], greedy.tokens[:, :4]) and seen == [(3, k) for k in range(8)]
    with pytest.raises(ValueError, match="temperature=-1.0 is not valid"):
        cl.generate(model, TEXTS, max_new_tokens=8, temperature=lambda s, t: -1. if s == 3 else 1.)


# ---------------------------------------------------------------------------------------------- stops
def test_stop_tokens_and_strings(zoo):
    model, _ = zoo("gpt2")
    tok = model.tokenizer
    greedy = cl.generate(model, TEXTS, max_new_tokens=8, greedy=True, return_entropies=True)
    row = greedy.tokens[1].tolist()
    k0 = max(k for k in range(8) if row[k] not in row[:k])
    s = cl.generate(model, TEXTS, max_new_tokens=8, greedy=True, stop=[row[k0]], return_entropies=True, return_logits=True)
    assert s.lengths[1] == k0 + 1 and s.stopped[1] == f"stop token {row[k0]}"
    assert s.tokens[1, :k0 + 1].tolist() == row[:k0 + 1] and (s.tokens[1, k0 + 1:] == pad_id(model)).all()
    assert s.text[1] == tok.decode(row[:k0 + 1])
    assert torch.isnan(s.entropies[1, k0 + 1:]).all() and not torch.isnan(s.entropies[1, :k0 + 1]).any()
    assert torch.isnan(s.logits[1, k0 + 1:]).all()
    torch.testing.assert_close(s.entropies[1, :k0 + 1], greedy.entropies[1, :k0 + 1])
    # a stop string spanning two tokens
    word = tok.decode(greedy.tokens[2, 2:4])
    n2 = next(j + 1 for j in range(8) if word in tok.decode(greedy.tokens[2, :j + 1]))
    s = cl.generate(model, TEXTS, max_new_tokens=8, greedy=True, stop=["zzz", word, 99999 % 100])
    assert s.lengths[2] == n2 and s.stopped[2] == f"stop string {word!r}" and word in s.text[2]
    # every row stops at its first token: the loop ends after one step
    s = cl.generate(model, TEXTS, max_new_tokens=8, greedy=True, stop=greedy.tokens[:, 0].tolist())
    assert s.tokens.shape == (3, 1) and s.lengths.tolist() == [1, 1, 1]


def test_entropies_and_logits_are_the_models(zoo):
    model, _ = zoo("gpt2")
    st = cl.Steer(RESID, _vec(9), coef=2.)
    g = cl.generate(model, TEXTS, st, max_new_tokens=4, greedy=True, return_logits=True, return_entropies=True)
    with torch.no_grad(): first = cl.run(model, TEXTS, st)[:, -1]
    torch.testing.assert_close(g.logits[:, 0], first, atol=1e-4, rtol=0)
    torch.testing.assert_close(g.entropies, torch.distributions.Categorical(logits=g.logits).entropy(), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- errors and hygiene
@pytest.mark.parametrize("kw,msg", [
    (dict(temperature=-0.5), "temperature=-0.5 is not valid"),
    (dict(temperature=float("nan")), "temperature=nan is not valid"),
    (dict(temperature="warm"), "temperature='warm' is not valid"),
    (dict(temperature=torch.ones(4)), "has 4 values but the generation has 3 rows"),
    (dict(temperature={(5, 6): 1., 6: 0.5}), "in two kinds"),
    (dict(top_p=0), "top_p=0 is not valid"), (dict(top_p=1.2), "top_p=1.2 is not valid"),
    (dict(top_k=0), "top_k=0 is not valid"), (dict(top_k=2.5), "top_k=2.5 is not valid"),
    (dict(max_new_tokens=0), "max_new_tokens=0 is not valid"), (dict(max_new_tokens=3.0), "max_new_tokens=3.0 is not valid"),
    (dict(seed=-1), "seed=-1 is not valid"), (dict(apply_to="prefill"), "apply_to='prefill' is not valid"),
    (dict(stop=[2.5]), "stop item 2.5 is not valid"), (dict(stop=[100]), "stop item 100 is not valid"),
    (dict(max_new_tokens=70), "learned position embeddings for 64"),
])
def test_bad_arguments_name_the_value(zoo, kw, msg):
    model, _ = zoo("gpt2")
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        cl.generate(model, TEXTS, **kw)


def test_bad_interventions(zoo):
    model, _ = zoo("gpt2")
    with pytest.raises(ValueError, match="different sizes"):
        cl.generate(model, TEXTS, cl.Steer(RESID, _vec(0), coef=torch.ones(2)), cl.Steer(RESID, _vec(0), coef=torch.ones(3)))
    with pytest.raises(ValueError, match="size 31"):
        cl.generate(model, TEXTS, cl.Steer(RESID, torch.ones(31)))
    with pytest.raises(ValueError, match="need a tokenizer"):
        cl.generate(zoo("native")[0], [[5, 6]], stop="t5", max_new_tokens=4)
    assert user_hooks(model) == []


class Boom(Exception): pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("path", ["fast", "bridge", "recompute"])
def test_exception_in_a_hook_leaves_nothing_behind(zoo, exc, path):
    model, _ = zoo("gpt_neox")                        # its bridge cache works: all three paths exist
    kw = {"fast": {}, "bridge": dict(fast=False), "recompute": dict(use_cache=False)}[path]
    hooks, tl = torch_hooks(model), user_hooks(model)
    weights = {k: x.clone() for k, x in model.state_dict().items()}
    calls = []
    def boom(act):
        calls.append(1)
        if len(calls) == 3: raise exc("inside a hook, mid-generation")
        return act
    st = cl.Steer(RESID, _vec(10), coef=2.)
    before = cl.generate(model, TEXTS, st, max_new_tokens=5, greedy=True, **kw)
    assert before.path == path
    with pytest.raises(exc):
        cl.generate(model, TEXTS, st, cl.Clamp("blocks.0.hook_resid_post", boom), max_new_tokens=5, greedy=True, **kw)
    assert len(calls) == 3
    assert torch_hooks(model) == hooks and user_hooks(model) == tl == []
    assert all(torch.equal(x, weights[k]) for k, x in model.state_dict().items())
    assert torch.equal(cl.generate(model, TEXTS, st, max_new_tokens=5, greedy=True, **kw).tokens, before.tokens)


def test_result_renders(zoo):
    model, _ = zoo("gpt2")
    g = cl.generate(model, TEXTS, cl.Steer(RESID, _vec(11), coef=torch.tensor([0., 2.])), max_new_tokens=4,
                    greedy=True, return_entropies=True, stop=[5])
    assert repr(g) == "Generation(6 rows x 4 new tokens, 2 coefficients x 3 prompts, path='fast')"
    page = g._repr_html_()
    assert page.count("<tr>") == 7 and "coef" in page and "mean entropy" in page and g.text[0][:5] in page
    df = g.to_frame()
    assert list(df.columns) == ["coef", "prompt", "new tokens", "stopped", "text", "mean entropy"] and len(df) == 6
    assert g.prompt_text[1] == model.tokenizer.decode(cl.prompt_list(model, TEXTS)[1])
    assert "more rows" in g._repr_html_(max_rows=4)


@pytest.mark.parametrize("order", ["steer_first", "patch_first"])
@pytest.mark.parametrize("n_src", [1, 3])
def test_coefficient_batch_with_a_subspace_patch(zoo, order, n_src):
    "A SubspacePatch from prompts beside a swept Steer: each block equals its separate run (source run per coefficient)."
    model, _ = zoo("gpt2")
    src = ["t40 t41 t42", "t43 t44 t45 t46 t47 t48 t49", "t50"][:n_src]
    v = _vec(13)
    def ivs(coef):
        st = cl.Steer("blocks.0.hook_resid_post", v, coef=coef)
        patch = cl.SubspacePatch(RESID, torch.randn(4, D, generator=_gen(12)), src, positions=[-1])
        return [st, patch] if order == "steer_first" else [patch, st]
    coefs = torch.tensor([-3., 0., 3.])
    batched = cl.generate(model, TEXTS, *ivs(coefs), max_new_tokens=6, greedy=True, return_logits=True)
    for c, coef in enumerate(coefs.tolist()):
        one = cl.generate(model, TEXTS, *ivs(coef), max_new_tokens=6, greedy=True, return_logits=True)
        assert torch.equal(batched.tokens[3 * c:3 * c + 3], one.tokens), coef
        torch.testing.assert_close(batched.logits[3 * c:3 * c + 3], one.logits, atol=1e-4, rtol=0)
