"""apnt demo and apnt eval end to end: real files on disk, read back with other libraries."""
import json

import cv2
import numpy as np
import OpenEXR
import pytest

from apnt.cli import main
from apnt.data import synthesize
from apnt.demo import BASELINES, run
from apnt.models import demo_weights_path


def test_demo_writes_every_picture_and_scores(tmp_path, capsys):
    weights = "demo" if demo_weights_path("ahdrnet").exists() else None
    results = run(tmp_path, height=48, width=64, models=["ahdrnet"], weights=weights)
    methods = ("ahdrnet",) + BASELINES
    assert list(results) == list(methods)
    for r in results.values():
        assert all(np.isfinite(r[k]) for k in ("psnr_mu", "psnr_l", "ssim_mu", "ssim_l", "seconds"))
    for m in methods + ("ground_truth",):
        with OpenEXR.File(str(tmp_path / f"{m}.exr")) as f:
            rgb = f.channels()["RGB"].pixels
        assert rgb.shape == (48, 64, 3) and np.isfinite(rgb).all()
        assert cv2.imread(str(tmp_path / f"{m}.png")).shape == (48, 64, 3)
    for name in ("attention_short", "attention_long"):
        assert cv2.imread(str(tmp_path / "ahdrnet_maps" / f"{name}.png")).shape == (48, 64, 3)
    grid = cv2.imread(str(tmp_path / "comparison.png"))
    assert grid.shape[0] > 3 * 48 and grid.shape[1] > 4 * 64  # inputs, results, maps: 3 rows x 4 columns
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["results"]["debevec"]["psnr_mu"] == pytest.approx(results["debevec"]["psnr_mu"])
    out = capsys.readouterr().out
    assert "| AHDRNet |" in out and "comparison.png" in out


def test_eval_cli_table_and_json(tmp_path, capsys):
    synthesize(tmp_path / "data", "Test", scenes=2, height=40, width=48, seed=7, progress=False)
    report = tmp_path / "mertens.json"
    assert main(["eval", "--model", "mertens", "--data", str(tmp_path / "data"), "--json", str(report),
                 "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "scene_7_000" in table and "**mean**" in table
    got = json.loads(report.read_text())
    assert set(got["scenes"]) == {"scene_7_000", "scene_7_001"}
    assert set(got["mean"]) == {"psnr_mu", "psnr_l", "ssim_mu", "ssim_l"}
    for k, v in got["mean"].items():
        assert v == pytest.approx(np.mean([s[k] for s in got["scenes"].values()]))


def test_eval_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "--model", "debevec", "--data", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("apnt eval: error:") and "nowhere" in err
    synthesize(tmp_path / "data", "Test", scenes=1, height=32, width=32, seed=7, progress=False)
    (tmp_path / "run").mkdir()
    assert main(["eval", "--model", "ahdrnet", "--weights", str(tmp_path / "run"), "--data",
                 str(tmp_path / "data"), "--no-progress"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_eval_config_overrides_for_ablations(tmp_path, capsys):
    """`--config` rebuilds the network with overrides: a switch that removes layers loads the rest of the
    weights (warning), an unknown key is one clear line."""
    from apnt import models
    synthesize(tmp_path / "data", "Test", scenes=1, height=32, width=32, seed=7, progress=False)
    net = models.create("apnt", vgg_weights=None, features=8, dense_layers=1)
    models.save_weights(net, tmp_path / "w.safetensors")
    common = ["eval", "--model", "apnt", "--weights", str(tmp_path / "w.safetensors"), "--data",
              str(tmp_path / "data"), "--no-progress", "--backend", "reference"]
    with pytest.warns(UserWarning, match="unused"):
        assert main(common + ["--config", "use_scale_attention=false", "--json", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["config"] == {"use_scale_attention": False}
    assert main(common + ["--config", "no_such_switch=1"]) == 2
    assert "no_such_switch" in capsys.readouterr().err
    assert main(["eval", "--model", "mertens", "--data", str(tmp_path / "data"), "--config", "x=1"]) == 2
