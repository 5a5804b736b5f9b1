"""Each built-in callback of a run, alone, on a stand-in trainer: what it does at each hook."""

import json
import os
import signal
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from scrl import BoxPairSampler
from scrl.train import (BoxFillWatch, Callback, Checkpointing, ConsoleProgress, MetricsLog, NonFiniteGuard, PretrainConfig,
                        RoIProbe, StopOnSignal)
from scrl.train.telemetry import MetricsLogger
from scrl.trunk import create_trunk

LOSS = {"loss": torch.tensor(1.0)}


class Saves:
    """A stand-in trainer's save(): counts the steps saved at."""

    def __init__(self, trainer):
        self.trainer, self.steps = trainer, []

    def __call__(self):
        self.steps.append(self.trainer.state.step)
        self.trainer.saved_at = self.trainer.state.step


def trainer(tmp_path, **attributes):
    t = SimpleNamespace(
        config=PretrainConfig(output_dir=str(tmp_path), image_size=64).resolve(on_gpu=False)[0], progress=None,
        should_stop=None, saved_at=None, checkpoint_path=str(tmp_path / "checkpoint_last.pth"), steps_per_epoch=4,
        last_step=8, total_steps=8, main_process=True, device=torch.device("cpu"), amp_dtype=None,
        state=SimpleNamespace(step=0, epoch=0, batch_in_epoch=0, epoch_done=False), warned=[], lines=[],
        metrics=MetricsLogger(tmp_path, tensorboard=False), world_size=1, lr=0.1, record={"identity": {}},
        warnings=[], global_batch=32, model_from_config=True, dataset=range(16),
    )
    t.warn, t.log = t.warned.append, t.lines.append
    t.save = Saves(t)
    vars(t).update(attributes)
    return t


def step(t, callback, number, *, epoch_done=False, progress=None, logs=LOSS):
    t.state.step, t.state.epoch_done, t.progress = number, epoch_done, progress
    callback.on_step_end(t, number, logs)


def records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_the_base_callback_does_nothing_at_every_hook(tmp_path):
    t, callback = trainer(tmp_path), Callback()
    callback.on_train_start(t), callback.on_step_end(t, 1, LOSS), callback.on_before_checkpoint(t)
    callback.on_checkpoint(t, "path"), callback.on_train_end(t, {}), callback.teardown(t)
    assert t.save.steps == [] and t.warned == [] and t.should_stop is None


def test_non_finite_guard_names_the_first_bad_step_at_log_steps_and_before_a_checkpoint(tmp_path):
    t, guard = trainer(tmp_path, saved_at=2), NonFiniteGuard()
    guard.on_train_start(t)
    step(t, guard, 1, progress={"step": 1})
    step(t, guard, 2)
    step(t, guard, 3, logs={"loss": torch.tensor(float("nan"))})  # not a log step: no read-back, no error yet
    step(t, guard, 4, logs={"loss": torch.tensor(float("inf"))})
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 3 \(epoch 0\).*checkpoint_last.pth \(step 2\)"):
        guard.on_before_checkpoint(t)
    with pytest.raises(FloatingPointError, match="step 3"):
        step(t, guard, 5, progress={"step": 5})


def test_stop_on_signal_asks_the_run_to_stop_and_restores_the_handler(tmp_path):
    t, stop = trainer(tmp_path), StopOnSignal()
    before = signal.getsignal(signal.SIGTERM)
    stop.on_train_start(t)
    step(t, stop, 1)
    assert t.should_stop is None
    os.kill(os.getpid(), signal.SIGTERM)
    step(t, stop, 2)
    assert t.should_stop == "SIGTERM"
    stop.teardown(t)
    assert signal.getsignal(signal.SIGTERM) == before


def test_checkpointing_saves_every_n_steps_at_epoch_ends_and_at_the_end_then_exports_the_backbone(tmp_path):
    model = SimpleNamespace(backbone_state_dict=lambda: {"conv1.weight": torch.ones(2, 2).t()})  # not contiguous
    t, saving = trainer(tmp_path, model=model), Checkpointing(every=3)
    for number in range(1, 8):
        step(t, saving, number, epoch_done=number == 4)
    assert t.save.steps == [3, 4, 6]
    saving.on_train_end(t, {"stopped_by": None})
    assert t.save.steps == [3, 4, 6, 7]
    assert torch.equal(torch.load(tmp_path / "backbone_torchvision.pth")["conv1.weight"], torch.ones(2, 2))
    with pytest.raises(ValueError, match="every must be >= 0"):
        Checkpointing(every=-1)


def test_checkpointing_after_a_stop_saves_but_exports_nothing(tmp_path):
    t, saving = trainer(tmp_path), Checkpointing()
    step(t, saving, 2)
    saving.on_train_end(t, {"stopped_by": "SIGTERM"})
    assert t.save.steps == [2] and not (tmp_path / "backbone_torchvision.pth").exists()


def test_roi_probe_runs_at_the_chosen_epoch_ends_and_at_the_end_but_not_after_a_stop(tmp_path, monkeypatch):
    torch.manual_seed(0)
    t = trainer(tmp_path, model=SimpleNamespace(trunk=create_trunk("resnet18")))
    probe = RoIProbe("synthetic:12", every=2, image_size=64)
    probe.on_train_start(t)
    for number in (4, 8):  # the ends of epochs 0 and 1 (probed after epoch 1 only, and not at the last step)
        t.state.epoch = number // 4 - 1
        step(t, probe, number, epoch_done=True)
    t.last_step = 12
    step(t, probe, 8, epoch_done=True)
    probe.on_train_end(t, {"stopped_by": "SIGINT"})
    probe.on_train_end(t, {"stopped_by": None})
    probes = [r for r in records(tmp_path) if r["event"] == "roi_probe"]
    assert [r["step"] for r in probes] == [8, 8] and 0 <= probes[0]["roi_linear_top1"] <= 100
    assert "RoIProbe(data='synthetic:12', every=2, image_size=64)" == repr(probe)


def test_box_fill_watch_warns_once_when_few_slots_hold_a_pair(tmp_path):
    t, watch = trainer(tmp_path, model=SimpleNamespace(sampler=BoxPairSampler(min_size=16))), BoxFillWatch(over_steps=4)
    for number in range(1, 9):
        step(t, watch, number, progress={"valid_box_share": 0.1} if number % 2 == 0 else None)
    assert len(t.warned) == 1 and "only 10% of the box slots held a pair in the steps logged up to step 4" in t.warned[0]
    quiet = trainer(tmp_path, model=SimpleNamespace(sampler=BoxPairSampler(min_size=16)))
    for number in range(1, 11):
        step(quiet, BoxFillWatch(), number, progress={"valid_box_share": 0.9})
    assert quiet.warned == []


def test_metrics_log_writes_the_start_the_warnings_each_record_and_the_end(tmp_path):
    t, log = trainer(tmp_path, warnings=["a warning"]), MetricsLog()
    log.on_train_start(t)
    step(t, log, 1, progress={"step": 1, "loss": 2.0})
    step(t, log, 2)
    log.on_train_end(t, {"step": 2, "epoch": 0, "stopped_by": None, "weights_sha256": "abc", "ranks_identical": True,
                         "skipped_files": ["x.jpg"]})
    t.metrics.close()
    written = records(tmp_path)
    assert [r.get("event") for r in written] == ["start", "warning", None, "end"]
    assert written[0]["arg_image_size"] == 64 and written[0]["lr"] == 0.1 and written[1]["message"] == "a warning"
    assert written[2] == {"step": 1, "loss": 2.0} and written[3]["skipped_files"] == 1 and written[3]["weights_sha256"] == "abc"


def test_console_progress_says_the_start_each_log_step_and_the_end(tmp_path):
    t, console = trainer(tmp_path), ConsoleProgress()
    console.on_train_start(t)
    progress = {"epoch": 0, "step": 2, "loss": 3.25, "lr": 0.1, "tau": 0.99, "images_per_s": 12.0, "data_wait_share": 0.5,
                "eta_s": 61.0, "valid_box_share": 0.75, "skipped_files": 0}
    step(t, console, 1)
    step(t, console, 2, progress=progress)
    console.on_train_end(t, {"step": 2, "stopped_by": "SIGTERM"})
    console.on_train_end(t, {"step": 8, "stopped_by": None})
    assert t.lines[0].startswith("scrl resnet18: 16 images, 1 process(es) x 32 = 32 per step")
    assert t.lines[1] == ("epoch 0 step 2/8 loss 3.2500 lr 0.1 tau 0.99000 12.0 img/s data-wait 50% eta 0:01:01 "
                          "valid-boxes 75% skipped 0")
    assert t.lines[2].startswith("stopped by SIGTERM at step 2") and t.lines[3].startswith("finished at step 8")
    assert len(t.lines) == 4


def test_a_pretrainer_takes_only_callbacks_and_an_optimizer_factory():
    from scrl.train import Pretrainer

    with pytest.raises(TypeError, match="callbacks must be scrl.train.Callback"):
        Pretrainer(PretrainConfig(), callbacks=[print])
    with pytest.raises(TypeError, match="optimizer must be a callable"):
        Pretrainer(PretrainConfig(), optimizer=torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1))


def test_a_failing_teardown_still_gives_the_output_folder_back(tmp_path):
    from scrl.train import Pretrainer

    class Broken(Callback):
        def teardown(self, trainer):
            raise RuntimeError("teardown failed")

    settings = dict(device="cpu", arch="resnet18", image_size=64, batch_size=4, synthetic_images=8, projector_hidden=32,
                    projection_dim=16, epochs=1, workers=0, max_steps=1, output_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="teardown failed"):
        Pretrainer(PretrainConfig(**settings), callbacks=[Broken()]).run()
    assert Pretrainer(PretrainConfig(**settings)).run()["step"] == 1  # not refused: the lock was released
