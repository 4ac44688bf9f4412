"""run_grid across backends and under failure: identical results on the local and Ray backends, a worker that
dies mid-grid, a grid process SIGKILLed mid-grid, and a cancelled grid; each must complete on rerun with every
point present exactly once and no finished point run twice."""
import json, os, signal, subprocess, sys, time, warnings
from pathlib import Path

import pytest
import torch, torch.nn.functional as F

import collapse_lab as cl
from collapse_lab.grid import run_grid, load_grid, point_key

os.environ.setdefault("OMP_NUM_THREADS", "1")
TESTS = Path(__file__).parent


def train_point(seed, clamp, steps=20):
    "A clamped-training-like point: tiny attention-only model, repeated sequences, head 0 optionally clamped."
    model = cl.tiny_model(n_layers=1, d_model=16, n_heads=2, d_vocab=16, n_ctx=8, attn_only=True, seed=seed).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    ivs = [cl.Clamp("blocks.0.attn.hook_pattern", cl.previous_token_pattern(8), heads=[0])] if clamp else []
    losses = []
    for _ in range(steps):
        x = torch.randint(0, 16, (8, 4), generator=g)
        tokens = torch.cat([x, x], 1)
        with cl.intervene(model, *ivs): logits = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, 16), tokens[:, 1:].reshape(-1))
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    return {"final_loss": losses[-1], "losses": losses, "threads": torch.get_num_threads()}


def fragile(i, log):
    "Logs each call; point 2 kills its worker process the first time it runs."
    with open(log, "a") as f: f.write(f"{i}\n")
    died = Path(log).with_suffix(".died")
    if i == 2 and not died.exists():
        died.touch()
        os._exit(3)
    time.sleep(0.3)
    return {"square": i * i}


def slow(i, log, stop_at=None):
    "Logs each call and sleeps; the first time point `stop_at` runs, raises KeyboardInterrupt (a cancelled grid)."
    stopped = Path(log).with_suffix(".stopped")
    if i == stop_at and not stopped.exists():
        stopped.touch()
        raise KeyboardInterrupt
    with open(log, "a") as f: f.write(f"{i}\n")
    time.sleep(0.4)
    return {"double": 2 * i}


def calls(log):
    return [int(l) for l in Path(log).read_text().split()] if Path(log).exists() else []


def assert_complete(df, folder, n):
    "Every point present exactly once, all finished, one file each, no temp files left behind."
    assert len(df) == n and df.key.is_unique, df
    assert (df.status == "ok").all(), df.error.dropna().tolist()
    assert sorted(p.name for p in Path(folder).iterdir() if p.name != ".run_grid.lock") == sorted(f"{k}.json" for k in df.key)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_local_and_ray_give_identical_results(tmp_path, ray_cluster):
    grid = {"seed": [0, 1], "clamp": [False, True]}
    local = run_grid(train_point, grid, backend="local", max_parallel=2, results_dir=tmp_path/"local", progress=False)
    on_ray = run_grid(train_point, grid, backend="ray", max_parallel=2, results_dir=tmp_path/"ray", progress=False)
    torch.set_num_threads(1)
    here = [train_point(**p) for p in cl.grid_points(grid)]
    for df in (local, on_ray):
        assert (df.status == "ok").all(), df.error.tolist()
        assert df.final_loss.tolist() == [h["final_loss"] for h in here]     # bit for bit
        assert df.losses.tolist() == [h["losses"] for h in here]
        assert df.threads.tolist() == [1] * 4                                # workers were limited to one thread
    assert len(set(local.final_loss)) == 4                                   # seeds and the clamp both matter
    pids = {json.loads(p.read_text())["pid"] for p in (tmp_path/"local").glob("*.json")}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2                   # ran in at most two worker processes


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_worker_dies_midway_then_rerun_completes(tmp_path, backend, request):
    if backend == "ray": request.getfixturevalue("ray_cluster")
    log, folder = str(tmp_path/"calls.log"), tmp_path/"results"
    grid = {"i": list(range(6)), "log": [log]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = run_grid(fragile, grid, backend=backend, max_parallel=2, results_dir=folder, progress=False)
    assert any("grid points failed" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert len(first) == 6 and first.key.is_unique
    assert first.status[2] == "error" and "died" in first.error[2], first.error[2]
    ok_first = set(first.i[first.status == "ok"])
    assert len(ok_first) >= 4, first            # only the points in flight with the dying worker are lost
    second = run_grid(fragile, grid, backend=backend, max_parallel=2, results_dir=folder, progress=False)
    assert_complete(second, folder, 6)
    assert second.square.tolist() == [i * i for i in range(6)]
    n = calls(log)
    assert all(n.count(i) == 1 for i in ok_first), n   # finished points were not run again
    assert sorted(set(n)) == list(range(6))


_DRIVER = """
import sys; sys.path[:0] = [{repo!r}, {tests!r}]
from collapse_lab.grid import run_grid
from test_grid import slow
run_grid(slow, {{"i": list(range(10)), "log": [{log!r}]}}, backend="local", max_parallel=2,
         results_dir={folder!r}, progress=False)
"""


def test_grid_process_killed_midway_resumes(tmp_path):
    "SIGKILL the process running a local grid after a few points: no worker survives it, and a rerun completes."
    log, folder = str(tmp_path/"calls.log"), tmp_path/"results"
    script = _DRIVER.format(repo=str(TESTS.parent), tests=str(TESTS), log=log, folder=str(folder))
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while len(list(folder.glob("*.json"))) < 3:
            assert proc.poll() is None and time.time() < deadline, "the grid process ended or stalled"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL); proc.wait()
    done = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert 3 <= len(done) < 10
    workers = {r["pid"] for r in done.values()}
    deadline = time.time() + 10                  # workers notice within about a second that the grid is gone
    while any(_running(pid) for pid in workers) and time.time() < deadline: time.sleep(0.2)
    assert not any(_running(pid) for pid in workers), f"orphaned workers {workers}"
    df = run_grid(slow, {"i": list(range(10)), "log": [log]}, backend="serial", results_dir=folder, progress=False)
    assert_complete(df, folder, 10)
    assert df.double.tolist() == [2 * i for i in range(10)]
    n = calls(log)
    assert all(n.count(r["params"]["i"]) == 1 for r in done.values()), n   # finished before the kill: not rerun
    for k, r in done.items(): assert json.loads((folder/f"{k}.json").read_text()) == r


def _running(pid):
    try: state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError): return False
    return state not in ("Z", "X")


def test_cancelled_grid_resumes(tmp_path):
    "A KeyboardInterrupt stops the grid and keeps what finished; the rerun does only the rest."
    log, folder = str(tmp_path/"calls.log"), tmp_path/"results"
    grid = {"i": list(range(5)), "log": [log], "stop_at": [3]}
    with pytest.raises(KeyboardInterrupt):
        run_grid(slow, grid, backend="serial", results_dir=folder, progress=False)
    assert calls(log) == [0, 1, 2] and len(list(folder.glob("*.json"))) == 3
    assert load_grid(folder, grid).status.tolist() == ["ok"] * 3 + ["pending"] * 2
    df = run_grid(slow, grid, backend="serial", results_dir=folder, progress=False)
    assert_complete(df, folder, 5)
    assert calls(log) == [0, 1, 2, 3, 4]


def sleepy(i, log):
    "Logs its pid when it starts; points from 2 on take long enough to be interrupted."
    with open(log, "a") as f: f.write(f"{i} {os.getpid()}\n")
    time.sleep(3 if i >= 2 else 0.1)
    return {"i": i}


@pytest.fixture
def sigint_raises():
    "SIGINT raises KeyboardInterrupt, also where the test runner was started with SIGINT ignored (a background job)."
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_local_grid_interrupted_stops_workers_and_resumes(tmp_path, sigint_raises):
    "Ctrl-C (SIGINT) in the process running a local grid: workers are stopped at once, finished points kept."
    log, folder = tmp_path/"calls.log", tmp_path/"results"
    grid = {"i": list(range(4)), "log": [str(log)]}
    def interrupt():
        while len(log.read_text().splitlines() if log.exists() else []) < 4: time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)
    import threading
    threading.Thread(target=interrupt, daemon=True).start()
    t = time.time()
    with pytest.raises(KeyboardInterrupt):
        run_grid(sleepy, grid, backend="local", max_parallel=2, results_dir=folder, progress=False)
    assert time.time() - t < 30
    started = [l.split() for l in log.read_text().splitlines()]
    deadline = time.time() + 5
    while any(_running(int(pid)) for _, pid in started) and time.time() < deadline: time.sleep(0.1)
    assert not any(_running(int(pid)) for _, pid in started), "workers survived the interrupt"
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(point_key(dict(i=i, log=str(log))) for i in (0, 1))
    df = run_grid(sleepy, grid, backend="serial", results_dir=folder, progress=False)
    assert_complete(df, folder, 4)
    assert [int(i) for i, _ in (l.split() for l in log.read_text().splitlines())].count(0) == 1


def test_gpus_requested_without_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match="0 GPU"):
        run_grid(slow, {"i": [0], "log": [str(tmp_path/"l")]}, gpus_per_task=1, results_dir=tmp_path/"r", progress=False)
    assert not (tmp_path/"r").exists() and not (tmp_path/"l").exists()   # refused before anything ran


# --- nothing lost, nothing silently wrong ---

def nonfinite(i):
    return {"loss": float("nan") if i == 0 else float("inf"), "curve": [1.0, float("-inf")], "i": i}

def test_results_are_strict_json_and_nan_comes_back(tmp_path):
    df = run_grid(nonfinite, {"i": [0, 1]}, max_parallel=2, results_dir=tmp_path, progress=False)
    for f in tmp_path.glob("*.json"):
        json.loads(f.read_text(), parse_constant=lambda c: pytest.fail(f"{f.name} holds {c}: not strict JSON"))
    assert df.status.tolist() == ["ok", "ok"]
    assert df.loss.isna().iloc[0] and df.loss.iloc[1] == float("inf") and df.curve.iloc[0] == [1.0, float("-inf")]

def named_like_columns(status, seconds): return {"x": 1}

@pytest.mark.parametrize("names", [("status",), ("seconds",), ("key",), ("error",)])
def test_parameter_names_colliding_with_columns_refused_before_running(tmp_path, names):
    log = tmp_path / "calls.log"
    def fn(**kw):
        log.write_text("ran"); return {}
    with pytest.raises(ValueError, match="collide with run_grid's own columns"):
        run_grid(fn, {n: [1, 2] for n in names}, backend="serial", results_dir=tmp_path / "r")
    assert not log.exists() and not list((tmp_path / "r").glob("*.json")) if (tmp_path / "r").exists() else True

def nap(t): time.sleep(t); return {"t": t}

@pytest.mark.parametrize("backend", ["serial", "local"])
def test_per_point_timeout(tmp_path, backend):
    t0 = time.time()
    with pytest.warns(UserWarning, match="1 of 2 grid points failed"):
        df = run_grid(nap, {"t": [0.0, 30.0]}, backend=backend, max_parallel=2, results_dir=tmp_path, timeout=1.0,
                      progress=False)
    assert df.status.tolist() == ["ok", "timeout"] and time.time() - t0 < 25
    assert "PointTimeout" in df.error.iloc[1]
    with pytest.raises(ValueError, match="timeout=-1"): run_grid(nap, {"t": [0]}, timeout=-1, results_dir=tmp_path)

SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from collapse_lab.grid import run_grid
import test_grid as T
{body}
"""

def _script(tmp_path, body, name="s.py"):
    p = tmp_path / name
    p.write_text(SCRIPT.format(tests=str(TESTS), body=body))
    return p

def test_missing_main_guard_is_refused_clearly(tmp_path):
    p = _script(tmp_path, f"run_grid(T.nap, {{'t': [0.0, 0.01]}}, results_dir={str(tmp_path / 'r')!r}, progress=False)")
    out = subprocess.run([sys.executable, str(p)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode != 0 and "if __name__ == '__main__':" in out.stderr, out.stderr[-2000:]
    assert "bootstrapping" not in out.stderr and not list((tmp_path / "r").glob("*.json"))
    guarded = _script(tmp_path, "if __name__ == '__main__':\n    print(run_grid(T.nap, {'t': [0.0, 0.01]}, "
                      f"results_dir={str(tmp_path / 'g')!r}, max_parallel=2, progress=False).status.tolist())", "g.py")
    out = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0 and "['ok', 'ok']" in out.stdout, out.stderr[-2000:]
    # a guarded script that runs a notebook's cells with exec (as benchmarks/run_notebooks.py does): not refused
    cell = f"print(run_grid(T.nap, {{'t': [0.0, 0.01]}}, results_dir={str(tmp_path / 'e')!r}, max_parallel=2, progress=False).status.tolist())"
    runner = _script(tmp_path, f"def run_cells():\n    exec(compile({cell!r}, 'notebook.ipynb[cell 0]', 'exec'), "
                     "{'__name__': '__main__', 'run_grid': run_grid, 'T': T})\nif __name__ == '__main__':\n    run_cells()", "e.py")
    out = subprocess.run([sys.executable, str(runner)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0 and "['ok', 'ok']" in out.stdout, out.stderr[-2000:]

def test_second_grid_on_a_folder_in_use_is_refused(tmp_path):
    "Two grids, different functions, one folder, at once: the second is refused, the first's results are its own."
    folder = tmp_path / "shared"
    p = _script(tmp_path, "if __name__ == '__main__':\n    run_grid(T.nap, {'t': [1.5, 1.6]}, backend='serial', "
                f"results_dir={str(folder)!r}, progress=False)")
    child = subprocess.Popen([sys.executable, str(p)], cwd=tmp_path)
    try:
        deadline = time.time() + 60
        while not (folder / ".run_grid.lock").exists() or not (folder / ".run_grid.lock").read_text():
            assert time.time() < deadline and child.poll() is None; time.sleep(0.05)
        with pytest.raises(RuntimeError, match="is in use by a grid still running .*'nap'"):
            run_grid(nonfinite, {"i": [1.5]}, backend="serial", results_dir=folder)
        assert child.wait(60) == 0
    finally:
        if child.poll() is None: child.kill()
    df = load_grid(folder)
    assert sorted(df.t.tolist()) == [1.5, 1.6] and (df.status == "ok").all()

def test_edited_function_is_detected(tmp_path):
    ns = {}
    exec("def f(a): return {'v': a}", ns); f1 = ns["f"]
    exec("def f(a): return {'v': 10 * a}", ns); f2 = ns["f"]
    assert run_grid(f1, {"a": [1, 2]}, backend="serial", results_dir=tmp_path, progress=False).v.tolist() == [1, 2]
    with pytest.raises(ValueError, match="was edited since 2 of the points"):
        run_grid(f2, {"a": [1, 2]}, backend="serial", results_dir=tmp_path, on_change="error")
    with pytest.warns(UserWarning, match="run again"):
        assert run_grid(f2, {"a": [1, 2]}, backend="serial", results_dir=tmp_path, progress=False).v.tolist() == [10, 20]
