"""Tiny checkpoints of every Hugging Face family `cl.tiny_hf_checkpoint` writes: each built once per folder,
loaded once per dtype (bridge) and once as the plain HF model. Tests share them through a `FamilyZoo` fixture
or, across modules, through `family_model(arch)`."""
import atexit, hashlib, tempfile
from pathlib import Path

import torch
from torch import nn

import collapse_lab as cl

FAMILIES = list(cl.HF_FAMILIES)
SIZES = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=100, n_ctx=64)
# Families whose bf16/fp16 bridge `load_model` refuses with a ValueError (none under TransformerLens 4.3: OLMo
# and OLMo-2, which failed, run once `load_model` casts their float32 rotary cos/sin).
LOW_PRECISION_REFUSED: set = set()


class FamilyZoo:
    "Checkpoints under `root`, and the models loaded from them, cached."
    def __init__(self, root):
        self.root = Path(root)
        self._paths, self._bridges, self._hf = {}, {}, {}

    def path(self, arch:str)->Path:
        if arch not in self._paths:
            self._paths[arch] = cl.tiny_hf_checkpoint(self.root / arch, arch=arch, **SIZES)
        return self._paths[arch]

    def model(self, arch:str, dtype:str="float32"):
        "The bridge from `cl.load_model` (cached: leave it as you found it)."
        if (arch, dtype) not in self._bridges:
            self._bridges[arch, dtype] = cl.load_model(self.path(arch), device="cpu", dtype=dtype)
        return self._bridges[arch, dtype]

    def hf(self, arch:str)->nn.Module:
        "The plain HF model from `AutoModelForCausalLM.from_pretrained` (float32, cached)."
        if arch not in self._hf:
            import transformers
            self._hf[arch] = transformers.AutoModelForCausalLM.from_pretrained(self.path(arch)).eval()
        return self._hf[arch]


_ZOO = None

def zoo()->FamilyZoo:
    "One zoo per test process, in a temporary folder removed at exit."
    global _ZOO
    if _ZOO is None:
        d = tempfile.TemporaryDirectory(prefix="collapse_lab_families_")
        atexit.register(d.cleanup)
        _ZOO = FamilyZoo(d.name)
    return _ZOO

def family_model(arch:str, dtype:str="float32"):
    "The (cached) bridge for family `arch`, e.g. `family_model('qwen2')`."
    return zoo().model(arch, dtype)


def decoder_layers(hf:nn.Module)->nn.ModuleList:
    "The HF model's list of decoder layers: the first `nn.ModuleList` as long as the model is deep."
    n = hf.config.num_hidden_layers
    for m in hf.modules():
        if isinstance(m, nn.ModuleList) and len(m) == n: return m
    raise AssertionError(f"no ModuleList of length {n} in {type(hf).__name__}")

_TORCH_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")

def torch_hooks(*modules:nn.Module)->int:
    "Number of plain PyTorch hooks on `modules` and everything below them."
    return sum(len(getattr(m, a, {}) or {}) for top in modules for m in top.modules() for a in _TORCH_HOOKS)

def hook_point_hooks(model)->dict:
    """Hook name -> (TransformerLens hooks, PyTorch hooks) for each hook point that carries any. Some adapters keep
    permanent hooks of their own (OPT wires its MLP hook points that way): compare with the count after loading."""
    out = {}
    for n, hp in model.hook_dict.items():
        c = (len(hp.fwd_hooks) + len(hp.bwd_hooks),
             sum(len(getattr(hp, a)) for a in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")))
        if any(c): out[n] = c
    return out

def user_hooks(model)->list:
    "Hook names carrying a hook that is not permanent (one a user or collapse_lab added)."
    return [n for n, hp in model.hook_dict.items() if any(not h.is_permanent for h in hp.fwd_hooks + hp.bwd_hooks)]

def state_hash(model:nn.Module)->str:
    "sha256 over every tensor of the state dict (names, dtypes, shapes and bytes)."
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
