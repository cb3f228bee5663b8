"""UTILS.distributed: one process (identities, env parsing) and two gloo CPU processes (gathers with
gradient, global BatchNorm, DDP) against the one-process computation on the same global batch."""
import copy

import pytest
import torch
from torch import nn

from DATASETS.stats import get_usage
from EVALUATION.features import extract_features, extract_features_sharded
from UTILS import distributed as D
from UTILS.errors import UserError
from tests.precision import FLOOR64, REL64, assert_close64
from tests.ranks import run_ranks

# Two ranks sum the global batch's reductions in another order than one process, so the comparisons run in
# float64 (gloo, DDP and GlobalBatchNorm keep the dtype) at tests/precision.REL64 of each tensor's scale.
USAGE = get_usage("synthetic")


def test_world_from_env_reads_torchrun_variables():
    assert D.world_from_env({}) == D.World(0, 1, 0)
    assert D.world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == D.World(3, 4, 1)
    for bad in ({"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "0"}):
        with pytest.raises(UserError, match="RANK"):
            D.world_from_env(bad)


def test_backend_follows_the_device():
    assert D.backend_for(torch.device("cpu")) == "gloo"
    assert D.backend_for(torch.device("cuda", 1)) == "nccl"


def test_rank_device_flag():
    two = D.World(1, 2, 1)
    assert D.rank_device_flag("cpu", two) == "cpu"
    assert D.rank_device_flag("cuda:1", D.World()) == "cuda:1"  # one process: untouched
    assert D.rank_device_flag("cuda", two) == "cuda:1"  # the GPU of LOCAL_RANK
    with pytest.raises(UserError, match="LOCAL_RANK"):
        D.rank_device_flag("cuda:0", two)


@pytest.mark.parametrize("n,size", [(8, 2), (7, 2), (5, 3), (2, 4), (0, 2)])
def test_shards_cover_the_batch_in_order(n, size):
    bounds = [D.shard_bounds(n, size, r) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    lengths = [hi - lo for lo, hi in bounds]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == [len(t) for t in torch.tensor_split(torch.arange(n), size)]


def test_one_process_is_the_identity():
    x = torch.rand(5, 3, requires_grad=True)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    assert D.gather_rows(x, 5) is x and D.local_rows(x) is x and D.sum_over_ranks(x) is x
    assert D.sync_batchnorm(model) is model and type(model[1]) is nn.BatchNorm1d
    assert D.data_parallel(model) is model
    assert D.from_main(lambda: 7) == 7 and D.is_main() and D.world_size() == 1


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5),
                         nn.BatchNorm1d(5)).double()


def _batch(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(n), dtype=torch.float64)


def _loss(out: torch.Tensor) -> torch.Tensor:
    """Mixes rows (a softmax over the batch), as NT-Xent does."""
    return (out.softmax(dim=0) * torch.arange(out.numel()).view_as(out)).sum() + out.square().mean()


def _step(model: nn.Module, x: torch.Tensor, n: int) -> dict:
    """One forward/backward of the global loss; (outputs, loss, grads, running stats) of this process."""
    net = D.data_parallel(D.sync_batchnorm(model).train())
    out = D.gather_rows(net(D.local_rows(x)), n)
    loss = _loss(out)
    loss.backward()
    return {"out": out.detach(), "loss": loss.detach(),
            "grads": {k: p.grad.clone() for k, p in model.named_parameters()},
            "buffers": {k: b.clone() for k, b in model.named_buffers()}}


def _features_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten()).double()


def _rank_decides():
    if D.rank() == 0:
        raise UserError("--flag x: decided on rank 0")
    return "only rank 0 runs this"


def _worker(out_dir, sizes):
    D.start("cpu")
    result = {n: _step(_model(), _batch(n), n) for n in sizes}
    result["features"] = extract_features_sharded(_features_model(), _batch(7).sigmoid(), USAGE, batch_size=2)
    result["any"] = (D.any_rank(D.rank() == 1), D.any_rank(False))
    try:
        D.from_main(_rank_decides)
    except UserError as exc:
        result["error"] = str(exc)
    result["from_main"] = D.from_main(lambda: {"rows": [1.5], "rank": D.rank()})
    return result


@pytest.fixture(scope="module")
def two_ranks():
    sizes = (6, 7)  # 3 + 3 rows, and 4 + 3 rows
    return sizes, run_ranks(_worker, sizes)


def test_two_ranks_equal_one_process_on_the_global_batch(two_ranks):
    sizes, ranks = two_ranks
    for n in sizes:
        ref = _step(_model(), _batch(n), n)
        # the biases in front of a BatchNorm have a gradient of exactly 0 in real arithmetic: only rounding,
        # so every gradient is compared at REL64 of the largest gradient of the model, which must be real
        grad_scale = max(g.abs().max().item() for g in ref["grads"].values())
        assert grad_scale > FLOOR64
        for got in ranks:
            assert_close64(got[n]["out"], ref["out"], what="outputs")
            assert_close64(got[n]["loss"], ref["loss"], what="loss")
            for k in ref["grads"]:  # DDP's averaged gradient is the one-process gradient
                torch.testing.assert_close(got[n]["grads"][k], ref["grads"][k], rtol=0, atol=REL64 * grad_scale, msg=k)
            for k in ref["buffers"]:  # running statistics from the global batch's mean and unbiased variance
                if ref["buffers"][k].is_floating_point():
                    assert_close64(got[n]["buffers"][k], ref["buffers"][k], what=k)
                else:
                    assert torch.equal(got[n]["buffers"][k], ref["buffers"][k]), k


def test_the_test_can_fail_without_global_batchnorm(two_ranks):
    """Per-rank BatchNorm statistics (plain DDP) would give other outputs: the check above has teeth."""
    sizes, ranks = two_ranks
    n = sizes[0]
    model, x = _model().train(), _batch(n)
    lo, hi = D.shard_bounds(n, 2, 0)
    per_rank = torch.cat([model(x[lo:hi]), copy.deepcopy(_model()).train()(x[hi:])])
    assert not torch.allclose(per_rank, ranks[0][n]["out"], rtol=1e-3, atol=1e-3)  # far above the tolerance used


def test_features_split_across_ranks_equal_one_process(two_ranks):
    ref = extract_features(_features_model(), _batch(7).sigmoid(), USAGE)
    for got in two_ranks[1]:
        assert_close64(got["features"], ref, what="features")


def test_every_rank_gets_rank_0s_decision_or_its_error(two_ranks):
    for got in two_ranks[1]:
        assert got["any"] == (True, False)  # a stop request on rank 1 stops rank 0 too
        assert got["error"] == "--flag x: decided on rank 0"
        assert got["from_main"] == {"rows": [1.5], "rank": 0}


def test_under_torchrun_ctrl_c_then_torchruns_sigterm_still_saves_once(monkeypatch, capsys):
    """Ctrl-C reaches a worker from the terminal (SIGINT) and from torchrun (SIGTERM): that is one request;
    only the same signal again aborts. Rank 1 prints nothing."""
    import os
    import signal

    from UTILS.signals import graceful_stop

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with graceful_stop("epoch") as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert capsys.readouterr().err == ""


def test_main_py_refuses_torchrun_with_one_line(monkeypatch, capsys, tmp_path):
    import runpy
    from pathlib import Path

    main = runpy.run_path(str(Path(__file__).resolve().parents[2] / "MAIN.py"), run_name="refuse")["main"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exc:
        main(["--log_dir", str(tmp_path / "log"), "--results_dir", str(tmp_path / "res"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: MAIN.py: runs as one process (torchrun started 2)") and "not torchrun" in err
