"""Which torch device a command runs on, checked before anything is loaded onto it.

Asked for "cuda" on a torch built without CUDA, torch itself fails deep inside the first
`.to()` with an assertion; this says in one line what is missing and what to ask for instead.
"""

from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    """The device `name` means: "auto" is CUDA when available, else the CPU; "cpu", "cuda",
    "cuda:N" and "mps" must exist on this machine (ValueError saying why not)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device {name!r}: not a torch device ({err}); use auto, cpu or cuda") from None
    if device.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise ValueError(f"device {name!r}: this torch ({torch.__version__}) was built without CUDA; "
                             "install a CUDA build of torch, or use device cpu (or auto)")
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: torch has CUDA but sees no GPU (driver, or CUDA_VISIBLE_DEVICES?); "
                             "use device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS (Apple GPU) is not available here; use device cpu (or auto)")
    return device
