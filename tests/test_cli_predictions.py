"""ImageFolder class names reach the model, its checkpoint and ``predict``'s CSV; the CSV rows are the model's
own predictions (checked against a forward pass done here)."""
import csv
from pathlib import Path

import pytest
import torch
import yaml

from crrelu_lightning.cli import cli_main
from crrelu_lightning.data.vision import ImageFolderDataModule
from crrelu_lightning.models.vision import ImageClassifier
from test_vision_data import write_image_folder

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

CLASSES = ("cat", "dog", "fish", "owl")


def _config(tmp_path: Path) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 3, "enable_progress_bar": False,
            "enable_model_summary": False, "num_sanity_val_steps": 0,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "logs"), "name": "folder"}},
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(tmp_path / "ckpt"), "filename": "last"}},
                {"class_path": "PredictionWriter", "init_args": {"top_k": 2}},
            ],
        },
        "model": {"class_path": "ImageClassifier",
                  "init_args": {"model_kwargs": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}}},
        "data": {"class_path": "ImageFolderDataModule",
                 "init_args": {"root": str(tmp_path / "images"), "img_size": 16, "crop_pct": 1.0, "batch_size": 4,
                               "augment": "none"}},
    }
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.timeout(300)
def test_imagefolder_class_names_in_checkpoint_and_predictions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "images", classes=CLASSES, per_class=3, size=(20, 18))
    cfg = str(_config(tmp_path))
    cli = cli_main(["fit", "--config", cfg])
    # counted from the folders before the model was built
    assert cli.model.num_classes == len(CLASSES) and cli.model.hparams.class_names == list(CLASSES)
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["class_names"] == list(CLASSES)

    cli = cli_main(["predict", "--config", cfg, "--ckpt_path", str(ckpt)])
    out = Path(cli.trainer.log_dir) / "predictions.csv"
    assert out.is_file()
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["index", "prediction", "class_name", "probability", "top2", "top2_name",
                             "top2_probability"]

    # independent reference: the checkpoint's model on the same images, in order
    model = ImageClassifier.load_from_checkpoint(ckpt, weights_only=True).eval()
    dm = ImageFolderDataModule(root=str(tmp_path / "images"), img_size=16, crop_pct=1.0, batch_size=4, augment="none")
    dm.setup("predict")
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(x), -1) for x, _ in dm.predict_dataloader()])
    assert len(rows) == len(probs) == 3 * len(CLASSES)
    top = probs.topk(2, dim=-1)
    for i, row in enumerate(rows):
        assert int(row["index"]) == i
        assert int(row["prediction"]) == int(top.indices[i, 0]) and row["class_name"] == CLASSES[int(row["prediction"])]
        assert float(row["probability"]) == pytest.approx(float(top.values[i, 0]), rel=1e-4)
        assert row["top2_name"] == CLASSES[int(top.indices[i, 1])]


def test_imagefolder_with_mismatched_split_folders_fails_with_both_paths(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=1, size=(8, 8))
    (tmp_path / "val" / "c").mkdir()
    (tmp_path / "val" / "a").rename(tmp_path / "val" / "c" / "a_moved")
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=8, augment="none")
    assert dm.num_classes == 2 and dm.class_names == ["a", "b"]
    with pytest.raises(ValueError, match="same class folders"):
        dm.setup("fit")
