"""Independent network calls spread over Python threads on a CPU, one intra-op thread each.

A diffusion U-Net's convolutions on a brain box (72 x 80) are too small for PyTorch's intra-op
threads to keep two cores busy; two calls side by side, each on one core, do
(docs/performance.md, "CPU workers"). PyTorch releases the GIL inside its kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``threads`` for the block (the setting is
    process-wide)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def map_calls(call: Callable[[Item], Result], items: Sequence[Item], workers: int) -> list[Result]:
    """``[call(item) for item in items]``, on ``workers`` threads with one intra-op thread each
    when ``workers`` > 1, in inference mode (which a new thread does not inherit)."""
    if workers <= 1 or len(items) <= 1:
        return [call(item) for item in items]

    def run(item: Item) -> Result:
        with torch.inference_mode():
            return call(item)

    with intra_op_threads(1), ThreadPoolExecutor(min(workers, len(items))) as pool:
        return list(pool.map(run, items))
