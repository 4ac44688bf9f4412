"Fault injection for `collapse_lab.training`: kill-and-resume, interrupts, hooks never left behind, atomic checkpoints."
import os, signal, subprocess, sys, textwrap, threading, time
from pathlib import Path

import pytest
import torch

from collapse_lab.core import tiny_model
from collapse_lab.icl import ICLTask, pattern_clamp, icl_measures
from collapse_lab.training import train, resume, load_checkpoint, save_checkpoint, CHECKPOINT
import collapse_lab.training as training

torch.set_num_threads(1)   # the killed child runs with 1 thread too: same reductions, same bits
ROOT = Path(__file__).resolve().parents[1]
STEPS = 120

def _model():
    return tiny_model(n_layers=2, d_model=32, n_heads=4, attn_only=True, d_vocab=ICLTask(n_classes=16, n_labels=8).d_vocab,
                      n_ctx=5, seed=3)

def _task(): return ICLTask(n_classes=16, n_labels=8, batch_size=32, seed=1)
def _clamps(): return [pattern_clamp("previous-token", 5, layer=0, heads=1, steps=(20, 90))]

def _n_hooks(model)->int:
    return sum(len(hp.fwd_hooks) + len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values())

def _same_weights(a, b, atol=0.0):
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        if atol == 0: assert torch.equal(x, y), k
        else: assert torch.allclose(x, y, atol=atol, rtol=0), (k, (x - y).abs().max())

@pytest.fixture(scope="module")
def reference():
    "An uninterrupted run (stochastic, so RNG restore matters: the loss adds dropout-like noise from torch's RNG)."
    return train(_model(), _noisy(_task()), STEPS, clamps=_clamps(), every=10, lr=3e-3, progress=False)

class _noisy:
    "Wrap a task so each step also draws from torch's global RNG (as dropout would): resume must restore it."
    def __init__(self, task): self.task = task
    def __call__(self, step):
        b = self.task(step)
        keep = torch.rand(b.tokens.shape[0]) < 0.9              # drop ~10% of the rows' targets at random
        b.targets[~keep, -1] = b.targets[keep, -1][0] if keep.any() else b.targets[0, -1]
        return b

CHILD = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    import test_training as T
    torch.set_num_threads(1)
    class Slow(T._noisy):
        def __call__(self, step):
            time.sleep(0.02)
            return super().__call__(step)
    T.train(T._model(), Slow(T._task()), T.STEPS, clamps=T._clamps(), every=10, lr=3e-3, checkpoint_dir={ckpt!r}, progress=False)
""")

def test_sigkill_then_resume_matches_uninterrupted(tmp_path, reference):
    ckpt = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(tests=str(ROOT / "tests"), ckpt=str(ckpt))], cwd=ROOT,
                             env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 240
        while time.time() < deadline:          # kill it midway: after a checkpoint at step >= 50 exists
            if (ckpt / CHECKPOINT).exists():
                try:
                    if load_checkpoint(ckpt)["step"] >= 50: break
                except Exception: pass         # only the rename makes a checkpoint visible, but be patient anyway
            assert child.poll() is None, "the child finished or died before it could be killed"
            time.sleep(0.05)
        else: pytest.fail("no checkpoint at step >= 50 within 240 s")
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None: child.kill(); child.wait()
    killed_at = load_checkpoint(ckpt)["step"]
    assert 50 <= killed_at < STEPS, killed_at
    again = resume(ckpt, _model(), _noisy(_task()), clamps=_clamps(), progress=False)
    assert again.step == STEPS
    _same_weights(again.model, reference.model)
    assert again.history.loss.tolist() == reference.history.loss.tolist()

@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupt_at_step_k_keeps_k_steps_and_resumes_exactly(tmp_path, reference, exc):
    data = _noisy(_task())
    def failing(step):
        if step == 57: raise exc("injected")
        return data(step)
    model = _model()
    with pytest.raises(exc):
        train(model, failing, STEPS, clamps=_clamps(), every=10, lr=3e-3, checkpoint_dir=tmp_path, progress=False)
    assert _n_hooks(model) == 0                                # the clamp (on at step 57) is gone
    assert load_checkpoint(tmp_path)["step"] == 57
    assert len(load_checkpoint(tmp_path)["history"]["loss"]) == 57
    again = resume(tmp_path, _model(), _noisy(_task()), clamps=_clamps(), progress=False)
    _same_weights(again.model, reference.model)

def test_no_hooks_left_when_a_tracked_measure_fails():
    model, task = _model(), _task()
    def bad(m): raise ValueError("measure broke")
    with pytest.raises(ValueError, match="measure broke"):
        train(model, task, 30, clamps=_clamps() + [pattern_clamp("uniform", 5, layer=1, heads=0)],
              track={"bad": bad}, every=25, progress=False)
    assert _n_hooks(model) == 0
    assert model.training is False                             # the model's mode is restored (tiny_model returns eval)

def test_clamp_attached_only_inside_its_window():
    model, task = _model(), _task()
    hook = "blocks.0.attn.hook_pattern"
    on = lambda m: float(len(m.hook_dict[hook].fwd_hooks))
    run = train(model, task, 100, clamps=_clamps(), track={"on": on}, every=1, progress=False)
    assert run.history.loc[run.history.on == 1, "step"].tolist() == list(range(20, 90))
    assert _n_hooks(model) == 0

def test_clamp_changes_training_only_inside_window():
    "Two runs differing only in a clamp window that starts at step 60 agree bitwise up to step 60."
    task = _task()
    a = train(_model(), task, 80, progress=False)
    b = train(_model(), task, 80, clamps=[pattern_clamp("self", 5, heads=0, steps=(60, 80))], progress=False)
    assert a.history.loss[:60].tolist() == b.history.loss[:60].tolist()
    assert a.history.loss[61:].tolist() != b.history.loss[61:].tolist()

def test_stop_event_ends_at_step_boundary_and_keeps_checkpoint(tmp_path):
    stop = threading.Event()
    def on_eval(run):
        if run.step >= 30: stop.set()
    run = train(_model(), _task(), 500, every=10, checkpoint_every=1000, checkpoint_dir=tmp_path, stop=stop,
                on_eval=on_eval, progress=False)
    assert run.stopped and run.step == 30             # set in the evaluation after 30 steps, honoured before step 31
    assert load_checkpoint(tmp_path)["step"] == 30    # written on stop although checkpoint_every is 1000

def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    "A full disk half way through a checkpoint: the previous checkpoint is intact and no temporary is left."
    import errno
    model = _model(); opt = torch.optim.Adam(model.parameters())
    save_checkpoint(tmp_path, model, opt, 5)
    real = torch.save
    def full_disk(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(training.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"): save_checkpoint(tmp_path, model, opt, 6)
    monkeypatch.setattr(training.torch, "save", real)
    assert load_checkpoint(tmp_path)["step"] == 5      # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]

def test_full_disk_during_training_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import errno
    real, calls = torch.save, [0]
    def sometimes_full(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == 3: raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)
    monkeypatch.setattr(training.torch, "save", sometimes_full)
    with pytest.raises(OSError, match="No space left"):
        train(_model(), _task(), 50, every=10, checkpoint_dir=tmp_path, progress=False)
    assert load_checkpoint(tmp_path)["step"] == 20 and [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]

def test_checkpoint_bit_flips_are_caught(tmp_path):
    "Flip sampled bits of a checkpoint: loading either raises 'corrupt' or gives back identical content."
    import random as _random
    model = _model(); opt = torch.optim.Adam(model.parameters())
    train(model, _task(), 3, every=3, checkpoint_dir=tmp_path, progress=False)
    f = tmp_path / CHECKPOINT
    raw, good = f.read_bytes(), load_checkpoint(tmp_path)
    want = training._digest(good)
    rng, outcomes = _random.Random(0), {"corrupt": 0, "identical": 0}
    for i in sorted(rng.sample(range(len(raw)), 150)):
        bad = bytearray(raw); bad[i] ^= 1 << rng.randrange(8)
        f.write_bytes(bytes(bad))
        try: ck = load_checkpoint(tmp_path)
        except ValueError as e:
            assert "is corrupt" in str(e) and str(f) in str(e), str(e); outcomes["corrupt"] += 1; continue
        assert training._digest(ck) == want, f"byte {i}: a flipped bit loaded as a different checkpoint"
        outcomes["identical"] += 1
    assert outcomes["corrupt"] > 0
    f.write_bytes(raw)
    with pytest.raises(ValueError, match="is corrupt"):    # resume checks it too
        bad = bytearray(raw); bad[raw.index(b"data/0") + 300] ^= 0x10; f.write_bytes(bytes(bad))
        resume(tmp_path, _model(), _task(), progress=False)

@pytest.mark.parametrize("where", ["before_update", "half_update", "after_update"])
@pytest.mark.parametrize("checkpoint_every", [1, 10])
def test_ctrl_c_inside_optimizer_step_resumes_exactly(tmp_path, reference, where, checkpoint_every):
    "KeyboardInterrupt raised from inside opt.step (before, half way through, after the update) at step 57."
    from torch.optim.optimizer import register_optimizer_step_pre_hook, register_optimizer_step_post_hook
    calls = [0]
    def pre(opt, args, kwargs):
        calls[0] += 1
        if calls[0] != 58: return
        if where == "half_update":
            with torch.no_grad(): opt.param_groups[0]["params"][0].mul_(0.5)
        if where != "after_update": raise KeyboardInterrupt
    def post(opt, args, kwargs):
        if calls[0] == 58 and where == "after_update": raise KeyboardInterrupt
    hs = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    model = _model()
    try:
        with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="inside the optimiser update of step 57"):
            train(model, _noisy(_task()), STEPS, clamps=_clamps(), every=10, lr=3e-3, checkpoint_dir=tmp_path,
                  checkpoint_every=checkpoint_every, progress=False)
    finally:
        for h in hs: h.remove()
    assert _n_hooks(model) == 0
    assert load_checkpoint(tmp_path)["step"] == (57 if checkpoint_every == 1 else 50)
    again = resume(tmp_path, _model(), _noisy(_task()), clamps=_clamps(), progress=False)
    _same_weights(again.model, reference.model)
    assert again.history.loss.tolist() == reference.history.loss.tolist()

def test_checkpoint_loads_with_weights_only(tmp_path):
    train(_model(), _task(), 10, every=5, checkpoint_dir=tmp_path, progress=False)
    ck = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ck["step"] == 10 and set(ck) >= {"model", "optimizer", "rng", "history", "config", "sha256"}

def test_tracked_vectors_become_columns():
    task = _task(); ev = task.batch(0, "eval")
    run = train(_model(), task, 20, track={"m": lambda m: icl_measures(m, ev)}, every=10, progress=False)
    cols = set(run.history.columns)
    assert {"step", "loss", "m_accuracy", "m_induction_0", "m_induction_3", "m_prev_token_3"} <= cols
    assert run.measures.step.tolist() == [9, 19]
    assert run.history.m_accuracy.isna().sum() == 18

def test_bad_input():
    with pytest.raises(ValueError, match="every=0"): train(_model(), _task(), 5, every=0)
    with pytest.raises(ValueError, match="steps"): train(_model(), _task(), 2.5)
