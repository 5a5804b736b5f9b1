"""scrl.train.config's schema: the checks, flags, docs table and YAML files made from it.

Run as a script (``python tests/test_config_file.py``) to write the schema's option table into
docs/pretraining.md, between its markers.
"""

import argparse
import dataclasses
import os
import re
import runpy
from pathlib import Path

import pytest

from scrl.train import config as schema
from scrl.train.config import (
    BOX_FIELDS, GROUPS, IDENTITY_FIELDS, MODEL_FIELDS, SCHEDULE_FIELDS, SETTINGS, ConfigError, PretrainConfig,
    add_arguments, options_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "pretrain_imagenet.py"
DOC = ROOT / "docs" / "pretraining.md"
START, END = "<!-- options:start", "<!-- options:end -->"


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def round_trip(config, tmp_path):
    path = tmp_path / "config.yaml"
    config.to_yaml(path)
    return PretrainConfig.from_yaml(path)


def assert_same_values(a, b):
    assert a == b
    for name in SETTINGS:  # == takes 1 for 1.0; the file keeps which it was
        assert type(getattr(a, name)) is type(getattr(b, name)), name


# ---------------------------------------------------------------------------------------- schema
def test_every_field_has_a_setting_and_every_setting_a_field():
    fields = [f.name for f in dataclasses.fields(PretrainConfig)]
    assert list(SETTINGS) == fields
    for name, setting in SETTINGS.items():
        assert setting.name == name and setting.group in GROUPS and setting.help, name
        assert setting.flag == "--" + name.replace("_", "-")
    for names in (IDENTITY_FIELDS, SCHEDULE_FIELDS, MODEL_FIELDS, BOX_FIELDS):
        assert set(names) <= set(fields)
    assert not set(IDENTITY_FIELDS) & set(SCHEDULE_FIELDS) and set(BOX_FIELDS) <= set(MODEL_FIELDS)


def test_the_field_lists_a_resume_is_judged_by():
    assert set(IDENTITY_FIELDS) == {"method", "arch", "projector_hidden", "projection_dim", "num_boxes", "min_box_size",
                                    "roi_pooling", "image_size", "data", "synthetic_images", "seed", "init_from"}
    assert set(SCHEDULE_FIELDS) == {"epochs", "base_lr", "weight_decay", "tau_base", "warmup_epochs"}
    assert set(MODEL_FIELDS) == {"method", "arch", "projector_hidden", "projection_dim", "num_boxes", "min_box_size",
                                 "roi_pooling", "tau_base"}
    assert set(BOX_FIELDS) == {"num_boxes", "min_box_size", "roi_pooling"}


def test_types_choices_and_nullability_come_from_the_annotations():
    assert (SETTINGS["epochs"].kind, SETTINGS["epochs"].nullable) == (int, True)
    assert (SETTINGS["seed"].kind, SETTINGS["seed"].nullable) == (int, False)
    assert SETTINGS["min_box_size"].types == (int, float)
    assert SETTINGS["method"].choices == ("scrl", "byol") and SETTINGS["device"].choices == ("auto", "cuda", "cpu")
    assert SETTINGS["preset"].choices == tuple(schema.PRESETS)
    assert SETTINGS["data"].types == (str, os.PathLike) and SETTINGS["arch"].types == (str,)


@pytest.mark.parametrize("name", [n for n, s in SETTINGS.items() if s.range is not None])
def test_every_range_is_checked_and_named(name):
    setting = SETTINGS[name]
    low = {">= 1": 0, ">= 0": -1, ">= 32": 31}.get(setting.range.text, -0.5 if setting.kind is float else -1)
    with pytest.raises(ConfigError, match=f"^{name} must be {re.escape(setting.range.text)}, got {low}$"):
        PretrainConfig(**{name: low})


@pytest.mark.parametrize("name", [n for n, s in SETTINGS.items() if s.choices is not None])
def test_every_choice_is_checked_and_named(name):
    with pytest.raises(ConfigError, match=f"^{name} must be one of .*, got 'nope'"):
        PretrainConfig(**{name: "nope"})


@pytest.mark.parametrize("name", [n for n, s in SETTINGS.items() if not s.nullable])
def test_a_setting_without_none_refuses_it(name):
    with pytest.raises(ConfigError, match=f"^{name} must be .*, got None"):
        PretrainConfig(**{name: None})


def test_paths_are_kept_as_strings(tmp_path):
    config = PretrainConfig(data=tmp_path, output_dir=tmp_path / "run")
    assert config.data == str(tmp_path) and config.output_dir == str(tmp_path / "run")
    assert config == PretrainConfig(data=str(tmp_path), output_dir=str(tmp_path / "run"))


def test_init_from_must_be_a_checkpoint_file(tmp_path):
    with pytest.raises(ConfigError, match=r"init_from='/no/such/checkpoint_last.pth': no such checkpoint file"):
        PretrainConfig(init_from="/no/such/checkpoint_last.pth")
    with pytest.raises(ConfigError, match="init_from=.*: no such checkpoint file"):
        PretrainConfig(init_from=tmp_path)  # a folder is not a checkpoint
    ckpt = tmp_path / "checkpoint_last.pth"
    ckpt.write_bytes(b"")
    assert PretrainConfig(init_from=ckpt).init_from == str(ckpt)
    assert PretrainConfig().init_from is None


# ------------------------------------------------------------------------------------------ YAML
def test_a_given_config_round_trips_exactly(tmp_path):
    (tmp_path / "ckpt.pth").write_bytes(b"")
    config = PretrainConfig(
        data=str(tmp_path / "my images #1"), method="byol", preset="1000ep-released", epochs=3, base_lr=1, weight_decay=1.5e-6,
        tau_base=0.996, warmup_epochs=0.5, min_box_size=8.0, output_dir="runs/it's \"quoted\" \\ ünïcode: yes",
        compile=True, roi_probe="synthetic:16", init_from=str(tmp_path / "ckpt.pth"), device="cpu", seed=7,
    )
    assert_same_values(round_trip(config, tmp_path), config)
    assert_same_values(round_trip(PretrainConfig(), tmp_path), PretrainConfig())


@pytest.mark.parametrize("on_gpu", [False, True])
def test_a_resolved_config_round_trips_exactly(tmp_path, on_gpu):
    resolved, _ = PretrainConfig(epochs=7).resolve(on_gpu=on_gpu)
    again = round_trip(resolved, tmp_path)
    assert_same_values(again, resolved)
    assert again.resolve(on_gpu=on_gpu) == (resolved, [])


def test_the_file_reads_the_same_in_a_yaml_library(tmp_path):
    yaml = pytest.importorskip("yaml")
    resolved, _ = PretrainConfig(output_dir="runs/a: b #c", weight_decay=1e-6, tau_base=1.0).resolve(on_gpu=False)
    path = tmp_path / "config.yaml"
    resolved.to_yaml(path)
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == resolved.to_dict()
    assert "weight_decay: 1.0e-06" in path.read_text()  # 1e-06 would be a string to YAML 1.1 readers


def test_to_yaml_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "config.yaml"
    PretrainConfig(epochs=5).to_yaml(path)
    PretrainConfig(epochs=6).to_yaml(path)
    assert PretrainConfig.from_yaml(path).epochs == 6
    assert os.listdir(path.parent) == ["config.yaml"]  # no temporary file left beside it


HAND_WRITTEN = """\
# a run of my own
---
data: /data/imagenet/train        # the folder
arch:  "resnet50"
preset: '1000ep'
epochs: 400
weight_decay: 1e-6
base_lr: 0.3
tau_base: .99

warmup_epochs: 5
roi_probe: synthetic:64
max_steps: ~
roi_probe_size: null
roi_probe_every:
channels_last: true
compile: False
output_dir: runs/it''s
resume: 'it''s # not a comment'
"""


def test_a_hand_written_file(tmp_path, monkeypatch):
    (tmp_path / "it's # not a comment").write_bytes(b"")
    monkeypatch.chdir(tmp_path)  # resume is a path relative to here
    config = PretrainConfig.from_yaml(write(tmp_path, HAND_WRITTEN.replace("\n", "\r\n", 3)))
    assert config == PretrainConfig(
        data="/data/imagenet/train", arch="resnet50", preset="1000ep", epochs=400, weight_decay=1e-6, base_lr=0.3,
        tau_base=0.99, warmup_epochs=5, roi_probe="synthetic:64", channels_last=True, compile=False,
        output_dir="runs/it''s", resume="it's # not a comment",
    )
    assert type(config.warmup_epochs) is int and type(config.weight_decay) is float


def test_an_empty_file_is_the_defaults(tmp_path):
    assert PretrainConfig.from_yaml(write(tmp_path, "# nothing set\n\n")) == PretrainConfig()


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs: 3\nmax-steps: 2\n", "run.yaml, line 2, key 'max-steps': no such setting (did you mean 'max_steps'?)"),
        ("learning_rate: 0.1\n", "run.yaml, line 1, key 'learning_rate': no such setting"),
        ("epochs: 3\n\nepochs: 4\n", "run.yaml, line 3, key 'epochs': given twice"),
        ("# x\nbase_lr: -1\n", "run.yaml, line 2, key 'base_lr': base_lr must be > 0 and finite, got -1"),
        ("base_lr: .nan\n", "run.yaml, line 1, key 'base_lr': base_lr must be > 0 and finite, got nan"),
        ("epochs: 2.5\n", "run.yaml, line 1, key 'epochs': epochs must be an int, got 2.5"),
        ("epochs: '3'\n", "run.yaml, line 1, key 'epochs': epochs must be an int, got '3'"),
        ("compile: yes\n", "run.yaml, line 1, key 'compile': compile must be a bool, got 'yes'"),
        ("method: simclr\n", "run.yaml, line 1, key 'method': method must be one of ['scrl', 'byol'], got 'simclr'"),
        ("seed: null\n", "run.yaml, line 1, key 'seed': seed must be an int, got None"),
        ("arch: vgg16\n", "run.yaml, line 1, key 'arch': arch='vgg16' is not a supported trunk"),
        ("init_from: gone.pth\n", "run.yaml, line 1, key 'init_from': init_from='gone.pth': no such checkpoint file"),
        ("data: [a, b]\n", "run.yaml, line 1, key 'data': '[a, b]' is not a plain value"),
        ("data: \"open\n", "run.yaml, line 1, key 'data': \"open is not one double-quoted string"),
        ("data: 'open\n", "run.yaml, line 1, key 'data': a single-quoted string must end with '"),
        ("model:\n  arch: resnet50\n", "run.yaml, line 2: 'arch: resnet50' is not a 'key: value' line"),
        ("epochs=3\n", "run.yaml, line 1: 'epochs=3' is not a 'key: value' line"),
        ("image_size: 40\nmin_box_size: 100\n",
         "min_box_size must be at most image_size=40, got 100 (with the settings of "),
    ],
)
def test_a_bad_file_is_an_error_naming_file_line_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        PretrainConfig.from_yaml(path)
    assert str(info.value).startswith(str(path)) or str(path) in str(info.value)
    assert message.replace("run.yaml", str(path)) in str(info.value)


def test_the_documented_error(tmp_path):
    path = write(tmp_path, "# runs/r50.yaml\ndata: /data/imagenet/train\npreset: 1000ep\nchannels_last: yes\n", "r50.yaml")
    message = f"{path}, line 4, key 'channels_last': channels_last must be a bool, got 'yes'"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        PretrainConfig.from_yaml(path)


def test_overrides_win_over_the_file(tmp_path):
    path = write(tmp_path, "epochs: 5\ncompile: true\nimage_size: 40\nmin_box_size: 100\n")
    config = PretrainConfig.from_yaml(path, epochs=6, compile=False, min_box_size=20.0)
    assert (config.epochs, config.compile, config.image_size, config.min_box_size) == (6, False, 40, 20.0)
    with pytest.raises(ConfigError, match="^epochs must be >= 1, got 0$"):  # the override's error, not the file's
        PretrainConfig.from_yaml(path, epochs=0, min_box_size=20.0)
    with pytest.raises(ConfigError, match="no such setting 'lr'"):
        PretrainConfig.from_yaml(path, lr=0.1)


# ----------------------------------------------------------------------------------------- flags
def test_add_arguments_makes_a_flag_of_each_setting():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert vars(parser.parse_args([])) == {}  # unset flags stay out: PretrainConfig keeps the defaults
    args = vars(parser.parse_args(["--epochs", "3", "--base-lr", "1e-3", "--method", "byol", "--compile",
                                   "--no-channels-last", "--init-from", "x.pth", "--data", "imgs"]))
    assert args == dict(epochs=3, base_lr=1e-3, method="byol", compile=True, channels_last=False, init_from="x.pth",
                        data="imgs")
    assert type(args["base_lr"]) is float
    for name, setting in SETTINGS.items():
        value = {bool: [], int: ["3"], float: ["0.5"]}.get(setting.kind, [setting.choices[0] if setting.choices else "x"])
        assert name in vars(parser.parse_args([setting.flag, *value])), name
        if setting.kind is bool:
            assert vars(parser.parse_args(["--no-" + setting.flag[2:]])) == {name: False}
    with pytest.raises(SystemExit):
        parser.parse_args(["--amp", "fp8"])


@pytest.fixture
def script(monkeypatch):
    """The script's globals, with a Pretrainer that records its config instead of training."""
    namespace = runpy.run_path(str(SCRIPT))
    made = []

    class Recorder:
        def __init__(self, config):
            made.append(config)

        def run(self):
            return {"step": 0}

    monkeypatch.setitem(namespace["main"].__globals__, "Pretrainer", Recorder)
    return namespace["main"], made


def test_flags_override_the_config_file(script, tmp_path):
    main, made = script
    path = write(tmp_path, "epochs: 5\nbase_lr: 0.1\ncompile: true\nchannels_last: true\nseed: 3\n")
    assert main(["--config", str(path), "--epochs", "7", "--no-compile", "--device", "cpu"]) == {"step": 0}
    assert made[-1] == PretrainConfig(epochs=7, base_lr=0.1, compile=False, channels_last=True, seed=3, device="cpu")
    main(["--channels-last"])
    assert made[-1] == PretrainConfig(channels_last=True)


def test_a_run_repeats_from_its_resolved_config(script, tmp_path):
    main, made = script
    resolved, _ = PretrainConfig(epochs=3, output_dir=str(tmp_path / "a")).resolve(on_gpu=False)
    resolved.to_yaml(tmp_path / "a" / "config.yaml")
    main(["--config", str(tmp_path / "a" / "config.yaml"), "--output-dir", str(tmp_path / "b")])
    assert made[-1] == dataclasses.replace(resolved, output_dir=str(tmp_path / "b"))


@pytest.mark.parametrize(
    "text, argv, message",
    [
        ("base_lr: -1\n", [], "run.yaml, line 1, key 'base_lr': --base-lr must be > 0 and finite, got -1"),
        ("epochs: 3\n", ["--init-from", "/no/such.pth"], "--init-from='/no/such.pth': no such checkpoint file"),
        ("epochs: 3\n", ["--config", "/no/such.yaml"], "/no/such.yaml"),
    ],
)
def test_errors_of_file_and_flags_are_argparse_errors(script, tmp_path, capsys, text, argv, message):
    main, made = script
    path = write(tmp_path, text)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path), *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("usage:") and message.replace("run.yaml", str(path)) in err, err
    assert not made


def test_help_shows_the_config_file_and_the_off_forms(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per flag
    parser = runpy.run_path(str(SCRIPT))["parser"]()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--config FILE" in out and "--no-channels-last" in out and "--init-from CKPT" in out
    assert "(default: 1000ep on GPU, 200ep on CPU)" in out and "(default: 224 on GPU, 64 on CPU)" in out
    for title in GROUPS:
        assert f"\n{title}:\n" in out


# ------------------------------------------------------------------------------------------ docs
def _doc_table(text: str) -> str:
    start, end = text.index(START), text.index(END)
    return text[text.index("\n", start) + 1 : end]


def test_the_option_table_in_the_docs_is_the_schemas():
    documented = _doc_table(DOC.read_text(encoding="utf-8"))
    assert documented == options_markdown(), (
        "docs/pretraining.md, 'All options', differs from the settings declared in scrl/train/config.py; "
        "write it again with: python tests/test_config_file.py"
    )


def test_the_option_table_has_a_row_per_setting():
    rows = [line for line in options_markdown().splitlines() if line.startswith("| `--")]
    assert [row.split("`")[1].split()[0] for row in rows] == [s.flag for g in GROUPS for s in SETTINGS.values() if s.group == g]
    table = "\n".join(rows)
    assert "replaced-&lt;time>/" in table  # would be an HTML tag in the page otherwise


def _write_docs() -> None:
    text = DOC.read_text(encoding="utf-8")
    start, end = text.index(START), text.index(END)
    body_start = text.index("\n", start) + 1
    DOC.write_text(text[:body_start] + options_markdown() + text[end:], encoding="utf-8")
    print(f"wrote the option table into {DOC}")


if __name__ == "__main__":
    _write_docs()
