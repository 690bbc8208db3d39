"""The real MONAI Label 0.8.5 server with this bundle in its monaibundle app, over REST on
127.0.0.1: /info/, /infer/<model> and /train/<model> twice, as 3D Slicer's client calls them.

Started as docs/README.md says (``monailabel start_server --app ... --conf models brats_diffusion
--conf zoo_source github --conf sam2 false``), on a free loopback port, with the tiny test
network and three small 4-D cases written by scripts/stack_modalities.py. Skipped when the
server's dependencies are not installed (requirements-monailabel-server.txt); torchvision, which
MONAI Label imports but never calls for a bundle, is a stand-in when missing (the only wheels
reachable here are CUDA builds that break CPU torch).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.stack_modalities import stack_modalities
from tests.monailabel_app import (
    MODEL,
    make_app_bundle,
    model_weights,
    write_torchvision_stand_in,
)

pytestmark = pytest.mark.slow

SERVER_MODULES = (
    "fastapi", "uvicorn", "multipart", "dicomweb_client", "pydicom_seg", "girder_client"
)  # fmt: skip
"""Modules MONAI Label's server imports beyond its task classes (requirements-monailabel-server
.txt and requirements-monailabel.txt); the server's own import is checked when it starts."""

START_TIMEOUT_S = 240
TRAIN_TIMEOUT_S = 600
INFER_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A started ``monailabel start_server`` process and its REST calls."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def call(self, method: str, path: str, data: bytes | None = None, **kwargs) -> bytes:
        request = urllib.request.Request(self.url + path, data=data, method=method, **kwargs)
        try:
            with urllib.request.urlopen(request, timeout=INFER_TIMEOUT_S) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            message = f"{method} {path}: {err.code} {err.read()!r}\n{self.tail()}"
            raise AssertionError(message) from err

    def get(self, path: str) -> dict:
        return json.loads(self.call("GET", path))

    def wait_for_info(self) -> dict:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}\n{self.tail()}")
            try:
                return self.get("/info/")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        raise AssertionError(f"server not up after {START_TIMEOUT_S} s\n{self.tail()}")

    def train(self, params: dict) -> dict:
        """POST /train/<model> (the training runs in MONAI Label's background subprocess), then
        the task's status once it has finished."""
        body = json.dumps(params).encode()
        headers = {"Content-Type": "application/json"}
        self.call("POST", f"/train/{MODEL}", body, headers=headers)
        deadline = time.monotonic() + TRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            task = self.get("/train/")
            if task["status"] not in ("SUBMITTED", "RUNNING"):
                return task
            time.sleep(2)
        raise AssertionError(f"training not done after {TRAIN_TIMEOUT_S} s\n{self.tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, small_datasets):
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if importlib.util.find_spec("monailabel") is None or missing:
        pytest.skip(
            f"MONAI Label server not installed (missing: {', '.join(missing) or 'monailabel'}): "
            "pip install -r requirements-monailabel-server.txt && "
            "pip install --no-deps -r requirements-monailabel.txt"
        )
    root = tmp_path_factory.mktemp("monailabel")
    subprocess.run(
        [sys.executable, "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle",
         "--output", str(root / "apps")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    app = root / "apps" / "monaibundle"
    make_app_bundle(app / "model" / MODEL)
    stack_modalities(str(small_datasets["brats2020"]), str(root / "studies"))
    paths = [os.environ.get("PYTHONPATH", "")]
    if importlib.util.find_spec("torchvision") is None:
        paths.insert(0, str(write_torchvision_stand_in(root / "stand_in")))
    # MONAI Label's training subprocess reads PYTHONPATH (KeyError without it); one thread per
    # process: the server and its training subprocess share the CPU (docs/README.md)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), OMP_NUM_THREADS="1")
    port = _free_port()
    log = root / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app),
             "--studies", str(root / "studies"), "--conf", "models", MODEL,
             "--conf", "zoo_source", "github", "--conf", "sam2", "false",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True,
        )  # fmt: skip
    running = Server(process, f"http://127.0.0.1:{port}", log)
    running.bundle, running.studies = app / "model" / MODEL, root / "studies"
    try:
        yield running
    finally:
        running.stop()


def test_info_lists_the_bundle_with_its_labels_and_options(server):
    info = server.wait_for_info()
    model = info["models"][MODEL]
    assert model["type"] == "segmentation"
    assert model["labels"] == {"whole tumour": 1}  # the metadata's pred channel_def
    assert {"num_samples": 2, "sampling_steps": 2}.items() <= model["config"].items()
    assert MODEL in info["trainers"]
    assert info["datastore"]["total"] == info["datastore"]["completed"] == 3  # labelled cases


def test_infer_returns_a_label_in_the_image_geometry(server, tmp_path):
    server.wait_for_info()
    image = sorted(server.studies.glob("*.nii.gz"))[0]
    query = urllib.parse.urlencode({"image": image.name.removesuffix(".nii.gz"), "output": "image"})
    form = urllib.parse.urlencode({"params": json.dumps({"num_samples": 3, "sampling_steps": 2})})
    start = time.monotonic()
    body = server.call("POST", f"/infer/{MODEL}?{query}", form.encode())
    seconds = time.monotonic() - start
    label_file = tmp_path / "label.nii.gz"
    label_file.write_bytes(body)
    label, reference = nib.load(str(label_file)), nib.load(str(image))
    assert label.shape == reference.shape[:3]
    np.testing.assert_allclose(label.affine, reference.affine, atol=1e-4)
    assert set(np.unique(np.asanyarray(label.dataobj))) <= {0, 1}
    print(f"infer: {seconds:.1f} s")


def test_each_train_request_trains_validates_and_reports(server):
    """Two identical requests of one epoch: each one trains (model.pt and the report change),
    validates and says so in the task's status; the second is no no-op."""
    server.wait_for_info()
    models = server.bundle / "models"
    params = {"max_epochs": 1, "val_split": 0.34, "device": "cpu", "multi_gpu": False}
    weights, reports = [model_weights(server.bundle)], []
    for _ in range(2):
        task = server.train(params)
        details = "\n".join(task.get("details", []))
        assert task["status"] == "DONE", details + server.tail()
        assert "training report: trained epochs 1-1" in details, details
        assert "val_mean_dice" in details and "model.pt replaced" in details, details
        stats = json.loads((models / "train_stats.json").read_text())
        assert stats["epochs_run"] == 1 and stats["iterations_run"] > 0 and stats["eval"]
        weights.append(model_weights(server.bundle))
        reports.append(stats)
        print(f"train: {stats['total_time']} s in the run")
    for before, after in zip(weights, weights[1:], strict=False):  # each request changed them
        assert any(not torch.equal(before[k], after[k]) for k in before)
    assert reports[0]["start_ts"] <= reports[1]["start_ts"]
    assert reports[0] != reports[1]
