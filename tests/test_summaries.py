"""TensorBoard event files written without TensorFlow read back in TensorBoard's own reader."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lth_keras.summaries import SummaryWriter


def test_scalars_and_hparams_read_back(tmp_path):
    writer = SummaryWriter(str(tmp_path / "run"))
    writer.hparams({"model": "resnet20", "learning_rate": 0.05, "lr_boundaries": (50, 60)})
    for step, loss in enumerate([2.5, 1.25, 0.75], start=1):
        writer.scalar("val/loss", loss, step)
    writer.close()
    reader = EventAccumulator(str(tmp_path / "run"))
    reader.Reload()
    assert [(s.step, s.value) for s in reader.Scalars("val/loss")] == [(1, 2.5), (2, 1.25),
                                                                       (3, 0.75)]
    assert "_hparams_/session_start_info" in reader.summary_metadata
