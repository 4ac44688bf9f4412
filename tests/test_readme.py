"""Every python code block of README.md runs as it stands, each on its own (a fresh namespace: no block may lean on
names another block defined), on a CPU, offline.

Blocks whose first line is `# requires: ...` (a GPU, a hub model's weights) are the README's explicit marker for
code that cannot run here: they are not run as written. They run instead on a stand-in, a small random-weight
checkpoint of the hub model's family written by `tiny_hf_checkpoint`, on the CPU in float32 - which checks that
the code is right, not what it shows on the real model.

README.md is rendered from nbs/index.ipynb (`make readme`); tests/test_docs.py checks the rendering is current, and
the first test here checks, cheaply, that the blocks run here are the notebook's."""
import ast, json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "# requires:"
HUB_NAME = "EleutherAI/pythia-410m"     # the hub model the README's marked blocks load (24 blocks)

def blocks(text:str)->list[str]:
    "The python code blocks of a markdown text (```python fences), in order."
    return [m.group(1) for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.S | re.M)]

README = (ROOT/"README.md").read_text(encoding="utf-8")
BLOCKS = blocks(README)
_id = lambda i, b: f"{i}-" + re.sub(r"\W+", "_", next((l for l in b.splitlines() if l.strip() and not l.startswith("#")), "")[:30])
PLAIN = [(i, b) for i, b in enumerate(BLOCKS) if not b.startswith(MARKER)]
MARKED = [(i, b) for i, b in enumerate(BLOCKS) if b.startswith(MARKER)]

def test_readme_blocks_are_the_notebooks():
    "README.md's blocks are nbs/index.ipynb's (code cells and fences in its markdown): `make readme` after editing."
    nb = json.loads((ROOT/"nbs"/"index.ipynb").read_text(encoding="utf-8"))
    src = lambda c: "".join(c["source"])
    nb_blocks = []
    for c in nb["cells"]:
        if c["cell_type"] == "code": nb_blocks.append(src(c).rstrip() + "\n")
        elif c["cell_type"] == "markdown": nb_blocks += blocks(src(c))
    norm = lambda bs: [b.strip() for b in bs]
    assert norm(BLOCKS) == norm(nb_blocks), "README.md is stale: run `make readme`"
    assert len(PLAIN) >= 5 and MARKED, "expected the quick start, EAST and widget blocks, and marked hub blocks"

def _run(code:str):
    "Run `code` like a notebook cell in a fresh namespace; return the value of its last line if that is an expression."
    tree = ast.parse(code)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    ns = {"__name__": "__readme__"}
    exec(compile(tree, "<README block>", "exec"), ns)
    return eval(compile(ast.Expression(last.value), "<README block>", "eval"), ns) if last else None

@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    import matplotlib, torch
    matplotlib.use("agg")
    monkeypatch.setenv("COLLAPSE_LAB_QUICK", "1")
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    import matplotlib.pyplot as plt; plt.close("all")

@pytest.mark.parametrize("i,code", PLAIN, ids=[_id(i, b) for i, b in PLAIN])
def test_block_runs(i, code):
    shown = _run(code)
    if type(shown).__name__ == "PatchingLab":            # the IOI task shows its words, not token ids
        labels = [l for l, _ in shown.pair.options] + [l for l, _ in shown.position.options]
        ids = [l for l in labels if re.fullmatch(r"[\d\s<-]+", l.split(":", 1)[1])]   # "55 4 19 14", not "Luke" or ","
        assert not ids, f"PatchingLab shows token ids instead of words: {ids[:2]}"

@pytest.fixture(scope="module")
def hub_standin(tmp_path_factory):
    """A random-weight GPT-NeoX (Pythia-shaped: 24 blocks) checkpoint folder standing in for the README's hub model,
    with a small BPE tokenizer trained on README.md itself, so the README's prompts are told apart."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from collapse_lab.core import tiny_hf_checkpoint
    V = 400
    path = tiny_hf_checkpoint(tmp_path_factory.mktemp("hub")/"pythia", arch="gpt_neox", n_layers=24, d_model=32,
                              n_heads=4, d_vocab=V, n_ctx=64)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(README.splitlines(), trainers.BpeTrainer(vocab_size=V, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"]))
    assert tok.get_vocab_size() <= V
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
                                         pad_token="<pad>").save_pretrained(path)
    return path

@pytest.mark.parametrize("i,code", MARKED, ids=[_id(i, b) for i, b in MARKED])
def test_marked_block_runs_on_a_standin(i, code, hub_standin):
    assert HUB_NAME in code, f"block {i} is marked but loads no {HUB_NAME!r}: update HUB_NAME and the stand-in"
    code = (code.replace(repr(HUB_NAME).replace("'", '"'), repr(str(hub_standin)))
                .replace('device="cuda"', 'device="cpu"').replace('dtype="bfloat16"', 'dtype="float32"'))
    _run(code)

# What the README says each tutorial's parameter cell offers for a hub model or a GPU: names that must be there.
TUTORIAL_SWITCHES = {"subspace_illusion": ["GPT2", "COLLAPSE_LAB_GPT2_MODEL"], "induction_heads": ["DEVICE", "SEEDS"]}

@pytest.mark.parametrize("name", TUTORIAL_SWITCHES)
def test_tutorial_switches_named_in_the_readme_exist(name):
    nb = json.loads((ROOT/"nbs"/"tutorials"/f"{name}.ipynb").read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    for s in TUTORIAL_SWITCHES[name]:
        assert f"`{s}" in README, f"README.md no longer names {s!r}: update TUTORIAL_SWITCHES"
        assert re.search(rf"\b{s}\b", code), f"README.md names {s!r} in tutorials/{name}.ipynb, which has none"

def test_every_tutorial_is_listed():
    missing = [p.name for p in sorted((ROOT/"nbs"/"tutorials").glob("*.ipynb")) if f"(nbs/tutorials/{p.name})" not in README]
    assert not missing, f"README.md's Tutorials section does not link {missing}: add them in nbs/index.ipynb, `make readme`"

def test_torch_reaches_pip_as_words():
    "The README's CUDA install: `make setup/torch TORCH=\"torch==... --index-url ...\"` hands pip the option, not one quoted word."
    import shutil, subprocess
    if not shutil.which("make"): pytest.skip("no make")
    torch = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
    assert f'TORCH="{torch}"' in README
    for target in ("setup", "torch"):
        r = subprocess.run(["make", "-n", "-B", target, f"TORCH={torch}"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert f"pip install -q {torch}" in r.stdout, f"make {target} does not pass TORCH to pip as words:\n{r.stdout}"
