"""Loading a damaged file: truncations and byte flips of saved files of every backend that
runs here give a clear error (a one-line PrunecError or an OSError naming the file) or a
model whose outputs equal the original's; never another exception, a crash, a hang or a
wrong answer.

Why "wrong answer" cannot happen: a ``.pt2`` is read entry by entry with ``zipfile``
(CRC-32) and every entry is compared with the SHA-256 recorded in ``prunec.json`` at save;
an ONNX file carries the SHA-256 of its canonical serialization (``prunec.sha256``, first
in its metadata so a truncation cannot keep the rest of prunec's metadata without it).
The AOTInductor package (slow to build here) is covered by the trust checks of
test_load_safety.py: it is never loaded without ``trust=True``.
"""
from __future__ import annotations

import functools
import signal
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prunec
from prunec.errors import PrunecError
from tests.backends.crafted import SUFFIX, mlp_input, reference, saved_bytes
from tests.helpers import max_diff

BACKENDS = ["torch", "onnx", "onnxruntime"]
FUZZ = settings(max_examples=20, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def _no_hang(seconds: int = 30):
    def hung(*_):
        raise AssertionError(f"loading took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _load_damaged(backend: str, data: bytes) -> None:
    """Load ``data`` as a saved file: a clear error, or the right answers."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"damaged{SUFFIX[backend]}"
        path.write_bytes(data)
        with _no_hang():
            try:
                loaded = prunec.load(path)
            except PrunecError as exc:
                assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
                return
            except OSError as exc:
                assert str(path) in str(exc)
                return
            x = mlp_input()
            assert max_diff(loaded(x), _intact_output(backend)) == 0.0, \
                "a damaged file answered wrongly"


@functools.lru_cache(maxsize=None)
def _intact_output(backend: str):
    """What the undamaged file answers (the same runtime: exact equality expected)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"intact{SUFFIX[backend]}"
        path.write_bytes(saved_bytes(backend, _folder()))
        out = prunec.load(path)(mlp_input())
    assert max_diff(out, reference(mlp_input())) < 1e-5
    return out


def _folder() -> str:
    return tempfile.gettempdir()


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
@given(data=st.data())
def test_truncated_files(backend, data):
    good = saved_bytes(backend, _folder())
    cut = data.draw(st.integers(0, len(good) - 1), label="kept bytes")
    _load_damaged(backend, good[:cut])


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
@given(data=st.data())
def test_flipped_bytes(backend, data):
    good = bytearray(saved_bytes(backend, _folder()))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(1, 255)),
                               min_size=1, max_size=3), label="flips")
    for position, mask in flips:
        good[position] ^= mask
    _load_damaged(backend, bytes(good))


def _weight_spans_pt2(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the weight payloads inside a .pt2 archive."""
    import io

    spans = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if "/data/weights/weight_" in info.filename:
                start = _data_offset(data, info)
                spans.append((start, start + info.compress_size))
    return spans


def _data_offset(data: bytes, info: zipfile.ZipInfo) -> int:
    """The data follows the 30-byte local header, the name and the local extra field."""
    import struct

    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                    info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def _weight_spans_onnx(data: bytes) -> list[tuple[int, int]]:
    import onnx

    model = onnx.load_model_from_string(data)
    spans = []
    for tensor in model.graph.initializer:
        raw = tensor.raw_data
        if len(raw) >= 16:
            start = data.find(raw)
            assert start >= 0
            spans.append((start, start + len(raw)))
    return spans


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
@given(data=st.data())
def test_a_flip_in_weight_data_never_answers_wrongly(backend, data):
    """Flips aimed at the weights, where a file would still parse and load."""
    good = bytearray(saved_bytes(backend, _folder()))
    spans = (_weight_spans_pt2 if backend == "torch" else _weight_spans_onnx)(bytes(good))
    start, end = data.draw(st.sampled_from(spans), label="weight")
    position = data.draw(st.integers(start, end - 1), label="byte")
    good[position] ^= data.draw(st.integers(1, 255), label="mask")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"flipped{SUFFIX[backend]}"
        path.write_bytes(bytes(good))
        with pytest.raises(PrunecError, match="damaged|changed"):
            prunec.load(path)
