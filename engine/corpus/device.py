"""The one device resolver: what `--device` may say, checked before any model is built.

None and "cpu" mean the CPU (CUDA is used only when asked for); "cuda" / "cuda:N" need a CUDA build of
PyTorch that sees that GPU; "auto" takes the first GPU when there is one. Anything else, or CUDA on a CPU
build, is a `RequestError` naming `--device` and what to do. torch is imported only when CUDA is asked for.
"""

from __future__ import annotations

import re

from engine.corpus.types import RequestError

_CUDA = re.compile(r"^cuda(:\d+)?$")


def resolve_device(device: object | None) -> str:
    """The device string torch should use ("cpu", "cuda", "cuda:1"), or a RequestError saying why not."""
    name = "cpu" if device is None else str(device).strip().lower()
    if name == "cpu":
        return "cpu"
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if not _CUDA.match(name):
        raise RequestError("--device", f"unknown device {device!r}; choose cpu, cuda, cuda:N or auto")
    import torch

    if not torch.cuda.is_available():
        build = torch.__version__
        raise RequestError("--device", f"{name} requested but this PyTorch ({build}) has no usable CUDA device; "
                           "install the CUDA build of torch (README: GPU) or use --device cpu")
    n = torch.cuda.device_count()
    idx = int(name.split(":")[1]) if ":" in name else 0
    if idx >= n:
        raise RequestError("--device", f"{name} requested but only {n} CUDA device(s) are visible")
    return name
