"""Profile (PALR step 1): keyword grounding, robust parsing, heuristic top-up, the LLM generator."""
from __future__ import annotations


import pytest
import torch

from conftest import queue_while_busy, real_data_root

from recdemo.data import Catalog
from recdemo.llm.profile import (
    ProfileGenerator, build_keywords, ground, heuristic_profile, keyword_line_done, parse_profile, split_keywords,
    stem,
)
from recdemo.llm import prompts as P


@pytest.fixture
def movies():
    return Catalog(ids=["1", "2", "3", "4", "5"],
                   titles=["Toy Story (1995)", "Alien (1979)", "Blade Runner (1982)", "Shrek (2001)",
                           "Heat (1995)"],
                   attributes=[("Animation", "Children", "Comedy"), ("Horror", "Sci-Fi"), ("Sci-Fi", "Thriller"),
                               ("Animation", "Comedy"), ("Action", "Crime")],
                   attribute_name="genres")


def test_stem_matches_word_forms():
    assert stem("animated") == stem("Animation") == stem("animations")
    assert stem("comedies") == stem("Comedy") == stem("comedic")
    assert stem("romantic") == stem("Romance")
    assert stem("thrillers") == stem("Thriller") == stem("thrilling")


@pytest.mark.parametrize("keyword, expected", [
    ("sci-fi", [1, 2]), ("Sci-Fi", [1, 2]), ("SCIFI", [1, 2]), ("science fiction", [1, 2]),
    ("animated", [0, 3]), ("cartoons", [0, 3]), ("comedies", [0, 3]), ("kids", [0]),
    ("1990s", [0, 4]), ("'90s", [0, 4]), ("1970s", [1]),
    ("runner", [2]),  # a title word
    ("space", []), ("western", []), ("the", []), ("", []),
])
def test_ground_keyword(movies, keyword, expected):
    assert ground(keyword, movies, [0, 1, 2, 3, 4]) == expected


def test_ground_uses_only_the_history(movies):
    assert ground("animation", movies, [1, 2, 3]) == [3]
    assert ground("animation", movies, [1, 2]) == []


@pytest.mark.parametrize("text, keywords, summary", [
    ("Keywords: action, sci-fi, drama\nSummary: The user likes action. And more. And more.",
     ["action", "sci-fi", "drama"], "The user likes action. And more."),
    ("**Keywords:** *Comedy*, `Romance`; 1990s\n\n**Summary:** Light romantic comedies.",
     ["Comedy", "Romance", "1990s"], "Light romantic comedies."),
    ("Keywords:\n- horror\n- slasher films\n1. thriller\nSummary: Scary stuff.",
     ["horror", "slasher films", "thriller"], "Scary stuff."),
    ("Keywords: action, adventure, adventure, ADVENTURE, comedy", ["action", "adventure", "comedy"], ""),
    ("The user enjoys dark crime dramas with twists.", [], "The user enjoys dark crime dramas with twists."),
    ("Keywords: 1. 1996, 2. 1996", [], ""),
    ("", [], ""),
    ("### Keywords - a, b, c, d, e, f, g, h\nsummary - Short one.", ["a", "b", "c", "d", "e", "f"], "Short one."),
])
def test_parse_profile_handles_rambling_answers(text, keywords, summary):
    assert parse_profile(text) == (keywords, summary)


def test_keyword_line_stops_at_repeat_six_items_or_newline():
    assert not keyword_line_done(" action, adventure, com")
    assert keyword_line_done(" action, adventure, adventure,")
    assert keyword_line_done(" a, b, c, d, e, f,")
    assert keyword_line_done(" action, drama\nSummary")


def test_ungrounded_keywords_are_kept_and_heuristics_added_when_too_few(movies):
    history = [0, 1, 2, 3]
    kws = build_keywords(movies, history, ["space", "sci-fi", "pixar"])
    by_text = {k.text: k for k in kws}
    assert by_text["space"].grounded is False and by_text["space"].support == []
    assert by_text["pixar"].grounded is False
    assert by_text["sci-fi"].grounded and by_text["sci-fi"].support == [1, 2]
    added = [k for k in kws if k.source == "heuristic"]
    assert added and all(k.grounded and k.support for k in added)
    assert sum(k.grounded for k in kws) >= 2
    assert "sci-fi" not in {k.text.lower() for k in added}  # no duplicate of an LLM keyword


def test_enough_grounded_llm_keywords_get_no_heuristics(movies):
    kws = build_keywords(movies, [0, 1, 2, 3], ["sci-fi", "1990s", "dark", "nonsense"])
    assert [k.source for k in kws] == ["llm"] * 4
    assert [k.grounded for k in kws] == [True, True, True, False]


def test_heuristic_profile_most_frequent_attributes(movies):
    p = heuristic_profile(movies, [0, 3, 1, 2])
    texts = [k.text for k in p.keywords]
    assert set(texts[:3]) == {"Animation", "Comedy", "Sci-Fi"}  # each twice
    assert all(k.grounded and set(k.support) <= {0, 1, 2, 3} for k in p.keywords)
    assert "Blade Runner (1982)" in p.summary
    assert heuristic_profile(movies, []).keywords == []


def test_heuristic_profile_without_attributes_uses_title_words():
    cat = Catalog(ids=list("abcd"), titles=["Argan Oil Shampoo 8 oz", "Repair Shampoo", "Hair Mask", "Nail Polish"])
    p = heuristic_profile(cat, [0, 1, 2, 3])
    assert p.keywords[0].text.lower() == "shampoo" and p.keywords[0].support == [0, 1]
    assert all(k.text.lower() not in ("oz", "8") for k in p.keywords)


def test_generator_with_tiny_llm_grounds_and_caches(tiny_service, toy_dataset, monkeypatch):
    cat = toy_dataset.catalog
    gen = ProfileGenerator(tiny_service, cat, keyword_tokens=8, summary_tokens=8)
    history = [int(i) for i in toy_dataset.sequences[0]]
    profile = gen.generate(history)
    assert profile.raw.startswith("Keywords:") and "\nSummary: The user" in profile.raw
    assert cat.titles[history[-1]] in profile.prompt  # the prompt shows the history
    assert sum(k.grounded for k in profile.keywords) >= 2  # random model: heuristics fill in
    for k in profile.keywords:
        assert set(k.support) <= set(history)
        assert k.grounded == bool(k.support)
    assert profile.summary
    calls = []
    monkeypatch.setattr(gen, "_write", lambda llm, prompts: calls.append(prompts) or [""] * len(prompts))
    assert gen.generate(history) is profile  # cached per (history, model, adapter)
    assert calls == []
    gen.generate(history[:-1])
    assert len(calls) == 1


def test_concurrent_profiles_are_written_in_one_batch_each_as_if_alone(tiny_service, toy_dataset):
    histories = [[int(i) for i in toy_dataset.sequences[u]][: 3 + 2 * u] for u in range(4)]  # other lengths
    alone = ProfileGenerator(tiny_service, toy_dataset.catalog, keyword_tokens=8, summary_tokens=8)
    want = [alone.generate(h) for h in histories]
    gen = ProfileGenerator(tiny_service, toy_dataset.catalog, keyword_tokens=8, summary_tokens=8)
    model_calls = []
    inner = tiny_service.decoder.generate
    tiny_service.decoder.generate = lambda *a, **kw: model_calls.append(1) or inner(*a, **kw)
    got = [None] * len(histories)

    def run(i):
        got[i] = gen.generate(histories[i])

    queue_while_busy(tiny_service.lock, gen._writes, [lambda i=i: run(i) for i in range(len(histories))])
    assert len(model_calls) == 2  # keyword lines together, then summaries together (not 2 per user)
    assert [p.raw for p in got] == [p.raw for p in want]  # the same text as written alone
    assert [p.summary for p in got] == [p.summary for p in want]
    assert len({p.raw for p in got}) > 1


@pytest.mark.parametrize("raw", [
    "Keywords: comedy, drama\nSummary: The user enjoys comedy, drama, romance, comedy, drama, action",  # loops
    "Keywords: sci-fi\nSummary: The user likes action-packed science fiction about space.",  # the example's
    "Keywords: comedy\nSummary: The user",  # nothing said
])
def test_bad_summaries_fall_back_to_the_template(tiny_service, toy_dataset, monkeypatch, raw):
    gen = ProfileGenerator(tiny_service, toy_dataset.catalog)
    monkeypatch.setattr(gen, "_write", lambda llm, prompts: [raw] * len(prompts))
    history = [int(i) for i in toy_dataset.sequences[2]]
    profile = gen.generate(history)
    assert profile.summary.startswith("The user mostly watched ")
    assert toy_dataset.catalog.titles[history[-1]] in profile.summary


@pytest.mark.integration
def test_smollm2_profile_is_grounded_in_the_history():
    from recdemo.config import Config
    from recdemo.data import load_dataset
    from recdemo.llm.service import LLMService

    data = load_dataset("movielens-small", root=real_data_root())
    svc = LLMService(Config.from_env().llm)
    gen = ProfileGenerator(svc, data.catalog)
    history = [int(i) for i in data.train_sequences()[200][-20:]]
    profile = gen.generate(history)
    assert profile.raw.startswith("Keywords:")
    grounded = [k for k in profile.keywords if k.grounded]
    assert len(grounded) >= 2
    assert any(k.source == "llm" for k in grounded)  # the LLM itself wrote grounded keywords
    for k in grounded:
        assert k.support and set(k.support) <= set(history)
        assert ground(k.text, data.catalog, history) == k.support
    assert len(profile.summary.split()) >= 3


def test_tone_and_era_keywords_are_grounded_in_the_genres_and_years(movies):
    assert ground("dark", movies, [0, 1, 2, 3, 4]) == [1, 2, 4]  # Horror, Thriller, Crime items
    assert ground("lighthearted", movies, [0, 1, 2, 3, 4]) == [0, 3]
    assert ground("futuristic", movies, [0, 3]) == []
    assert ground("feel-good", movies, [0, 1, 2, 3, 4]) == [0, 3]


def test_genre_only_keywords_get_era_and_tone_added(movies):
    history = [0, 1, 2, 3, 4]
    kws = build_keywords(movies, history, ["sci-fi", "comedy"])
    added = [k for k in kws if k.source == "heuristic"]
    assert {k.text for k in added} & {"dark", "1990s"} and all(k.grounded and len(k.support) >= 2 for k in added)
    for k in added:
        assert k.support == ground(k.text, movies, history)
    # a profile that already says more than the genre names (two grounded keywords) gets nothing added
    assert [k.source for k in build_keywords(movies, history, ["dark", "1990s", "comedy"])] == ["llm"] * 3
    # one that says little more gets topped up to two such keywords, plus one
    assert [k.source for k in build_keywords(movies, history, ["dark", "comedy"])][:2] == ["llm", "llm"]
    assert len(build_keywords(movies, history, ["dark", "comedy"])) > 2


def test_genre_keywords_beyond_three_are_dropped(movies):
    history = [0, 1, 2, 3, 4]
    kws = build_keywords(movies, history, ["sci-fi", "comedy", "animation", "horror", "action"])
    llm = [k.text for k in kws if k.source == "llm"]
    assert llm == ["sci-fi", "comedy", "animation"]
    assert any(k.source == "heuristic" and k.grounded for k in kws)  # era / tone instead


def test_theme_keywords_are_title_words_two_history_items_share():
    from recdemo.llm.profile import theme_keywords

    titles = ["Batman (1989)", "Batman Returns (1992)", "Heat (1995)", "Good Will Hunting (1997)",
              "Good Night (2001)"] + [f"Good Filler {i} (2000)" for i in range(8)]
    cat = Catalog(ids=[str(i) for i in range(len(titles))], titles=titles,
                  attributes=[("Action",)] * len(titles), attribute_name="genres")
    kws = theme_keywords(cat, [0, 1, 2, 3, 4], n=3)
    assert [(k.text, k.support) for k in kws] == [("Batman", [0, 1])]  # "Good" is in too many titles
    assert theme_keywords(cat, [0, 1], exclude={"batman"}) == []


def test_a_theme_is_the_whole_name_two_titles_start_with_never_a_shared_word_alone():
    from recdemo.llm.profile import theme_keywords

    titles = ["Harry Potter and the Deathly Hallows: Part 1 (2010)", "Harry Potter and the Deathly Hallows: Part 2 (2011)",
              "When Harry Met Sally... (1989)", "Lord of the Rings: The Two Towers, The (2002)",
              "Lord of the Rings: The Return of the King, The (2003)", "Monty Python's Life of Brian (1979)",
              "Monty Python and the Holy Grail (1975)", "Hotel Rwanda (2004)", "Grand Budapest Hotel, The (2014)",
              "Alien (1979)", "Aliens (1986)", "Airplane! (1980)", "Airplane II: The Sequel (1982)",
              "Seven (a.k.a. Se7en) (1995)", "Seven Samurai (Shichinin no samurai) (1954)", "Dark Knight, The (2008)",
              "Dark Knight Rises, The (2012)"]
    cat = Catalog(ids=[str(i) for i in range(len(titles))], titles=titles,
                  attributes=[("Comedy",)] * len(titles), attribute_name="genres")

    def theme(history):
        return [(k.text, k.support) for k in theme_keywords(cat, history, n=3)]

    # widened to the name both titles start with, not to "Harry Potter and the Deathly"; Sally's Harry is not in it
    assert theme([0, 1, 2]) == [("Harry Potter", [0, 1])]
    assert theme([3, 4]) == [("Lord of the Rings", [3, 4])]  # "The Lord of the Rings": the article is not in it
    assert theme([5, 6]) == [("Monty Python", [5, 6])]  # written as where it stands whole, not "Python's"
    assert theme([7, 8]) == []  # a word two titles merely share is no theme
    assert theme([9, 10]) == [("Alien", [9, 10])]  # word forms match; the oldest form is shown
    assert theme([11, 12]) == [("Airplane", [11, 12])]  # punctuation is no part of a name
    assert theme([13, 14]) == []  # one word, a whole title in one of them only: a coincidence
    assert theme([15, 16]) == [("Dark Knight", [15, 16])]  # two words, whole in one: a name


def test_the_summary_pass_continues_the_keyword_pass(tiny_service, toy_dataset):
    """Pass 2 (prompt + keyword line) prefills only what pass 1 did not: the prompt's KV comes from the
    decoder's prefix cache, and the summary equals model.generate's on the whole pass-2 prompt."""
    gen = ProfileGenerator(tiny_service, toy_dataset.catalog, keyword_tokens=8, summary_tokens=8)
    history = [int(i) for i in toy_dataset.sequences[0]]
    prompt = gen.prompt(history)
    stats = tiny_service.decoder.stats
    profile = gen.generate(history)
    tok = tiny_service.llm.tokenizer
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert stats.calls == 2 and stats.cached_tokens >= n - 1
    assert stats.prefill_tokens < stats.prompt_tokens - (n - 1)
    line = profile.raw.split("\n")[0][len(P.PROFILE_PREFIX):]
    ids2 = tok(prompt, add_special_tokens=False)["input_ids"] + tok(
        f" {', '.join(split_keywords(line))}\n{P.PROFILE_SUMMARY_PREFIX}", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        t = torch.tensor([ids2])
        out = tiny_service.llm.model.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=8, do_sample=False,
                                              pad_token_id=tok.pad_token_id)
    reference = tok.decode(out[0, len(ids2):], skip_special_tokens=True).split("\n")[0]
    assert profile.raw.endswith(reference[: reference.find(".") + 1] if "." in reference else reference)


def test_a_draft_finished_from_a_shared_call_equals_the_profile_written_alone(tiny_service, toy_dataset):
    """Issue 17: the keyword pass may run in another caller's decoder call (the explanations'); the
    profile is the same, and the summary pass reuses the prompt's KV cached by that call."""
    history = [int(i) for i in toy_dataset.sequences[1]]
    alone = ProfileGenerator(tiny_service, toy_dataset.catalog, keyword_tokens=8, summary_tokens=8).generate(history)
    gen = ProfileGenerator(tiny_service, toy_dataset.catalog, keyword_tokens=8, summary_tokens=8)
    draft = gen.draft(history)
    assert draft.profile is None and draft.prompt == alone.prompt
    others = tiny_service.generation(["Castle", "A user watched these movies, oldest first"], max_new_tokens=5)
    tiny_service.decoder.cache.clear()
    others_text, line = tiny_service.run([others, draft.keywords])
    stats = tiny_service.decoder.stats
    before = stats.prefill_tokens
    profile = gen.finish(draft, line[0])
    assert profile.raw == alone.raw and profile.keywords == alone.keywords and profile.summary == alone.summary
    added = stats.prefill_tokens - before
    assert added < len(draft.ids) // 2  # the summary pass continued the cached prompt
    assert gen.draft(history).profile is profile  # cached like generate's
    assert gen.finish(gen.draft(history), None) is profile


def test_a_draft_without_its_keyword_line_is_written_as_generate_writes_it(tiny_service, toy_dataset):
    history = [int(i) for i in toy_dataset.sequences[2]]
    alone = ProfileGenerator(tiny_service, toy_dataset.catalog, keyword_tokens=8, summary_tokens=8).generate(history)
    gen = ProfileGenerator(tiny_service, toy_dataset.catalog, keyword_tokens=8, summary_tokens=8)
    assert gen.finish(gen.draft(history), None).raw == alone.raw  # the shared call failed: written alone
    assert gen.draft([]).profile.keywords == []
