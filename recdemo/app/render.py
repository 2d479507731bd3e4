"""HTML for the results: profile with keywords, recommendation cards, the SASRec table, timings,
and the fine-tune progress. Pure functions of plain dicts (``Recommendation.to_dict()``); every
text that comes from data (titles may come from an uploaded file) is escaped here."""
from __future__ import annotations

import re
from html import escape

from recdemo.app.context import TASKS

STAGES = ("retrieval", "profile", "rerank", "explain")
# The stages' order depends on the ranker (palr reads the profile, so it comes first; for the others
# it is written last, its keyword line in the explanations' call): the page reads what a state holds.
# Clicks on a card's "Not interested" button become the cards' "dismiss" event (event delegation:
# the cards are re-rendered on every streamed state, the listener on their root stays).
DISMISS_JS = ("element.addEventListener('click', (e) => { const b = e.target.closest('.rd-dismiss');"
              " if (b) { b.disabled = true; trigger('dismiss', {index: Number(b.dataset.index)}); } });")


def _e(value) -> str:
    return escape(str(value), quote=True)


def move_badge(rank: int, retrieval_rank: int | None) -> tuple[str, str]:
    """('▲ up 14', 'up') etc.: how far the LLM moved an item compared with the SASRec list."""
    if retrieval_rank is None:
        return "new", "new"
    delta = int(retrieval_rank) - int(rank)
    if delta > 0:
        return f"▲ up {delta}", "up"
    if delta < 0:
        return f"▼ down {-delta}", "down"
    return "= same", "same"


def _attrs(attributes, limit: int = 4) -> str:
    attrs = list(attributes or [])[:limit]
    return "".join(f'<span class="rd-tag">{_e(a)}</span>' for a in attrs)


def _titles_of(history: list[dict]) -> dict[int, str]:
    return {int(h["index"]): h.get("title", "") for h in history or [] if "index" in h}


def profile_html(rec: dict) -> str:
    profile = rec.get("profile")
    if not profile and rec.get("stage", "done") != "done":
        return '<div class="rd-panel rd-muted rd-pending">Writing your taste profile…</div>'
    if not profile:
        return '<div class="rd-panel rd-muted">No profile for this run.</div>'
    titles = _titles_of(rec.get("history", []))
    chips, words = [], []
    for kw in profile.get("keywords", []):
        text, grounded = kw.get("text", ""), bool(kw.get("grounded"))
        support = [titles.get(int(i), f"item {i}") for i in kw.get("support", [])]
        if kw.get("source") == "user":  # the user's own word (steering): sent to the ranker as it is
            words.append(text)
            because = f' · in: {_e(", ".join(support[:3]))}' if support else ""
            chips.append(f'<div class="rd-kw grounded user"><span class="rd-kw-text">{_e(text)}</span>'
                         f'<span class="rd-kw-support">added by you{because}</span></div>')
        elif grounded:
            words.append(text)
            because = ", ".join(support[:4]) + (f" +{len(support) - 4} more" if len(support) > 4 else "")
            added = kw.get("source") == "heuristic"  # the LLM gave too few grounded keywords
            chips.append(f'<div class="rd-kw grounded{" heuristic" if added else ""}"'
                         f'{" title=" + chr(34) + "added from the history, not written by the LLM" + chr(34) if added else ""}>'
                         f'<span class="rd-kw-text">{_e(text)}</span>'
                         f'<span class="rd-kw-support">{"added · " if added else ""}from: {_e(because)}</span></div>')
        else:
            chips.append(f'<div class="rd-kw ungrounded" title="nothing in the history supports this">'
                         f'<span class="rd-kw-text">{_e(text)}</span>'
                         f'<span class="rd-kw-support">not backed by the history</span></div>')
    summary = _e(profile.get("summary", ""))
    for w in sorted(words, key=len, reverse=True):  # highlight grounded keywords inside the summary
        if w.strip():
            summary = re.sub(rf"(?i)(?<![\w>])({re.escape(_e(w))})(?!\w)", r"<mark>\1</mark>", summary)
    return (f'<div class="rd-panel rd-profile"><div class="rd-h">Taste profile</div>'
            f'<p class="rd-summary">{summary or "<span class=rd-muted>(no summary)</span>"}</p>'
            f'<div class="rd-kws">{"".join(chips) or "<span class=rd-muted>no keywords</span>"}</div></div>')


def _evidence(ev: list[dict]) -> str:
    rows = []
    for x in ev[:3]:
        kind = x.get("kind", "")
        value = x.get("value")
        if kind == "co-occurrence":
            what = f"{int(value)} users had both" if value is not None else "often together"
        elif kind == "similar":
            what = f"similar content ({float(value):.2f})" if value is not None else "similar content"
        else:
            what = _e(kind)
        rows.append(f'<li><span class="rd-ev-title">{_e(x.get("title", ""))}</span>'
                    f'<span class="rd-ev-kind">{_e(what)}</span></li>')
    return f'<ul class="rd-ev">{"".join(rows)}</ul>' if rows else ""


def edit_move(result: dict, baseline: list[dict] | None) -> tuple[str, str] | None:
    """('▲ 2 with your edit', 'up') etc.: how the user's profile edit moved a card compared with the
    answer before the edit; None without a baseline or when it did not move."""
    if baseline is None:
        return None
    before = {int(b["index"]): int(b["rank"]) for b in baseline if "index" in b and "rank" in b}
    old = before.get(int(result.get("index", -1)))
    if old is None:
        return "new with your edit", "new"
    delta = old - int(result.get("rank", 0))
    if delta == 0:
        return None
    return (f"▲ {delta} with your edit", "up") if delta > 0 else (f"▼ {-delta} with your edit", "down")


def _steer(r: dict, baseline: list[dict] | None) -> str:
    parts = []
    moved = edit_move(r, baseline)
    if moved:
        parts.append(f'<span class="rd-edit-move {moved[1]}">{_e(moved[0])}</span>')
    steer = r.get("steer") or {}
    if steer.get("added"):
        parts.append(f'<span class="rd-steer-why">matches {_e(", ".join(steer["added"]))}, which you added</span>')
    elif steer.get("removed"):
        parts.append(f'<span class="rd-steer-why">matches {_e(", ".join(steer["removed"]))}, which you '
                     'removed</span>')
    return f'<div class="rd-steer">{"".join(parts)}</div>' if parts else ""


def ranked(rec: dict) -> bool:
    """Whether the LLM has ranked this state's results (before that they are SASRec's, provisional)."""
    return "rerank" in (rec.get("timings") or {})


def waiting_for(rec: dict) -> str:
    """What the page still waits for in a streamed state ('' when it is the final answer)."""
    if rec.get("stage", "done") == "done":
        return ""
    todo = [] if ranked(rec) else ["ranking"]
    if any(not r.get("rationale") for r in rec.get("results") or []):
        todo.append("explaining")
    if not rec.get("profile"):
        todo.append("writing the profile")
    return ("the LLM is " + ", ".join(todo) + "…") if todo else ""


def _card(r: dict, stage: str, baseline: list[dict] | None, provisional: bool = False) -> str:
    label, cls = ("SASRec order", "provisional") if provisional else move_badge(r.get("rank", 0),
                                                                               r.get("retrieval_rank"))
    sasrec = f'SASRec #{r["retrieval_rank"]}' if r.get("retrieval_rank") else "outside SASRec top-N"
    rationale = r.get("rationale") or ""
    pending = not rationale and not r.get("evidence") and not provisional and stage != "done"
    dismiss = (f'<button class="rd-dismiss" data-index="{int(r["index"])}" title="Remove it and refill the list">'
               '✕ Not interested</button>' if stage == "done" and "index" in r else "")
    return (f'<div class="rd-card{" rd-provisional" if provisional else ""}"><div class="rd-card-top">'
            f'<span class="rd-rank">{_e(r.get("rank", ""))}</span>'
            f'<span class="rd-title">{_e(r.get("title", ""))}</span>'
            f'<span class="rd-move {cls}" title="{_e(sasrec)}">{_e(label)}</span></div>'
            + _steer(r, baseline)
            + f'<div class="rd-tags">{_attrs(r.get("attributes"))}</div>'
            + (f'<p class="rd-why">{_e(rationale)}</p>' if rationale else "")
            + ('<p class="rd-why rd-pending">explaining…</p>' if pending else "")
            + (f'<div class="rd-because">Because of</div>{_evidence(r.get("evidence") or [])}'
               if r.get("evidence") else "")
            + f'<div class="rd-score">score {_num(r.get("score"))} · {_e(sasrec)}{dismiss}</div></div>')


def cards_html(rec: dict, baseline: list[dict] | None = None) -> str:
    """The cards of one streamed state: SASRec's order marked provisional until the LLM has ranked,
    "explaining…" until a card's sentence comes, a "Not interested" button on the final answer."""
    results = rec.get("results") or []
    if not results:
        return '<div class="rd-panel rd-muted">No recommendations.</div>'
    stage, provisional = rec.get("stage", "done"), not ranked(rec) and rec.get("stage", "done") != "done"
    head = ('<div class="rd-provisional-note">Provisional: SASRec\'s top list. The LLM is reranking…</div>'
            if provisional else "")
    cards = "".join(_card(r, stage, baseline, provisional) for r in results)
    return f'{head}<div class="rd-cards rd-stage-{_e(stage)}">{cards}</div>'


def candidates_html(rec: dict) -> str:
    cands = rec.get("candidates") or []
    picked = {int(r["index"]): int(r["rank"]) for r in rec.get("results") or [] if "index" in r}
    rows = []
    for c in cands:
        llm = picked.get(int(c.get("index", -1)))
        cls = ' class="rd-picked"' if llm else ""
        rows.append(f'<tr{cls}><td class="rd-num">{_e(c.get("rank", ""))}</td>'
                    f'<td>{_e(c.get("title", ""))}<div class="rd-attrs">{_e(", ".join(c.get("attributes") or []))}'
                    f'</div></td><td class="rd-num">{_num(c.get("score"))}</td><td>'
                    + (f'<span class="rd-llm">#{llm}</span>' if llm else "") + '</td></tr>')
    return (f'<div class="rd-panel rd-table-wrap"><div class="rd-h">SASRec top-{len(cands)} candidates</div>'
            '<table class="rd-table"><thead><tr><th>#</th><th>Title · attributes</th><th>Score</th>'
            f'<th>LLM</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def meta_html(rec: dict) -> str:
    t = rec.get("timings") or {}
    parts = [f"{s} {t[s]:.2f} s" for s in STAGES if t.get(s) is not None]
    total = f'<b>total {t["total"]:.2f} s</b>' if t.get("total") is not None else ""
    adapter = rec.get("adapter") or "none (base model)"
    warn = "".join(f'<div class="rd-warn">{_e(w)}</div>' for w in rec.get("warnings") or [])
    working = waiting_for(rec)
    working = f' · <span class="rd-working">{_e(working)}</span>' if working else ""
    return (f'<div class="rd-meta">Timing: {_e(" · ".join(parts))} {("· " + total) if parts else total}{working}'
            f' &nbsp;|&nbsp; {_e(rec.get("model", ""))} · adapter: {_e(adapter)} · ranker: '
            f'{_e(rec.get("ranker", ""))}</div>{warn}')


def notice_html(message: str, kind: str = "error") -> str:
    if not message:
        return ""
    return f'<div class="rd-notice {kind}">{_e(message)}</div>'


def placeholder_html(text: str) -> str:
    return f'<div class="rd-panel rd-muted rd-placeholder">{_e(text)}</div>'


def status_html(status: dict) -> str:
    state = status.get("state", "idle")
    cls = {"ready": "ok", "error": "bad"}.get(state, "busy")
    msg = status.get("message") or state
    if state == "ready" and status.get("seconds") is not None:
        msg = f"Ready (loaded in {status['seconds']:.0f} s)"
    running = " · fine-tune running" if status.get("finetune_running") else ""
    bar = ""
    if state == "loading" and status.get("progress") is not None:  # SASRec training for a new upload
        pct = min(100, max(0, int(100 * float(status["progress"]))))
        bar = f'<div class="rd-bar"><div class="rd-bar-fill" style="width:{pct}%"></div></div>'
    return f'<div class="rd-status {cls}">{_e(msg)}{_e(running)}{bar}</div>'


def job_html(snap: dict | None) -> str:
    """Progress bar with loss and ETA, queue position, and the final result."""
    if not snap:
        return ""
    status, p = snap["status"], snap["params"]
    head = f'{_e(p.get("adapter", ""))} on {_e(p.get("dataset", ""))}'
    if status == "queued":
        return (f'<div class="rd-job">{head}<div class="rd-muted">Waiting in line: position '
                f'{snap.get("position")}</div></div>')
    total = max(int(snap.get("total") or p.get("steps") or 1), 1)
    step = int(snap.get("step") or 0)
    pct = min(100, int(100 * step / total))
    loss = f'loss {snap["loss"]:.3f}' if snap.get("loss") is not None else ""
    eta = f'ETA {_fmt_s(snap["eta_s"])}' if snap.get("eta_s") is not None and status == "running" else ""
    info = " · ".join(x for x in (f"step {step}/{total}", loss, eta, _e(snap.get("phase") or "")) if x)
    bar = (f'<div class="rd-bar"><div class="rd-bar-fill {status}" style="width:{pct}%"></div></div>'
           f'<div class="rd-job-info">{info}</div>')
    if status == "running":
        return f'<div class="rd-job">{head} — running{bar}</div>'
    if status == "done":
        res = snap.get("result") or {}
        return (f'<div class="rd-job done">✓ Adapter <b>{_e(res.get("adapter", p.get("adapter")))}</b> is ready '
                f'and selected in the adapter menu ({_fmt_s(snap.get("elapsed_s", 0))}).{bar}'
                f'{metrics_table(res.get("metrics_before"), res.get("metrics_after"))}</div>')
    icon = "■" if status == "cancelled" else "⚠"
    return (f'<div class="rd-job {status}">{icon} {head}: {status}. {_e(snap.get("error", ""))} '
            f'Previous adapters are unchanged.{bar}</div>')


def metrics_table(before: dict | None, after: dict | None) -> str:
    before, after = before or {}, after or {}
    keys = [k for k in ("hr@10", "ndcg@10") if k in before or k in after]
    if not keys:
        return ""
    rows = []
    for k in keys:
        b, a = before.get(k), after.get(k)
        delta = f"{a - b:+.3f}" if a is not None and b is not None else ""
        rows.append(f"<tr><td>{k.upper()}</td><td>{_num(b)}</td><td>{_num(a)}</td><td>{delta}</td></tr>")
    return ('<table class="rd-table rd-metrics"><thead><tr><th>validation</th><th>before</th><th>after</th>'
            f'<th>Δ</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def upload_html(summary: dict) -> str:
    return (f'<div class="rd-notice ok">Added dataset <b>{_e(summary.get("name"))}</b>: '
            f'{summary.get("users")} users, {summary.get("items")} items, '
            f'{summary.get("interactions")} interactions. It is now in both dataset menus.</div>')


def task_choices() -> list[tuple[str, str]]:
    return [(label, name) for name, label in TASKS.items()]


def _num(x) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "—"
    return "—" if x != x else f"{x:.3f}"  # None / NaN (a ranker that gave no score) -> a dash


def _fmt_s(seconds) -> str:
    s = int(round(float(seconds or 0)))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


CSS = """
.gradio-container {max-width: 1640px !important}
#rd-header h1 .rd-sub {font-size: 1rem; font-weight: 400; color: var(--body-text-color-subdued); margin-left: 8px}
#rd-header {align-items: center}
#rd-header h1 {margin: 0; font-size: 1.6rem}
#rd-header p {margin: 2px 0 0; color: var(--body-text-color-subdued)}
.rd-status {display: inline-block; padding: 4px 12px; border-radius: 999px; font-size: .85rem; float: right}
.rd-status.ok {background: #dcfce7; color: #166534}
.rd-status.busy {background: #fef9c3; color: #854d0e}
.rd-status.bad {background: #fee2e2; color: #991b1b}
.rd-panel {border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 14px 16px;
  background: var(--background-fill-primary)}
.rd-muted {color: var(--body-text-color-subdued)}
.rd-placeholder {text-align: center; padding: 28px}
.rd-h {font-weight: 600; font-size: .8rem; text-transform: uppercase; letter-spacing: .06em;
  color: var(--body-text-color-subdued); margin-bottom: 8px}
.rd-summary {margin: 0 0 10px; line-height: 1.5}
.rd-summary mark {background: #e0e7ff; color: #3730a3; padding: 0 3px; border-radius: 4px}
.rd-kws {display: flex; flex-wrap: wrap; gap: 8px}
.rd-kw {display: flex; flex-direction: column; padding: 6px 10px; border-radius: 10px; max-width: 320px}
.rd-kw.grounded {background: #eef2ff; border: 1px solid #c7d2fe}
.rd-kw.grounded .rd-kw-text {color: #3730a3; font-weight: 600}
.rd-kw.grounded.heuristic {background: #f8fafc; border-color: #cbd5e1}
.rd-kw.grounded.heuristic .rd-kw-text {color: #475569}
.rd-kw.ungrounded {background: transparent; border: 1px dashed #d1d5db}
.rd-kw.ungrounded .rd-kw-text {color: #9ca3af; text-decoration: line-through}
.rd-kw-support {font-size: .75rem; color: var(--body-text-color-subdued)}
.rd-cards {display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 12px}
.rd-card {border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 12px 14px;
  background: var(--background-fill-primary); box-shadow: 0 1px 2px rgba(0,0,0,.04)}
.rd-card-top {display: flex; align-items: flex-start; gap: 8px}
.rd-rank {flex: none; width: 26px; height: 26px; border-radius: 50%; background: #4f46e5; color: white;
  font-weight: 700; font-size: .8rem; display: flex; align-items: center; justify-content: center}
.rd-title {flex: 1; font-weight: 600; line-height: 1.3}
.rd-move {flex: none; font-size: .75rem; font-weight: 600; padding: 2px 8px; border-radius: 999px}
.rd-move.up {background: #dcfce7; color: #166534}
.rd-move.down {background: #fee2e2; color: #991b1b}
.rd-move.same {background: #f3f4f6; color: #4b5563}
.rd-move.new {background: #dbeafe; color: #1e40af}
.rd-tags {margin: 6px 0 4px 34px}
.rd-tag {display: inline-block; font-size: .72rem; padding: 1px 8px; margin: 0 4px 4px 0; border-radius: 999px;
  background: var(--background-fill-secondary); color: var(--body-text-color-subdued)}
.rd-why {margin: 6px 0; font-size: .88rem; font-style: italic; line-height: 1.4}
.rd-because {font-size: .72rem; text-transform: uppercase; letter-spacing: .05em; color: var(--body-text-color-subdued)}
.rd-ev {list-style: none; padding: 0; margin: 2px 0 6px}
.rd-ev li {font-size: .82rem; display: flex; justify-content: space-between; gap: 8px; padding: 2px 0;
  border-bottom: 1px dotted var(--border-color-primary)}
.rd-ev-kind {color: var(--body-text-color-subdued); white-space: nowrap}
.rd-score {font-size: .72rem; color: var(--body-text-color-subdued)}
.rd-provisional-note {font-size: .82rem; color: #854d0e; background: #fef9c3; border-radius: 8px; padding: 4px 10px;
  margin-bottom: 8px}
.rd-card.rd-provisional {opacity: .75; border-style: dashed}
.rd-move.provisional {background: #fef9c3; color: #854d0e}
.rd-stage-rerank .rd-card {animation: rd-in .35s ease-out}
@keyframes rd-in {from {transform: translateY(6px); opacity: .4} to {transform: none; opacity: 1}}
.rd-pending {color: var(--body-text-color-subdued); font-style: italic}
.rd-working {color: #4f46e5}
.rd-steer {margin: 4px 0 0 34px; display: flex; flex-wrap: wrap; gap: 6px; font-size: .72rem}
.rd-edit-move {font-weight: 600; padding: 1px 8px; border-radius: 999px; background: #ede9fe; color: #5b21b6}
.rd-edit-move.down {background: #fee2e2; color: #991b1b}
.rd-steer-why {color: #5b21b6}
.rd-dismiss {float: right; font-size: .72rem; border: 1px solid var(--border-color-primary); border-radius: 999px;
  padding: 0 8px; background: transparent; color: var(--body-text-color-subdued); cursor: pointer}
.rd-dismiss:hover {color: #991b1b; border-color: #fecaca}
.rd-kw.user {background: #ede9fe; border-color: #c4b5fd}
.rd-kw.user .rd-kw-text {color: #5b21b6}
.rd-table-wrap {max-height: 760px; overflow-y: auto; padding-top: 10px}
.rd-table {width: 100%; border-collapse: collapse; font-size: .82rem}
.rd-table th {text-align: left; position: sticky; top: 0; background: var(--background-fill-primary);
  border-bottom: 1px solid var(--border-color-primary); padding: 4px 6px}
.rd-table td {padding: 4px 6px; border-bottom: 1px solid var(--border-color-primary); vertical-align: top}
.rd-table, .rd-table tr, .rd-table th, .rd-table td {border-left: none !important; border-right: none !important; border-top: none !important}
.rd-table {border: none !important; margin: 0 !important}
.rd-table .rd-num {text-align: right; font-variant-numeric: tabular-nums}
.rd-table .rd-attrs {color: var(--body-text-color-subdued); font-size: .75rem}
.rd-table tr.rd-picked td {background: #eef2ff}
.rd-llm {font-size: .7rem; background: #4f46e5; color: white; border-radius: 999px; padding: 0 6px; margin-left: 4px}
.rd-meta {font-size: .82rem; color: var(--body-text-color-subdued); padding: 6px 2px}
.rd-warn {font-size: .82rem; color: #92400e}
.rd-notice {padding: 10px 14px; border-radius: 10px; margin: 4px 0}
.rd-notice.error {background: #fee2e2; color: #991b1b; border: 1px solid #fecaca}
.rd-notice.ok {background: #dcfce7; color: #166534; border: 1px solid #bbf7d0}
.rd-notice.info {background: #e0f2fe; color: #075985; border: 1px solid #bae6fd}
.rd-job {font-size: .85rem; padding: 8px 0}
.rd-bar {height: 10px; border-radius: 999px; background: var(--background-fill-secondary); overflow: hidden; margin: 6px 0 4px}
.rd-bar-fill {height: 100%; background: #4f46e5; transition: width .4s}
.rd-bar-fill.done {background: #16a34a}
.rd-bar-fill.failed, .rd-bar-fill.cancelled {background: #9ca3af}
.rd-job-info {font-size: .78rem; color: var(--body-text-color-subdued)}
.rd-metrics {margin-top: 6px}
#rd-history label, #rd-suggestions label {width: 100%}
#rd-notice:not(:has(.rd-notice)), #rd-up-msg:not(:has(.rd-notice)) {display: none}
#rd-recommend {margin-top: 6px}
"""
