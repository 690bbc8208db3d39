"""Model-zoo conformance beyond the schema: the metadata describes the network (verify_net_in_out)
and the segmentation's classes, and the TorchScript export computes what the eager network does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch
from monai.bundle import ConfigParser, verify_net_in_out

from bundle.data.layouts import DEFAULT_LAYOUT
from bundle.data.regions import labelmap_classes
from tests.conftest import REPO

CONFIG = REPO / "configs" / "inference.yaml"
METADATA = REPO / "configs" / "metadata.json"


def test_metadata_describes_the_network_and_the_segmentation():
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    formats = json.loads(METADATA.read_text())["network_data_format"]
    image, pred = formats["inputs"]["image"], formats["outputs"]["pred"]
    assert image["num_channels"] == parser.get_parsed_content("network_def#in_channels")
    assert pred["num_channels"] == parser.get_parsed_content("network_def#out_channels")
    # MONAI Label names its labels after pred's channel_def: the classes of the default (wt)
    # labelmap that the seg file and the Slicer segments carry
    classes = labelmap_classes(parser["regions"], DEFAULT_LAYOUT)
    assert pred["channel_def"] == {"0": "background", **{str(v): k for k, v in classes.items()}}
    assert list(formats["inputs"])[0] == "image" and list(formats["outputs"])[0] == "pred"


def test_verify_net_in_out_with_timesteps():
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(METADATA),
        config_file=str(CONFIG),
        device="cpu",
        n=2,
        extra_forward_args={"timesteps": torch.tensor([10])},
    )


@pytest.mark.slow
def test_torchscript_export_matches_the_eager_network(tmp_path):
    path = tmp_path / "model.ts"
    result = subprocess.run(
        [sys.executable, "-m", "scripts.export", "--filepath", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # the defaults are the bundle's, wherever it runs from
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(REPO / "models" / "model.pt", weights_only=True))
    network.eval()
    scripted = torch.jit.load(str(path))
    # another batch size, height and width than the trace's, and several timesteps
    x = torch.randn(3, network.in_channels, 24, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 500, 999])
    with torch.no_grad():
        torch.testing.assert_close(scripted(x=x, timesteps=t), network(x=x, timesteps=t))
    names = zipfile.ZipFile(path).namelist()
    assert any(n.endswith("extra/metadata.json") for n in names)
    assert any(n.endswith("extra/inference.json") for n in names)
