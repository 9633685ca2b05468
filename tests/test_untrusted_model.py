"""Untrusted input to model/: converters and model.save replace only what this project wrote, and never their
own source; leftovers of a killed writer are cleared or reported; weight files get the user's umask; params.json,
an index's weight_map, a Hugging Face config.json and a GGUF header are checked before use, each bad value
refused with one line naming the file and the key."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import model
from model import convert
from model.checkpoint import INDEX, read_params, weight_files
from model.errors import FormatError
from model.llama import PRESETS, ModelArgs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ours(tmp_path) -> Path:
    """A checkpoint of ours: the random tiny model `make tiny-model` writes."""
    convert.write_random("tiny", tmp_path / "ours")
    return tmp_path / "ours"


def write_gguf(checkpoint: Path, path: Path, **overrides) -> Path:
    """Our checkpoint as a llama.cpp GGUF file (F32), metadata keys replaced by `overrides`."""
    gguf = pytest.importorskip("gguf", reason="the gguf package writes the test file")
    args = read_params(checkpoint)
    metadata = {"llama.embedding_length": args.dim, "llama.block_count": args.n_layers,
                "llama.attention.head_count": args.n_heads, "llama.attention.head_count_kv": args.n_kv_heads,
                "llama.feed_forward_length": args.hidden_dim, "llama.context_length": args.max_seq_len,
                "llama.attention.layer_norm_rms_epsilon": args.norm_eps,
                **convert.byte_level_tokenizer_metadata(), **overrides}
    writer = gguf.GGUFWriter(path, arch="llama")
    for key, value in metadata.items():
        add = {str: writer.add_string, int: writer.add_uint32, float: writer.add_float32}.get(type(value),
                                                                                            writer.add_array)
        add(key, value)
    to_gguf = {meta_name: gguf_name for gguf_name, meta_name in convert.GGUF_NAMES.items()}
    layer_to_gguf = {meta_name: gguf_name for gguf_name, meta_name in convert.GGUF_LAYER_NAMES.items()}
    for name, tensor in model.checkpoint.read_tensors(checkpoint):
        if name not in to_gguf:  # layers.{i}.{module}.weight
            _, i, module = name.removesuffix(".weight").split(".", 2)
            to_gguf[name] = f"blk.{i}.{layer_to_gguf[module]}.weight"
        writer.add_tensor(to_gguf[name], tensor.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_meta_release(directory: Path, sp_model_file) -> Path:
    directory.mkdir()
    args = ModelArgs(**{**vars(PRESETS["tiny"]), "vocab_size": 400})  # the test tokenizer's size
    torch.save(model.Transformer(args).init_weights(seed=0).state_dict(), directory / "consolidated.00.pth")
    (directory / "params.json").write_text(json.dumps({k: getattr(args, k) for k in ("dim", "n_layers", "n_heads",
                                                       "n_kv_heads", "vocab_size", "multiple_of", "norm_eps")}))
    shutil.copyfile(sp_model_file, directory / "tokenizer.model")
    return directory


def run_convert(*argv) -> str:
    """model/convert.py's CLI; returns the one line it exits with."""
    with pytest.raises(SystemExit) as exit_info:
        convert.main([str(a) for a in argv])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def snapshot(path: Path) -> dict:
    """{relative path: bytes, or None for a folder} of everything under `path` (or of `path` itself, a file)."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


# ---------------------------------------------------------------- what OUT may be

def test_outputs_that_are_not_ours_are_refused_and_kept(tmp_path, ours, sp_model_file):
    folder = tmp_path / "downloads"
    folder.mkdir()
    gguf_file = write_gguf(ours, folder / "m.gguf")
    hf = tmp_path / "hf"
    convert.export_hf(ours, hf)
    meta = write_meta_release(tmp_path / "meta", sp_model_file)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    only_tokenizer = tmp_path / "tok"
    only_tokenizer.mkdir()
    shutil.copyfile(ours / "tokenizer.json", only_tokenizer / "tokenizer.json")
    nested = tmp_path / "nested"
    shutil.copytree(ours, nested)
    (nested / "sub").mkdir()
    (nested / "sub" / "notes.txt").write_text("mine")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(ours)
    inside_source = meta / "out"
    cases = [  # (argv, the paths that must survive, the message)
        (["gguf", gguf_file, folder], [folder], "downloads: is, holds or lies inside the source"),
        (["gguf", gguf_file, notes], [notes], "notes: not replaced: it holds notes.txt, which no checkpoint of ours"),
        (["export-hf", ours, ours], [ours], "ours: is, holds or lies inside the source"),
        (["export-hf", ours, link], [ours, link], "link: is, holds or lies inside the source"),
        (["hf", hf, hf], [hf], "hf: is, holds or lies inside the source"),
        (["meta", meta, meta], [meta], "meta: is, holds or lies inside the source"),
        (["meta", meta, inside_source], [meta], "out: is, holds or lies inside the source"),
        (["random", "tiny", only_tokenizer], [only_tokenizer], "tok: not replaced: it holds no params.json or"),
        (["random", "tiny", nested], [nested], "nested: not replaced: it holds sub, which"),
        (["random", "tiny", a_file], [a_file], "a-file: not replaced: it is not a directory"),
        (["random", "tiny", link], [ours, link], "link: not replaced: it is not a directory (a link"),
        (["random", "tiny", f"{notes}/.."], [tmp_path], "name the output directory itself"),
    ]
    for argv, kept, expected in cases:
        before = [snapshot(p) for p in kept]
        assert expected in run_convert(*argv), argv
        assert [snapshot(p) for p in kept] == before, argv
        assert not inside_source.exists()
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_outputs_of_ours_are_replaced(tmp_path, ours):
    empty = tmp_path / "empty"
    empty.mkdir()
    convert.write_random("tiny", empty)
    convert.export_hf(ours, tmp_path / "hf")
    convert.export_hf(empty, tmp_path / "hf")  # an export of ours, replaced by another
    convert.convert_hf(tmp_path / "hf", ours)  # our checkpoint, replaced by a conversion
    model.save_model(ours, model.Transformer(PRESETS["tiny"]), max_shard_bytes=60_000)  # by a sharded one
    model.save_model(ours, model.Transformer(PRESETS["tiny"]))  # and back: a snapshot over an older one
    assert sorted(p.name for p in ours.iterdir()) == ["model.safetensors", "params.json"]
    model.checkpoint.verify(empty)


# ---------------------------------------------------------------- what a killed writer left

def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_leftovers_of_a_dead_run_are_cleared_and_those_of_a_live_one_kept(tmp_path, ours, capfd):
    dead, live = dead_pid(), subprocess.Popen(["sleep", "60"])
    try:
        for name in (f".ours.tmp-{dead}", f".ours.old-{dead}", f".ours.tmp-{live.pid}"):
            shutil.copytree(ours, tmp_path / name)
        (tmp_path / f".ours.old-{dead + 1}").write_text("not a directory atomic_directory makes")
        convert.write_random("tiny", ours)
        left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ours"))
        assert left == sorted([f".ours.tmp-{live.pid}", f".ours.old-{dead + 1}"])
        err = capfd.readouterr().err
        assert f"process {live.pid} may still be writing it: not removed" in err
        assert "not a directory atomic_directory made: not removed" in err
    finally:
        live.kill()
        live.wait()


def test_a_run_killed_between_its_renames_leaves_the_previous_checkpoint(tmp_path, ours):
    """OUT missing and .OUT.old-PID of a dead process: that is the previous OUT, restored even if the
    next write fails."""
    ours.rename(tmp_path / f".ours.old-{dead_pid()}")

    def failing():
        yield "tok_embeddings.weight", torch.zeros(263, 64)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.save(ours, PRESETS["tiny"], failing())
    model.checkpoint.verify(ours)
    assert [p.name for p in tmp_path.iterdir()] == ["ours"]


# ---------------------------------------------------------------- file modes

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_weight_files_get_the_users_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        model.save_model(tmp_path / "single", model.Transformer(PRESETS["tiny"]))
        model.save_model(tmp_path / "sharded", model.Transformer(PRESETS["tiny"]), max_shard_bytes=60_000)
    finally:
        os.umask(previous)
    files = [*(tmp_path / "single").iterdir(), *(tmp_path / "sharded").iterdir()]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(mode) for p in files}


# ---------------------------------------------------------------- metadata checked before use

BAD_PARAMS = [  # (key, value, the message after "params.json: ")
    ("dim", "64", "dim = '64': must be an integer from 1 to 65536"),
    ("dim", 64.0, "dim = 64.0: must be an integer from 1 to 65536"),
    ("n_heads", 0, "n_heads = 0: must be an integer from 1 to 65536"),
    ("n_kv_heads", -2, "n_kv_heads = -2: must be an integer from 1 to 65536"),
    ("n_layers", 1e9, "n_layers = 1000000000.0: must be an integer from 1 to 1024"),
    ("n_layers", 10**9, "n_layers = 1000000000: must be an integer from 1 to 1024"),
    ("vocab_size", True, "vocab_size = True: must be an integer from 1 to 16777216"),
    ("multiple_of", 0, "multiple_of = 0: must be an integer from 1 to 65536"),
    ("ffn_dim_multiplier", 1e6, "multiple_of 16 and ffn_dim_multiplier 1000000.0 give an FFN width of 170000000"),
    ("max_seq_len", 0, "max_seq_len = 0: must be an integer from 1 to 1048576"),
    ("ffn_hidden_dim", 2**30, "ffn_hidden_dim = 1073741824: must be an integer from 1 to 1048576"),
    ("ffn_dim_multiplier", 1e-9, "give an FFN width of 0, not from 1 to 1048576"),
    ("norm_eps", "abc", "norm_eps = 'abc': must be a positive finite number"),
    ("norm_eps", 0, "norm_eps = 0: must be a positive finite number"),
    ("rope_theta", None, "rope_theta = None: must be a positive finite number"),
    ("dropout", 1, "dropout = 1: must be a number in [0, 1)"),
    ("tie_embeddings", "false", "tie_embeddings = 'false': must be true or false"),
]


@pytest.mark.parametrize("key, value, message", BAD_PARAMS, ids=[f"{k}={v!r}" for k, v, _ in BAD_PARAMS])
def test_bad_params_json(ours, key, value, message):
    params = ours / "params.json"
    params.write_text(json.dumps({**json.loads(params.read_text()), key: value}))
    with pytest.raises(FormatError) as error:
        read_params(ours)
    assert str(error.value).startswith(f"{params}: ") and message in str(error.value)
    with pytest.raises(SystemExit) as exit_info:  # `python model/checkpoint.py DIR`, which make iteration runs
        model.checkpoint.main([str(ours)])
    assert str(exit_info.value.code).startswith(f"error: {params}: ")


def test_params_json_that_is_not_an_object(ours):
    (ours / "params.json").write_text("[64, 2]")
    with pytest.raises(FormatError, match=r"params.json: expected a mapping of ModelArgs keys, not list"):
        read_params(ours)


@pytest.fixture
def sharded(tmp_path) -> Path:
    model.save_model(tmp_path / "sharded", model.Transformer(PRESETS["tiny"]), max_shard_bytes=60_000)
    return tmp_path / "sharded"


def test_index_names_only_files_of_its_own_directory(tmp_path, sharded):
    index = json.loads((sharded / INDEX).read_text())
    name, shard = next(iter(index["weight_map"].items()))
    shutil.copyfile(sharded / shard, tmp_path / "outside.safetensors")
    (sharded / "sub").mkdir()
    cases = [  # (the file the index names, the message after "weight_map['tok_embeddings.weight'] = ")
        ("../outside.safetensors", "'../outside.safetensors' is not a file name in"),
        (str(tmp_path / "outside.safetensors"), "is not a file name in"),
        ("./" + shard, f"'./{shard}' is not a file name in"),
        ("sub", "'sub' is not a file in"),
        ("missing.safetensors", "'missing.safetensors' is not a file in"),
        (7, "7 is not a file name in"),
    ]
    for file, message in cases:
        (sharded / INDEX).write_text(json.dumps({**index, "weight_map": {**index["weight_map"], name: file}}))
        with pytest.raises(FormatError) as error:
            weight_files(sharded)
        assert str(error.value).startswith(f"{sharded / INDEX}: weight_map[{name!r}] = "), file
        assert message in str(error.value), file
    (sharded / INDEX).write_text(json.dumps({**index, "weight_map": [shard]}))
    with pytest.raises(FormatError, match=r"index.json: weight_map is not an object"):
        weight_files(sharded)


def test_hf_config_missing_or_bad_keys(tmp_path, ours):
    hf = tmp_path / "hf"
    convert.export_hf(ours, hf)
    good = json.loads((hf / "config.json").read_text())
    cases = [
        ({k: v for k, v in good.items() if k != "num_hidden_layers"}, "key 'num_hidden_layers' is missing"),
        ({k: v for k, v in good.items() if k != "hidden_size"}, "key 'hidden_size' is missing"),
        ({**good, "num_attention_heads": 0}, "n_heads = 0: must be an integer"),
        ({**good, "tie_word_embeddings": None}, "tie_embeddings = None: must be true or false"),
        ([good], "not a JSON object"),
    ]
    for config, message in cases:
        (hf / "config.json").write_text(json.dumps(config))
        assert f"hf/config.json: {message}" in run_convert("hf", hf, tmp_path / "out"), message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value, message", [
    ("llama.context_length", 0, "max_seq_len = 0: must be an integer"),
    ("llama.block_count", 10**9, "n_layers = 1000000000: must be an integer from 1 to 1024"),
    ("llama.attention.layer_norm_rms_epsilon", "abc", "norm_eps = 'abc': must be a positive finite number"),
])
def test_bad_gguf_header(tmp_path, ours, key, value, message):
    path = write_gguf(ours, tmp_path / "m.gguf", **{key: value})
    assert f"m.gguf: {message}" in run_convert("gguf", path, tmp_path / "out")


def test_meta_params_with_a_bad_value(tmp_path, sp_model_file):
    meta = write_meta_release(tmp_path / "meta", sp_model_file)
    params = json.loads((meta / "params.json").read_text())
    (meta / "params.json").write_text(json.dumps({**params, "dim": "64"}))
    assert "meta/params.json: dim = '64': must be an integer" in run_convert("meta", meta, tmp_path / "out")


# ---------------------------------------------------------------- make tiny-model

def test_random_checkpoint_and_the_make_target(tmp_path):
    convert.main(["random", "tiny", str(tmp_path / "tiny")])
    net, tokenizer = model.load(tmp_path / "tiny")
    assert net.args.vocab_size == tokenizer.vocab_size == 263 and net.args.max_seq_len == 4096
    ids = tokenizer.encode_chat([{"role": "user", "content": "Rate this answer: héllo 🙂"}])
    assert tokenizer.decode(ids).endswith("Rate this answer: héllo 🙂\nassistant\n")
    dry_run = subprocess.run(["make", "-C", str(ROOT), "-n", "tiny-model", f"PY={sys.executable}"],
                             capture_output=True, text=True)
    assert dry_run.returncode == 0, dry_run.stderr
    assert "model/convert.py random tiny checkpoints/tiny" in dry_run.stdout or "up to date" in dry_run.stdout


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path, tiny_checkpoint):
    """A tokenizer whose ids run past the model's embedding table is refused by name before any weight is
    read: by model.load, by python model/checkpoint.py DIR, and by the trainers and tensor-parallel loading
    (all go through checkpoint_tokenizer)."""
    small = tmp_path / "small"
    shutil.copytree(tiny_checkpoint, small)
    params = json.loads((small / "params.json").read_text())
    (small / "params.json").write_text(json.dumps({**params, "vocab_size": 300}))
    with torch.no_grad():  # weights of the smaller vocabulary, so that only the tokenizer is wrong
        net = model.Transformer(model.ModelArgs(**{**params, "vocab_size": 300})).init_weights(seed=0)
    shutil.rmtree(small)
    model.save_model(small, net, model.load_tokenizer(tiny_checkpoint))
    with pytest.raises(model.FormatError, match="the tokenizer's 400 tokens do not fit the model's vocab_size 300"):
        model.load(small)
    root = Path(__file__).parents[1]
    proc = subprocess.run([sys.executable, str(root / "model/checkpoint.py"), str(small)], capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "do not fit the model's vocab_size 300" in proc.stderr
