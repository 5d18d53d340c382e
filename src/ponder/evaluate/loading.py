"""What the commands that run a checkpoint on a task load: the problems a task names, and the
checkpoint with its tokenizer for inference.

One home for `ponder generate`, `ponder eval` (with or without --strategy) and `ponder
scale-curve`, below the evaluation and scaling commands that both use it.
"""

from __future__ import annotations


def load_problems(args) -> list:
    """The problems that --task, --data, --split, --prompt-column, --answer-column and --limit name."""
    from ponder.tasks import load_task

    columns = {"prompt_column": getattr(args, "prompt_column", None),
               "answer_column": getattr(args, "answer_column", None)}
    if any(columns.values()) and args.task != "jsonl":
        raise ValueError(f"--prompt-column / --answer-column apply to --task jsonl (your own records); "
                         f"task {args.task!r} reads its own fields")
    return load_task(args.task, path=args.data, limit=args.limit, split=getattr(args, "split", None), **columns)


def load_model(path, device: str = "auto", dtype: str = "float32"):
    """The checkpoint at `path` for inference on `device` (ponder.device), and its tokenizer.
    The device is checked first, then the checkpoint, then its tokenizer: a missing folder is
    reported as such."""
    import torch

    from ponder.device import pick_device
    from ponder.models import from_pretrained
    from ponder.models.checkpoint import resolve
    from ponder.tokenizer import Tokenizer

    device = pick_device(device)
    folder = resolve(path)  # a folder, or a hub id in the local cache: the tokenizer is read from the same place
    model = from_pretrained(folder, dtype=getattr(torch, dtype), device=device).eval()
    return model, Tokenizer.from_pretrained(folder)
