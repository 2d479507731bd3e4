"""`python -m recdemo data download NAME` and `data info`."""
from __future__ import annotations

from dataclasses import replace

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
        lines = info(replace(cfg.data, dataset=name or cfg.data.dataset))
    else:  # which built-ins are there
        lines = builtin_status(cfg.data.root)
    print("\n".join(lines))
    return 0
