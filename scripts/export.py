"""Export the diffusion U-Net as TorchScript, for runtimes without the bundle's Python code.

    python -m scripts.export [--filepath models/model.ts --ckpt_path models/model.pt]

`python -m monai.bundle ckpt_export` cannot export this network: scripting fails inside MONAI's
SpatialAttentionBlock (`x.reshape(*shape[:2], -1)` does not script), and its `--use_trace`
traces with one input while DiffusionModelUNet also needs `timesteps`. This traces with both
(the graph is independent of batch size, height and width, so it serves any brain box) and
saves the metadata and inference config into the file as ckpt_export does. Other inference.yaml
keys (e.g. `--regions wt_tc_et`) are overrides.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.data import save_net_with_metadata

from bundle.io.checkpoints import load_weights
from bundle.workflow.configs import BUNDLE_ROOT, CONFIG_DIR, load_config
from bundle.workflow.options import run_cli


def export(
    filepath: str = str(BUNDLE_ROOT / "models" / "model.ts"),
    ckpt_path: str = str(BUNDLE_ROOT / "models" / "model.pt"),
    **overrides: object,
) -> Path:
    """Trace ``network_def`` with the checkpoint's weights on (noisy mask + image, timesteps)."""
    parser = load_config("inference.yaml", overrides)
    parser.read_meta(str(CONFIG_DIR / "metadata.json"))
    network = parser.get_parsed_content("network_def")
    load_weights(network, ckpt_path)
    network.eval()
    size = 2 ** len(parser["network_def"]["channels"])  # divisible through every downsampling
    example = (
        torch.rand(2, network.in_channels, size, size),
        torch.tensor([0, parser.get_parsed_content("num_train_timesteps") - 1]),
    )
    with torch.no_grad():
        traced = torch.jit.trace(network, example)
    path = Path(filepath)
    config = json.dumps(ConfigParser.load_config_file(str(CONFIG_DIR / "inference.yaml"))).encode()
    save_net_with_metadata(
        traced,
        str(path),
        meta_values=parser.get().pop("_meta_", None),
        more_extra_files={"inference.json": config},
    )
    return path


if __name__ == "__main__":
    run_cli(export)
