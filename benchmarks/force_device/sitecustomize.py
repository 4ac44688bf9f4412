"""Put on PYTHONPATH with COLLAPSE_LAB_FORCE_DEVICE=cuda to build every TransformerBridge on that device, whatever
device the code asks for (`tiny_model(device="cpu")`, `load_model(...)`), in this process and in every Python
subprocess it starts (grid workers). benchmarks/run_notebooks.py uses it so that tutorials and widgets written for
CPU are run with their models on the GPU: "GPU-hosted" verified, not assumed. Not for use outside the benchmarks."""
import os

_DEV = os.environ.get("COLLAPSE_LAB_FORCE_DEVICE")
if _DEV:
    try:
        import inspect
        from transformer_lens.model_bridge import TransformerBridge as _TB

        def _force(name, pos):
            f = inspect.getattr_static(_TB, name).__func__
            def forced(*a, **k):
                if k.get("device_map") is None and k.get("n_devices") is None:
                    if len(a) > pos: a = a[:pos] + (_DEV,) + a[pos + 1:]
                    else: k["device"] = _DEV
                return f(*a, **k)
            forced.__wrapped__ = f
            setattr(_TB, name, staticmethod(forced))

        _force("boot_native", 2)
        _force("boot_transformers", 2)
    except Exception as e:   # never break the interpreter
        print(f"force_device: could not patch TransformerBridge ({e})")
