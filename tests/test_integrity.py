"Fault injection for `collapse_lab.storage` and every writer that uses it: bit flips, full disks, symlinks, old files."
import errno, hashlib, json, os, random, warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import collapse_lab.storage as storage
from collapse_lab.storage import write_atomic, save_tensors, load_tensors, CorruptFileError
from collapse_lab.interventions import Intervention, Steer, SubspacePatch, Clamp, Ablate
from collapse_lab.steering import save_vector, load_vector, SteeringVector
from collapse_lab.patching import save_subspace, load_subspace

torch.manual_seed(0)
V = torch.randn(16)

def _objects():
    "name -> (save(path), load(path) -> comparable)"
    return {
        "vector": (lambda p: save_vector(p, V, {"hook": "blocks.1.hook_resid_post", "method": "east"}),
                   lambda p: load_vector(p)),
        "subspace": (lambda p: save_subspace(p, torch.randn(2, 16), hook="blocks.0.hook_resid_post"),
                     lambda p: load_subspace(p)),
        "steer": (lambda p: Steer("blocks.1.hook_resid_post", V, coef=4.0, positions=[-1]).save(p), Intervention.load),
        "clamp": (lambda p: Clamp("blocks.0.attn.hook_pattern", torch.rand(4, 4), heads=[1], steps=(2, 9)).save(p),
                  Intervention.load),
        "ablate": (lambda p: Ablate("blocks.0.attn.hook_z", how="mean", heads=[0, 2]).save(p), Intervention.load),
    }

def _same(a, b)->bool:
    if isinstance(a, tuple): return all(_same(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    if isinstance(a, torch.Tensor): return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return type(a) is type(b) and a == b

@pytest.mark.parametrize("name", list(_objects()))
def test_bit_flips_give_corrupt_error_or_identical_object(tmp_path, name):
    "Flip one bit of sampled bytes (every byte of the header, a sample of the tensor bytes): never a different object."
    save, load = _objects()[name]
    p = tmp_path / f"{name}.safetensors"; save(p)
    raw = p.read_bytes(); good = load(p)
    n_header = 8 + int.from_bytes(raw[:8], "little")
    rng = random.Random(hash(name) % 1000)
    positions = list(range(n_header)) + rng.sample(range(n_header, len(raw)), min(64, len(raw) - n_header))
    outcomes = {"corrupt": 0, "identical": 0}
    for i in positions:
        bad = bytearray(raw); bad[i] ^= 1 << rng.randrange(8)
        p.write_bytes(bytes(bad))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")          # an "older file, unchecked" warning would be a silent downgrade
                got = load(p)
        except CorruptFileError as e:
            assert str(p) in str(e) and "corrupt" in str(e); outcomes["corrupt"] += 1; continue
        assert _same(got, good), f"byte {i}: a flipped bit loaded as a different {name}: {got!r} vs {good!r}"
        outcomes["identical"] += 1
    assert outcomes["corrupt"] >= len(positions) * 0.9, outcomes

def test_metadata_flip_moving_the_hook_is_caught(tmp_path):
    "A bit flip turning blocks.1 into blocks.0 in a vector's metadata."
    p = tmp_path / "v.safetensors"; SteeringVector(V, "blocks.1.hook_resid_post", {}).save(p)
    raw = bytearray(p.read_bytes()); raw[raw.index(b"blocks.1") + 7] ^= 0x01; p.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="is corrupt"): load_vector(p)

def test_one_reader_for_every_kind(tmp_path):
    for name, (save, _) in _objects().items():
        save(tmp_path / name)
        tensors, meta = load_tensors(tmp_path / name)
        assert meta["kind"] in ("vector", "subspace", "intervention") and tensors or meta["kind"] == "intervention"
    with pytest.raises(ValueError, match="not an intervention"): Intervention.load(tmp_path / "vector")
    with pytest.raises(ValueError, match="not a vector"): load_vector(tmp_path / "steer")

@pytest.mark.parametrize("name", list(_objects()))
def test_full_disk_leaves_old_file_and_no_temporary(tmp_path, monkeypatch, name):
    save, load = _objects()[name]
    p = tmp_path / "x.safetensors"; save(p); before = p.read_bytes()
    real_fdopen = os.fdopen
    class Full:
        def __init__(self, f): self.f = f
        def __enter__(self): return self
        def __exit__(self, *a): self.f.close()
        def write(self, b): self.f.write(b[:10]); raise OSError(errno.ENOSPC, "No space left on device")
        def __getattr__(self, k): return getattr(self.f, k)
    monkeypatch.setattr(storage.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left"): save(p)
    monkeypatch.undo()
    assert p.read_bytes() == before and [q.name for q in tmp_path.iterdir()] == ["x.safetensors"]

def test_interrupt_while_writing_removes_temporary(tmp_path):
    def ctrl_c(f): f.write(b"partial"); raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): write_atomic(tmp_path / "a", ctrl_c)
    assert list(tmp_path.iterdir()) == []

def test_symlink_target_is_written_and_link_kept(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "v.safetensors"; link = tmp_path / "v.safetensors"
    save_vector(target, V, {"hook": "a"}); link.symlink_to(target)
    save_vector(link, 2 * V, {"hook": "b"})
    assert link.is_symlink() and torch.equal(load_vector(target)[0], 2 * V) and load_vector(link)[1]["hook"] == "b"
    assert sorted(q.name for q in (tmp_path / "real").iterdir()) == ["v.safetensors"]

def test_unique_temporaries_for_concurrent_writers(tmp_path):
    "Two writers of one file never share a temporary name (two ClampingLabs on one folder clashed on '.tmp')."
    seen = []
    def inner(f): f.write(b"2"); seen.extend(q.name for q in tmp_path.iterdir())
    def outer(f): f.write(b"1"); write_atomic(tmp_path / "a", inner)   # a second writer while the first is mid-write
    write_atomic(tmp_path / "a", outer)
    assert len([n for n in seen if n.endswith(".tmp")]) == 2
    assert (tmp_path / "a").read_bytes() == b"1" and [q.name for q in tmp_path.iterdir()] == ["a"]

def test_directory_is_reported_as_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"): load_vector(tmp_path)
    with pytest.raises(IsADirectoryError, match="is a directory"): Intervention.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"): load_vector(tmp_path / "nope")

def test_files_of_the_previous_format_still_load(tmp_path):
    v = torch.randn(8)
    save_file({"vector": v}, str(tmp_path / "old.safetensors"),
              metadata={"collapse_lab": json.dumps({"hook": "blocks.0.hook_resid_post"}),
                        "sha256": hashlib.sha256(v.numpy().tobytes()).hexdigest()})
    with pytest.warns(UserWarning, match="older collapse_lab"):
        t, meta = load_vector(tmp_path / "old.safetensors")
    assert torch.equal(t, v) and meta["hook"] == "blocks.0.hook_resid_post"
    save_file({"vector": v}, str(tmp_path / "old_steer.safetensors"),
              metadata={"class": "Steer", "hook": json.dumps("blocks.0.hook_resid_post"), "coef": json.dumps(2.0),
                        "positions": json.dumps(None)})
    with pytest.warns(UserWarning, match="older collapse_lab"):
        assert Intervention.load(tmp_path / "old_steer.safetensors") == Steer("blocks.0.hook_resid_post", v, coef=2.0)

def test_bfloat16_and_scalar_tensors_round_trip(tmp_path):
    t = {"a": torch.randn(3, dtype=torch.bfloat16), "b": torch.tensor(2.5), "c": torch.zeros(0)}
    save_tensors(tmp_path / "x", t, {"kind": "test"})
    got, meta = load_tensors(tmp_path / "x")
    assert all(torch.equal(got[k], t[k]) and got[k].dtype == t[k].dtype for k in t) and meta == {"kind": "test"}

# --- unhelpful errors in the interventions' __post_init__: ValueError naming the value and what is valid ---
H = "blocks.0.hook_resid_post"

@pytest.mark.parametrize("make, says", [
    (lambda: Steer(H, V, coef=[]), "coef is empty"),
    (lambda: Steer(H, V, coef=torch.tensor([])), "coef is empty"),
    (lambda: Steer(H, V, coef="4"), "coef='4' is not valid: give a number"),
    (lambda: Steer(H, V, coef=None), "coef=None is not valid"),
    (lambda: Steer(H, V, coef=torch.tensor([1j])), "coef is complex"),
    (lambda: Steer(H, V, positions=[]), "positions=[] is empty"),
    (lambda: Steer(H, V, positions=[2, 2]), "repeats [2]"),
    (lambda: Steer(H, V, positions=[1.5]), "holds [1.5], which are not integers"),
    (lambda: Steer(H, V, positions=[1.0, 2]), "holds [1.0], which are not integers"),
    (lambda: Steer(H, V, positions="0"), "positions='0' is not valid"),
    (lambda: Steer(H, torch.randn(16, dtype=torch.complex64)), "vector is complex (complex64)"),
    (lambda: Steer(H, torch.zeros(0)), "vector is empty"),
    (lambda: Clamp("blocks.0.attn.hook_pattern", torch.zeros(4), steps=5), "steps=5 is not valid: give a (start, stop) pair"),
    (lambda: Clamp("blocks.0.attn.hook_pattern", torch.zeros(4), steps=(5, 2)), "0 <= start <= stop"),
    (lambda: Clamp("blocks.0.attn.hook_pattern", torch.zeros(4), steps=(0.5, 2)), "steps=(0.5, 2) is not valid"),
    (lambda: Clamp("blocks.0.attn.hook_pattern", torch.zeros(4), heads=[0, 0]), "heads=[0, 0] repeats [0]"),
    (lambda: Clamp("blocks.0.attn.hook_pattern", torch.zeros(4), positions=[]), "positions=[] is empty"),
    (lambda: Clamp("blocks.0.attn.hook_pattern", torch.zeros(4, dtype=torch.complex64)), "value is complex"),
    (lambda: Clamp("blocks.0.attn.hook_pattern", "uniform"), "value='uniform' is not valid"),
    (lambda: Ablate("blocks.0.attn.hook_z", heads=[]), "heads=[] is empty"),
    (lambda: Ablate("blocks.0.attn.hook_z", positions=[0.0]), "not integers"),
    (lambda: Ablate("blocks.0.attn.hook_z", how="avg"), "use 'zero' or 'mean'"),
])
def test_bad_intervention_arguments_raise_clear_value_errors(make, says):
    with pytest.raises(ValueError) as e: make()
    assert says in str(e.value), str(e.value)

def test_valid_arguments_are_normalised_not_refused():
    import numpy as np
    assert Steer(H, V, positions=(1, -1)).positions == [1, -1]
    assert Steer(H, V, positions=np.array([0, 3])).positions == [0, 3]
    assert Steer(H, V, positions=-1).positions == -1
    assert Steer(H, V, coef=[1, 2]).coef.dtype == torch.float32
    assert Clamp("blocks.0.attn.hook_pattern", 0.5, steps=[2, 9], heads=torch.tensor([1])).steps == (2, 9)
    s = Steer(H, V, coef=torch.tensor([1., 2.]), positions=(0,))
    assert s == Steer(H, V, coef=torch.tensor([1., 2.]), positions=[0])

def test_full_disk_reported_by_torch_as_enforce_fail(tmp_path, monkeypatch):
    "torch.save's C++ writer reports ENOSPC as a RuntimeError ('enforce fail'): the message says the disk is full."
    from collections import namedtuple
    def cxx_fail(f): f.write(b"x"); raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")
    St = namedtuple("St", "f_bavail f_frsize")
    monkeypatch.setattr(storage.os, "statvfs", lambda p: St(0, 4096))
    with pytest.raises(OSError, match="No space left"): write_atomic(tmp_path / "ck.pt", cxx_fail)
    assert list(tmp_path.iterdir()) == []
