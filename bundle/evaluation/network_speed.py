"""Every way of running the diffusion U-Net on the CPU, one forward pass each, side by side.

The options: float32 as is, channels-last, bfloat16 autocast, the bfloat16 channels-last copy
that ``bundle.ensemble.precision`` runs by default on CPUs with AMX / AVX512-BF16, batch sizes,
1 thread or one per CPU, one call per CPU side by side, and where installed ONNX Runtime
(float32) and OpenVINO (float32, bfloat16) on the traced network, and ``torch.compile`` on
request. ``scripts/network_options.py`` and ``scripts/benchmark.py`` print what :func:`measure`
finds.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bundle.ensemble.precision import NetworkRunner
from bundle.ensemble.workers import intra_op_threads, map_calls

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _Positional(nn.Module):
    """``network(x, t)`` positionally, as tracing for ONNX and OpenVINO needs."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.network(x=x, timesteps=t)


def _onnxruntime(network: nn.Module, example: tuple[torch.Tensor, torch.Tensor]) -> Forward:
    import onnxruntime

    path = Path(tempfile.mkdtemp()) / "network.onnx"
    dynamic = {"x": {0: "batch", 2: "height", 3: "width"}, "t": {0: "batch"}}
    torch.onnx.export(
        _Positional(network), example, str(path), input_names=["x", "t"],
        dynamic_axes=dynamic, dynamo=False,
    )  # fmt: skip
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x, t: torch.from_numpy(session.run(None, {"x": x.numpy(), "t": t.numpy()})[0])


def _openvino(
    network: nn.Module, example: tuple[torch.Tensor, torch.Tensor], precision: str
) -> Forward:
    import openvino

    shapes = [openvino.PartialShape([-1, example[0].shape[1], -1, -1]), openvino.PartialShape([-1])]
    model = openvino.convert_model(_Positional(network), example_input=example, input=shapes)
    compiled = openvino.Core().compile_model(
        model,
        "CPU",
        {
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    return lambda x, t: torch.from_numpy(compiled((x.numpy(), t.numpy()))[0])


def _eager(network: nn.Module, channels_last: bool = False, autocast: bool = False) -> Forward:
    if channels_last:
        network = copy.deepcopy(network).to(memory_format=torch.channels_last)

    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return network(x=x, timesteps=t).float()

    return forward


def _threads(forward: Forward, threads: int) -> Forward:
    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with intra_op_threads(threads):
            return forward(x, t)

    return run


def _side_by_side(forward: Forward, workers: int) -> Forward:
    """The batch in ``workers`` parts, run side by side with one intra-op thread each, as the
    diffusion inferer's ``cpu_workers`` do."""

    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        parts = list(zip(x.chunk(workers), t.chunk(workers), strict=True))
        return torch.cat(map_calls(lambda part: forward(*part), parts, workers))

    return run


def options(
    network: nn.Module, example: tuple[torch.Tensor, torch.Tensor], compile: bool
) -> list[tuple[str, Forward]]:
    """(name, forward) of every option available here; the default one is marked."""
    default = NetworkRunner(network, torch.device("cpu"), amp=True)
    found: list[tuple[str, Forward]] = [
        ("float32", _eager(network)),
        ("float32, channels-last", _eager(network, channels_last=True)),
        ("bfloat16 autocast, channels-last", _eager(network, True, autocast=True)),
        (f"default ({default.mode}: bundle.ensemble.precision)", default),
    ]
    for threads in sorted({1, os.cpu_count() or 1}):
        found.append((f"default, {threads} threads", _threads(default, threads)))
    if (os.cpu_count() or 1) > 1:
        workers = os.cpu_count() or 1
        name = f"default, {workers} calls side by side, 1 thread each"
        found.append((name, _side_by_side(default, workers)))
    if importlib.util.find_spec("onnxruntime"):
        found.append(("ONNX Runtime float32", _onnxruntime(network, example)))
    if importlib.util.find_spec("openvino"):
        found += [
            (f"OpenVINO {p}", _openvino(network, example, p)) for p in ("f32", "bf16")
        ]  # fmt: skip
    if compile:
        compiled = copy.copy(default)
        compiled.network = torch.compile(default.network, dynamic=False)
        found.append(("torch.compile of the default", compiled))
    return found


def measure(
    network: nn.Module,
    height: int,
    width: int,
    batch_size: int = 8,
    batch_sizes: tuple[int, ...] = (4, 16, 32),
    repeats: int = 7,
    compile: bool = False,
) -> list[dict]:
    """Median ms per image of every option at ``batch_size`` and of the default at
    ``batch_sizes``, interleaved over ``repeats`` rounds (the first round, which compiles
    and warms caches, is not counted)."""
    channels = network.in_channels
    generator = torch.Generator().manual_seed(0)

    def inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(batch, channels, height, width, generator=generator).clamp(-1, 1)
        return x, torch.full((batch,), 500)

    example = inputs(batch_size)
    runs = [(name, forward, example) for name, forward in options(network, example, compile)]
    default = next(forward for name, forward, _ in runs if name.startswith("default"))
    runs += [(f"default, batch {b}", default, inputs(b)) for b in batch_sizes]
    reference = runs[0][1](*example)
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    errors = {}
    with torch.inference_mode():
        for round_ in range(repeats + 1):
            for name, forward, (x, t) in runs:
                start = time.perf_counter()
                out = forward(x, t)
                if round_:
                    times[name].append((time.perf_counter() - start) * 1000 / len(x))
                elif x is example[0]:
                    errors[name] = float((out - reference).abs().max())
    return [
        {
            "option": name,
            "batch": len(x),
            "ms_per_image": statistics.median(times[name]),
            "max_abs_difference": errors.get(name),
        }
        for name, _, (x, _) in runs
    ]


def markdown(rows: list[dict], height: int, width: int) -> str:
    lines = [
        f"Network forward passes at {height} x {width}, {torch.get_num_threads()} threads: "
        "median ms per image (interleaved rounds); largest output difference from float32.",
        "",
        "| option | batch | ms / image | max abs difference |",
        "|---|---|---|---|",
    ]
    for row in rows:
        error = row["max_abs_difference"]
        shown = "-" if error is None else f"{error:.4f}"
        lines.append(f"| {row['option']} | {row['batch']} | {row['ms_per_image']:.1f} | {shown} |")
    return "\n".join(lines)
