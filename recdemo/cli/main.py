"""`python -m recdemo ...`: the command line. Flags are declared here; each command's work lives
in the module named in HANDLERS (imported lazily so `--help` stays fast)."""
from __future__ import annotations

import argparse
import importlib
import sys

from recdemo.config import Config
from recdemo.errors import DataError

HANDLERS = {
    "data": "recdemo.cli.data:cli_data",
    "train": "recdemo.cli.train:cli_train",
    "evaluate": "recdemo.cli.evaluate:cli_evaluate",
    "recommend": "recdemo.cli.recommend:cli_recommend",
    "finetune": "recdemo.cli.finetune:cli_finetune",
    "demo": "recdemo.cli.demo:cli_demo",
}


def _dataset_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="built-in dataset name (movielens-small, amazon-beauty, ml-1m, ml-20m, ...)")
    p.add_argument("--data-dir", help="a folder holding a dataset in any supported layout")
    p.add_argument("--data-root", help="folder holding the built-in datasets (default: $RECDEMO_DATA_DIR or ./data)")


def _rerank_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-fuse", action="store_true", help="rerank stage: LLM score alone")
    p.add_argument("--batch-size", type=int, default=1,
                   help="rerank stage: users per model call (the score ranker batches; the others run one by one)")
    p.add_argument("--profile", choices=["heuristic", "llm"], default="heuristic",
                   help="rerank stage: the profile the ranker sees (heuristic: no LLM, what recorded numbers used)")


def _llm_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--llm", help="smollm2-135m (default), a Hugging Face model id, or a local folder")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--dtype", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--adapter", help="adapter name under checkpoints/adapters, a folder, 'auto' or 'none'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recdemo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="download or inspect datasets")
    p.add_argument("action", choices=["download", "info"])
    p.add_argument("name", nargs="?", default=None, help="built-in dataset name")
    p.add_argument("--url", help="download from this URL instead (a mirror; the sha256 is still checked)")
    p.add_argument("--force", action="store_true", help="replace an existing copy")
    _dataset_flags(p)

    p = sub.add_parser("train", help="train (or retrain) the SASRec retrieval model")
    _dataset_flags(p)
    p.add_argument("--epochs", type=int, help="at most (the best validation epoch is kept)")
    p.add_argument("--loss", choices=["ce", "bce"])
    # Left out, each takes the dataset's preset (config.SASREC_PRESETS), which made the shipped checkpoint.
    p.add_argument("--maxlen", type=int, dest="sasrec_maxlen", help="history length SASRec attends to")
    p.add_argument("--hidden", type=int, dest="sasrec_hidden", help="embedding / hidden size")
    p.add_argument("--dropout", type=float, dest="sasrec_dropout")
    p.add_argument("--lr", type=float, dest="sasrec_lr", help="peak learning rate (warmup, then cosine decay)")
    p.add_argument("--batch-size", type=int, dest="sasrec_batch_size", help="windows per step")
    p.add_argument("--weight-decay", type=float, dest="sasrec_weight_decay")
    p.add_argument("--seed", type=int, dest="sasrec_seed")
    p.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, dest="sasrec_exclude_seen",
                   help="leave the items already in a window out of its softmax, as evaluation does")
    p.add_argument("--text-features", action=argparse.BooleanOptionalAction, dest="sasrec_text_features",
                   help="add a learned projection of the items' MiniLM text embeddings to their embeddings")
    p.add_argument("--out", help="checkpoint folder (default: checkpoints/)")

    p = sub.add_parser("evaluate", help="full-ranking leave-one-out evaluation")
    _dataset_flags(p)
    _llm_flags(p)
    p.add_argument("--stage", choices=["retrieval", "rerank"], default="retrieval")
    p.add_argument("--protocol", choices=["full", "sampled100"], default="full")
    p.add_argument("--split", choices=["test", "valid"], default="test")
    p.add_argument("--ranker", choices=["palr", "score", "tallrec", "genrec"])
    p.add_argument("--users", type=int, help="evaluate a seeded random sample of N users")
    p.add_argument("--seed", type=int, default=0)
    _rerank_eval_flags(p)
    p.add_argument("--json", help="write the metrics as JSON to this file")

    p = sub.add_parser("recommend", help="run the whole pipeline for one history")
    _dataset_flags(p)
    _llm_flags(p)
    p.add_argument("--history", nargs="+", required=True, help="item titles, oldest first")
    p.add_argument("--ranker", choices=["palr", "score", "tallrec", "genrec"])
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("finetune", help="LoRA fine-tune the LLM on a dataset")
    _dataset_flags(p)
    _llm_flags(p)
    p.add_argument("--tasks", default="recommend,recommend_retrieval",
                   help="comma list of recommend, recommend_retrieval, tallrec, genrec, sequence, rank")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--examples", type=int, help="number of training examples (default: enough for --steps)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int)
    p.add_argument("--lora-targets", default="q_proj,v_proj", help="module names, or all-linear")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--max-length", type=int, default=768)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-users", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="adapter folder, e.g. checkpoints/adapters/movielens-small")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--init-adapter", help="adapter folder to start from (train it further); same --lora-r/--lora-targets")
    p.add_argument("--micro-batch-size", type=int, help="examples per forward pass (default: 1 on CPU, 4 on GPU)")
    p.add_argument("--lora-dropout", type=float)
    p.add_argument("--train-candidates", type=int, help="candidate list length in recommend_retrieval examples (20)")
    p.add_argument("--eval-candidates", type=int, help="candidates per user in the ranking metrics and task rank (50)")
    p.add_argument("--rank-sasrec-weight", type=float,
                   help="task rank: add this x SASRec's z-scored score to the LLM's logits (train the residual; 0)")
    p.add_argument("--history-attributes", action="store_true", default=None,
                   help="show genres/categories in training histories (longer prompts)")
    p.add_argument("--no-rank-eval", action="store_true", help="validation loss only, no ranking metrics")
    p.add_argument("--threads", type=int, help="CPU threads for torch (on a busy shared CPU, 1 can be much faster)")
    p.add_argument("--grad-checkpointing", action="store_true", help="less GPU memory, ~30%% slower steps")

    p = sub.add_parser("demo", help="launch the Gradio app")
    _dataset_flags(p)
    _llm_flags(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--share", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = Config.from_env().apply_args(args)
    module, func = HANDLERS[args.command].split(":")
    handler = getattr(importlib.import_module(module), func)
    try:
        return int(handler(args, cfg) or 0)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a clear one-line message; RECDEMO_DEBUG=1 shows the traceback
        import os
        if os.environ.get("RECDEMO_DEBUG"):
            raise
        from recdemo.errors import ModelNotFound
        label = "error" if isinstance(e, (ModelNotFound, ValueError, FileNotFoundError)) else type(e).__name__
        print(f"{label}: {e}", file=sys.stderr)
        return 1
