"""Settings travel with the weights: weights trained with other settings than the config's stop
inference and the resume of training before any work, with one line naming each setting that
differs, also where the shapes match and the weights would load and give wrong masks; a bare
state dict, which stores no settings, still loads, with a warning."""

from __future__ import annotations

import pytest
import torch

from bundle.io.outputs import output_path
from bundle.workflow.configs import load_config
from tests.bundle_cli import (
    assert_ok,
    assert_one_line_error,
    bundle_run,
    infer,
    inference_overrides,
    tiny_weights,
    train_overrides,
)

NO_SETTINGS = "stores no settings: they cannot be checked"

# one override of the weights' settings (TINY_INFERENCE, the tiny network, regions wt, the
# default schedule and normalisation) and how the error line names it
OTHER_SETTINGS = {
    "prediction_type": (
        {"prediction_type": "sample"},
        'scheduler.prediction_type "epsilon" in the file, "sample" in the config',
    ),
    "beta range": ({"noise_scheduler#beta_end": 0.03}, "scheduler.alphas_cumprod.249 "),
    "schedule": (
        {"noise_scheduler#schedule": "scaled_linear_beta"},
        "scheduler.alphas_cumprod.249 ",
    ),
    "num_train_timesteps": (
        {"num_train_timesteps": 500},
        "scheduler.num_train_timesteps 1000 in the file, 500 in the config",
    ),
    "learn_sigma": (  # the output channels double too: both are named
        {"learn_sigma": True},
        'scheduler.variance_type "fixed_small" in the file, "learned_range" in the config',
    ),
    "regions": (  # the input and output channels change too: both are named
        {"regions": "wt_tc_et"},
        'regions ["wt"] in the file, ["wt", "tc", "et"] in the config',
    ),
    "image_size": ({"image_size": 96}, "image_size 64 in the file, 96 in the config"),
    "in_plane_spacing": (
        {"in_plane_spacing": 4.0},
        "in_plane_spacing 2.0 in the file, 4.0 in the config",
    ),
    "normalisation": (
        {"normalisation#upper": 99.0},
        "normalisation.upper 99.5 in the file, 99.0 in the config",
    ),
    "norm groups": (
        {"network_def#norm_num_groups": 4},
        "network.norm_groups [8] in the file, [4] in the config",
    ),
    "attention heads": (
        {"network_def#num_head_channels": 4},
        "network.attention_heads [2] in the file, [4] in the config",
    ),
}


@pytest.fixture(scope="module")
def case(small_datasets):
    return sorted(p for p in small_datasets["brats2020"].iterdir() if p.is_dir())[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("weights") / "model.pt", with_settings=True)


def quick(**extra: object) -> dict[str, object]:
    """The fewest samples and steps: these runs are about loading the weights."""
    return {"num_samples": 1, "sampling_steps": 1, "quicklook": False, **extra}


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(OTHER_SETTINGS))
def test_inference_with_other_settings_stops_with_one_line_naming_it(
    setting, case, weights, tmp_path
):
    overrides, named = OTHER_SETTINGS[setting]
    out = tmp_path / "out"
    result = bundle_run(
        "inference", ["inference.yaml"], inference_overrides(case, out, weights, **overrides)
    )
    line = assert_one_line_error(result, f"checkpoint {weights} ", named)
    assert "trained with other settings than the config's" in line
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_same_settings_load_quietly_and_bare_weights_load_with_a_warning(case, weights, tmp_path):
    result = infer(case, tmp_path / "with", weights, **quick())
    assert_ok(result)
    assert NO_SETTINGS not in result.stdout + result.stderr
    bare = tiny_weights(tmp_path / "bare.pt")
    result = infer(case, tmp_path / "bare", bare, **quick())
    assert_ok(result)
    assert f"checkpoint {bare} {NO_SETTINGS}" in result.stdout + result.stderr
    assert output_path(tmp_path / "bare", case.name, "pred").is_file()


@pytest.mark.slow
def test_resuming_training_with_other_settings_stops_with_one_line(small_datasets, tmp_path):
    ckpt = tmp_path / "ckpt"
    overrides = train_overrides(small_datasets["brats2020"], ckpt, epochs=1, val_interval=100)
    assert_ok(bundle_run("training", ["train.yaml"], overrides))
    saved = torch.load(ckpt / "last.pt", weights_only=False)

    changed = {**overrides, "epochs": 2, "prediction_type": "epsilon"}
    result = bundle_run("training", ["train.yaml"], changed)
    trained = load_config("train.yaml").get("prediction_type")
    assert_one_line_error(
        result,
        f"checkpoint {ckpt / 'last.pt'} was trained with other settings than the config's: ",
        f'scheduler.prediction_type "{trained}" in the file, "epsilon" in the config',
    )
    assert "resumed from" not in result.stdout + result.stderr
    resumed = torch.load(ckpt / "last.pt", weights_only=False)
    assert resumed["trainer"]["iteration"] == saved["trainer"]["iteration"]  # nothing trained


@pytest.mark.parametrize("config", ["train.yaml", "inference.yaml"])
@pytest.mark.parametrize("learn_sigma", ["false", "true"])
def test_learn_sigma_is_read_as_the_command_line_gives_it(config, learn_sigma):
    """``--learn_sigma false`` arrives as the string "false": the variance is not learned."""
    parser = load_config(config, {"learn_sigma": learn_sigma})
    learned = learn_sigma == "true"
    scheduler = parser.get_parsed_content("noise_scheduler")
    assert scheduler.variance_type == ("learned_range" if learned else "fixed_small")
    assert parser.get_parsed_content("network_def#out_channels") == (2 if learned else 1)
