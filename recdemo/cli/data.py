"""`python -m recdemo data download NAME` and `data info`."""
from __future__ import annotations

from dataclasses import replace

from recdemo.data.dataset import load_from_config
from recdemo.data.download import SOURCES, builtin_status, download, info
from recdemo.errors import DataError


def cli_data(args, cfg) -> int:
    """``data download NAME [--url URL] [--force]`` and ``data info [NAME | --data-dir PATH]``."""
    name = args.name or getattr(args, "data.dataset", None)  # --dataset, as given (cfg has a default)
    if args.action == "download":
        if not name:
            raise DataError(f"which dataset? python -m recdemo data download {{{','.join(SOURCES)}}}")
        download(name, cfg.data.root, url=args.url, force=args.force)
        return 0
    if name or cfg.data.data_dir:  # one dataset in detail
        data_cfg = replace(cfg.data, dataset=name or cfg.data.dataset)
        lines = info(data_cfg) + statistics_lines(load_from_config(data_cfg).statistics())
    else:  # which built-ins are there
        lines = builtin_status(cfg.data.root)
    print("\n".join(lines))
    return 0


def statistics_lines(s: dict) -> list[str]:
    """``Dataset.statistics()`` as lines for ``data info``."""
    # users, items and interactions are on info()'s first line
    return [f"  repeat share {s['repeat_share']:.2%} ({s['repeats']:,} interactions repeat an item already in "
            "the user's history)",
            f"  leave-one-out split: train {s['train_interactions']:,} interactions "
            f"({s['train_targets']:,} next-item targets), valid {s['valid_cases']:,} cases, "
            f"test {s['test_cases']:,} cases"]
