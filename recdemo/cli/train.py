"""`python -m recdemo train`: (re)train SASRec for a dataset and save the checkpoint."""
from __future__ import annotations

from recdemo.data import load_from_config
from recdemo.retrieval.checkpoint import cache_key, save_checkpoint
from recdemo.retrieval.train import train_sasrec


def cli_train(args, cfg) -> int:
    """`python -m recdemo train`: (re)train SASRec for a dataset and save the checkpoint."""
    dataset = load_from_config(cfg.data)
    rcfg = cfg.retrieval.for_dataset(dataset.name)
    # A built-in dataset's checkpoint is the shipped one; any other folder's goes to the cache under
    # its content hash (where `evaluate`/`recommend` look), so a folder named like a built-in never
    # replaces the shipped checkpoint.
    out, key = getattr(args, "out", None), dataset.name
    if not out:
        out, key = ((rcfg.checkpoint_dir, dataset.name) if cfg.data.data_dir is None
                    else (rcfg.cache_dir, cache_key(dataset)))
    print(f"SASRec on {dataset.name} ({dataset.content_hash}): {len(dataset.users)} users, {dataset.n_items} items; "
          f"loss={rcfg.loss} maxlen={rcfg.maxlen} hidden={rcfg.hidden} dropout={rcfg.dropout} "
          f"lr={rcfg.lr} batch={rcfg.batch_size} epochs<={rcfg.epochs}")
    model, report = train_sasrec(dataset, rcfg, progress=True)
    path = save_checkpoint(model, rcfg, dataset, out, report, key=key)
    valid = report["valid"]
    print(f"best epoch {report['best_epoch']} of {report['epochs_run']}: valid NDCG@10 {valid.get('ndcg@10', 0):.4f}, "
          f"HR@10 {valid.get('hr@10', 0):.4f}; {report['seconds']:.0f} s "
          f"({report['seconds_per_epoch']:.1f} s/epoch)")
    print(f"saved {path}")
    return 0
