"""Shared helpers: the reference cases the Rust tests use (tests/vectors, a folder added there is
picked up) and a reader for their safetensors files."""

import json
import struct
from pathlib import Path

import pytest
import torch

VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors"
CASES = sorted(p.name for p in VECTORS.iterdir() if (p / "config.json").is_file())

_DTYPES = {"F32": torch.float32, "I64": torch.int64, "F64": torch.float64}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = bytearray(data[8 + n + start : 8 + n + end])
        tensors[name] = torch.frombuffer(raw, dtype=_DTYPES[info["dtype"]]).reshape(info["shape"]) if raw else torch.zeros(info["shape"], dtype=_DTYPES[info["dtype"]])
    return tensors


def within(ours: torch.Tensor, ref: torch.Tensor, rtol: float) -> float:
    """SPEC's parity bound: max|ours - ref| <= rtol * max|ref| + 1e-6. Returns the excess (<= 0 passes)."""
    return float((ours.detach().double() - ref.double()).abs().max() - (rtol * ref.double().abs().max() + 1e-6))


@pytest.fixture(params=CASES)
def case(request) -> Path:
    return VECTORS / request.param
