"""Configuration presets (docs/design.md#presets), validation, the config.json round trip, and the
config's imports."""
import dataclasses
import json
import subprocess
import sys

import pytest

from dalle_fast.config import (
    CONFIG_FILE,
    DEFAULT_HOLDOUT,
    PRESETS,
    Config,
    DataConfig,
    OptimConfig,
    preset,
    with_dataset,
)

# docs/design.md#presets: image px, token grid side, codebook size, text_len.
PRESET_TABLE = {
    "tiny": (32, 4, 64, 16),
    "demo": (64, 8, 512, 32),
    "emoji": (32, 8, 512, 32),
    "gpu": (256, 32, 8192, 256),
    "paper": (256, 32, 8192, 256),
}


def test_the_presets_are_those_of_the_design():
    assert list(PRESETS) == list(PRESET_TABLE)


@pytest.mark.parametrize("name", PRESET_TABLE)
def test_preset_matches_preset_table(name):
    config = preset(name)
    assert config.name == name
    table_row = (config.image_size, config.grid_size, config.image_vocab, config.transformer.text_len)
    assert table_row == PRESET_TABLE[name]
    assert (config.vae.image_size, config.vae.grid_size, config.vae.codebook_size) == PRESET_TABLE[name][:3]
    vae = config.vae
    assert vae.image_size == vae.grid_size * 2 ** (vae.num_groups - 1) == vae.grid_size * vae.downsample
    assert config.seq_len == config.transformer.text_len + config.grid_size**2
    assert (vae.tau_start, vae.tau_end) == (1.0, 1 / 16)
    assert config.data.dataset == ("emoji" if name == "emoji" else "shapes")
    assert config.data.holdout == DEFAULT_HOLDOUT


def test_paper_preset_is_the_12b_model():
    config = preset("paper")
    t = config.transformer
    assert (t.layers, t.heads, t.head_dim, t.d_model) == (64, 62, 64, 3968)
    assert (t.text_vocab, t.text_len, t.conv_kernel, t.attention) == (16384, 256, 11, "sparse")
    assert (config.image_vocab, config.image_size, config.grid_size) == (8192, 256, 32)
    assert config.vae.kl_weight == 6.6 and config.vae.optim.batch_size == 512


def test_emoji_preset_uses_the_papers_recipe_for_real_images():
    """docs/results.md#emoji-preset: the paper's crop (A.2) and the transformer's EMA (B.2), not the
    dVAE's EMA (it cost 5.5 dB in a run this short), none of the shapes-only augmentations that did
    not help on emoji, and no flip (names say left and right)."""
    config = preset("emoji")
    vae, t = config.vae, config.transformer
    assert vae.augment_crop < 1 and not vae.augment_flip
    assert (vae.augment_shift, vae.augment_composite) == (0, 0.0)
    assert (vae.reconstruction, vae.usage_weight > 0, vae.decoder_finetune_fraction > 0) == ("gaussian", True, True)
    assert (vae.optim.ema_decay, t.optim.ema_decay) == (0.0, 0.99)
    assert config.clip.candidates == 16


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="'huge'.*tiny, demo, emoji, gpu, paper"):
        preset("huge")


@pytest.mark.parametrize("name", PRESET_TABLE)
def test_save_load_round_trip(tmp_path, name):
    config = preset(name)
    path = config.save(tmp_path / "run")  # a directory: writes run/config.json
    assert path == tmp_path / "run" / CONFIG_FILE
    assert [p.name for p in path.parent.iterdir()] == [CONFIG_FILE]  # no temp file left behind
    assert Config.load(tmp_path / "run") == config
    assert Config.load(path) == config
    assert Config.from_dict(json.loads(path.read_text())) == config


def test_save_overwrites_and_accepts_a_file_path(tmp_path):
    path = tmp_path / "my.json"
    preset("tiny").save(path)
    demo = preset("demo")
    assert demo.save(path) == path
    assert Config.load(path) == demo


def _write(tmp_path, data) -> str:
    path = tmp_path / CONFIG_FILE
    path.write_text(json.dumps(data))
    return str(path)


def test_load_rejects_unknown_key_naming_it(tmp_path):
    data = preset("tiny").to_dict()
    data["vae"]["optim"]["learning_rate"] = 1e-3
    with pytest.raises(ValueError, match=r"unknown key 'vae\.optim\.learning_rate'"):
        Config.load(_write(tmp_path, data))
    data = preset("tiny").to_dict()
    data["colour"] = "red"
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        Config.load(_write(tmp_path, data))


def test_load_rejects_missing_and_bad_values_naming_them(tmp_path):
    data = preset("tiny").to_dict()
    del data["transformer"]["layers"]
    with pytest.raises(ValueError, match=r"missing key 'transformer\.layers'"):
        Config.load(_write(tmp_path, data))
    data = preset("tiny").to_dict()
    data["vae"]["optim"]["lr"] = -1
    with pytest.raises(ValueError, match=r"vae\.optim.*OptimConfig\.lr"):
        Config.load(_write(tmp_path, data))
    data = preset("tiny").to_dict()
    data["transformer"]["attention"] = "dense"
    with pytest.raises(ValueError, match=r"TransformerConfig\.attention.*'sparse', 'full'"):
        Config.load(_write(tmp_path, data))


def test_loaded_values_are_normalized(tmp_path):
    data = preset("tiny").to_dict()
    data["vae"]["optim"]["lr"] = 1  # an int where a float belongs
    config = Config.load(_write(tmp_path, data))
    assert config.vae.optim.lr == 1.0 and isinstance(config.vae.optim.lr, float)
    assert isinstance(config.data.holdout, tuple) and all(isinstance(p, tuple) for p in config.data.holdout)


def test_grid_must_divide_image_size_by_a_power_of_two():
    vae = preset("tiny").vae
    for grid in (3, 5, 64):
        with pytest.raises(ValueError, match="VAEConfig.grid_size"):
            dataclasses.replace(vae, grid_size=grid)
    assert dataclasses.replace(vae, grid_size=8).num_groups == 3
    assert dataclasses.replace(vae, grid_size=32).num_groups == 1


@pytest.mark.parametrize("section, field, value", [
    ("vae", "hidden", 6),
    ("vae", "tau_end", 2.0),
    ("vae", "codebook_size", "64"),
    ("vae", "reconstruction", "mse"),
    ("vae", "gaussian_sigma", 0.0),
    ("vae", "usage_weight", -1.0),
    ("vae", "augment_shift", -1),
    ("vae", "augment_shift", 32),
    ("vae", "augment_shift", 1.5),
    ("vae", "augment_composite", 1.5),
    ("vae", "decoder_finetune_fraction", 1.0),
    ("vae", "decoder_finetune_fraction", -0.1),
    ("vae", "decoder_finetune_lr", 0.0),
    ("transformer", "conv_kernel", 4),
    ("transformer", "heads", True),
    ("transformer", "dropout", float("nan")),
    ("transformer", "sample_temperature", -0.5),
    ("transformer", "sample_temperature", float("inf")),
    ("transformer", "sample_temperature", "0.5"),
    ("clip", "width", 33),
    ("train", "precision", "fp16"),
    ("train", "parallel", "deepspeed"),
    ("train", "activation_checkpointing", 1),
    ("data", "holdout", [("red", "circle", "x")]),
    ("data", "holdout", [("mauve", "circle")]),
    ("data", "val_size", 0),
])
def test_bad_field_raises_naming_it(section, field, value):
    sub = getattr(preset("tiny"), section)
    with pytest.raises(ValueError, match=rf"{type(sub).__name__}\.{field}"):
        dataclasses.replace(sub, **{field: value})


@pytest.mark.parametrize("accumulation", [0, -2, 2.0, True])
def test_accumulation_must_be_a_positive_int(accumulation):
    with pytest.raises(ValueError, match=r"OptimConfig\.accumulation"):
        OptimConfig(steps=1, batch_size=8, lr=1e-3, accumulation=accumulation)


def test_the_batch_splits_into_accumulation_x_processes_micro_batches():
    optim = OptimConfig(steps=1, batch_size=24, lr=1e-3, accumulation=3)
    assert [optim.micro_batch(p) for p in (1, 2, 4, 8)] == [8, 4, 2, 1]
    for processes in (3, 16):
        with pytest.raises(ValueError, match=rf"OptimConfig\.batch_size: .*accumulation x processes = 3 x "
                                             rf"{processes} = {3 * processes}.*optim\.batch_size or "
                                             r"optim\.accumulation"):
            optim.micro_batch(processes)
    with pytest.raises(ValueError, match="processes: must be >= 1"):
        optim.micro_batch(0)
    with pytest.raises(ValueError, match=r"OptimConfig\.batch_size: .*accumulation x processes = 5 x 1"):
        OptimConfig(steps=1, batch_size=24, lr=1e-3, accumulation=5)


def test_parallel_checkpointing_and_accumulation_load_from_json(tmp_path):
    data = preset("tiny").to_dict()
    data["train"].update(parallel="fsdp", activation_checkpointing=True)
    data["transformer"]["optim"]["accumulation"] = 2
    config = Config.load(_write(tmp_path, data))
    assert (config.train.parallel, config.train.activation_checkpointing) == ("fsdp", True)
    assert config.transformer.optim.accumulation == 2 and config.vae.optim.accumulation == 1
    data["transformer"]["optim"]["accumulation"] = 7
    with pytest.raises(ValueError, match=r"transformer\.optim.*OptimConfig\.batch_size.*accumulation"):
        Config.load(_write(tmp_path, data))


def test_cross_section_check_names_the_field():
    config = preset("tiny")
    with pytest.raises(ValueError, match="Config.clip.*patch_size"):
        dataclasses.replace(config, clip=dataclasses.replace(config.clip, patch_size=5))
    demo = preset("demo")
    with pytest.raises(ValueError, match="Config.vae: augment_composite 0.5 .* shapes data only.*'/data'"):
        dataclasses.replace(demo, data=dataclasses.replace(demo.data, dataset="/data"))


def test_with_dataset_turns_composites_off_for_user_data_only(tmp_path, monkeypatch):
    demo = preset("demo")
    monkeypatch.chdir(tmp_path)
    user = with_dataset(demo, "images")
    assert user.data.dataset == str(tmp_path / "images") and user.vae.augment_composite == 0.0
    assert user == dataclasses.replace(demo, vae=dataclasses.replace(demo.vae, augment_composite=0.0),
                                       data=dataclasses.replace(demo.data, dataset=str(tmp_path / "images")))
    assert with_dataset(user, "shapes") == dataclasses.replace(user, data=demo.data)
    assert with_dataset(demo, "shapes") == demo


def test_sections_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset("tiny").vae.grid_size = 8


def test_optim_and_data_defaults():
    optim = OptimConfig(steps=10, batch_size=2, lr=1e-3)
    assert (optim.lr_min, optim.grad_clip, optim.ema_decay, optim.accumulation) == (0.0, 0.0, 0.0, 1)
    train = preset("tiny").train
    assert (train.parallel, train.activation_checkpointing) == ("ddp", False)
    data = DataConfig()
    assert [data.split_size(s) for s in ("train", "val", "test")] == [50_000, 1_000, 1_000]
    with pytest.raises(ValueError, match="split must be one of"):
        data.split_size("dev")


def test_config_reads_the_shapes_spec_alone():
    """The config imports no module of the data package but the shapes spec (no import circle)."""
    code = "import sys, dalle_fast.config; print(*sorted(m for m in sys.modules if m.startswith('dalle_fast.data')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["dalle_fast.data", "dalle_fast.data.shapes_spec"]


# --- the emoji data's settings (data.emoji_font, data.emoji_cldr, data.emoji_holdout) ------------------------------

def test_emoji_settings_default_to_debians_paths_and_the_64_held_out_names():
    from dalle_fast.config.emoji_spec import DEFAULT_CLDR, DEFAULT_FONT
    from dalle_fast.config.emoji_spec import DEFAULT_HOLDOUT as EMOJI_HOLDOUT

    data = DataConfig()
    assert data.emoji_font == DEFAULT_FONT == "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
    assert data.emoji_cldr == DEFAULT_CLDR == "/usr/share/unicode/cldr/common"
    assert data.emoji_holdout == EMOJI_HOLDOUT and len(set(EMOJI_HOLDOUT)) == 64
    tones = [n for n in EMOJI_HOLDOUT if n.endswith(" skin tone")]
    assert len(tones) == 32 and all(n.split(" ", 1)[0] in ("man", "woman") for n in EMOJI_HOLDOUT if n not in tones)


@pytest.mark.parametrize("field, value, message", [
    ("emoji_holdout", ["grinning face"], "neither '<name>: <light"),
    ("emoji_holdout", ["ear: purple skin tone"], "neither"),
    ("emoji_holdout", ["man cook", "man cook"], "more than once"),
    ("emoji_holdout", "man cook", "a list of emoji names"),
    ("emoji_holdout", [1], "a list of emoji names"),
    ("emoji_font", "", "Noto Color Emoji font"),
    ("emoji_cldr", "", "CLDR common folder"),
    ("emoji_font", 3, "of type str"),
])
def test_bad_emoji_settings_raise_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=rf"DataConfig\.{field}: .*{message}"):
        DataConfig(dataset="emoji", **{field: value})


def test_emoji_names_are_checked_for_form_only_on_the_emoji_data():
    assert DataConfig(emoji_holdout=["grinning face"]).emoji_holdout == ("grinning face",)  # shapes: not read
    assert DataConfig(dataset="emoji", emoji_holdout=[]).emoji_holdout == ()
    with pytest.raises(ValueError, match=r"DataConfig\.emoji_holdout"):
        DataConfig(emoji_holdout="man cook")


def test_emoji_settings_round_trip_through_config_json(tmp_path):
    config = with_dataset(preset("tiny"), "emoji")
    config = dataclasses.replace(config, data=dataclasses.replace(
        config.data, emoji_font="/fonts/emoji.ttf", emoji_cldr="/cldr/common", emoji_holdout=("man cook",)))
    loaded = Config.load(config.save(tmp_path))
    assert loaded == config and loaded.data.emoji_holdout == ("man cook",)
    data = json.loads((tmp_path / CONFIG_FILE).read_text())
    data["data"]["emoji_holdout"] = ["grinning face"]
    with pytest.raises(ValueError, match=r"in data: DataConfig\.emoji_holdout"):
        Config.load(_write(tmp_path, data))


def test_with_dataset_keeps_emoji_a_name_and_turns_composites_off(tmp_path, monkeypatch):
    demo = preset("demo")
    config = with_dataset(demo, "emoji")
    assert config.data.dataset == "emoji" and config.vae.augment_composite == 0.0
    assert config == dataclasses.replace(demo, vae=dataclasses.replace(demo.vae, augment_composite=0.0),
                                         data=dataclasses.replace(demo.data, dataset="emoji"))
    monkeypatch.chdir(tmp_path)
    assert with_dataset(demo, "./emoji").data.dataset == str(tmp_path / "emoji"), "a folder named emoji is a path"
    with pytest.raises(ValueError, match="Config.vae: augment_composite 0.5 .* shapes data only.*'emoji'"):
        dataclasses.replace(demo, data=dataclasses.replace(demo.data, dataset="emoji"))
