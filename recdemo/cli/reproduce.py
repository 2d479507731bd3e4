"""`python -m recdemo reproduce`: the papers' adapters fine-tuned and evaluated in one run (finetune/reproduce.py)."""
from __future__ import annotations

import sys
import time

import torch

from recdemo.finetune.repro_report import markdown
from recdemo.finetune.reproduce import check_papers, run_reproduce
from recdemo.llm.stack import Stack, load_training_llm


def cli_reproduce(args, cfg) -> int:
    check_papers(cfg.reproduce.papers)  # before anything slow
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    stack = Stack.from_config(cfg, retriever_text_fallback=False)  # evaluation histories are SASRec's own
    dataset, retriever = stack.dataset, stack.retriever  # SASRec trains here if it has no checkpoint yet
    setup = {"load the dataset and SASRec": time.perf_counter() - start}
    llm = load_training_llm(cfg.llm)  # one model: trained in place, then served for the evaluation
    table = run_reproduce(cfg, dataset, retriever, llm, log=lambda text: print(text, file=sys.stderr), setup=setup)
    print(markdown(table))
    print(f"wrote {table['folder']}/results.md and results.json", file=sys.stderr)
    return 0
