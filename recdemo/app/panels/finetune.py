"""The side panel: upload a dataset, fine-tune an adapter on it (a background job per session),
follow its progress and loss. The fields start from cfg.finetune and end at cfg.limits."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from recdemo.app import events, render
from recdemo.app.context import AppContext
from recdemo.app.panels.picker import Picker
from recdemo.app.panels.state import Session, session_id

LORA_RANKS = (4, 8, 16, 32)


@dataclass
class FineTune:
    up_inter: gr.File
    up_items: gr.File
    up_name: gr.Textbox
    up_btn: gr.Button
    up_msg: gr.HTML
    dataset: gr.Dropdown
    tasks: gr.CheckboxGroup
    steps: gr.Number
    rank: gr.Dropdown
    lr: gr.Number
    eval_users: gr.Number
    name: gr.Textbox
    start: gr.Button
    cancel: gr.Button
    progress: gr.HTML
    plot: gr.LinePlot
    timer: gr.Timer


def loss_frame(points) -> pd.DataFrame:
    return pd.DataFrame(points or [], columns=["step", "loss"])


def build(ctx: AppContext, default: str) -> FineTune:
    with gr.Sidebar(open=False, position="right", width=380, elem_id="rd-sidebar"):
        gr.Markdown("### Fine-tune an adapter\nLoRA on the base model; recommendations keep "
                    "working while it runs.")
        upload = _upload(ctx)
        dataset = gr.Dropdown(ctx.datasets(), value=default, label="Dataset", elem_id="rd-ft-dataset")
        tasks, steps, rank, lr, eval_users = _settings(ctx)
        name = gr.Textbox(events.next_adapter_name(ctx, default), label="Adapter name", elem_id="rd-ft-name")
        with gr.Row():
            start = gr.Button("Start fine-tune", variant="primary", elem_id="rd-ft-start")
            cancel = gr.Button("Cancel", variant="stop", elem_id="rd-ft-cancel")
        progress = gr.HTML(elem_id="rd-ft-progress")
        plot = gr.LinePlot(loss_frame([]), x="step", y="loss", title="Training loss", height=220,
                           elem_id="rd-ft-plot")
        timer = gr.Timer(1.0, active=False)
    return FineTune(*upload, dataset, tasks, steps, rank, lr, eval_users, name, start, cancel, progress, plot,
                    timer)


def _upload(ctx: AppContext) -> tuple:
    with gr.Accordion("Upload your own data", open=False, elem_id="rd-upload"):
        gr.Markdown("`interactions.csv`: user_id,item_id,timestamp[,rating] · `items.csv`: "
                    "item_id,title[,description][,categories] (categories split by `|`). "
                    f"Up to {ctx.cfg.limits.max_upload_mb} MB each.")
        inter = gr.File(label="interactions.csv", file_types=[".csv"], type="filepath", elem_id="rd-up-inter")
        items = gr.File(label="items.csv", file_types=[".csv"], type="filepath", elem_id="rd-up-items")
        name = gr.Textbox(label="Dataset name", value="my-data", elem_id="rd-up-name")
        btn = gr.Button("Check and add dataset", elem_id="rd-up-btn")
        msg = gr.HTML(elem_id="rd-up-msg")
    return inter, items, name, btn, msg


def _settings(ctx: AppContext) -> tuple:
    defaults, limits = ctx.cfg.finetune, ctx.cfg.limits
    tasks = gr.CheckboxGroup(render.task_choices(), value=list(defaults.tasks), label="Tasks",
                             elem_id="rd-ft-tasks")
    with gr.Row():
        steps = gr.Number(defaults.steps, label="Steps", precision=0, minimum=1,
                          maximum=limits.max_finetune_steps, elem_id="rd-ft-steps")
        rank = gr.Dropdown(sorted({*LORA_RANKS, defaults.lora_r}), value=defaults.lora_r, label="LoRA rank",
                           elem_id="rd-ft-rank")
    with gr.Row():
        lr = gr.Number(defaults.lr, label="Learning rate", elem_id="rd-ft-lr")
        eval_users = gr.Number(defaults.eval_users, label="Validation users", precision=0, minimum=2,
                               elem_id="rd-ft-eval")
    return tasks, steps, rank, lr, eval_users


def wire(ctx: AppContext, f: FineTune, p: Picker, s: Session) -> None:
    def on_upload(f_inter, f_items, name, request: gr.Request):
        session = session_id(request)
        ok, html = events.upload_dataset(ctx, f_inter, f_items, name, session)
        if not ok:
            return html, gr.skip(), gr.skip(), gr.skip()
        choices = ctx.datasets(session)
        return (html, gr.update(choices=choices), gr.update(choices=choices, value=name.strip()),
                events.next_adapter_name(ctx, name.strip(), session))

    f.up_btn.click(on_upload, [f.up_inter, f.up_items, f.up_name], [f.up_msg, p.dataset, f.dataset, f.name])

    def on_start(ds, tasks, steps, rank, lr, name, n_eval, current, request: gr.Request):
        jid, html = events.start_finetune(ctx, ds, tasks, steps, rank, lr, name, n_eval, current=current,
                                          session=session_id(request))
        if jid is not None and jid == current:
            # refused as an error, not a toast-only warning: an API client must learn it too (issue 18),
            # and no output changes, so the running job keeps its progress, plot and job id
            raise gr.Error(events.STILL_RUNNING, print_exception=False)
        return jid, html, loss_frame([]), gr.Timer(active=jid is not None)

    f.start.click(on_start, [f.dataset, f.tasks, f.steps, f.rank, f.lr, f.name, f.eval_users, s.job_id],
                  [s.job_id, f.progress, f.plot, f.timer])

    def on_tick(jid, ft_ds, request: gr.Request):
        session = session_id(request)
        st = events.poll_finetune(ctx, jid)
        if not st["finished"]:
            return st["html"], loss_frame(st["losses"]), gr.skip(), gr.skip(), gr.skip()
        ad = (gr.update(choices=events.adapter_choices(ctx, session), value=st["adapter"]) if st["adapter"]
              else gr.update(choices=events.adapter_choices(ctx, session)))
        return (st["html"], loss_frame(st["losses"]), ad, gr.Timer(active=False),
                events.next_adapter_name(ctx, ft_ds, session))

    f.timer.tick(on_tick, [s.job_id, f.dataset], [f.progress, f.plot, p.adapter, f.timer, f.name],
                 show_progress="hidden")
    def on_dataset(ds, request: gr.Request):
        return events.next_adapter_name(ctx, ds, session_id(request))

    f.dataset.input(on_dataset, f.dataset, f.name, show_progress="hidden")
    def on_cancel(jid):  # a named handler: its API endpoint is /on_cancel (scripts and bench/abuse.py use it)
        return events.cancel_finetune(ctx, jid)

    f.cancel.click(on_cancel, s.job_id, f.progress)


def wire_session_end(ctx: AppContext, demo: gr.Blocks) -> None:
    """When a tab closes (or reloads), its uploads, their adapters and their running work go."""
    def on_unload(request: gr.Request):
        events.end_session(ctx, session_id(request))

    demo.unload(on_unload)
