"ClampingLab: background training, live updates, clean stop with a checkpoint, errors shown in the widget."
import time

import pytest
import torch

from collapse_lab.core import tiny_model
from collapse_lab.icl import ICLTask
from collapse_lab.training import load_checkpoint
from collapse_lab.clamping_lab import ClampingLab

torch.set_num_threads(1)

def _lab(tmp_path, steps=60, every=10):
    task = ICLTask(n_classes=16, n_labels=8, batch_size=32)
    make = lambda t: tiny_model(n_layers=2, d_model=32, n_heads=4, attn_only=True, d_vocab=t.d_vocab, n_ctx=t.n_ctx)
    return ClampingLab(task, make, steps=steps, every=every, checkpoint_dir=tmp_path / "run")

def _n_hooks(model): return sum(len(hp.fwd_hooks) + len(hp._forward_hooks) for hp in model.hook_dict.values())

def test_start_returns_at_once_and_curves_update_while_training(tmp_path):
    lab = _lab(tmp_path, steps=100_000, every=5)
    blank = lab.curves.value
    t = time.time()
    lab.start_button.click()
    assert time.time() - t < 2.0 and lab.running               # the notebook is not blocked
    seen = set()
    deadline = time.time() + 120
    while time.time() < deadline and len(seen) < 3:           # the readout moves while the thread trains
        seen.add(lab.step_label.value); time.sleep(0.05)
    assert len(seen) >= 3, seen
    while time.time() < deadline and lab.curves.value == blank: time.sleep(0.1)
    assert lab.curves.value != blank and lab.curves.value[:4] == b"\x89PNG"
    lab.stop_button.click()
    assert lab.wait(60)
    assert lab.run.stopped and lab.run.step < 100_000
    assert load_checkpoint(lab.checkpoint_dir)["step"] == lab.run.step      # the last checkpoint is the stop step
    assert f"stopped at step {lab.run.step}" in lab.error.value
    assert _n_hooks(lab.model) == 0
    assert not lab.start_button.disabled and lab.stop_button.disabled

def test_window_and_clamp_reach_training(tmp_path):
    lab = _lab(tmp_path, steps=40)
    lab.hook.value = "blocks.0.attn.hook_pattern"; lab.heads.value = "1, 2"; lab.value.value = "self"
    lab.window.value = (10, 30)
    c = lab.clamp()
    assert c.heads == [1, 2] and c.steps == (10, 30) and torch.equal(c.value, torch.eye(5))
    lab.start(); assert lab.wait(120)
    assert lab.run.step == 40 and lab.run.clamps[0].steps == (10, 30)
    assert {"m_loss", "m_induction_0", "m_prev_token_3"} <= set(lab.run.history.columns)

def test_steps_box_bounds_the_window(tmp_path):
    lab = _lab(tmp_path, steps=100)
    lab.window.value = (20, 90)
    lab.steps.value = 50
    assert lab.window.max == 50 and lab.window.value == (20, 50)

@pytest.mark.parametrize("heads,msg", [("4", "out of range"), ("a", "comma-separated"), ("", "at least one head")])
def test_bad_heads_show_an_error_and_start_nothing(tmp_path, heads, msg):
    lab = _lab(tmp_path)
    lab.heads.value = heads
    lab.start_button.click()
    assert msg in lab.error.value and "&#9888;" in lab.error.value   # the labs' warning sign
    assert lab.thread is None and not lab.running

def test_second_start_while_running_is_refused(tmp_path):
    lab = _lab(tmp_path, steps=100_000)
    lab.start()
    try:
        first = lab.thread
        lab.start()
        assert "in progress" in lab.error.value and lab.thread is first
    finally:
        lab.stop(); assert lab.wait(60)

def test_css_classes_for_browser_tests(tmp_path):
    lab = _lab(tmp_path)
    for w, c in [(lab.widget, "lab"), (lab.start_button, "start"), (lab.stop_button, "stop"), (lab.window, "window"),
                 (lab.curves, "curves"), (lab.step_label, "step"), (lab.error, "error"), (lab.heads, "heads"),
                 (lab.hook, "hook"), (lab.value, "value"), (lab.steps, "steps")]:
        assert f"cl-clamping-{c}" in w._dom_classes
