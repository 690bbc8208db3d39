"""Time one network forward pass per image under each way of running it on the CPU, side by side.

    python -m scripts.network_options [--ckpt_path models/model.pt --height 72 --width 80]

The options: float32 as is, channels-last, bfloat16 autocast, the bfloat16 channels-last copy
that ``bundle.ensemble.precision`` runs by default on CPUs with AMX / AVX512-BF16, batch sizes,
1 thread or one per CPU, one call per CPU side by side, and where installed ONNX Runtime
(float32) and OpenVINO (float32, bfloat16) on the traced network, and ``torch.compile``
(``--compile true``: minutes of compiling first).
Each is timed ``repeats`` times, the options interleaved so that a shared machine's load falls
on all alike; the median milliseconds per image are reported, with the largest difference of
each option's output from float32's (the network predicts x0 in [-1, 1]).
"""

from __future__ import annotations

from bundle.evaluation.network_speed import markdown, measure
from bundle.io.checkpoints import load_weights
from bundle.workflow.configs import load_config
from bundle.workflow.options import flag, run_cli


def main(
    ckpt_path: str = "models/model.pt",
    height: int = 72,
    width: int = 80,
    repeats: int = 7,
    compile: bool = False,
) -> str:
    network = load_config("inference.yaml").get_parsed_content("network_def")
    rows = measure(
        load_weights(network, ckpt_path), height, width, repeats=repeats, compile=flag(compile)
    )
    report = markdown(rows, height, width)
    print(report)
    return report


if __name__ == "__main__":
    run_cli(main)
