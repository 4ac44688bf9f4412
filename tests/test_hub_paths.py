"""The tutorials' hub-model paths, run end to end on a random-weight checkpoint of the real architecture.

No weights can be downloaded here, so `nbdev_test` runs the tutorials on the models they train themselves and the
hub paths (`MODEL = "gpt2"` in `east.ipynb`, `GPT2 = True` in `subspace_illusion.ipynb`) would otherwise never run.
This file points them, through their environment variables, at a GPT-2-architecture checkpoint with GPT-2 small's
depth and head count (12 layers, 12 heads, so layer 8 and the name movers 9.6, 9.9, 10.0 exist) but d_model 48,
and a byte-level BPE tokenizer trained here on the tutorials' own text with GPT-2's pre-tokenisation and one
`<|endoftext|>` for BOS, EOS and padding, as GPT-2's. So real text goes through tokenisation, BOS, left-padding and
the bridge; the numbers are meaningless, the checks are that every cell runs and the hub cells' sanity asserts.
"""
import os, time
from pathlib import Path
import pytest

TUTORIALS = Path(__file__).parents[1] / "nbs" / "tutorials"
IOI_NAMES = ["Mary", "John", "Alice", "Bob", "Sarah", "Tom", "James", "Dan", "Anna", "Paul", "Laura", "Mark"]
IOI_TEMPLATE = "When{A} and{B} went to the store,{S} gave a drink to"   # the GPT-2 cell's template


def _corpus()->list[str]:
    "The text the tutorials' hub paths tokenise: bandit prompts (TextRendering) and GPT-2 IOI sentences."
    import torch
    from collapse_lab.bandit import TextRendering
    r, g = TextRendering(5), torch.Generator().manual_seed(0)
    a, rw = torch.randint(5, (8, 30), generator=g), torch.randint(2, (8, 30), generator=g).float()
    texts = [r.render_one(a[i, :t].tolist(), rw[i, :t].tolist()) for i in range(8) for t in (0, 5, 30)]
    texts += [IOI_TEMPLATE.format(A=" " + x, B=" " + y, S=" " + y) for x in IOI_NAMES for y in IOI_NAMES if x != y]
    return texts


def gpt2_checkpoint(path, n_layers=12, d_model=48, n_heads=12, n_ctx=1024, vocab_size=400, seed=0)->Path:
    "Write a random-weight GPT2LMHeadModel and a byte-level BPE tokenizer (GPT-2's pre-tokenisation) to `path`."
    import torch, transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)   # GPT-2's regex split, " word" pieces
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    eot = tok.token_to_id("<|endoftext|>")
    cfg = transformers.GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_positions=n_ctx,
                                  vocab_size=tok.get_vocab_size(), bos_token_id=eot, eos_token_id=eot)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = transformers.GPT2LMHeadModel(cfg)
    path = Path(path); path.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(path)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                         pad_token="<|endoftext|>").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return gpt2_checkpoint(tmp_path_factory.mktemp("hub") / "gpt2_tiny")


def test_checkpoint_tokenizer(checkpoint):
    "The tokenizer encodes what the hub paths need as single tokens, and the bridge prepends BOS as for GPT-2."
    import collapse_lab as cl
    from collapse_lab.bandit import TextRendering
    model = cl.load_model(checkpoint, device="cpu")
    assert model.cfg.n_layers == 12 and model.cfg.n_heads == 12 and model.cfg.d_head == 4
    assert len(set(TextRendering(5).action_tokens(model))) == 5
    for n in IOI_NAMES: assert model.to_tokens(" " + n, prepend_bos=False).shape == (1, 1), n
    text = TextRendering(5).render_one([0, 3], [1., 0.])
    toks = model.to_tokens(text)[0]
    assert toks[0] == model.tokenizer.bos_token_id and model.to_string(toks[1:]) == text   # no unknown bytes


def _run_tutorial(name:str, env:dict, monkeypatch, keep=lambda cells: cells)->float:
    "Execute nbs/tutorials/`name` as nbdev_test does (execnb, cwd = its folder), with `env` set; seconds taken."
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    import torch
    # one thread: on a small shared machine two OpenMP threads spinning against other jobs ran these tiny models
    # 10-15x slower (the illusion tutorial sets its thread count from OMP_NUM_THREADS)
    for k, v in {"COLLAPSE_LAB_QUICK": "1", "OMP_NUM_THREADS": "1", **env}.items(): monkeypatch.setenv(k, v)
    monkeypatch.chdir(TUTORIALS)
    nb = read_nb(TUTORIALS / name)
    nb.cells = keep(nb.cells)
    shell, t, threads = CaptureShell(), time.time(), torch.get_num_threads()
    torch.set_num_threads(1)
    try: shell.run_all(nb, exc_stop=True)
    except Exception:
        pytest.fail(f"{name} failed on the hub path:\n{shell.prettytb(fname=name)}")
    finally: torch.set_num_threads(threads)
    return time.time() - t


def test_east_hub_path(checkpoint, monkeypatch):
    "The whole EAST tutorial with MODEL = the checkpoint: TextRendering prompts, left-padded batches, sweeps."
    took = _run_tutorial("east.ipynb", {"COLLAPSE_LAB_EAST_MODEL": str(checkpoint)}, monkeypatch)
    print(f"east.ipynb on the hub path: {took:.0f} s")


def _setup_and_part3(cells):
    "The setup cells (before '## 1.') and part 3 on (from '## 3.'): parts 1 and 2 define nothing part 3 reads."
    starts = lambda c, s: c.cell_type == "markdown" and c.source.lstrip().startswith(s)
    i1 = next(i for i, c in enumerate(cells) if starts(c, "## 1."))
    i3 = next(i for i, c in enumerate(cells) if starts(c, "## 3."))
    return cells[:i1] + cells[i3:]


def test_subspace_illusion_gpt2_path(checkpoint, monkeypatch):
    "Part 3 of the illusion tutorial (DAS + illusion_report at layer 8, name movers 9.6, 9.9, 10.0) on the checkpoint."
    took = _run_tutorial("subspace_illusion.ipynb", {"COLLAPSE_LAB_GPT2_MODEL": str(checkpoint)}, monkeypatch,
                         keep=_setup_and_part3)
    print(f"subspace_illusion.ipynb part 3 on the hub path: {took:.0f} s")
