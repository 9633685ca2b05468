"""model/gguf_file.py against the `gguf` pip package (llama.cpp's own Python reader/writer) as reference.

Files are written with gguf.GGUFWriter and quantised with gguf.quants.quantize; our reader must
return the metadata that was written and the same floats as gguf.quants.dequantize.
"""
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import GGUFValueType as V

from model.errors import FormatError  # noqa: E402
from model.gguf_file import GGML_TYPES, SUPPORTED_TYPES, read_gguf  # noqa: E402

QUANTISED = [T.Q8_0, T.Q4_0, T.Q4_1]
# Worst-case |error| / max|x| of one 32-value block: half a step of the scale, plus the f16 rounding
# of the scale (Q4_0 puts the block's extreme at -8 * d, so the other side can clip by a full step).
QUANT_TOL = {T.Q8_0: 1 / 127, T.Q4_0: 1 / 8 + 1e-3, T.Q4_1: 2 / 15 + 1e-3}


def write_gguf(path, metadata=(), tensors=(), alignment=None, endianess=gguf.GGUFEndian.LITTLE):
    """metadata: (key, value, type, sub_type) tuples; tensors: (name, array, raw_dtype or None)."""
    w = gguf.GGUFWriter(path, "llama", endianess=endianess)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, value, vtype, sub_type in metadata:
        w.add_key_value(key, value, vtype, sub_type)
    for name, array, raw_dtype in tensors:
        w.add_tensor(name, array, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def random_metadata(rng):
    """Every value type, with the value our reader should give back for it."""
    words = ["Ġthe", "ĠĠ", "</s>", "<|im_start|>", "é", "日本語", "🙂", "", "a b", "\n", "ĊĠ"]
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    entries = [
        ("u8", int(rng.integers(0, 256)), V.UINT8), ("i8", int(rng.integers(-128, 128)), V.INT8),
        ("u16", int(rng.integers(0, 2**16)), V.UINT16), ("i16", int(rng.integers(-2**15, 2**15)), V.INT16),
        ("u32", int(rng.integers(0, 2**32)), V.UINT32), ("i32", int(rng.integers(-2**31, 2**31)), V.INT32),
        ("u64", int(rng.integers(0, 2**63)) * 2 + 1, V.UINT64), ("i64", -int(rng.integers(0, 2**63)), V.INT64),
        ("f64", float(rng.normal()), V.FLOAT64), ("flag.true", True, V.BOOL), ("flag.false", False, V.BOOL),
        ("str", "".join(rng.choice(words, 5)), V.STRING), ("str.empty", "", V.STRING),
    ]
    metadata = [(f"test.{k}", v, t, None, v) for k, v, t in entries]
    x = float(rng.normal())
    metadata.append(("test.f32", x, V.FLOAT32, None, f32(x)))
    tokens = [str(w) + str(i) for i, w in enumerate(rng.choice(words, 300))]
    floats = rng.normal(size=50).tolist()
    arrays = [
        ("tokens", tokens, V.STRING, tokens),
        ("i32s", rng.integers(-2**31, 2**31, 100).tolist(), V.INT32, None),
        ("u8s", rng.integers(0, 256, 17).tolist(), V.UINT8, None),
        ("i64s", rng.integers(-2**62, 2**62, 9).tolist(), V.INT64, None),
        ("u16s", rng.integers(0, 2**16, 9).tolist(), V.UINT16, None),
        ("f32s", floats, V.FLOAT32, [f32(f) for f in floats]),
        ("f64s", floats, V.FLOAT64, None),
        ("bools", rng.integers(0, 2, 20).astype(bool).tolist(), V.BOOL, None),
        ("nested", [[1, 2, 3], [4], [-5, 6]], V.ARRAY, None),
    ]
    metadata += [(f"test.array.{k}", v, V.ARRAY, t, v if want is None else want) for k, v, t, want in arrays]
    return metadata


def random_tensors(rng):
    """(name, array to write, raw dtype, original float32 data) for every supported type and odd shapes."""
    out = []
    for shape in [(7, 5), (13,), (2, 3, 4)]:
        x = rng.normal(size=shape).astype(np.float32)
        out.append((f"f32.{len(shape)}d", x, None, x))
        out.append((f"f16.{len(shape)}d", x.astype(np.float16), None, x))
        out.append((f"bf16.{len(shape)}d", gguf.quants.quantize(x, T.BF16), T.BF16, x))
    for qtype in QUANTISED:
        for shape in [(7, 64), (7, 96), (96,), (2, 3, 32)]:
            x = (rng.normal(size=shape) * rng.uniform(0.01, 10)).astype(np.float32)
            out.append((f"{qtype.name}.{'x'.join(map(str, shape))}", gguf.quants.quantize(x, qtype), qtype, x))
    return out


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))  # reproducible, differs per test


@pytest.fixture
def small_file(tmp_path):
    """A valid file with a couple of metadata keys and two tensors, for the corruption tests."""
    x = np.arange(64 * 3, dtype=np.float32).reshape(3, 64)
    return write_gguf(tmp_path / "small.gguf", [("test.s", ["a", "bc"], V.ARRAY, None),
                                                ("test.n", 7, V.UINT32, None)],
                      [("a", x, None), ("b", gguf.quants.quantize(x, T.Q8_0), T.Q8_0)])


def test_type_table_matches_gguf():
    for type_id, (name, block, nbytes) in GGML_TYPES.items():
        assert T(type_id).name == name
        if type_id == T.Q8_1:  # gguf-py still says 40 bytes (f32 d, s); ggml's block_q8_1 is 2 x f16 + 32 = 36
            assert gguf.GGML_QUANT_SIZES[T.Q8_1] in [(32, 36), (32, 40)]
            continue
        assert gguf.GGML_QUANT_SIZES[T(type_id)] == (block, nbytes), name
    assert SUPPORTED_TYPES == {t.value: t.name for t in [T.F32, T.F16, T.Q4_0, T.Q4_1, T.Q8_0, T.BF16]}


@pytest.mark.parametrize("alignment", [None, 64])
def test_round_trip(tmp_path, rng, alignment):
    metadata, tensors = random_metadata(rng), random_tensors(rng)
    path = write_gguf(tmp_path / "random.gguf", [m[:4] for m in metadata], [t[:3] for t in tensors], alignment)
    g = read_gguf(path)
    ref = gguf.GGUFReader(path)

    assert g.version == 3
    expected = {"general.architecture": "llama"}
    if alignment is not None:
        expected["general.alignment"] = alignment
    expected.update({k: want for k, _, _, _, want in metadata})
    assert g.metadata == expected
    assert list(g.metadata) == list(expected)  # file order
    for key, value in g.metadata.items():
        assert type(value) is type(expected[key]), key  # bools stay bools, floats floats
        if isinstance(value, list):
            assert [type(v) for v in value] == [type(v) for v in expected[key]], key
        if key != "test.array.nested":  # gguf 0.19: ReaderField.contents() flattens nested arrays
            assert ref.fields[key].contents() == value, key

    assert list(g.tensors) == [t[0] for t in tensors]
    for (name, written, raw_dtype, original), r in zip(tensors, ref.tensors):
        info = g.tensors[name]
        qtype = T(raw_dtype if raw_dtype is not None else {np.float32: 0, np.float16: 1}[written.dtype.type])
        assert (info.name, info.ggml_type, info.offset, info.nbytes) == (r.name, qtype, r.data_offset, r.n_bytes)
        assert info.offset % (alignment or 32) == 0
        assert info.shape == original.shape == tuple(int(n) for n in reversed(r.shape))
        x = g.tensor(name)
        assert x.dtype == np.float32 and x.shape == info.shape
        np.testing.assert_array_equal(x, gguf.quants.dequantize(written, qtype).reshape(info.shape))
        np.testing.assert_array_equal(x, gguf.quants.dequantize(r.data, qtype).reshape(info.shape))
        if qtype in QUANT_TOL:  # close to the data before quantisation, block by block
            blocks = original.reshape(-1, 32)
            bound = np.abs(blocks).max(axis=1, keepdims=True) * QUANT_TOL[qtype] + 1e-6
            assert (np.abs(x.reshape(-1, 32) - blocks) <= bound).all(), name
        else:
            rtol = {T.F32: 0, T.F16: 2**-11, T.BF16: 2**-8}[qtype]
            np.testing.assert_allclose(x, original, rtol=rtol, atol=1e-7 if rtol else 0)
    g.check_supported()


def test_custom_alignment(tmp_path):
    """The data section starts at the header's end rounded up to general.alignment, not to 32."""
    x = np.arange(96, dtype=np.float32).reshape(3, 32)
    for pad in range(0, 256, 37):  # header ends land all over a 256-byte window
        path = write_gguf(tmp_path / f"aligned{pad}.gguf", [("test.pad", "x" * pad, V.STRING, None)],
                          [("x", gguf.quants.quantize(x, T.Q8_0), T.Q8_0), ("y", x, None)], alignment=256)
        g, ref = read_gguf(path), gguf.GGUFReader(path)
        assert [t.offset for t in g.tensors.values()] == [t.data_offset for t in ref.tensors]
        assert all(t.offset % 256 == 0 for t in g.tensors.values())
        np.testing.assert_array_equal(g.tensor("y"), x)


def test_result_is_a_copy(small_file):
    g = read_gguf(small_file)
    x = g.tensor("a")
    assert x.flags.writeable  # not a read-only view of the mapped file
    x[:] = 0
    assert g.tensor("a")[1, 0] == 64


# --- the demo model -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_reference(demo_gguf):
    return gguf.GGUFReader(demo_gguf)


def test_demo_file(demo_gguf, demo_reference):
    g = read_gguf(demo_gguf)
    meta = g.metadata
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 30
    assert meta["llama.embedding_length"] == 576
    assert len(meta["tokenizer.ggml.tokens"]) == len(meta["tokenizer.ggml.token_type"]) == 49152
    assert all(isinstance(t, str) for t in meta["tokenizer.ggml.tokens"])
    assert all(len(m.split(" ")) == 2 for m in meta["tokenizer.ggml.merges"])
    assert set(meta) == {k for k in demo_reference.fields if not k.startswith("GGUF.")}
    for key, value in meta.items():
        assert demo_reference.fields[key].contents() == value, key

    assert len(g.tensors) == len(demo_reference.tensors) == 272
    g.check_supported()
    ref = {t.name: t for t in demo_reference.tensors}
    emb = g.tensors["token_embd.weight"]
    assert emb.ggml_type == T.Q8_0 and emb.shape == (49152, 576)
    for name in ["token_embd.weight", "blk.7.ffn_down.weight", "blk.29.attn_k.weight", "output_norm.weight"]:
        r = ref[name]
        want = gguf.quants.dequantize(r.data, r.tensor_type).reshape(g.tensors[name].shape)
        np.testing.assert_array_equal(g.tensor(name), want)
    assert g.tensors["blk.7.ffn_down.weight"].ggml_type == T.Q4_1
    assert g.tensors["blk.7.ffn_down.weight"].shape == (576, 1536)  # (out, in), as nn.Linear stores it


# --- bad input ----------------------------------------------------------------------------------

def named(path, *patterns):
    """A regex matching a message that names the file, then the patterns in order."""
    return re.escape(str(path)) + ".*" + ".*".join(patterns)


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match=named(tmp_path / "nope.gguf", "no such file")):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(FormatError, match=named(tmp_path, "cannot read")):
        read_gguf(tmp_path)


@pytest.mark.parametrize("content", [b"", b"GG", b"GGML" + bytes(60), b"\x00" * 100, b"PK\x03\x04" + bytes(60)])
def test_not_gguf(tmp_path, content):
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    with pytest.raises(FormatError, match=named(path, "not a GGUF file")):
        read_gguf(path)


@pytest.mark.parametrize("version,message", [(1, "version 1 .*not supported"), (4, "version 4 is not supported"),
                                             (0, "version 0 is not supported")])
def test_bad_version(small_file, version, message):
    data = bytearray(small_file.read_bytes())
    data[4:8] = version.to_bytes(4, "little")
    small_file.write_bytes(data)
    with pytest.raises(FormatError, match=named(small_file, message)):
        read_gguf(small_file)


def test_big_endian(tmp_path):
    path = write_gguf(tmp_path / "be.gguf", tensors=[("x", np.ones(4, np.float32), None)],
                      endianess=gguf.GGUFEndian.BIG)
    with pytest.raises(FormatError, match=named(path, "big-endian")):
        read_gguf(path)


def test_truncated_header(small_file):
    data = small_file.read_bytes()
    header_end = read_gguf(small_file).tensors["a"].offset  # the data section starts here
    cut = small_file.with_name("cut.gguf")
    for n in range(4, header_end - 31):  # a cut in the padding before the data leaves a readable header
        cut.write_bytes(data[:n])
        with pytest.raises(FormatError, match=named(cut, "file ends inside|past the end")):
            read_gguf(cut)


def test_truncated_tensor_data(small_file):
    g = read_gguf(small_file)
    b = g.tensors["b"]
    small_file.write_bytes(small_file.read_bytes()[:b.offset + b.nbytes // 2])
    with pytest.raises(FormatError, match=named(small_file, "tensor 'b'", "past the end of the file")):
        read_gguf(small_file)


def test_unsupported_type(tmp_path):
    q2k = np.random.default_rng(0).integers(0, 256, (3, 2 * 84), dtype=np.uint8)  # 3 rows of 512 values
    path = write_gguf(tmp_path / "k_quants.gguf", tensors=[("ok", np.ones((2, 3), np.float32), None),
                                                           ("blk.0.ffn_up.weight", q2k, T.Q2_K)])
    g = read_gguf(path)  # the header is fine, and so are the other tensors
    info = g.tensors["blk.0.ffn_up.weight"]
    assert (info.shape, info.ggml_type, info.nbytes) == ((3, 512), T.Q2_K, q2k.nbytes)
    np.testing.assert_array_equal(g.tensor("ok"), np.ones((2, 3)))
    message = named(path, "tensor 'blk.0.ffn_up.weight'", r"Q2_K \(10\)", "supported types: F32, F16")
    with pytest.raises(FormatError, match=message):
        g.tensor("blk.0.ffn_up.weight")
    with pytest.raises(FormatError, match=message):
        g.check_supported()
    with pytest.raises(FormatError, match=named(path, "no tensor named 'missing'")):
        g.tensor("missing")


def test_unknown_type(tmp_path):
    path = write_gguf(tmp_path / "future.gguf", tensors=[("x", np.zeros(4, np.float32), 200)])
    with pytest.raises(FormatError, match=named(path, "tensor 'x'", "unknown ggml type 200")):
        read_gguf(path)


def test_corrupt_bytes_give_format_errors(small_file, rng):
    """Random damage to the header must end in FormatError or a valid parse, never another exception."""
    data = small_file.read_bytes()
    header_end = read_gguf(small_file).tensors["a"].offset
    bad = small_file.with_name("damaged.gguf")
    for _ in range(300):
        damaged = bytearray(data)
        for i in rng.integers(4, header_end, rng.integers(1, 4)):
            damaged[i] = rng.integers(0, 256)
        bad.write_bytes(damaged)
        try:
            g = read_gguf(bad)
            for name in g.tensors:
                assert g.tensor(name).shape == g.tensors[name].shape
        except FormatError as e:
            assert str(bad) in str(e)
