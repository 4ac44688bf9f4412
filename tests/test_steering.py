"Fault injection and streaming checks for `collapse_lab.steering` (what a notebook cell should not hold)."
import os, torch, pytest
import collapse_lab as cl
from collapse_lab import steering, storage
from collapse_lab.steering import save_vector, load_vector, east_vector, gather_activations

HOOK = "blocks.1.hook_resid_post"

@pytest.fixture(scope="module")
def model(): return cl.tiny_model(n_layers=2, d_model=32, n_heads=4, d_vocab=20, n_ctx=16)

def test_every_truncation_is_a_clear_error(tmp_path):
    p = save_vector(tmp_path/"v.safetensors", torch.randn(3, 32), {"hook": HOOK, "method": "das"})
    raw = p.read_bytes()
    for n in [0, 4, 8, 20, len(raw)//2, len(raw) - 1]:
        q = tmp_path/f"cut{n}.safetensors"; q.write_bytes(raw[:n])
        with pytest.raises(ValueError, match="truncated or corrupt"): load_vector(q)

def test_flipped_data_byte_fails_checksum(tmp_path):
    p = save_vector(tmp_path/"v.safetensors", torch.randn(32), {"hook": HOOK})
    raw = bytearray(p.read_bytes()); raw[-1] ^= 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"): load_vector(p)

def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    p = save_vector(tmp_path/"v.safetensors", torch.ones(32), {"hook": HOOK})
    def boom(*a, **k): raise OSError("disk full")
    monkeypatch.setattr(storage.os, "replace", boom)   # every collapse_lab file is written by storage.write_atomic
    with pytest.raises(OSError): save_vector(p, torch.zeros(32), {"hook": HOOK})
    monkeypatch.undo()
    torch.testing.assert_close(load_vector(p)[0], torch.ones(32))
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []

def test_mismatched_model_and_hook(tmp_path, model):
    p = save_vector(tmp_path/"v.safetensors", torch.randn(32), {"hook": HOOK})
    small = cl.tiny_model(n_layers=2, d_model=16, n_heads=4, d_vocab=20, n_ctx=16)
    with pytest.raises(ValueError, match="size 32"): load_vector(p, small)
    shallow = cl.tiny_model(n_layers=1, d_model=32, n_heads=4, d_vocab=20, n_ctx=16)
    with pytest.raises(ValueError, match="not a hook"): load_vector(p, shallow)
    with pytest.raises(ValueError, match="was made at hook"): load_vector(p, model, hook="blocks.0.hook_resid_post")
    v, meta = load_vector(p, model, hook=HOOK)
    assert meta["d_model"] == 32 and v.shape == (32,)

def test_not_a_vector_file(tmp_path):
    from safetensors.torch import save_file
    save_file({"w": torch.ones(3)}, str(tmp_path/"w.safetensors"))
    with pytest.raises(ValueError, match="not a collapse_lab vector"): load_vector(tmp_path/"w.safetensors")

def test_streaming_keeps_one_position_per_batch(model, monkeypatch):
    "east_vector runs one forward per batch of <= batch_size prompts and caches only the one hook."
    calls = []
    real = steering.activations
    def spy(m, tokens, hook, *ivs):
        calls.append((len(tokens), hook)); return real(m, tokens, hook, *ivs)
    monkeypatch.setattr(steering, "activations", spy)
    prompts = [torch.randint(0, 20, (n,)) for n in [4] * 25 + [6] * 12]
    sv = east_vector(model, prompts, torch.rand(37), HOOK, batch_size=8, progress=False)
    assert {h for _, h in calls} == {HOOK}
    assert max(b for b, _ in calls) <= 8 and sum(b for b, _ in calls) == 37
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())
    assert sv.vector.shape == (32,)

def test_east_points_toward_uncertain_prompts(model):
    "Prompts with high entropy pull u toward their centred activations: u . (x_hi - x_lo) > 0."
    toks = torch.randint(0, 20, (40, 5))
    X = gather_activations(model, toks, HOOK, progress=False)
    H = torch.zeros(40); H[:10] = 1.0
    u = east_vector(model, toks, H, HOOK, progress=False).vector
    assert (u @ (X[:10].mean(0) - X[10:].mean(0))) > 0
