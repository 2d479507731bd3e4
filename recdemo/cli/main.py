"""`python -m recdemo ...`: the command line. Flags are declared here; each command's work lives
in the module named in COMMANDS (imported lazily so `--help` stays fast).

A flag that sets a config field is derived from the field (``config_flag``): its name, type, help
and shown default come from the dataclass, its dest is ``section.field``, and ``Config.apply_args``
overlays exactly the flags given. Only command-specific options (``--json``, ``--threads``, ...) are
written here.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import MISSING, fields

from recdemo.config import Config, FinetuneConfig, LimitsConfig, ReproduceConfig, flag_name
from recdemo.errors import DataError, ModelNotFound
from recdemo.llm.rankers import RANKERS

_TYPES = {"int": int, "float": float, "str": str, "list": str}


def config_flag(p: argparse.ArgumentParser, section: str, name: str, aliases: tuple[str, ...] = (),
                **overrides) -> None:
    """Add the flag of config field ``section.name`` (and ``aliases``, other names for the same flag);
    ``overrides`` are extra add_argument options."""
    f = {f.name: f for f in fields(getattr(Config(), section))}[name]
    kind = str(f.type).split("[")[0].split(" |")[0]
    default = f.default if f.default is not MISSING else f.default_factory()
    shown = ",".join(default) if isinstance(default, list) else default
    text = f.metadata.get("help", "") + (f" (default: {shown})" if shown not in (None, "") else "")
    flag = flag_name(f)
    options = {"dest": f"{section}.{name}", "default": None, "help": text.replace("%", "%%")}
    if kind == "bool":
        options["action"] = argparse.BooleanOptionalAction
    else:
        options.update(type=_TYPES[kind], metavar=flag.lstrip("-").replace("-", "_").upper())
    if "choices" in overrides:  # argparse shows the choices instead
        options.pop("metavar", None)
    options.update(overrides)
    p.add_argument(flag, *aliases, **options)


def count(limits: LimitsConfig, limit: str, what: str):
    """An argparse type: a whole number from 1 to the limit (the Recommender checks it again)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        try:
            return limits.check(limit, n, what)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _dataset_flags(p: argparse.ArgumentParser) -> None:
    for name in ("dataset", "data_dir", "root"):
        config_flag(p, "data", name)


def _list_size_flags(p: argparse.ArgumentParser, limits: LimitsConfig) -> None:
    """SASRec candidates the ranker reorders and the final list's length."""
    config_flag(p, "retrieval", "n_candidates", type=count(limits, "max_candidates", "candidates"))
    config_flag(p, "llm", "n_results", type=count(limits, "max_results", "results"))


def _rerank_eval_flags(p: argparse.ArgumentParser, limits: LimitsConfig) -> None:
    p.add_argument("--no-fuse", action="store_true", help="rerank stage: LLM score alone")
    p.add_argument("--batch-size", type=int, default=1,
                   help="rerank stage: users per model call (every ranker batches; the same metrics as 1)")
    p.add_argument("--profile", choices=["heuristic", "llm"], default="heuristic",
                   help="rerank stage: the profile the ranker sees (heuristic: no LLM, what recorded numbers used)")
    _list_size_flags(p, limits)


def _llm_flags(p: argparse.ArgumentParser, ranker: bool = True) -> None:
    for name in ("model", "device", "dtype", "adapter"):
        config_flag(p, "llm", name)
    if ranker:
        config_flag(p, "llm", "ranker", choices=list(RANKERS))


def _data_parser(p: argparse.ArgumentParser, limits: LimitsConfig) -> None:
    p.add_argument("action", choices=["download", "info"])
    p.add_argument("name", nargs="?", default=None, help="built-in dataset name")
    p.add_argument("--url", help="download from this URL instead (a mirror; the sha256 is still checked)")
    p.add_argument("--force", action="store_true", help="replace an existing copy")
    _dataset_flags(p)


def _train_parser(p: argparse.ArgumentParser, limits: LimitsConfig) -> None:
    p.description = ("SASRec settings left out take the dataset's preset (config.SASREC_PRESETS), which made "
                     "the shipped checkpoint.")
    _dataset_flags(p)
    for name in ("epochs", "maxlen", "hidden", "dropout", "lr", "batch_size", "weight_decay", "seed",
                 "exclude_seen", "text_features"):
        config_flag(p, "retrieval", name)
    config_flag(p, "retrieval", "loss", choices=["ce", "bce"])
    p.add_argument("--out", help="checkpoint folder (default: checkpoints/)")


def _evaluate_parser(p: argparse.ArgumentParser, limits: LimitsConfig) -> None:
    _dataset_flags(p)
    _llm_flags(p)
    p.add_argument("--stage", choices=["retrieval", "rerank"], default="retrieval")
    p.add_argument("--protocol", choices=["full", "sampled100"], default="full")
    p.add_argument("--split", choices=["test", "valid"], default="test")
    p.add_argument("--users", type=int, help="evaluate a seeded random sample of N users")
    p.add_argument("--seed", type=int, default=0, help="seed of the user sample")
    _rerank_eval_flags(p, limits)
    p.add_argument("--json", help="write the metrics as JSON to this file")


def _recommend_parser(p: argparse.ArgumentParser, limits: LimitsConfig) -> None:
    _dataset_flags(p)
    _llm_flags(p)
    p.add_argument("--history", nargs="+", required=True, help="item titles, oldest first")
    _list_size_flags(p, limits)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _finetune_parser(p: argparse.ArgumentParser, limits: LimitsConfig) -> None:
    _dataset_flags(p)
    _llm_flags(p, ranker=False)
    for f in fields(FinetuneConfig):  # every documented fine-tune setting is a flag; FineTuneSpec checks them
        if "help" in f.metadata:
            config_flag(p, "finetune", f.name, **({"required": True} if f.name == "out" else {}))
    p.add_argument("--threads", type=int, help="CPU threads for torch (on a busy shared CPU, 1 can be much faster)")


def _reproduce_parser(p: argparse.ArgumentParser, limits: LimitsConfig) -> None:
    p.description = ("Fine-tunes one adapter per paper into the run folder, evaluates SASRec and every ranker "
                     "with and without its adapter on the same test users, and writes results.md/.json there. "
                     "The fine-tune flags apply to every adapter; a rerun reuses the stages already done.")
    _dataset_flags(p)
    config_flag(p, "llm", "model", aliases=("--model",))
    for name in ("device", "dtype"):
        config_flag(p, "llm", name)
    for f in fields(ReproduceConfig):
        config_flag(p, "reproduce", f.name)
    for f in fields(FinetuneConfig):  # the settings of every adapter; the run names each task and folder
        if "help" in f.metadata and f.name not in ("tasks", "out", "init_adapter"):
            config_flag(p, "finetune", f.name)
    _list_size_flags(p, limits)
    p.add_argument("--threads", type=int, help="CPU threads for torch (on a busy shared CPU, 1 can be much faster)")


def _demo_parser(p: argparse.ArgumentParser, limits: LimitsConfig) -> None:
    _dataset_flags(p)
    _llm_flags(p)
    for name in ("host", "port", "share"):
        config_flag(p, "app", name)


# command -> (help, the function adding its flags, its handler "module:function")
COMMANDS = {
    "data": ("download or inspect datasets", _data_parser, "recdemo.cli.data:cli_data"),
    "train": ("train (or retrain) the SASRec retrieval model", _train_parser, "recdemo.cli.train:cli_train"),
    "evaluate": ("full-ranking leave-one-out evaluation", _evaluate_parser, "recdemo.cli.evaluate:cli_evaluate"),
    "recommend": ("run the whole pipeline for one history", _recommend_parser,
                  "recdemo.cli.recommend:cli_recommend"),
    "finetune": ("LoRA fine-tune the LLM on a dataset", _finetune_parser, "recdemo.cli.finetune:cli_finetune"),
    "reproduce": ("fine-tune the papers' adapters and evaluate them against SASRec in one run", _reproduce_parser,
                  "recdemo.cli.reproduce:cli_reproduce"),
    "demo": ("launch the Gradio app", _demo_parser, "recdemo.cli.demo:cli_demo"),
}


def build_parser(limits: LimitsConfig | None = None) -> argparse.ArgumentParser:
    """``limits`` bound the request sizes the flags accept (default: LimitsConfig's)."""
    limits = limits or LimitsConfig()
    parser = argparse.ArgumentParser(prog="python -m recdemo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command, (text, add_flags, _) in COMMANDS.items():
        add_flags(sub.add_parser(command, help=text), limits)
    return parser


def main(argv: list[str] | None = None) -> int:
    env_cfg = Config.from_env()
    args = build_parser(env_cfg.limits).parse_args(argv)
    cfg = env_cfg.apply_args(args)
    module, func = COMMANDS[args.command][2].split(":")
    handler = getattr(importlib.import_module(module), func)
    try:
        return int(handler(args, cfg) or 0)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a clear one-line message; RECDEMO_DEBUG=1 (cfg.log.debug) shows the traceback
        if cfg.log.debug:
            raise
        label = "error" if isinstance(e, (ModelNotFound, ValueError, FileNotFoundError)) else type(e).__name__
        print(f"{label}: {e}", file=sys.stderr)
        return 1
