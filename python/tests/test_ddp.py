"""tttc's layers under torch.distributed: DistributedDataParallel and FSDP (`fully_shard`) with the
gloo backend, two processes on this machine, train as one process on the same global batch, and
the checkpoint rank 0 saves runs in `tttc run`."""

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
import torch.multiprocessing as mp

import tttc.torch as tt
from conftest import read_safetensors, within

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {
    "model_type": "ttt", "ttt_layer_type": "linear", "vocab_size": 32, "hidden_size": 16,
    "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "mini_batch_size": 4, "pre_conv": True, "share_qk": True, "use_gate": True,
}
STEPS, BATCH, T = 20, 4, 11


def model() -> tt.CausalLM:
    torch.manual_seed(0)
    return tt.CausalLM(CONFIG)


def batch(step: int) -> torch.Tensor:
    return torch.randint(0, CONFIG["vocab_size"], (BATCH, T), generator=torch.Generator().manual_seed(step))


def train(net, ids_of, reduce_loss=lambda loss: loss):
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    losses = []
    for step in range(STEPS):
        ids = ids_of(step)
        loss = net(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(reduce_loss(loss.detach()).item())
    return losses


def worker(rank: int, world: int, init: str, out: str, wrapper: str):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    if wrapper == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(model())
    else:
        net = model()
        for block in net.model.layers:
            fully_shard(block)
        fully_shard(net)
    per_rank = BATCH // world

    def mean_over_ranks(loss):
        dist.all_reduce(loss)
        return loss / world

    losses = train(net, lambda step: batch(step)[rank * per_rank : (rank + 1) * per_rank], mean_over_ranks)
    if wrapper == "ddp":
        trained = net.module
    else:
        # FSDP's parameters are shards: gather them into a plain model.
        full = {k: v.full_tensor() for k, v in net.state_dict().items()}
        trained = model()
        trained.load_state_dict(full)
    if rank == 0:
        tt.save_pretrained(trained, Path(out) / "checkpoint")
        torch.save({"losses": losses, "weights": trained.state_dict()}, Path(out) / "trained.pt")
    dist.destroy_process_group()


def write_ids(path: Path, ids: torch.Tensor):
    header = json.dumps({"input_ids": {"dtype": "I64", "shape": list(ids.shape), "data_offsets": [0, ids.numel() * 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"".join(struct.pack("<q", v) for v in ids.flatten().tolist()))


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
def test_two_processes_train_as_one_process_on_the_global_batch(tmp_path, wrapper):
    mp.spawn(worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path), wrapper), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "trained.pt")

    torch.set_num_threads(1)
    single = model()
    losses = train(single, batch)
    assert max(abs(a - b) for a, b in zip(losses, ddp["losses"])) <= 1e-6, (losses, ddp["losses"])
    assert losses[-1] < losses[0] - 0.1, "the model learns"
    for name, w in single.state_dict().items():
        assert (w - ddp["weights"][name]).abs().max() <= 1e-6, name

    # The checkpoint rank 0 wrote runs in tttc itself, with the logits PyTorch gives.
    binary = ROOT / "target" / "debug" / "tttc"
    if not binary.exists():
        pytest.skip("the tttc binary is not built (cargo test builds it)")
    ids = batch(99)
    write_ids(tmp_path / "ids.safetensors", ids)
    run = subprocess.run([binary, "run", tmp_path / "checkpoint", "--input", tmp_path / "ids.safetensors", "--output", tmp_path / "out.safetensors"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = read_safetensors(tmp_path / "out.safetensors")
    with torch.no_grad():
        assert within(single(ids).logits, out["logits"], 1e-5) <= 0
