"""The functions the UI calls, as plain functions of plain values (ui.py only wires them to
components). Every function that can fail returns a friendly message instead of raising, except
``run_recommendation`` and ``run_stages``, whose callers (``recommend_stream`` here, the
/recommend and /recommend_stream APIs in ui.py) turn their exceptions into a message or a clean
``gr.Error``.

``session`` is the browser session's ``gr.Request.session_hash``: a session's uploads and the
adapters trained on them exist only for it; without one (the API) only built-in datasets do."""
from __future__ import annotations

import logging
import time
from typing import Iterator

from recdemo.app import render
from recdemo.app.context import RANKERS, STILL_RUNNING, AppContext, friendly_error
from recdemo.app.gpu import gpu
from recdemo.app.sessions import display_name, session_digest
from recdemo.records import jsonable

log = logging.getLogger("recdemo.app")
MAX_HISTORY_ITEMS = 50  # the prompts use the last 20; longer lists only slow the page down
ADAPTER_AUTO, ADAPTER_NONE = "auto", "none"


class Busy(RuntimeError):
    """The dataset or the model is still being prepared: try again in a moment."""


# -- item picker --
def search(ctx: AppContext, dataset: str, query: str, k: int = 8,
           session: str | None = None) -> tuple[list[str], str]:
    """Titles matching ``query`` (typo tolerant, via the text index) and a message ('' if fine)."""
    query = (query or "").strip()
    if len(query) < 2:
        return [], ""
    try:
        busy = ctx.ensure_ready(dataset, session=session)
        if busy:
            return [], busy
        hits = ctx.recommender(dataset, session).search_titles(query[:ctx.cfg.limits.max_field_chars], k=k)
    except Exception as e:  # noqa: BLE001
        return [], friendly_error(e)
    titles = []
    for h in hits:
        if h["title"] not in titles:
            titles.append(h["title"])
    return titles, ("" if titles else f"No title matches {query!r}.")


def add_item(history: list[str], title: str | None) -> tuple[list[str], str]:
    history = list(history or [])
    if not title:
        return history, ""
    if title in history:
        return history, f"{title!r} is already in the history."
    if len(history) >= MAX_HISTORY_ITEMS:
        return history, f"The history holds at most {MAX_HISTORY_ITEMS} items; remove one first."
    return history + [title], ""


def move_item(history: list[str], pos: int | None, delta: int) -> tuple[list[str], int | None]:
    """Move the item at ``pos`` by ``delta`` places; returns the list and the item's new position."""
    history = list(history or [])
    if pos is None or not 0 <= int(pos) < len(history):
        return history, None
    pos = int(pos)
    new = min(max(pos + delta, 0), len(history) - 1)
    item = history.pop(pos)
    history.insert(new, item)
    return history, new


def remove_item(history: list[str], pos: int | None) -> tuple[list[str], int | None]:
    history = list(history or [])
    if pos is None or not 0 <= int(pos) < len(history):
        return history, None
    history.pop(int(pos))
    return history, (min(int(pos), len(history) - 1) if history else None)


def history_choices(history: list[str]) -> list[tuple[str, int]]:
    """Choices for the history list: '1. Title' labels, positions as values."""
    return [(f"{i}. {t}", i - 1) for i, t in enumerate(history or [], 1)]


def random_user(ctx: AppContext, dataset: str, seed: int | None = None,
                session: str | None = None) -> tuple[list[str], str]:
    try:
        return list(ctx.recommender(dataset, session).random_user_history(seed=seed, max_items=20)), ""
    except Exception as e:  # noqa: BLE001
        return [], friendly_error(e)


def personas(ctx: AppContext, dataset: str, session: str | None = None) -> dict[str, list[str]]:
    try:
        return dict(ctx.recommender(dataset, session).personas())
    except Exception as e:  # noqa: BLE001 - no personas is not worth an error box
        log.warning("personas failed for %s: %s", dataset, friendly_error(e))
        return {}


def persona_history(ctx: AppContext, dataset: str, name: str | None,
                    session: str | None = None) -> list[str] | None:
    if not name:
        return None
    return list(personas(ctx, dataset, session).get(name, [])) or None


# -- controls --
def adapter_choices(ctx: AppContext, session: str | None = None) -> list[tuple[str, str]]:
    return ([("auto (the dataset's own adapter if trained)", ADAPTER_AUTO), ("none (base model)", ADAPTER_NONE)]
            + [(a, a) for a in ctx.adapters(session)])


def next_adapter_name(ctx: AppContext, dataset: str, session: str | None = None) -> str:
    """'<dataset>-ft<n>' with the smallest n that is not taken (the default in the name box);
    other sessions' private adapters and jobs do not count (they must stay invisible)."""
    mine = session_digest(session) if session else None
    taken = set(ctx.adapters(session)) | {s["params"].get("adapter") for s in ctx.jobs.active()
                                          if "@" not in s["params"].get("key", "") or s["params"].get("session") == mine}
    n = 1
    while f"{dataset}-ft{n}" in taken:
        n += 1
    return f"{dataset}-ft{n}"


def _adapter_arg(ctx: AppContext, adapter: str | None, session: str | None):
    return None if adapter in (ADAPTER_NONE, None, "") else ctx.adapter_arg(adapter, session)


def _number(value, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"The number of {what} must be a whole number.") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"The number of {what} must be a whole number.")
    return int(number)


def _check_request(ctx: AppContext, history, ranker, n_candidates, k) -> tuple[list[str], int, int]:
    """Every size and name of a request within cfg.limits, before anything slow (one sentence each)."""
    limits = ctx.cfg.limits
    if isinstance(history, str):
        history = [history]
    if not isinstance(history, (list, tuple)):
        raise ValueError("The history must be a list of item titles.")
    history = [str(h) for h in history if str(h).strip()]
    if not history:
        raise ValueError("Pick at least one item first: search for a title, choose a persona, or "
                         "load a random real user.")
    limits.check("max_history", len(history), "history items")
    longest = max(len(h) for h in history)
    if longest > limits.max_field_chars:
        raise ValueError(f"A history title has {longest:,} characters; titles have at most "
                         f"{limits.max_field_chars:,} (limits.max_field_chars).")
    if ranker not in RANKERS:
        raise ValueError(f"Unknown ranker {str(ranker)[:40]!r}; choose one of {', '.join(RANKERS)}.")
    n_candidates = limits.check("max_candidates", _number(n_candidates, "candidates"), "candidates")
    k = limits.check("max_results", _number(k, "results"), "results")
    if k > n_candidates:
        raise ValueError("The number of results must be between 1 and the number of candidates.")
    return history, n_candidates, k


# -- recommend --
@gpu
def _stages(rec, history, **kwargs):
    """The one call into the model stack (on ZeroGPU this is where a GPU is attached), as the
    stages finish (``Recommender.recommend_stages``)."""
    yield from rec.recommend_stages(history, **kwargs)


def _prepared(ctx: AppContext, history, dataset: str, ranker: str, n_candidates, k, wait: float,
              session: str | None, model_wait: float):
    """(recommender, history, n_candidates, k) once every argument is checked (a bad request is
    answered at once, even while the model is still loading) and the dataset is ready."""
    history, n_candidates, k = _check_request(ctx, history, ranker, n_candidates, k)
    ctx.dataset_key(dataset, session)  # an unknown (or another session's) dataset: ValueError
    if model_wait:
        ctx.wait_ready(model_wait)
    busy = ctx.ensure_ready(dataset, wait, session)
    if busy:
        raise Busy(busy)
    return ctx.recommender(dataset, session), history, n_candidates, k


def _steering(profile_edit, exclude) -> dict:
    """Only what was asked: a plain request reaches the recommender exactly as before."""
    out = {}
    if profile_edit is not None:
        out["profile_edit"] = profile_edit
    if exclude:
        out["exclude"] = [int(i) for i in exclude]
    return out


def run_recommendation(ctx: AppContext, history: list[str], dataset: str, ranker: str,
                       adapter: str | None = ADAPTER_AUTO, n_candidates: int = 50, k: int = 10,
                       wait: float = 2.0, session: str | None = None, model_wait: float = 0.0,
                       profile_edit=None, exclude=()) -> dict:
    """Recommendation.to_dict() as JSON-safe data. Raises ValueError etc. for the caller to show;
    ``Busy`` while the dataset is still being prepared after ``wait`` seconds (``model_wait``:
    seconds to wait for the model once the request is checked)."""
    data = None
    for data in run_stages(ctx, history, dataset, ranker, adapter, n_candidates, k, wait, session=session,
                           model_wait=model_wait, profile_edit=profile_edit, exclude=exclude):
        pass
    return data


def run_stages(ctx: AppContext, history: list[str], dataset: str, ranker: str, adapter: str | None = ADAPTER_AUTO,
               n_candidates: int = 50, k: int = 10, wait: float = 2.0, session: str | None = None,
               model_wait: float = 0.0, profile_edit=None, exclude=()) -> Iterator[dict]:
    """``run_recommendation`` as it grows: one JSON-safe state per finished stage, the last one
    ("stage": "done") equal to ``run_recommendation``'s answer. Raises like it."""
    adapter = _adapter_arg(ctx, adapter, session)  # a path: refused here, nothing on disk is read
    rec, history, n_candidates, k = _prepared(ctx, history, dataset, ranker, n_candidates, k, wait, session,
                                              model_wait)
    for state in _stages(rec, history, ranker=ranker, n_candidates=n_candidates, k=k, adapter=adapter,
                         **_steering(profile_edit, exclude)):
        out = jsonable(state.to_dict())
        if isinstance(out.get("adapter"), str):
            out["adapter"] = display_name(out["adapter"])  # a session's own adapter by its name, not its key
        yield out


def recommend_stream(ctx: AppContext, history: list[str], dataset: str, ranker: str, adapter: str,
                     n_candidates: int, k: int, profile_edit=None, exclude=(),
                     baseline: list[dict] | None = None, session: str | None = None) -> Iterator[dict]:
    """For the page: the HTML pieces of each state as it comes, and a message when something is
    wrong (then the stream ends). ``baseline``: the results before the user's profile edit, so the
    cards say which ones the edit moved."""
    if not ctx.model_ready.is_set() and not ctx.wait_ready(0.5):
        st = ctx.status()
        yield {"ok": False, "kind": "info",
               "message": f"The model is still loading ({st['uptime_s']:.0f} s since start: {st['message']}). "
                          "Please try again in a few seconds."}
        return
    t0, data = time.perf_counter(), {}
    try:
        for data in run_stages(ctx, history, dataset, ranker, adapter, n_candidates, k, session=session,
                               profile_edit=profile_edit, exclude=exclude):
            yield page(data, baseline)
    except Busy as e:
        yield {"ok": False, "kind": "info", "message": str(e)}
        return
    except Exception as e:  # noqa: BLE001 - shown in the page, never as a traceback
        yield {"ok": False, "kind": "error", "message": friendly_error(e)}
        return
    log.info("recommend %s/%s: %d items in %.2f s", str(dataset)[:64], ranker, len(data.get("results", [])),
             time.perf_counter() - t0)


def page(data: dict, baseline: list[dict] | None = None) -> dict:
    """The HTML pieces of one state."""
    return {"ok": True, "kind": "", "message": "", "data": data, "stage": data.get("stage", "done"),
            "profile_html": render.profile_html(data), "cards_html": render.cards_html(data, baseline),
            "candidates_html": render.candidates_html(data), "meta_html": render.meta_html(data),
            "prompt": data.get("prompt", "")}


def recommend(ctx: AppContext, history: list[str], dataset: str, ranker: str, adapter: str,
              n_candidates: int, k: int, session: str | None = None, **steering) -> dict:
    """The page's final state (or the message), as ``recommend_stream`` ends."""
    out = {}
    for out in recommend_stream(ctx, history, dataset, ranker, adapter, n_candidates, k, session=session,
                                **steering):
        pass
    return out


def profile_editor(data: dict) -> tuple[list[str], list[str], str]:
    """(keyword choices, keywords shown as chosen, sentence) for the profile editor: the grounded
    keywords start chosen; the struck-through ones can be added back."""
    profile = data.get("profile") or {}
    keywords = profile.get("keywords") or []
    chosen = [kw["text"] for kw in keywords if kw.get("grounded")]
    return [kw["text"] for kw in keywords], chosen, profile.get("summary", "")


def dismissed(previous: list[int] | None, item) -> list[int]:
    """The items marked "not interested" so far, with ``item`` added (bounded by the caller's limit)."""
    out = [int(i) for i in previous or []]
    try:
        item = int(item)
    except (TypeError, ValueError):
        return out
    return out if item in out else out + [item]


def api_result(data: dict) -> dict:
    """The JSON the /recommend API returns: profile, candidates, top-k with explanations."""
    keep = ("profile", "candidates", "results", "timings", "ranker", "model", "adapter", "warnings",
            "history", "prompt", "stage")
    return {k: data.get(k) for k in keep}


# -- data upload and fine-tuning (side panel) --
def upload_dataset(ctx: AppContext, interactions_file: str | None, items_file: str | None,
                   name: str, session: str | None = None) -> tuple[bool, str]:
    """(ok, html): a summary of the new dataset, or the validation error (file, line, column)."""
    try:
        summary = ctx.add_upload(interactions_file, items_file, name, session)
    except Exception as e:  # noqa: BLE001
        return False, render.notice_html(friendly_error(e))
    return True, render.upload_html(summary)


def start_finetune(ctx: AppContext, dataset: str, tasks: list[str], steps: int, lora_r: int, lr: float,
                   adapter: str, eval_users: int | None = None, current: str | None = None,
                   session: str | None = None) -> tuple[str | None, str]:
    """(job id, message html). The job runs on the queue's worker thread, not in this event.
    ``current``: the session's job so far; while it runs, a second Start is refused (and the
    session keeps tracking and can still cancel the first)."""
    if ctx.job_running(current):
        return current, render.notice_html(STILL_RUNNING, "info")
    try:
        job = ctx.submit_finetune({"dataset": dataset, "tasks": tasks, "steps": steps, "lora_r": lora_r,
                                   "lr": lr, "adapter": adapter, "eval_users": eval_users}, session)
    except Exception as e:  # noqa: BLE001
        return None, render.notice_html(friendly_error(e))
    return job.id, render.job_html(ctx.jobs.snapshot(job.id))


def poll_finetune(ctx: AppContext, job_id: str | None) -> dict:
    """What the timer shows: progress html, loss points, whether the job has finished."""
    snap = ctx.jobs.snapshot(job_id) if job_id else None
    if snap is None:
        return {"html": "", "losses": [], "finished": True, "status": None, "adapter": None}
    finished = snap["status"] in ("done", "failed", "cancelled")
    adapter = snap["params"]["adapter"] if snap["status"] == "done" else None  # the name, not a session's key
    return {"html": render.job_html(snap), "losses": snap["losses"], "finished": finished,
            "status": snap["status"], "adapter": adapter}


def cancel_finetune(ctx: AppContext, job_id: str | None) -> str:
    if job_id and ctx.jobs.cancel(job_id):
        return render.notice_html("Cancelling… the run stops at its next step; previous adapters stay as they are.",
                                  "info")
    return render.notice_html("No fine-tune of yours is running.", "info")


def end_session(ctx: AppContext, session: str | None) -> None:
    """The browser tab closed or reloaded: its uploads and their adapters go (see AppContext.end_session)."""
    try:
        ctx.end_session(session)
    except Exception as e:  # noqa: BLE001 - never an error on a closed page
        log.warning("ending a session failed: %s", friendly_error(e))
