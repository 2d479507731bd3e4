from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recdemo.llm import prompts as P
from recdemo.llm.fusion_store import FusionStore, weight_key
from recdemo.llm.rankers import RANKER_LABELS, RANKERS, check_ranker, get_ranker
from recdemo.llm.rankers.decoding import ROOT
from recdemo.llm.rankers.genrec import beam_titles
from recdemo.llm.rankers.palr import greedy_titles
from recdemo.llm.token_trie import TokenTrie
from recdemo.records import Candidate, RerankRequest

from conftest import PopularityRetriever, make_tiny_llm, real_data_root


def request_for(dataset, retriever, user: int = 0, n: int = 20, k: int = 5) -> RerankRequest:
    history = [int(x) for x in dataset.sequences[user][:-1]]
    top = retriever.top_k(history, n)
    return RerankRequest(history=history, profile=None, k=k,
                         candidates=[Candidate(i, s, r) for r, (i, s) in enumerate(top, 1)])


def ranker(name, llm, dataset, retriever, tmp_path, **kw):
    kw.setdefault("fusion_dir", str(tmp_path / "fusion"))
    return get_ranker(name, llm, dataset, retriever, **kw)


def store_weight(tmp_path, dataset, llm, name, weight):
    FusionStore(tmp_path / "fusion").save(dataset.name, dataset.content_hash, weight_key(llm.name, None, name), weight)


class FullForwardDecoder:
    """The reference for ``TreeDecoder``: what its packed, cached calls must equal. No KV cache and
    no tree: every node's next-token distribution comes from one plain causal forward of the whole
    model over prompt + the tokens from the root down to that node."""

    def __init__(self, llm, prompt_ids):
        self.model, self.prompt = llm.model, list(prompt_ids)
        self.tokens, self.paths, self.forwards = [], [], 0

    def extend(self, tokens, parents):
        first = len(self.tokens)
        for t, p in zip(tokens, parents):
            self.paths.append(([] if p == ROOT else self.paths[p]) + [int(t)])
            self.tokens.append(int(t))
        return list(range(first, len(self.tokens)))

    def log_softmax_over(self, node, token_ids):
        ids = self.prompt + ([] if node == ROOT else self.paths[node])
        self.forwards += 1
        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0, -1].float()
        return torch.log_softmax(logits[list(token_ids)], dim=-1)


@pytest.mark.parametrize("name", sorted(RANKERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_every_ranker_returns_k_distinct_valid_items(name, seed, tiny_tokenizer, toy_dataset, pop_retriever,
                                                     tmp_path):
    llm = make_tiny_llm(tiny_tokenizer, seed=seed)  # random weights: validity must not depend on quality
    for user, fuse in ((0, False), (3, False), (3, True)):  # the LLM alone, and fused with SASRec
        req = request_for(toy_dataset, pop_retriever, user)
        store_weight(tmp_path, toy_dataset, llm, name, 0.5)
        out = ranker(name, llm, toy_dataset, pop_retriever, tmp_path, fuse=fuse).rank(req)
        items = [o.index for o in out]
        assert len(items) == req.k == len(set(items))
        if name == "genrec":
            assert all(0 <= i < toy_dataset.n_items and i not in req.history for i in items)
            if not fuse:  # generated from the whole catalog, not picked from the candidates
                assert items == [o.index for o in sorted(out, key=lambda o: -o.llm_score)]
        else:
            assert set(items) <= {c.index for c in req.candidates}
            assert all(o.retrieval_rank is not None for o in out)
        assert [o.score for o in out] == sorted((o.score for o in out), reverse=True)


def test_palr_cached_decoding_equals_full_forwards(tiny_llm, toy_dataset, pop_retriever, tmp_path):
    req = request_for(toy_dataset, pop_retriever, user=1, k=6)
    r = ranker("palr", tiny_llm, toy_dataset, pop_retriever, tmp_path, fuse=False)
    out = r.rank(req)
    items = r.candidate_list(req).items
    prompt_ids = r.encode_prompt(r.prompt(req, items))
    trie = TokenTrie(r.answer_tokens(items, P.TITLE_SEPARATOR))
    reference = greedy_titles(FullForwardDecoder(tiny_llm, prompt_ids), trie, req.k)
    assert [o.index for o in out] == [i for i, _ in reference]
    assert np.allclose([r.last_info["logprobs"][i] for i, _ in reference], [lp for _, lp in reference], atol=1e-5)


def test_genrec_cached_beams_equal_full_forwards(tiny_llm, toy_dataset, pop_retriever, tmp_path):
    req = request_for(toy_dataset, pop_retriever, user=2, k=4)
    r = ranker("genrec", tiny_llm, toy_dataset, pop_retriever, tmp_path, fuse=False)
    out = [(o.index, round(o.llm_score, 4)) for o in r.rank(req)]
    trie = TokenTrie(r.answer_tokens([i for i in range(toy_dataset.n_items) if i not in req.history],
                                     r.end_text()))
    prompt_ids = r.encode_prompt(r.prompt(req))
    reference = beam_titles(FullForwardDecoder(tiny_llm, prompt_ids), trie, req.k)
    assert out == [(i, round(lp, 4)) for i, lp in reference]


def _full_logits(llm, ids):
    with torch.no_grad():
        return llm.model(torch.tensor([ids])).logits[0].float()


def test_score_ranker_batched_scores_equal_one_by_one_forward(tiny_llm, toy_dataset, pop_retriever, tmp_path):
    r = ranker("score", tiny_llm, toy_dataset, pop_retriever, tmp_path)
    req = request_for(toy_dataset, pop_retriever, user=4, n=15)
    scored = r.score_list(req)
    prompt_ids = r.prompt_ids(req)
    lines = [P.sequence_answer(toy_dataset.catalog.titles[i]) for i in scored.items]
    answers = [(list(t), i) for t, i in zip(tiny_llm.tokenizer(lines, add_special_tokens=False)["input_ids"],
                                            scored.items)]
    trie = TokenTrie(answers)
    reference = []
    for tokens, item in answers:  # plain causal forward over prompt + this title alone
        logits = _full_logits(tiny_llm, prompt_ids + tokens)
        lp = 0.0
        for j, t in enumerate(tokens):
            allowed = trie.allowed(tokens[:j])
            if len(allowed) > 1:
                row = torch.log_softmax(logits[len(prompt_ids) + j - 1, allowed], dim=-1)
                lp += float(row[allowed.index(t)])
        reference.append(lp)
    assert np.allclose(scored.llm, reference, atol=1e-4)
    assert scored.info["forwards"] == 2  # the prompt, then every candidate in one packed call


def test_tallrec_batched_p_yes_equals_one_by_one_forward(tiny_llm, toy_dataset, pop_retriever, tmp_path):
    r = ranker("tallrec", tiny_llm, toy_dataset, pop_retriever, tmp_path)
    req = request_for(toy_dataset, pop_retriever, user=5, n=12)
    scored = r.score_list(req)
    yes, no = r.answer_ids()
    reference = []
    for item in scored.items:
        logits = _full_logits(tiny_llm, r.encode_prompt(r.prompt(req, item)))[-1, [yes, no]]
        reference.append(float(torch.softmax(logits, dim=-1)[0]))
    assert np.allclose(scored.llm, reference, atol=1e-5)
    assert ((scored.llm > 0) & (scored.llm < 1)).all()


def test_stored_fusion_weight_is_used_and_zero_gives_sasrec_order(tiny_llm, toy_dataset, pop_retriever, tmp_path):
    req = request_for(toy_dataset, pop_retriever, user=0, n=20, k=8)
    FusionStore(tmp_path / "fusion").save(toy_dataset.name, toy_dataset.content_hash,
                                          weight_key(tiny_llm.name, None, "score"), 0.0)
    r = ranker("score", tiny_llm, toy_dataset, pop_retriever, tmp_path)
    out = r.rank(req)
    assert [o.index for o in out] == [c.index for c in req.candidates[:8]]
    assert r.last_info["fusion_weight"] == 0.0 and r.last_info["fusion_source"].endswith("toy.json")
    alone = ranker("score", tiny_llm, toy_dataset, pop_retriever, tmp_path, fuse=False).rank(req)
    llm_order = sorted(alone, key=lambda o: -o.llm_score)
    assert [o.index for o in alone] == [o.index for o in llm_order]


def test_untuned_fusion_keeps_sasrecs_order(tiny_llm, toy_dataset, pop_retriever, tmp_path):
    """No weight stored anywhere: the ranker fuses at 0 (SASRec's order, never worse than SASRec)."""
    req = request_for(toy_dataset, pop_retriever, user=3, n=20, k=8)
    r = ranker("score", tiny_llm, toy_dataset, pop_retriever, tmp_path)
    assert [o.index for o in r.rank(req)] == [c.index for c in req.candidates[:8]]
    assert (r.last_info["fusion_weight"], r.last_info["fusion_source"]) == (0.0, "default")


def test_settings_come_from_the_llm_config(tiny_service, toy_dataset, pop_retriever, tmp_path):
    from recdemo.config import LLMConfig

    from_service = get_ranker("score", tiny_service, toy_dataset, pop_retriever)
    assert from_service.store.dir == Path(tiny_service.cfg.fusion_dir)
    cfg = LLMConfig(fuse=False, max_history=5, fusion_dir=str(tmp_path / "elsewhere"))
    own = get_ranker("palr", tiny_service, toy_dataset, pop_retriever, cfg=cfg)
    assert (own.fuse, own.max_history, own.store.dir) == (False, 5, tmp_path / "elsewhere")
    assert get_ranker("palr", tiny_service, toy_dataset, cfg=cfg, max_history=3).max_history == 3
    with pytest.raises(TypeError):  # an override must be an LLMConfig field
        get_ranker("palr", tiny_service, toy_dataset, fusion_default=0.5)


def test_one_registry_names_labels_and_classes():
    assert list(RANKER_LABELS) == list(RANKERS) == ["palr", "score", "tallrec", "genrec"]
    assert all(RANKERS[name].name == name for name in RANKERS)
    assert check_ranker(" TallRec ") == "tallrec"


def test_prompts_follow_the_palr_layout(tiny_llm, toy_dataset, pop_retriever, tmp_path):
    req = request_for(toy_dataset, pop_retriever, user=0, n=10)
    req.history = list(range(30))  # longer than the 20 the prompt may show
    text = ranker("palr", tiny_llm, toy_dataset, pop_retriever, tmp_path).prompt(req)
    for part in ("### Interaction History Sequence", "### Natural Language User Profile",
                 "### Candidates for Recommendation"):
        assert part in text
    history = text.split("### Interaction History Sequence\n")[1].split("\n\n")[0].splitlines()
    assert len(history) == 20 and toy_dataset.catalog.titles[29] in history[-1]
    shown = [c.index for c in req.candidates if f"- {toy_dataset.catalog.titles[c.index]}\n" in text + "\n"]
    assert len(shown) == len([c for c in req.candidates if c.index not in req.history])


def test_bad_requests_get_clear_errors(tiny_llm, toy_dataset, pop_retriever, tmp_path):
    with pytest.raises(ValueError, match="Unknown ranker 'best': choose one of palr, score, tallrec, genrec"):
        get_ranker("best", tiny_llm, toy_dataset)
    r = ranker("score", tiny_llm, toy_dataset, pop_retriever, tmp_path)
    with pytest.raises(ValueError, match="history is empty"):
        r.rank(RerankRequest(history=[], candidates=[Candidate(1, 1.0, 1)], profile=None))
    with pytest.raises(ValueError, match="no candidates"):
        r.rank(RerankRequest(history=[1], candidates=[], profile=None))


@pytest.mark.integration
def test_real_model_rankers_on_movielens(tmp_path):
    """SmolLM2-135M on movielens-small: each ranker gives 10 valid items for 2 users."""
    from recdemo.config import Config
    from recdemo.data import load_dataset
    from recdemo.llm.models import load_llm

    cfg = Config.from_env()
    dataset = load_dataset("movielens-small", root=real_data_root())
    llm = load_llm(replace(cfg.llm, dtype="bfloat16"))  # ~2.5x faster than float32 on this CPU (bench/llm.py)
    retriever = PopularityRetriever(dataset)  # candidates only; SASRec has its own tests
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads collapse when the cores are shared (bench/llm.py: 6-10x slower)
    try:
        for name in sorted(RANKERS):
            r = ranker(name, llm, dataset, retriever, tmp_path, fuse=False)  # the LLM's own lists
            for user in (0, 1):
                req = request_for(dataset, retriever, user, n=20, k=10)  # 20 candidates: shorter prompts
                items = [o.index for o in r.rank(req)]
                assert len(items) == 10 == len(set(items))
                if name == "genrec":
                    assert not set(items) & set(req.history)
                else:
                    assert set(items) <= {c.index for c in req.candidates}
    finally:
        torch.set_num_threads(threads)


def test_scores_run_through_an_active_lora_adapter(tiny_tokenizer, toy_dataset, pop_retriever, tmp_path):
    """peft injects LoRA layers in place: the packed decoder path must see them (and not when disabled)."""
    from peft import LoraConfig, get_peft_model

    llm = make_tiny_llm(tiny_tokenizer, seed=3)
    req = request_for(toy_dataset, pop_retriever, user=1, n=12)
    r = ranker("score", llm, toy_dataset, pop_retriever, tmp_path, fuse=False)
    base = r.score_list(req).llm
    peft_model = get_peft_model(llm.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))  # random B: changes outputs
    with_lora = r.score_list(req).llm
    assert not np.allclose(base, with_lora, atol=1e-4)
    with peft_model.disable_adapter():
        assert np.allclose(r.score_list(req).llm, base, atol=1e-5)


@pytest.mark.parametrize("name", sorted(RANKERS))
def test_static_decode_backend_ranks_as_eager(name, tiny_llm, toy_dataset, pop_retriever, tmp_path):
    req = request_for(toy_dataset, pop_retriever, user=2, n=20, k=6)
    runs = {}
    for backend in ("auto", "static"):  # auto: eager on CPU
        r = ranker(name, tiny_llm, toy_dataset, pop_retriever, tmp_path, fuse=False, decode_backend=backend)
        runs[backend] = r.score_list(req)
    eager, static = runs["auto"], runs["static"]
    assert static.items == eager.items
    assert np.allclose(static.llm, eager.llm, atol=1e-5)
    assert np.array_equal(np.argsort(-static.llm, kind="stable"), np.argsort(-eager.llm, kind="stable"))
    if name == "score":
        assert (eager.info["backend"], static.info["backend"]) == ("eager", "static")


def test_token_cache_gives_the_tokenizers_ids_once(tiny_tokenizer, tiny_llm, toy_dataset, pop_retriever, tmp_path,
                                                    monkeypatch):
    from transformers import PreTrainedTokenizerFast

    from recdemo.llm.rankers.base import TokenCache

    cache = TokenCache(max_texts=4)
    texts = [" Alpha Bravo Story (1981)\n", "1.", " Alpha Bravo Story (1981)\n", "12."]
    fresh = tiny_tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert cache.encode(tiny_tokenizer, texts) == [tuple(t) for t in fresh]
    assert len(cache) == 3  # one entry per distinct text
    head = "<|im_start|>system\nhello"
    assert cache.encode(tiny_tokenizer, [head], special=True) == [tuple(tiny_tokenizer(head)["input_ids"])]
    cache.encode(tiny_tokenizer, ["a", "b", "c"])
    assert len(cache) == 4  # bounded: least recently used out
    cache.encode(PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend_tokenizer), ["a"])
    assert len(cache) == 1  # another tokenizer's ids never mix with these
    # the score ranker's prompt: the cached pieces give exactly prompts.encode_pieces' ids
    r = ranker("score", tiny_llm, toy_dataset, pop_retriever, tmp_path)
    req = request_for(toy_dataset, pop_retriever, user=4, n=15)
    assert r.prompt_ids(req) == P.encode_pieces(tiny_tokenizer, *r.pieces(req))[0]
    calls = []
    tok_call = type(tiny_tokenizer).__call__
    monkeypatch.setattr(type(tiny_tokenizer), "__call__", lambda self, *a, **k: calls.append(a) or tok_call(self, *a, **k))
    r.score_list(req)
    assert calls == []  # a second call for the same user tokenizes nothing
