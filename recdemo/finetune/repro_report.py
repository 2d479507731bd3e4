"""What `reproduce` writes beside its numbers: the commands behind them and the Markdown table.

The commands are built from the effective config (every flag that differs from its dataclass
default, so a default changed later cannot silently change what a command meant): the reproduce
command itself, and per adapter and per table row the ``finetune`` / ``evaluate`` command that
computes the same thing on its own. The reproduce run's adapters are not under the app's adapter
folder, so each ``evaluate`` with an adapter points ``RECDEMO_ADAPTER_DIR`` at the run's folder
(adapters are requested by name, never by path).
"""
from __future__ import annotations

import shlex
from dataclasses import fields

from recdemo.config import Config, FinetuneConfig, ReproduceConfig, flag_name

PROGRAM = ["python", "-m", "recdemo"]
# Fine-tune fields the reproduce run sets itself for every adapter (not the user's to choose there).
PER_ADAPTER = ("tasks", "out", "init_adapter")
PROTOCOL_SASREC = "SASRec's own top-k, full catalog ranked, history excluded"
PROTOCOL_LLM = "LLM alone reorders SASRec's top-{n}; target outside it = miss"
PROTOCOL_GENERATIVE = "LLM alone generates titles from the catalog (history excluded), list cut at k"


def _value(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def changed_flags(section, defaults, skip=()) -> list[str]:
    """The flags of ``section``'s documented fields whose value differs from ``defaults``'."""
    out = []
    for f in fields(section):
        if "help" not in f.metadata or f.name in skip:
            continue
        value = getattr(section, f.name)
        if value == getattr(defaults, f.name):
            continue
        if isinstance(value, bool):
            out.append(flag_name(f) if value else "--no-" + flag_name(f)[2:])
        elif value is not None:
            out += [flag_name(f), _value(value)]
    return out


def data_flags(cfg: Config) -> list[str]:
    flags = ["--data-dir", cfg.data.data_dir] if cfg.data.data_dir else ["--dataset", cfg.data.dataset]
    return flags + ["--data-root", cfg.data.root]


def llm_flags(cfg: Config) -> list[str]:
    flags = ["--llm", cfg.llm.model]
    for name in ("device", "dtype"):
        if getattr(cfg.llm, name) != "auto":
            flags += [f"--{name}", getattr(cfg.llm, name)]
    return flags


def eval_size_flags(cfg: Config) -> list[str]:
    """--candidates / --top when they differ from the defaults (what every rerank row depends on)."""
    base = Config()
    flags = []
    if cfg.retrieval.n_candidates != base.retrieval.n_candidates:
        flags += ["--candidates", str(cfg.retrieval.n_candidates)]
    if cfg.llm.n_results != base.llm.n_results:
        flags += ["--top", str(cfg.llm.n_results)]
    return flags


def reproduce_command(cfg: Config, run: str) -> str:
    rep = cfg.reproduce
    args = (PROGRAM + ["reproduce"] + data_flags(cfg) + llm_flags(cfg)
            + ["--steps", str(cfg.finetune.steps), "--users", str(rep.users)]
            + changed_flags(rep, ReproduceConfig(), skip=("users", "out")) + ["--out", run]
            + changed_flags(cfg.finetune, FinetuneConfig(), skip=PER_ADAPTER + ("steps",))
            + eval_size_flags(cfg))
    return shlex.join(args)


def finetune_command(cfg: Config, task: str, out: str) -> str:
    args = (PROGRAM + ["finetune"] + data_flags(cfg) + llm_flags(cfg) + ["--tasks", task]
            + changed_flags(cfg.finetune, FinetuneConfig(), skip=PER_ADAPTER) + ["--out", out])
    return shlex.join(args)


def evaluate_command(cfg: Config, ranker: str, adapter: str | None, adapter_dir: str) -> str:
    rep = cfg.reproduce
    args = (PROGRAM + ["evaluate", "--stage", "rerank", "--split", "test"] + data_flags(cfg) + llm_flags(cfg)
            + ["--ranker", ranker, "--adapter", adapter or "none", "--no-fuse", "--users", str(rep.users),
               "--seed", str(rep.eval_seed), "--batch-size", str(rep.eval_batch_size)] + eval_size_flags(cfg))
    env = f"RECDEMO_ADAPTER_DIR={shlex.quote(adapter_dir)} " if adapter else ""
    return env + shlex.join(args)


# -- the Markdown table --
def _metric_columns(k: int) -> list[str]:
    """The project's rerank metrics: @5 and @k (the list's length), and MRR within the list."""
    return ["hr@5", "ndcg@5"] + ([f"hr@{k}", f"ndcg@{k}"] if k != 5 else []) + ["mrr"]


def markdown(table: dict) -> str:
    """The results table with its protocol, settings, wall times and commands."""
    k = table["k"]
    cols = _metric_columns(k)
    lines = [f"# Reproduced: {', '.join(a['paper'] for a in table['adapters'])} on {table['dataset']}", "",
             f"- dataset `{table['dataset']}` (content hash `{table['dataset_hash']}`), model `{table['model']}` "
             f"({table['device']}, {table['dtype']})",
             f"- fine-tuning: {table['steps']} steps per adapter, seed {table['finetune_seed']}; evaluation: "
             f"{table['users']} test users (seeded sample, seed {table['eval_seed']}), the same for every row",
             f"- SASRec checkpoint: {(table.get('sasrec_checkpoint') or {}).get('created') or 'not recorded'} "
             "(its creation time)",
             f"- protocol: {table['protocol']}", "",
             "| row | ranker | adapter | " + " | ".join(c.upper() for c in cols) + " | users | protocol |",
             "|---|---|---|" + "---:|" * (len(cols) + 1) + "---|"]
    for row in table["rows"]:
        m = row["metrics"]
        lines.append(f"| {row['label']} | {row['ranker'] or '-'} | {row['adapter'] or 'none'} | "
                     + " | ".join(f"{m[c]:.4f}" for c in cols) + f" | {m['users']} | {row['protocol']} |")
    lines += ["", "## Wall time per stage", "", "| stage | seconds | |", "|---|---:|---|"]
    lines += [f"| {s['stage']} | {s['seconds']:.1f} | {'reused from an earlier run' if s.get('reused') else ''} |"
              for s in table["stages"]]
    lines += ["", f"Total {table['wall_seconds']:.1f} s.", "", "## Commands", "", "```sh",
              "# this table", table["commands"]["reproduce"], "# each adapter on its own"]
    lines += list(table["commands"]["finetune"].values())
    lines += ["# each row on its own (SASRec's row is the 'SASRec top-k' line every one of them prints)"]
    lines += list(table["commands"]["evaluate"].values()) + ["```", ""]
    return "\n".join(lines)
