"""Explanations: evidence from the history, one batched LLM call, sentences verified or replaced."""
from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import real_data_root

from recdemo.llm.claims import ClaimChecker
from recdemo.llm.claims import RationaleChecker, capitalised_spans, short_title
from recdemo.llm.explain import Explainer, trimmed


class EmbRetriever:
    """Just what the Explainer reads from SASRec's Retriever: item embeddings."""

    def __init__(self, n, seed=0):
        self.item_embeddings = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


class ScriptedService:
    """An LLMService stand-in whose generate returns fixed continuations (and counts calls)."""

    def __init__(self, llm, tails):
        self.llm, self.tails, self.calls = llm, tails, []

    def generate(self, prompts, **kwargs):
        self.calls.append((list(prompts), kwargs))
        return [self.tails(p) if callable(self.tails) else self.tails for p in prompts]


def test_short_title():
    assert short_title("Matrix, The (1999)") == "The Matrix"
    assert short_title("Toy Story (1995)") == "Toy Story"
    eleven = "One Two Three Four Five Six Seven Eight Nine Ten Eleven"
    assert short_title(eleven) == "One Two Three Four Five Six Seven Eight"
    assert short_title(eleven.rsplit(" ", 1)[0]) == eleven.rsplit(" ", 1)[0]  # two words more: kept whole
    # a cut never ends on a word that leaves the title hanging, nor on a dash left by a bracket
    assert short_title("Aveeno Moisturizing Bar with Natural Colloidal Oatmeal for Dry Sensitive Skin") == \
        "Aveeno Moisturizing Bar with Natural Colloidal Oatmeal"
    assert short_title("Japanese Premium Oil Blotting Paper - (200 Sheets)") == "Japanese Premium Oil Blotting Paper"
    assert short_title("Pirates of the Caribbean: The Curse of the Black Pearl (2003)") == \
        "Pirates of the Caribbean: The Curse of the Black Pearl"


def test_a_quote_inside_a_title_cannot_end_the_quoted_title():
    from recdemo.data import Catalog
    from recdemo.llm.claims import ClaimChecker

    cat = Catalog(ids=["0", "1"], titles=['CHI Ceramic Hairstyling Iron 1" Black', 'Gel Top Coat "Set of 2"'],
                  attributes=[(), ()], attribute_name="categories")
    assert '"' not in short_title(cat.titles[0]) + short_title(cat.titles[1])

    class Data:
        catalog = cat

    ev = [{"history_index": 0, "title": cat.titles[0], "kind": "co-occurrence", "value": 2, "co_occurrence": 2,
           "shared_attributes": []}]
    sentence = Explainer(None, Data(), None, use_llm=False).template(1, ev)
    assert ClaimChecker.for_item(cat, [0], 1, ev).failures(sentence) == []


def test_short_title_for_products_and_alternative_titles():
    assert short_title("Men in Black (a.k.a. MIB) (1997)") == "Men in Black"
    assert short_title("Herstyler Nourishing and Moisturizing Conditioner,6.4 Ounce (Pack of 2) extra words") == \
        "Herstyler Nourishing and Moisturizing Conditioner"
    assert short_title("Lemongrass + Argan Stem Cell Shampoo - 8 oz bottle for dry hair") == \
        "Lemongrass + Argan Stem Cell Shampoo"


def test_repetitive():
    from recdemo.llm.explain import repetitive

    assert repetitive("is a product that is a product that")
    assert repetitive("luxurious and luxurious with luxurious")
    assert not repetitive("is a warm comedy about family and friendship")


def test_capitalised_spans():
    spans = capitalised_spans("They loved Toy Story and the Lord of the Rings. Because Jaws is great")
    assert ("They", True) in spans and ("Toy Story", False) in spans
    assert ("Lord of the Rings", False) in spans and ("Because Jaws", True) in spans
    assert capitalised_spans("It is fun") == [("It", True)]


def test_checker_allows_only_history_titles_and_attributes():
    chk = RationaleChecker(["Toy Story (1995)", "Matrix, The (1999)", "Shrek (2001)"], ["Animation", "Sci-Fi"])
    assert chk.problems('Like "Toy Story", "Shrek" is a funny Animation film.') == []
    assert chk.problems("Fans of The Matrix will love Shrek, a Sci-Fi twist.") == []
    assert chk.problems("Because Toy Story is fun.") == []
    assert chk.problems('Like "Toy Story", it recalls "Finding Nemo".') == ["Finding Nemo"]
    assert chk.problems("It is a Pixar classic like Jurassic Park.") == ["Pixar", "Jurassic Park"]
    assert chk.problems("A movie with heart.") == []


def test_trimmed_cuts_whole_clauses_last_first():
    out = list(trimmed('Like "A", "B"', "is a warm drama, with a strong cast, and a twist about"))
    assert out == [('Like "A", "B" is a warm drama, with a strong cast.', "is a warm drama, with a strong cast."),
                   ('Like "A", "B" is a warm drama.', "is a warm drama.")]
    assert list(trimmed('"B"', "is fun, and more")) == []  # too little left


def brute_force_cooccurrence(dataset, a, b):
    return sum(1 for s in dataset.train_sequences() if a in set(s.tolist()) and b in set(s.tolist()))


def test_evidence_comes_from_the_history_with_true_counts(tiny_service, toy_dataset):
    ex = Explainer(tiny_service, toy_dataset, EmbRetriever(toy_dataset.n_items), use_llm=False)
    history = [int(i) for i in toy_dataset.sequences[0][:8]]
    item = next(i for i in range(toy_dataset.n_items) if i not in history)
    ev = ex.evidence(history, item)
    assert 1 <= len(ev) <= 3
    assert len({e["history_index"] for e in ev}) == len(ev)
    for e in ev:
        h = e["history_index"]
        assert h in history and e["title"] == toy_dataset.catalog.titles[h]
        assert e["co_occurrence"] == brute_force_cooccurrence(toy_dataset, item, h)
        assert e["kind"] == ("co-occurrence" if e["co_occurrence"] else "similar")
        assert e["value"] == (e["co_occurrence"] if e["co_occurrence"] else e["sasrec_similarity"])
    assert ex.evidence([item], item) == []  # nothing else in the history


def test_faithful_sentences_are_kept_and_others_replaced(tiny_llm, toy_dataset):
    cat = toy_dataset.catalog
    history = [int(i) for i in toy_dataset.sequences[0][:8]]
    items = [i for i in range(toy_dataset.n_items) if i not in history][:4]
    outside = next(i for i in range(toy_dataset.n_items) if i not in history and i not in items)
    bad_title = short_title(cat.titles[outside])
    genre = cat.attributes[items[0]][0].lower()

    def tail(prompt):  # item 0: faithful, 1: names a non-history title, 2: empty, 3: too short
        target = next(i for i in items if f'"{short_title(cat.titles[i])}"' in prompt.split("Like")[-1])
        return {0: f" is a {genre} film. Then more text", 1: f' reminds you of "{bad_title}" too.',
                2: "", 3: " is."}[items.index(target)]

    svc = ScriptedService(tiny_llm, tail)
    out = Explainer(svc, toy_dataset, EmbRetriever(toy_dataset.n_items)).explain(history, items)
    assert len(svc.calls) == 1 and len(svc.calls[0][0]) == 4  # one batched generate call
    assert [e.index for e in out] == items
    assert [e.rationale_source for e in out] == ["llm", "template", "template", "template"]
    assert [e.failed_checks for e in out] == [[], ["title", "unbacked", "empty"], ["empty"], ["cut_off", "empty"]]
    assert out[0].rationale.endswith(f'" is a {genre} film.')  # one sentence
    assert out[0].rationale.startswith('Like "')
    assert bad_title in out[1].llm_rationale and bad_title not in out[1].rationale
    for e in out:
        assert ClaimChecker.for_item(cat, history, e.index, e.evidence).failures(e.rationale) == []
        assert e.evidence and all(x["history_index"] in history for x in e.evidence)


def test_a_bad_last_clause_is_trimmed_and_a_cut_off_sentence_marked(tiny_llm, toy_dataset):
    cat = toy_dataset.catalog
    history = [int(i) for i in toy_dataset.sequences[0][:8]]
    items = [i for i in range(toy_dataset.n_items) if i not in history][:2]
    outside = next(i for i in range(toy_dataset.n_items) if i not in history and i not in items)
    genre = cat.attributes[items[0]][0].lower()
    tails = iter([f' is a {genre} film, much like "{short_title(cat.titles[outside])}".',
                  f" is a {genre} film and a long"])
    svc = ScriptedService(tiny_llm, lambda prompt: next(tails))
    ex = Explainer(svc, toy_dataset, EmbRetriever(toy_dataset.n_items), max_new_tokens=8)
    first, second = ex.explain(history, items)
    assert first.rationale_source == "llm" and first.failed_checks == ["title"] and first.repair
    assert first.rationale.endswith(f'" is a {genre} film.')
    assert second.rationale_source == "template" and "cut_off" in second.failed_checks  # hit the token limit


def test_templates_pass_every_check(tiny_llm, toy_dataset):
    ex = Explainer(ScriptedService(tiny_llm, ""), toy_dataset, EmbRetriever(toy_dataset.n_items))
    for user in range(4):
        history = [int(i) for i in toy_dataset.sequences[user][:8]]
        items = [i for i in range(toy_dataset.n_items) if i not in history]
        for e in ex.explain(history, items, use_llm=False):
            assert ClaimChecker.for_item(toy_dataset.catalog, history, e.index, e.evidence).failures(e.rationale) == []


def test_prompt_gives_the_model_the_evidence(tiny_llm, toy_dataset):
    cat = toy_dataset.catalog
    history = [int(i) for i in toy_dataset.sequences[0][:8]]
    item = next(i for i in range(toy_dataset.n_items) if i not in history)
    ex = Explainer(ScriptedService(tiny_llm, ""), toy_dataset, EmbRetriever(toy_dataset.n_items))
    ev = ex.evidence(history, item)
    text, _ = ex.prompt(item, ev)
    asked = text[text.rindex("Recommended:"):]  # the item's own turn, after the worked example
    for e in ev[:ex.facts]:
        assert f'"{short_title(e["title"])}"' in asked
        if e["co_occurrence"]:
            assert f'{e["co_occurrence"]} user' in asked
        for a in e["shared_attributes"]:
            assert a.lower() in asked
    assert all(f'"{short_title(e["title"])}"' not in asked for e in ev[ex.facts:])  # the weaker ones stay out
    assert all(a in asked for a in cat.attributes[item])


def test_tiny_random_llm_gibberish_is_replaced_and_marked(tiny_service, toy_dataset):
    history = [int(i) for i in toy_dataset.sequences[2]]
    items = [i for i in range(toy_dataset.n_items) if i not in history][:10]
    out = Explainer(tiny_service, toy_dataset, EmbRetriever(toy_dataset.n_items), max_new_tokens=12).explain(
        history, items)
    templates = [e for e in out if e.rationale_source == "template"]
    assert len(templates) >= 8  # random weights write no checkable sentence
    for e in templates:
        assert e.failed_checks and e.rationale != e.llm_rationale
    for e in out:
        assert ClaimChecker.for_item(toy_dataset.catalog, history, e.index, e.evidence).failures(e.rationale) == []


def test_real_tiny_llm_batch_keeps_each_sentence_with_its_item(tiny_service, toy_dataset):
    """One padded batch on the real (tiny) model: each item's sentence is primed with its own evidence
    and title, does not depend on the other items in the batch, and what is shown is that sentence
    or, when it failed a check, the template built from the same evidence."""
    cat = toy_dataset.catalog
    history = [int(i) for i in toy_dataset.sequences[1]]
    items = [i for i in range(toy_dataset.n_items) if i not in history][:10]
    ex = Explainer(tiny_service, toy_dataset, EmbRetriever(toy_dataset.n_items), max_new_tokens=6)
    out = ex.explain(history, items)
    assert [e.index for e in out] == items and len(ex.last_prompts) == 10
    for e, prompt in zip(out, ex.last_prompts):
        primed = prompt.rsplit("\n", 1)[-1]  # the primed start of the model's answer: the item
        assert primed == f'"{short_title(cat.titles[e.index])}"'
        # the sentence shown starts with the evidence (written before the model's part), then the primed item
        lead = "Like " + " and ".join(f'"{short_title(x["title"])}"' for x in e.evidence[:ex.facts]) + ", "
        prefix = lead + primed
        assert e.llm_rationale.startswith(prefix)
        assert e.evidence == ex.evidence(history, e.index)
        if e.rationale_source == "template":
            assert e.rationale == ex.template(e.index, e.evidence) and e.failed_checks
        else:
            assert e.rationale == e.llm_rationale or (e.repair and e.rationale.startswith(prefix))
    # the same items in another order and batch size: the same sentence for each (padding is masked)
    alone = ex.explain(history, items[::-1][:4])
    assert [e.llm_rationale for e in alone] == [e.llm_rationale for e in out[::-1][:4]]


@pytest.fixture(scope="module")
def smollm2_movielens():
    """movielens-small, its item-kNN and the embedded SmolLM2 served as the app serves it: one model
    for the module's integration tests (each copy adds ~1 GB to the test process)."""
    from recdemo.config import Config
    from recdemo.data import load_dataset
    from recdemo.llm.service import LLMService
    from recdemo.retrieval.baselines import ItemKNN

    data = load_dataset("movielens-small", root=real_data_root())
    return data, ItemKNN.for_dataset(data), LLMService(Config.from_env().llm)


@pytest.mark.integration
def test_smollm2_rationales_name_only_history_items(smollm2_movielens):
    data, knn, service = smollm2_movielens
    cat = data.catalog
    history = [int(i) for i in data.train_sequences()[20][-20:]]
    scores = knn.score_all(history)
    scores[history] = -np.inf
    items = [int(i) for i in np.argsort(-scores)[:10]]
    ex = Explainer(service, data, None, knn=knn)
    out = ex.explain(history, items)
    assert [e.index for e in out] == items
    assert sum(e.rationale_source == "llm" for e in out) >= 5  # most sentences survive the check
    for e in out:
        assert all(x["history_index"] in history for x in e.evidence)
        assert e.evidence[0]["kind"] == "co-occurrence"  # item-kNN picked them: they co-occur
        assert ClaimChecker.for_item(cat, history, e.index, e.evidence).failures(e.rationale) == []
        assert e.rationale_source == "template" or not e.failed_checks or e.repair


@pytest.mark.integration
def test_smollm2_writes_the_same_sentences_with_drafts_in_fewer_steps(smollm2_movielens, monkeypatch):
    """Prompt-lookup drafts (on by default) accept many of the tokens SmolLM2 copies from its prompt
    and change no token of any sentence."""
    from recdemo.llm.lookup import Lookup

    data, knn, service = smollm2_movielens
    ex = Explainer(service, data, None, knn=knn)
    tails, steps = {}, {}
    for name, lookup in (("drafts", service.decoder.lookup), ("plain", Lookup())):
        monkeypatch.setattr(service.decoder, "lookup", lookup)
        before = service.decoder.stats.as_dict()
        for user in (7, 21):
            history = [int(i) for i in data.train_sequences()[user][-12:]]
            scores = knn.score_all(history)
            scores[history] = -np.inf
            ex.explain(history, [int(i) for i in np.argsort(-scores)[:8]])
            tails.setdefault(name, []).append(list(ex.last_tails))
        after = service.decoder.stats.as_dict()
        steps[name] = {k: after[k] - before[k] for k in ("decode_steps", "accepted_tokens", "new_tokens")}
    assert tails["drafts"] == tails["plain"]
    assert steps["plain"]["accepted_tokens"] == 0 < steps["drafts"]["accepted_tokens"]
    assert steps["drafts"]["decode_steps"] < steps["plain"]["decode_steps"]


# -- batching users, the shared prompt prefix, sentence ends, repairs --
def user_requests(dataset, n_users=2):
    out = []
    for u in range(n_users):
        history = [int(i) for i in dataset.sequences[u][:8]]
        out.append((history, [i for i in range(dataset.n_items) if i not in history][:3]))
    return out


def test_explain_many_is_one_call_for_every_user_and_matches_explain(tiny_llm, toy_dataset):
    svc = ScriptedService(tiny_llm, " is a warm story with a strong cast.")
    ex = Explainer(svc, toy_dataset, EmbRetriever(toy_dataset.n_items))
    requests = user_requests(toy_dataset)
    many = ex.explain_many(requests)
    assert len(svc.calls) == 1 and len(svc.calls[0][0]) == 6
    assert [[e.index for e in out] for out in many] == [items for _, items in requests]
    one_by_one = [ex.explain(history, items) for history, items in requests]
    assert [[e.rationale for e in out] for out in many] == [[e.rationale for e in out] for out in one_by_one]
    assert ex.explain_many([(requests[0][0], [])]) == [[]]


def test_a_prompt_the_model_answered_before_costs_no_model_time(tiny_llm, toy_dataset):
    """A prompt is the item and its evidence only: a rerun, or another user with the same pair, reads the
    model's sentence from the cache; a prompt two rows of one call share is generated once."""
    svc = ScriptedService(tiny_llm, " is a warm story with a strong cast.")
    ex = Explainer(svc, toy_dataset, EmbRetriever(toy_dataset.n_items), cache_rows=4)
    history, items = user_requests(toy_dataset, 1)[0]
    first = ex.explain(history, items)
    other = history[::-1]  # the same items in another order: the same evidence, another user
    again = ex.explain(other, items)
    assert len(svc.calls) == 1 and ex.cache_hits == 3
    assert [e.rationale for e in again] == [e.rationale for e in first]
    assert ex.last_tails == [svc.tails] * 3 and [e.llm_rationale for e in again] == [e.llm_rationale for e in first]
    ex.forget()
    both = ex.explain_many([(history, items), (other, items)])
    assert len(svc.calls) == 2 and len(svc.calls[1][0]) == 3  # six rows, three prompts
    assert [e.rationale for e in both[1]] == [e.rationale for e in first]
    assert len(ex._tails) == 3
    ex.cache_rows = 2
    ex.explain(*user_requests(toy_dataset, 2)[1])  # another user, other items
    assert len(svc.calls) == 3 and len(ex._tails) == 2  # bounded: the oldest went
    off = Explainer(svc, toy_dataset, EmbRetriever(toy_dataset.n_items))  # no cache unless asked
    off.explain(history, items), off.explain(history, items)
    assert len(svc.calls) == 5


def test_prompts_share_their_prefix_token_for_token(tiny_llm, toy_dataset):
    """Every row of a call (and of every call: other users) starts with the same tokens up to the
    item's "Recommended" line, so a shared-prefix decoder prefills it once."""
    from recdemo.llm import prompts as P

    ex = Explainer(ScriptedService(tiny_llm, ""), toy_dataset, EmbRetriever(toy_dataset.n_items))
    tok = tiny_llm.tokenizer
    prompts = [ex.prompt(i, ex.evidence(history, i))[0] for history, items in user_requests(toy_dataset)
               for i in items]
    counted = [P.EXPLAIN_EXAMPLES["movies"][1] in p for p in prompts]  # else the count-free example
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    shared = {c: tok(P.explain_shared_prefix(tok, ex.domain, c), add_special_tokens=False)["input_ids"]
              for c in (True, False)}
    assert all(len(s) > 20 for s in shared.values()) and shared[True] != shared[False]
    assert all(row[: len(shared[c])] == shared[c] for row, c in zip(ids, counted))
    assert all(p.startswith(P.explain_shared_prefix(tok, ex.domain, c)) for p, c in zip(prompts, counted))
    assert len({tuple(row[len(shared[c]):]) for row, c in zip(ids, counted)}) == len(ids)  # the item part differs
    assert P.EXPLAIN_EXAMPLES["movies"][1] in P.explain_shared_prefix(tok, ex.domain)  # the worked example
    assert P.EXPLAIN_EXAMPLES_UNCOUNTED["movies"][1] in P.explain_shared_prefix(tok, ex.domain, counted=False)


def test_an_item_no_user_had_with_the_history_gets_the_example_without_a_count(tiny_llm):
    """Shown the counted example for evidence without counts, SmolLM2 copied the example's count
    ("12 users bought it too"): such rows get the count-free example; rows with a count keep theirs."""
    from recdemo.data import Catalog
    from recdemo.llm import prompts as P

    titles = ["Argan Oil Repair Shampoo", "Keratin Hair Mask", "Silk Protein Hair Conditioner"]
    cat = Catalog(ids=["a", "b", "c"], titles=titles, attributes=[(), (), ()], attribute_name="categories")

    class Data:
        catalog = cat


    def evidence(counts):
        return [{"history_index": h, "title": titles[h], "kind": "co-occurrence" if n else "similar",
                 "value": n or 0.4, "co_occurrence": n, "shared_attributes": []} for h, n in zip((0, 1), counts)]
    for facts in (1, 2):  # only the fact lines the prompt shows decide (the default shows one)
        ex = Explainer(ScriptedService(tiny_llm, ""), Data(), None, facts=facts)
        for counts in ((0, 0), (0, 3), (5, 0)):
            counted = any(counts[:facts])
            text, prefix = ex.prompt(2, evidence(counts))
            example = P.EXPLAIN_EXAMPLES if counted else P.EXPLAIN_EXAMPLES_UNCOUNTED
            assert example["products"][1] in text
            primed = text.rsplit("\n", 1)[-1]  # the model's answer starts with the item; the lead is shown before it
            assert primed.startswith('"Silk Protein Hair Conditioner"')
            assert prefix.startswith('Like "') and prefix.endswith('", ' + primed)
            assert prefix.count('"Keratin Hair Mask"') == (facts == 2)  # the lead names the titles shown
            asked = text[text.rindex('Recommended: "Silk'):]  # the item's own turn, after the worked example
            assert (" users bought both" in asked) == counted
            assert asked.count('\n- "') == facts
    assert not re.search(r"\d", P.EXPLAIN_EXAMPLES_UNCOUNTED["products"][1])


def test_facts_say_what_the_item_shares_and_who_had_both(tiny_llm, toy_dataset):
    ex = Explainer(ScriptedService(tiny_llm, ""), toy_dataset, EmbRetriever(toy_dataset.n_items))
    history, items = user_requests(toy_dataset, 1)[0]
    ev = ex.evidence(history, items[0])
    for line, e in zip(ex.fact_lines(items[0], ev), ev):
        assert line.startswith(f'- "{short_title(e["title"])}"')
        assert (f"{e['co_occurrence']} user" in line) == bool(e["co_occurrence"])
        assert all(a.lower() in line for a in e["shared_attributes"][:3])


def test_products_share_the_words_both_titles_hold(tiny_llm):
    from recdemo.data import Catalog

    cat = Catalog(ids=["a", "b", "c"], titles=["Argan Oil Repair Shampoo 8 oz", "Argan Oil Hair Mask", "Nail Polish"],
                  attributes=[(), (), ()], attribute_name="categories")

    class Data:
        catalog = cat

    ex = Explainer(ScriptedService(tiny_llm, ""), Data(), None, use_llm=False)
    assert ex.shared(1, {"title": cat.titles[0], "shared_attributes": []}) == ["argan", "oil"]
    assert ex.shared(2, {"title": cat.titles[0], "shared_attributes": []}) == []


def test_a_full_stop_inside_a_quoted_title_does_not_end_the_sentence():
    from recdemo.llm.explain import sentence_end

    text = 'is sci-fi, and 94 fans of "E.T. the Extra-Terrestrial" watched it too. More'
    assert text[: sentence_end(text)].strip().endswith("watched it too.")
    assert sentence_end('is sci-fi, and 94 fans of "E.T. the') is None
    assert sentence_end("is fun. ") == len("is fun. ")


def test_a_count_given_to_the_wrong_title_is_corrected_and_an_article_fixed(tiny_llm, toy_dataset):
    cat = toy_dataset.catalog
    svc = ScriptedService(tiny_llm, "")
    ex = Explainer(svc, toy_dataset, EmbRetriever(toy_dataset.n_items))
    history, items = user_requests(toy_dataset, 1)[0]
    item = next(i for i in items if sum(e["co_occurrence"] > 0 for e in ex.evidence(history, i)) >= 1
                and cat.attributes[i][0][0] in "AEIOU")  # "a Action": the article to fix
    ev = [e for e in ex.evidence(history, item) if e["co_occurrence"]]
    first = short_title(ev[0]["title"])
    wrong = ev[0]["co_occurrence"] + 1000
    genre = cat.attributes[item][0].lower()
    prefix = f'Like "{first}", "{short_title(cat.titles[item])}"'
    out = ex.judge(history, item, ev, prefix, f' is a {genre} story, and {wrong} fans of "{first}" watched it too.')
    assert out.failed_checks == ["number"] and out.rationale_source == "llm"
    assert out.repair == "count corrected from the evidence"
    assert f'{ev[0]["co_occurrence"]} fans of "{first}"' in out.rationale and str(wrong) in out.llm_rationale
    assert f"an {genre} story" in out.rationale


def test_a_products_answer_is_primed_with_the_kind_its_title_names(tiny_llm):
    from recdemo.data import Catalog

    titles = ["Argan Oil Repair Shampoo, 8 oz", "Silk Protein Hair Conditioner"] + \
        [f"Brand{i} {kind}" for i in range(5) for kind in ("Shampoo", "Conditioner")]
    cat = Catalog(ids=[str(i) for i in range(len(titles))], titles=titles, attributes=[()] * len(titles),
                  attribute_name="categories")

    class Data:
        catalog = cat

    ex = Explainer(ScriptedService(tiny_llm, ""), Data(), None)
    ev = [{"history_index": 0, "title": titles[0], "kind": "co-occurrence", "value": 4, "co_occurrence": 4,
           "shared_attributes": []}]
    text, prefix = ex.prompt(1, ev)
    assert prefix == 'Like "Argan Oil Repair Shampoo", "Silk Protein Hair Conditioner" is a conditioner'
    # the model is primed with the item and its kind; the evidence lead is written before its sentence, not by it
    assert text.endswith('\n"Silk Protein Hair Conditioner" is a conditioner')
    assert '"Silk Protein Hair Conditioner" (conditioner)' in text and 'Like "Argan' not in text
    out = ex.judge([0], 1, ev, prefix, ", and 4 users bought both.")
    assert out.rationale_source == "llm" and out.failed_checks == []
    assert out.rationale == prefix + ", and 4 users bought both."


def test_words_nothing_backs_are_dropped_from_what_the_item_is(tiny_llm, toy_dataset):
    """'"X" is a superhero action movie': "superhero" is no genre and in no title, so it goes (the
    article follows the next word); an unbacked noun, or an unbacked clause, sends the row to the template."""
    from recdemo.llm.explain import without_modifiers

    cat = toy_dataset.catalog
    ex = Explainer(ScriptedService(tiny_llm, ""), toy_dataset, EmbRetriever(toy_dataset.n_items))
    history, items = user_requests(toy_dataset, 1)[0]
    item = next(i for i in items if cat.attributes[i][0][0] in "AEIOU")
    genre, target = cat.attributes[item][0].lower(), short_title(cat.titles[item])
    ev = ex.evidence(history, item)
    prefix = f'Like "{short_title(ev[0]["title"])}", "{target}"'
    out = ex.judge(history, item, ev, prefix, f" is a superhero {genre} movie.")
    assert out.failed_checks == ["unbacked"] and out.repair == "unchecked words dropped"
    assert out.rationale == f"{prefix} is an {genre} movie." and out.rationale_source == "llm"
    for tail in (f" is an {genre} epic.", f" is an {genre} movie about an unlikely friendship."):
        out = ex.judge(history, item, ev, prefix, tail)
        assert out.failed_checks == ["unbacked"] and out.rationale_source == "template", tail
    assert without_modifiers('"Up" is an epic comedy.', "Up (2009)", ["epic"]) == '"Up" is a comedy.'
    # a clause that fails another check goes, and the borrowed words of the one kept are dropped
    other = short_title(ev[0]["title"]).split()[0]
    out = ex.judge(history, item, ev, prefix, f" is an {other} {genre} movie, and 999 users watched it too.")
    assert out.failed_checks == ["number", "unbacked"] and out.repair == "trimmed to its last whole clause"
    assert out.rationale == f"{prefix} is an {genre} movie.", out.rationale
    assert without_modifiers('"Up" is an epic comedy.', "Cars (2006)", ["epic"]) == '"Up" is an epic comedy.'
