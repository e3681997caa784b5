"""Teacher fine-tuning runs the shared training loop, learns, saves a loadable checkpoint, and
is cached like every other step."""

from tasks.demo.teacher import MODEL_SUBDIR, TeacherConfig, finetune
from tasks.intake.checkpoints import verify_folder
from tasks.intake.data import DatasetConfig, prepare_splits
from tests.factories import LABELS, make_checkpoint, make_dataset


def test_finetune_learns_and_is_cached(settings, tmp_path):
    data = make_dataset(tmp_path / "tweets.csv")
    dataset = DatasetConfig(source=str(data), labels=LABELS, eval_size=40, calibration_size=10, max_length=32)
    split = prepare_splits(settings, dataset)
    base = make_checkpoint(tmp_path / "base", layers=2, hidden=32, heads=2)
    config = TeacherConfig(train_examples=190, epochs=6, learning_rate=1e-2, batch_size=16, warmup_ratio=0.0)

    first = finetune(settings.artifacts_dir, config, dataset, split, base)
    losses = first.manifest.metrics["epoch_losses"]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0]
    digest, model_type = verify_folder("teacher", first.path / MODEL_SUBDIR, settings)
    assert model_type == "bert" and len(digest) == 64

    second = finetune(settings.artifacts_dir, config, dataset, split, base)
    assert second.reused and second.path == first.path
