"""Every prompt the project sends to an LLM: templates as data, plus the few helpers that fill them.

Inference (rankers, profile, explanations) and fine-tuning build their text through the same
functions here, so a fine-tuned adapter sees at inference exactly the format it was trained on.
Templates are rendered with the model's chat template when it has one (SmolLM2, Llama-2/3 chat),
else with a plain "### Instruction / ### Response" frame (base LLaMA).

Prompts fit the model's context by construction: every title (and attribute list) enters a prompt
through ``prompt_title`` (cut to ``LimitsConfig.max_title_chars`` with an ellipsis; the catalog keeps
the full title), and every prompt with a history is built through ``fit_to_context``, which drops the
oldest history items until the prompt plus what the call will add after it fits ``context_limit``.
A 100,000-character title therefore costs at most one title's worth of tokens, never memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from recdemo.config import LimitsConfig

MAX_HISTORY = 20  # PALR: the Interaction History Sequence holds at most 20 items
MAX_TITLE_CHARS = LimitsConfig().max_title_chars
ELLIPSIS = "\u2026"
T = TypeVar("T")


@dataclass(frozen=True)
class Domain:
    item: str  # "movie"
    items: str  # "movies"
    verb: str  # "watch"
    verb_past: str  # "watched"


DOMAINS = {
    "movies": Domain("movie", "movies", "watch", "watched"),
    "products": Domain("product", "products", "buy", "bought"),
}


def domain_for(catalog) -> Domain:
    return DOMAINS["movies"] if catalog.attribute_name == "genres" else DOMAINS["products"]


SYSTEM = ("You are a recommender system. You read what a user {verb_past} and recommend what they "
          "will {verb} next. You answer only in the requested format.")

TEMPLATES: dict[str, str] = {
    # PALR step 1: a short natural-language profile from the history. Rendered after one worked
    # example turn (PROFILE_EXAMPLES): a 135M model copies a format it has seen far more reliably
    # than it follows a described one. The answer is primed with PROFILE_PREFIX.
    "profile": (
        "A user {verb_past} these {items}, oldest first:\n{history}\n\n"
        "Describe this user's taste in keywords and one sentence."
    ),
    # PALR step 3 (and fine-tuning task "recommend_retrieval", PALR v2): choose from candidates.
    "palr_rank": (
        "### Interaction History Sequence\n{history}\n\n"
        "### Natural Language User Profile\n{profile}\n\n"
        "### Candidates for Recommendation\n{candidates}\n\n"
        "### Instruction\nFrom the candidates only, choose the {k} {items} this user is most likely to "
        "{verb} next, best first, one title per line."
    ),
    # Fine-tuning task "recommend" (PALR v1): history -> future items, no candidates.
    "palr_recommend": (
        "### Interaction History Sequence\n{history}\n\n"
        "### Natural Language User Profile\n{profile}\n\n"
        "### Instruction\nName the {k} {items} this user will {verb} next, one title per line."
    ),
    # The ``score`` ranker and fine-tuning task ``sequence``: the history as an open numbered list
    # that the model continues with the next item's line (see sequence_pieces). Every line of a
    # training window is a target, as every position is in SASRec's training: ~20 targets for the
    # price of one prompt.
    "sequence": "A user {verb_past} these {items}, oldest first:\n",
    # GenRec: the next item's title generated directly from the history.
    "genrec": (
        "A user {verb_past} these {items}, oldest first:\n{history}\n\n"
        "What is the next {item} the user will {verb}? Answer with its title only."
    ),
    # TALLRec: binary preference question, score = P("Yes").
    "tallrec": (
        "A user {verb_past} these {items}, oldest first:\n{history}\n\n"
        "Will the user enjoy the {item} \"{target}\"? Answer Yes or No."
    ),
    # Explanation: the facts about one recommended item (its genres; per evidence item, the genres they
    # share and the users who had both), all from the data. Rendered after one worked example turn
    # (EXPLAIN_EXAMPLES) and answered from a primed start (EXPLAIN_PREFIX), so the model only writes
    # the connecting clause. Everything before "Recommended" is constant: the rows of one call, and
    # every call, share that token prefix. Every claim the model adds is checked (llm/claims.py).
    "explain": "Recommended: \"{target}\"{attributes}\n{facts}",
}

# Worked example shown before the real profile question (one user turn + the answer), per domain.
# Invented items, so nothing from a real catalog leaks in; a copied keyword ("space") that the
# real history does not back is caught by the grounding step in profile.py.
PROFILE_EXAMPLES = {
    "movies": ("1. Star Pilots (1986) (Action, Sci-Fi)\n2. Moon Base (1979) (Sci-Fi, Thriller)\n"
               "3. Robot Wars (1991) (Action, Adventure, Sci-Fi)",
               "Keywords: sci-fi, space, action, 1980s\n"
               "Summary: The user likes action-packed science fiction about space."),
    "products": ("1. Argan Oil Repair Shampoo\n2. Silk Protein Hair Conditioner\n3. Keratin Hair Mask",
                 "Keywords: hair care, shampoo, conditioner, repair\n"
                 "Summary: The user buys products that repair and care for their hair."),
}
PROFILE_PREFIX = "Keywords:"  # the answer starts here (the model continues the keyword line)
PROFILE_SUMMARY_PREFIX = "Summary: The user"  # appended after the cleaned keyword line


def render_profile(tokenizer, domain: Domain, history: str) -> str:
    """The profile prompt: system, one worked example turn, the real history, then PROFILE_PREFIX."""
    example_history, example_answer = PROFILE_EXAMPLES[domain.items if domain.items in PROFILE_EXAMPLES
                                                       else "products"]
    system = SYSTEM.format(verb=domain.verb, verb_past=domain.verb_past)
    if not getattr(tokenizer, "chat_template", None):  # base LLaMA: the same turns in render()'s frame
        return (f"{system}\n\n### Instruction:\n{fill('profile', domain, history=example_history)}\n\n"
                f"### Response:\n{example_answer}\n\n### Instruction:\n{fill('profile', domain, history=history)}"
                f"\n\n### Response:\n{PROFILE_PREFIX}")
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": fill("profile", domain, history=example_history)},
                {"role": "assistant", "content": example_answer},
                {"role": "user", "content": fill("profile", domain, history=history)}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + PROFILE_PREFIX


EXPLAIN_SYSTEM = "In one sentence, say what the recommended {item} is and what links it to the user's {items}."
EXPLAIN_PREFIX = "\"{target}\""  # the model's answer starts here; it finishes the sentence
# The shown sentence starts with the evidence, written before the model's part, not by it: the prompt's fact
# lines name these titles already, and leaving them out of the primed answer cuts the tokens an explanation
# call prefills by 16% (movielens) and 25% (amazon-beauty): prefill is most of a request's model time on a CPU.
EXPLAIN_LEAD = "Like {evidence}, "
# Worked example per domain (invented items, user turn facts + the answer). Its answer names the
# item's kind from its genres or its title, then one connecting fact (the users who had both).
# An item whose evidence has no count (no user had both: content similarity only) gets the
# count-free example (EXPLAIN_EXAMPLES_UNCOUNTED), whose connecting fact is what it shares with a
# history item: shown the counted one, SmolLM2 wrote a count (the example's "12 users bought it
# too") in 239 of the 316 such rows of 200 amazon-beauty users, and 306 of the 316 fell back to the
# template (with this example 231, and its rows stay short: it refers back to a history item by its
# kind, "like the shampoo", not by its long title; bench/results/explanations.md, runs s6 and s7c).
EXPLAIN_EXAMPLES = {
    "movies": ('Recommended: "Moon Base" (Sci-Fi, Thriller)\n'
               '- "Robot Wars" (shares: sci-fi, thriller): 12 users watched both\n'
               '- "Star Pilots" (shares: sci-fi): 35 users watched both',
               '"Moon Base" is a sci-fi thriller, and 35 fans of "Star Pilots" watched it too.'),
    "products": ('Recommended: "Silk Protein Hair Conditioner" (conditioner)\n'
                 '- "Keratin Hair Mask" (shares: hair): 3 users bought both\n'
                 '- "Argan Oil Repair Shampoo" (shares: hair): 12 users bought both',
                 '"Silk Protein Hair Conditioner" is a conditioner, and 12 buyers of "Argan Oil Repair Shampoo" '
                 'bought it too.'),
}
EXPLAIN_EXAMPLES_UNCOUNTED = {
    "movies": ('Recommended: "Moon Base" (Sci-Fi, Thriller)\n'
               '- "Robot Wars" (shares: sci-fi, thriller)\n'
               '- "Star Pilots" (shares: sci-fi)',
               '"Moon Base" is a sci-fi thriller, a thriller like "Robot Wars".'),
    "products": ('Recommended: "Silk Protein Hair Conditioner" (conditioner)\n'
                 '- "Rose Hand Cream"\n'
                 '- "Argan Oil Repair Shampoo" (shares: hair)',
                 '"Silk Protein Hair Conditioner" is a conditioner, and it is for hair like the shampoo.'),
}


def explain_fact(domain: Domain, title: str, shared=(), n_both: int = 0) -> str:
    """One evidence line of the explain prompt: '- "Up" (shares: comedy): 12 users watched both'."""
    line = f'- "{title}"' + (f" (shares: {', '.join(shared)})" if shared else "")
    return line + (f": {n_both} user{'s' if n_both != 1 else ''} {domain.verb_past} both" if n_both else "")


def render_explain(tokenizer, domain: Domain, evidence: list[str], target: str, attributes=(),
                   facts: Sequence[str] = (), example: bool = True, kind: str | None = None,
                   counted: bool = True) -> tuple[str, str]:
    """(prompt ending with the primed answer, the sentence's start as shown: EXPLAIN_LEAD naming the
    ``evidence`` titles, then the primed answer) for one explanation; ``facts``: ``explain_fact`` lines,
    strongest first (as ``evidence``). The text before the item's "Recommended" line is the same for
    every item and user (system, worked example); ``example=False`` leaves the worked example out (a
    context too small for it). ``kind``: what a product is, from its title ("shampoo"); the answer is
    primed with it (a 135M model names the example's kind instead).
    ``counted``: whether a fact gives a count of users who had both (else the count-free example)."""
    quoted = " and ".join(f'"{t}"' for t in evidence)
    attrs = f" ({', '.join(attributes)})" if attributes else ""
    # the strongest evidence last, next to the answer: SmolLM2 cites the count and the title nearest to it
    # (strongest first, 26% of 40 movielens users' model sentences gave a count to the wrong title; last, 6%)
    user = fill("explain", domain, target=target, attributes=attrs, facts="\n".join(reversed(facts))).rstrip()
    primed = EXPLAIN_PREFIX.format(target=target)
    if kind:
        primed += f" is {'an' if kind[:1].lower() in 'aeio' else 'a'} {kind}"
    examples = EXPLAIN_EXAMPLES if counted else EXPLAIN_EXAMPLES_UNCOUNTED
    example_user, example_answer = examples[domain.items if domain.items in examples else "products"]
    system = EXPLAIN_SYSTEM.format(item=domain.item, items=domain.items)
    turns = [(example_user, example_answer)] if example else []
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}]
        for asked, answered in turns:
            messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
        messages.append({"role": "user", "content": user})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = system + "\n\n" + "".join(f"### Instruction:\n{a}\n\n### Response:\n{b}\n\n" for a, b in turns)
        text += f"### Instruction:\n{user}\n\n### Response:\n"
    return text + primed, (EXPLAIN_LEAD.format(evidence=quoted) if evidence else "") + primed


def explain_shared_prefix(tokenizer, domain: Domain, counted: bool = True) -> str:
    """The text every explain prompt of its kind (facts with counts, or none) starts with (up to the
    item's "Recommended" line)."""
    text, _ = render_explain(tokenizer, domain, [], "\x00", counted=counted)
    return text[: text.index('Recommended: "\x00"')]


# Answers (the text after the prompt) for fine-tuning and for verbalizers.
ANSWER_YES, ANSWER_NO = "Yes", "No"
TITLE_SEPARATOR = "\n"


# -- fitting the model's context --------------------------------------------------------------

def prompt_title(title: str, max_chars: int = MAX_TITLE_CHARS) -> str:
    """``title`` as prompts show it (and as rankers expect it written back): at most ``max_chars``
    characters, a longer one cut with an ellipsis."""
    if len(title) <= max_chars:
        return title
    return title[: max_chars - 1].rstrip() + ELLIPSIS


def describe(catalog, index: int, with_attributes: bool = True) -> str:
    """An item as a prompt line shows it: its prompt title, plus its attributes when asked."""
    title, attrs = prompt_title(catalog.titles[int(index)]), catalog.attributes[int(index)]
    return f"{title} ({prompt_title(', '.join(attrs))})" if with_attributes and attrs else title


def context_limit(llm) -> int:
    """The most tokens ``llm`` (an ``LLM``: .model, .tokenizer) attends to: the model's max positions,
    or the tokenizer's limit when that is smaller (tokenizers without one report a huge number)."""
    found = [getattr(getattr(llm.model, "config", None), "max_position_embeddings", None),
             getattr(llm.tokenizer, "model_max_length", None)]
    limits = [int(v) for v in found if isinstance(v, int) and 0 < v < 10**7]
    return min(limits) if limits else 2048


def fit_to_context(build: Callable[[list], T], items: Sequence, limit: int,
                   size: Callable[[T], int] = len, what: str = "history item") -> tuple[list, T]:
    """(the newest ``items`` that fit, ``build`` of them): ``build(items)`` makes the prompt (token ids,
    or anything ``size`` measures in tokens); the oldest items are dropped until it is at most
    ``limit`` tokens. At least one item is kept; when even one does not fit, a ValueError says so."""
    items = list(items)
    built = build(items)
    if size(built) <= limit:
        return items, built
    best, lo, hi = None, 1, len(items) - 1  # the most items that fit: a prompt grows with its items
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = build(items[-mid:])
        if size(candidate) <= limit:
            best, lo = (items[-mid:], candidate), mid + 1
        else:
            hi = mid - 1
    if best is None:
        raise ValueError(f"the prompt does not fit the model's context of {max(limit, 0)} tokens "
                         f"even with a single {what}; use a model with a longer context")
    return best


def format_history(catalog, history, max_items: int = MAX_HISTORY, with_attributes: bool = True,
                   max_title_words: int | None = None) -> str:
    """The last ``max_items`` items, numbered, oldest first: '1. Toy Story (1995) (Animation, ...)'.
    ``max_title_words`` also cuts long titles (Amazon product names run to 100+ words) with '...'."""
    recent = list(history)[-max_items:]
    if max_title_words is None:
        return "\n".join(f"{i}. {describe(catalog, int(x), with_attributes)}" for i, x in enumerate(recent, 1))
    lines = []
    for i, x in enumerate(recent, 1):
        words = catalog.titles[int(x)].split()
        title = prompt_title(" ".join(words[:max_title_words]) + (" ..." if len(words) > max_title_words else ""))
        attrs = catalog.attributes[int(x)]
        lines.append(f"{i}. {title} ({prompt_title(', '.join(attrs))})" if with_attributes and attrs
                     else f"{i}. {title}")
    return "\n".join(lines)


def format_candidates(catalog, candidates, with_attributes: bool = False) -> str:
    """Candidate list, one title per line (titles are what the ranker answers with)."""
    return "\n".join(f"- {describe(catalog, int(x), with_attributes)}" for x in candidates)


def format_profile(profile) -> str:
    if profile is None:
        return "(no profile)"
    words = ", ".join(k.text for k in profile.keywords if k.grounded) or "(none)"
    return f"Keywords: {words}\nSummary: {profile.summary}".strip()


def fill(name: str, domain: Domain, **fields) -> str:
    """The user-turn text of template ``name``."""
    return TEMPLATES[name].format(item=domain.item, items=domain.items, verb=domain.verb,
                                  verb_past=domain.verb_past, **fields)


def render(tokenizer, name: str, domain: Domain, **fields) -> str:
    """Full prompt string, ending where the model's answer starts."""
    user = fill(name, domain, **fields)
    system = SYSTEM.format(verb=domain.verb, verb_past=domain.verb_past)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n### Instruction:\n{user}\n\n### Response:\n"


def render_open(tokenizer, name: str, domain: Domain, **fields) -> str:
    """Like ``render``, but the user turn is left open: the text ends inside the user message,
    where the model continues the template's text (``sequence``)."""
    user = fill(name, domain, **fields)
    system = SYSTEM.format(verb=domain.verb, verb_past=domain.verb_past)
    if getattr(tokenizer, "chat_template", None):
        marker = "\x00USER\x00"
        messages = [{"role": "system", "content": system}, {"role": "user", "content": marker}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return text[: text.index(marker)] + user
    return f"{system}\n\n### Instruction:\n{user}"


def sequence_pieces(catalog, items, max_items: int = MAX_HISTORY, open_next: bool = True) -> list[tuple[str, int | None]]:
    """The numbered list of ``sequence`` as (text, item) pieces: '1.', ' Title\n', '2.', ...

    A title piece carries its catalog index, a number piece None. Each piece is tokenized on its
    own (``encode_pieces``), so a title has the same tokens wherever it stands, as the line the model
    writes next (' Title\n') and as context; ``open_next`` ends with the next line's number."""
    recent = [int(x) for x in list(items)[-max_items:]] if max_items else []
    pieces: list[tuple[str, int | None]] = []
    for i, x in enumerate(recent, 1):
        pieces += [(f"{i}.", None), (sequence_answer(prompt_title(catalog.titles[x])), x)]
    if open_next:
        pieces.append((f"{len(recent) + 1}.", None))
    return pieces


def sequence_answer(title: str) -> str:
    """What the model writes to name an item as the list's next line."""
    return f" {title}{TITLE_SEPARATOR}"


def encode_pieces(tokenizer, head: str, pieces) -> tuple[list[int], list[int]]:
    """Token ids of ``head`` (special tokens as the tokenizer adds them) + each piece, and per token
    the position of its piece in ``pieces`` (-1 for the head)."""
    ids = list(tokenizer(head)["input_ids"])
    piece_of = [-1] * len(ids)
    texts = [t for t, _ in pieces]
    for j, toks in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []):
        ids += list(toks)
        piece_of += [j] * len(toks)
    return ids, piece_of


def end_of_answer(tokenizer) -> str:
    """Text that closes an answer in training examples (the chat end token, else EOS)."""
    if getattr(tokenizer, "chat_template", None) and "<|im_end|>" in tokenizer.get_vocab():
        return "<|im_end|>"
    return tokenizer.eos_token or ""
