"""prompts: titles cut with an ellipsis, prompts cut to the model's context by construction (issue 18,
defect 2: a 100,000-character title in a history ran the process out of memory)."""
from __future__ import annotations

import numpy as np
import pytest

from recdemo.config import LimitsConfig
from recdemo.data import Catalog, Dataset
from recdemo.llm import prompts as P
from recdemo.llm.explain import Explainer
from recdemo.llm.profile import ProfileGenerator
from recdemo.llm.rankers import RANKERS, get_ranker
from recdemo.records import Candidate, RerankRequest

from conftest import PopularityRetriever, make_tiny_llm

HUGE = ("Alpha Bravo " * 10_000)[:100_000]  # a 100,000-character title


def test_prompt_title_cuts_long_titles_with_an_ellipsis():
    assert P.prompt_title("Toy Story (1995)") == "Toy Story (1995)"
    cut = P.prompt_title(HUGE)
    assert len(cut) <= LimitsConfig().max_title_chars and cut.endswith(P.ELLIPSIS)
    assert HUGE.startswith(cut[:-1])
    assert P.prompt_title("abcdef", max_chars=6) == "abcdef" and P.prompt_title("abcdefg", max_chars=6) == "abcde…"


def test_fit_to_context_keeps_the_most_newest_items_that_fit():
    items = list(range(10))

    def build(kept):
        return [0] * (5 + 3 * len(kept))  # a 5-token frame, 3 tokens per item

    for limit in range(8, 40):
        kept, built = P.fit_to_context(build, items, limit)
        n = min(10, (limit - 5) // 3)  # the most items a prompt of <= limit tokens can hold
        assert kept == items[-n:] and len(built) <= limit
    with pytest.raises(ValueError, match="does not fit the model's context of 7 tokens"):
        P.fit_to_context(build, items, 7)


def test_context_limit_is_the_smaller_of_model_and_tokenizer(tiny_tokenizer):
    llm = make_tiny_llm(tiny_tokenizer)
    assert P.context_limit(llm) == 1024  # the tiny tokenizer has no limit of its own
    llm.model.config.max_position_embeddings = 300
    assert P.context_limit(llm) == 300
    llm.tokenizer.model_max_length, old = 200, llm.tokenizer.model_max_length
    try:
        assert P.context_limit(llm) == 200
    finally:
        llm.tokenizer.model_max_length = old


def test_explain_prompt_primes_the_item_and_shows_the_strongest_evidence_next_to_the_answer(tiny_tokenizer):
    """The evidence titles start the shown sentence but are not in the prompt's primed answer (they are
    in its fact lines: fewer tokens to prefill); the strongest fact is the last line before the answer."""
    facts = [P.explain_fact(P.DOMAINS["movies"], "Up", ["comedy"], 12),
             P.explain_fact(P.DOMAINS["movies"], "Heat", (), 3)]
    text, start = P.render_explain(tiny_tokenizer, P.DOMAINS["movies"], ["Up", "Heat"], "Cars",
                                   ["Comedy"], facts)
    assert start == 'Like "Up" and "Heat", "Cars"'
    assert text.endswith('\n"Cars"') and 'Like "Up"' not in text
    user_turn = text[text.index('Recommended: "Cars"'):]
    assert user_turn.index(facts[1]) < user_turn.index(facts[0])  # strongest ("Up", 12 users) last
    example = P.EXPLAIN_EXAMPLES["movies"]
    assert example[0] in text and example[1] in text  # the worked example: facts in the same order, its answer


# -- the whole path on the tiny random LLaMA, with a tiny context ---------------------------------

def with_huge_title(dataset, item: int) -> Dataset:
    cat = dataset.catalog
    titles = list(cat.titles)
    titles[item] = HUGE
    catalog = Catalog(ids=list(cat.ids), titles=titles, attributes=list(cat.attributes),
                      attribute_name=cat.attribute_name)
    return Dataset(name=dataset.name, catalog=catalog, users=dataset.users, sequences=dataset.sequences,
                   ratings=dataset.ratings)


class PositionsSeen:
    """The largest position the model was asked to attend to, over every forward call."""

    def __init__(self, llm):
        self.max = 0
        llm.model.model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        pos = kwargs.get("position_ids")
        if pos is None:
            pos = kwargs.get("cache_position")
        if pos is not None and pos.numel():
            self.max = max(self.max, int(pos.max()) + 1)


@pytest.fixture
def small_context(tiny_tokenizer, toy_dataset):
    llm = make_tiny_llm(tiny_tokenizer)
    history = [int(x) for x in toy_dataset.sequences[0]][:12]
    data = with_huge_title(toy_dataset, history[-1])  # the newest item has the huge title
    return llm, data, history, PositionsSeen(llm)


def set_context(llm, n: int) -> int:
    llm.model.config.max_position_embeddings = n
    return n


def tokens(llm, text: str) -> int:
    return len(llm.tokenizer(text)["input_ids"])


@pytest.mark.parametrize("name", sorted(RANKERS))
def test_a_huge_title_in_the_history_still_gets_an_answer_within_the_context(name, small_context, tmp_path):
    llm, data, history, seen = small_context
    retriever = PopularityRetriever(data)
    cands = [(i, s) for i, s in retriever.top_k(history, 6)]
    req = RerankRequest(history=history, profile=None, k=3,
                        candidates=[Candidate(i, s, r) for r, (i, s) in enumerate(cands, 1)])
    ranker = get_ranker(name, llm, data, retriever, fusion_dir=str(tmp_path / "fusion"), fuse=False)
    whole = ranker.prompt(req)  # the default context holds the whole (shortened) history
    assert data.catalog.titles[history[0]] in whole
    context = set_context(llm, tokens(llm, whole) - 1)  # now it cannot: the oldest items must go
    out = ranker.rank(req)
    assert len(out) == 3 and len({o.index for o in out}) == 3
    assert 0 < seen.max <= context
    prompt = ranker.prompt(req)
    assert HUGE[:50] in prompt and HUGE not in prompt and P.ELLIPSIS in prompt  # newest kept, shortened
    assert data.catalog.titles[history[0]] not in prompt  # the oldest went
    assert data.catalog.titles[history[-1]] == HUGE  # the catalog keeps the full title


def test_profile_with_a_huge_title_stays_within_the_context(small_context, tmp_path):
    llm, data, history, seen = small_context
    gen = ProfileGenerator(service(llm, tmp_path), data.catalog, keyword_tokens=8, summary_tokens=8)
    whole = gen.prompt(history)
    assert HUGE not in whole and HUGE[:50] in whole
    context = set_context(llm, tokens(llm, whole))  # the prompt fits, the answer would not: items go
    profile = gen.generate(history)
    assert profile.summary and HUGE[:50] in profile.prompt
    assert data.catalog.titles[history[0]] not in profile.prompt
    assert 0 < seen.max <= context


def test_explanations_with_a_huge_title_stay_within_the_context(small_context, tmp_path):
    llm, data, history, seen = small_context
    word = ("AlphaBravo" * 10_000)  # one 100,000-character word: short_title's word limit does not cut it
    data = with_huge_title(data, history[-1])
    data.catalog.titles[history[-1]] = word
    context = set_context(llm, 300)

    class Embeddings:  # SASRec-like item embeddings, enough for the evidence
        item_embeddings = np.random.default_rng(0).normal(size=(data.n_items, 8)).astype(np.float32)

    explainer = Explainer(service(llm, tmp_path), data, Embeddings(), max_new_tokens=8)
    items = [i for i in range(data.n_items) if i not in history][:3]
    out = explainer.explain(history, items + [history[-1]])
    assert [e.index for e in out] == items + [history[-1]] and all(e.rationale for e in out)
    assert all(word[:1000] not in p for p in explainer.last_prompts)
    assert any(word[:50] in p and P.ELLIPSIS in p for p in explainer.last_prompts)
    assert 0 < seen.max <= context


def service(llm, tmp_path):
    from recdemo.config import LLMConfig
    from recdemo.llm.service import LLMService

    return LLMService(LLMConfig(model="tiny-llama", device="cpu", adapter_dir=str(tmp_path / "adapters"),
                                fusion_dir=str(tmp_path / "fusion")), llm=llm)
