"""Model-zoo conformance: metadata schema and the configs' shared pieces stay in step."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

SCHEMA = REPO.parent / "shared" / "reference" / "meta_schema_20240725.json"


@pytest.mark.slow
@pytest.mark.skipif(not SCHEMA.is_file(), reason="no local copy of the model-zoo schema")
def test_verify_metadata_offline():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            str(REPO / "configs" / "metadata.json"),
            "--filepath",
            str(SCHEMA),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "metadata is verified with no error" in result.stdout + result.stderr


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "configs" / name).read_text())


@pytest.mark.parametrize(
    "train, infer",
    [("train.yaml", "inference.yaml"), ("baseline_unet.yaml", "baseline_unet_inference.yaml")],
)
def test_training_and_inference_build_the_same_network(train, infer):
    assert load(train)["network_def"] == load(infer)["network_def"]
    for key in ("regions", "image_size", "in_plane_spacing"):
        assert load("train.yaml")[key] == load("inference.yaml")[key], key
