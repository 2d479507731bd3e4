"""LoRA adapters on one shared base model: load, switch and disable them at run time.

The base model is wrapped in a ``peft.PeftModel`` once, when the first adapter arrives; later
adapters are added with ``load_adapter`` and chosen with ``set_adapter``. peft injects the LoRA
layers into the base model's own modules, so ``llm.model`` (the object every ranker holds) runs
with whatever adapter is active; ``activate(None)`` disables the LoRA layers (bare base model).

An adapter folder (written by ``python -m recdemo finetune``) holds ``adapter_config.json``,
``adapter_model.safetensors`` and ``meta.json``. Only safetensors weights are ever loaded.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

from recdemo.data.dataset import BUILTIN_FOLDERS
from recdemo.llm.models import LLM
from recdemo.errors import ModelNotFound

CONFIG_FILE = "adapter_config.json"
# What a requested adapter may be called: a folder name under the adapter folder, never a path
# (the API and the CLI take names; code registers folders it wrote with ``register``).
ADAPTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "meta.json"

# Names that denote the same base model (the embedded GGUF is SmolLM2-135M-Instruct).
BASE_ALIASES = {
    "smollm2-135m": {"smollm2-135m", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"},
}


def finetune_hint(name: str) -> str:
    """How to make adapter ``name``: shipped adapters are named ``<dataset>`` or ``<dataset>-<ranker>``,
    so a name that starts with a built-in dataset's name gets that dataset; any other, ``NAME``."""
    safe = name if re.fullmatch(r"[A-Za-z0-9_.-]+", name) else "NAME"
    dataset = next((d for d in sorted(BUILTIN_FOLDERS, key=len, reverse=True)
                    if safe == d or safe.startswith(d + "-")), "NAME")
    return (f"create it with `python -m recdemo finetune --dataset {dataset} "
            f"--out checkpoints/adapters/{safe}`, or use --adapter none for the base model")


def check_adapter_name(name: str) -> str:
    """``name`` when it is an adapter name; else one sentence that repeats no path of this machine."""
    if not isinstance(name, str) or not ADAPTER_NAME_RE.match(name) or ".." in name:
        raise ModelNotFound("An adapter is chosen by its name (letters, digits, '-', '_' or '.', as in the "
                            "adapter list), never by a path.")
    return name


def strip_lora_layers(model):
    """``model`` (a PeftModel's base, or a model peft injected layers into) with every LoRA layer
    replaced by the layer it wraps, in place: the bare base model again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    parents = [(m, name, child) for m in model.modules() for name, child in m.named_children()]
    for parent, name, child in parents:
        if isinstance(child, BaseTunerLayer):
            setattr(parent, name, child.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in model.__dict__:
            delattr(model, attr)
    return model


def is_adapter_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def trained_base(folder: Path, meta: dict) -> str | None:
    """The base model an adapter folder was trained on, where it says so reliably: meta.json's
    ``base_model``, else peft's ``base_model_name_or_path`` unless that is a (temp/cache) path."""
    base = meta.get("base_model")
    if not base:
        try:
            base = json.loads((Path(folder) / CONFIG_FILE).read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            base = None
        if base and Path(str(base)).is_absolute():
            base = None  # a temp/cache path written by peft says nothing reliable; shapes are checked on load
    return str(base) if base else None


def read_meta(path: Path) -> dict:
    """``meta.json`` of an adapter folder ({} when absent); a broken file is a clear error."""
    file = Path(path) / META_FILE
    if not file.is_file():
        return {}
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ModelNotFound(f"{file} is not valid JSON ({e}); re-run the fine-tune that wrote it") from e
    if not isinstance(meta, dict):
        raise ModelNotFound(f"{file} must hold a JSON object")
    return meta


def _base_key(name: str) -> str:
    """'/x/cache/models/smollm2-135m/' -> 'smollm2-135m'; hub ids keep their owner."""
    text = str(name).strip().rstrip("/").lower()
    if Path(text).is_absolute() or text.startswith("."):
        text = Path(text).name
    return text


def same_base(a: str, b: str) -> bool:
    ka, kb = _base_key(a), _base_key(b)
    if ka == kb:
        return True
    for names in BASE_ALIASES.values():
        if ka in names and kb in names:
            return True
    return False


class AdapterManager:
    """Adapters under ``adapter_dir`` (or any folder) applied to ``llm.model`` in place.

    Not thread-safe by itself: ``LLMService`` holds its lock around every call.
    """

    def __init__(self, llm: LLM, adapter_dir: str | Path):
        self.llm = llm
        self.adapter_dir = Path(adapter_dir)
        self.peft = None  # the PeftModel, created with the first adapter
        self.loaded: dict[str, str] = {}  # public name -> peft adapter name (versioned on reload)
        self.paths: dict[str, Path] = {}
        self.metas: dict[str, dict] = {}
        self.active: str | None = None
        self._versions = 0

    # -- discovery --
    def available(self) -> list[str]:
        """Adapters anyone can activate: folders under ``adapter_dir`` plus those registered under a
        name a request can give (the app registers each session's own adapters as ``name@session``,
        which no request can name and no listing shows)."""
        names = {n for n in self.loaded if ADAPTER_NAME_RE.match(n)}
        if self.adapter_dir.is_dir():
            names.update(p.name for p in self.adapter_dir.iterdir() if p.is_dir() and is_adapter_dir(p))
        return sorted(names)

    def locate(self, name: str) -> tuple[str, Path]:
        """(name, folder) for a registered adapter or a folder under ``adapter_dir``. Only names:
        a path (absolute, relative, ``..``) is refused before anything on disk is looked at."""
        text = str(name)
        if text in self.paths:
            return text, self.paths[text]
        check_adapter_name(text)
        folder = self.adapter_dir / text
        if folder.is_dir():
            self._check_files(folder, text)
            return text, folder
        have = ", ".join(self.available()) or "none"
        raise ModelNotFound(f"adapter {text!r} not found (there: {have}); " + finetune_hint(text))

    @staticmethod
    def _check_files(folder: Path, name: str) -> None:
        if not (folder / CONFIG_FILE).is_file():
            raise ModelNotFound(f"adapter {name!r} has no {CONFIG_FILE}: it is not a LoRA adapter folder; "
                                + finetune_hint(name))
        if not (folder / WEIGHTS_FILE).is_file():
            found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
            raise ModelNotFound(f"adapter {name!r} has no {WEIGHTS_FILE} (found: {found}); only safetensors "
                                "adapters are loaded. " + finetune_hint(name))

    def check_base(self, folder: Path, meta: dict) -> None:
        """Refuse an adapter trained on another base model (its shapes or meaning would not fit)."""
        base = trained_base(folder, meta)
        if base and not same_base(base, self.llm.name):
            raise ModelNotFound(f"adapter {folder.name!r} was trained on base model {base!r}, but the loaded "
                                f"model is {self.llm.name!r}. Start with --llm {base} or fine-tune a new adapter "
                                f"for this model: {finetune_hint(folder.name)}")

    # -- loading --
    def load(self, name: str, reload: bool = False) -> str:
        """Load an adapter by name (once) without touching the base weights; returns its name."""
        name, folder = self.locate(name)
        if name in self.loaded and not reload:
            return name
        return self._load(name, folder)

    def register(self, folder: str | Path) -> str:
        """Load (or reload) a folder the program itself wrote (a fine-tune's output) under its
        folder's name; requests then use it by that name."""
        folder = Path(folder)
        name = folder.resolve().name
        self._check_files(folder, name)
        return self._load(name, folder)

    def _load(self, name: str, folder: Path) -> str:
        meta = read_meta(folder)
        self.check_base(folder, meta)
        self._versions += 1
        # peft keeps adapters as ModuleDict keys: no dots, and no clash with module attributes
        # (a folder named "half" or "train" would collide), so the key is numbered and prefixed.
        internal = f"a{self._versions}_" + re.sub(r"\W", "_", name)
        try:
            if self.peft is None:
                from peft import PeftModel
                self.peft = PeftModel.from_pretrained(self.llm.model, str(folder), adapter_name=internal,
                                                      is_trainable=False)
            else:
                self.peft.load_adapter(str(folder), adapter_name=internal, is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as e:  # shape mismatch, unknown modules, bad config
            raise ModelNotFound(f"adapter {name!r} does not fit the loaded model "
                                f"{self.llm.name!r} ({str(e).splitlines()[0][:300]}). "
                                + finetune_hint(name)) from e
        self._match_model_dtype(internal)
        old = self.loaded.get(name)
        self.loaded[name], self.paths[name], self.metas[name] = internal, folder, meta
        self._apply(self.active)  # (re)activate first: the old copy may be the active one
        if old is not None and old != internal:
            self.peft.delete_adapter(old)  # the retrained copy replaces the old one
            self._apply(self.active)
        return name

    def unload(self, name: str) -> bool:
        """Free a loaded adapter (a closed session's); the base model and the others stay."""
        internal = self.loaded.pop(name, None)
        self.paths.pop(name, None)
        self.metas.pop(name, None)
        if internal is None:
            return False
        if self.active == name:
            self.activate(None)
        self.peft.delete_adapter(internal)
        self._apply(self.active)
        return True

    def _match_model_dtype(self, internal: str) -> None:
        """peft keeps inference LoRA factors in float32; in a bf16/fp16 model that costs a cast of the
        activations at every linear layer (~10% of a bf16 forward on CPU, measured), so store them
        in the model's dtype."""
        dtype = self.llm.dtype
        for key, param in self.peft.named_parameters():
            if f".{internal}." in key and "lora_" in key and param.dtype != dtype:
                param.data = param.data.to(dtype)

    def meta(self, name: str) -> dict:
        if name not in self.metas:
            self.load(name)
        return self.metas[name]

    # -- a LoRA being trained on the served base (finetune/shared_base.py) --
    def add_training(self, config) -> str:
        """A fresh trainable LoRA (peft ``LoraConfig``) on the served model, under a key no request
        can name; it stays inactive for serving (``active`` never names it). Returns the key."""
        self._versions += 1
        internal = f"t{self._versions}_training"
        config.base_model_name_or_path = self.llm.model.__dict__.get("name_or_path")  # as get_peft_model sets it
        try:
            if self.peft is None:
                from peft import get_peft_model
                self.peft = get_peft_model(self.llm.model, config, adapter_name=internal)
            else:
                self.peft.add_adapter(internal, config)
        except Exception:  # e.g. no such target module: leave no half-injected LoRA on the served model
            if self.peft is None:
                strip_lora_layers(self.llm.model)
            elif internal in self.peft.peft_config:
                self.peft.delete_adapter(internal)
            self._apply(self.active)
            raise
        self._apply(self.active)  # peft made the served adapter trainable while injecting: freeze it again
        return internal

    def training_params(self, internal: str) -> list:
        return [p for n, p in self.peft.named_parameters() if f".{internal}." in n]

    @contextmanager
    def run_training(self, internal: str, train: bool):
        """Within: the LoRA ``internal`` alone is active and trainable, the model in train (or eval)
        mode; after, what was served before. The caller holds the service lock throughout."""
        self.peft.set_adapter(internal)
        self.peft.base_model.enable_adapter_layers()
        self.peft.train(train)
        try:
            yield self.peft
        finally:
            self._apply(self.active)

    def drop_training(self, internal: str) -> None:
        """Remove the LoRA ``internal``; with no served adapter left the model is bare again (no peft)."""
        if self.peft is None or internal not in self.peft.peft_config:
            return
        if self.loaded:
            self.peft.delete_adapter(internal)
        else:
            strip_lora_layers(self.llm.model)
            self.peft = None
        self._apply(self.active)
        self.llm.model.eval()

    # -- switching --
    def activate(self, name: str | None) -> None:
        """Make ``name`` the adapter every forward uses; None runs the bare base model."""
        if name is not None and name not in self.loaded:
            self.load(name)
        self._apply(name)
        self.active = name

    def _apply(self, name: str | None) -> None:
        if self.peft is None:
            return
        if name is None:
            self.peft.base_model.disable_adapter_layers()
        else:
            self.peft.set_adapter(self.loaded[name], inference_mode=True)
            self.peft.base_model.enable_adapter_layers()
        self.llm.model.eval()
