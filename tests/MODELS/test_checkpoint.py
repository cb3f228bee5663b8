"""Checkpoints: round trip, every accepted key layout, one-line errors, refusal of pickled objects."""
import os
import shlex

import pytest
import torch

from MODELS import build_model, load_checkpoint, load_encoder, sanity_check_frozen, save_checkpoint
from MODELS.checkpoint import BackgroundSaver
from UTILS.errors import UserError


def trained(name: str, seed: int = 0):
    """A model whose BatchNorm running stats are no longer the defaults, so eval outputs test them."""
    torch.manual_seed(seed)
    model = build_model(name).train()
    with torch.no_grad():
        model(torch.rand(4, 3, 32, 32))
    return model.eval()


def outputs(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", ["tiny", "resnet18"])
def test_round_trip_gives_identical_outputs(tmp_path, name):
    model = trained(name)
    path = save_checkpoint(tmp_path / "model_3.pth", model, epoch=3)
    loaded = load_encoder(path, name, "cpu")
    assert not loaded.training
    x = torch.rand(2, 3, 32, 32)
    for a, b in zip(outputs(model, x), outputs(loaded, x)):
        assert torch.equal(a, b)
    assert load_checkpoint(path, "--x")["epoch"] == 3
    assert sorted(os.listdir(tmp_path)) == ["model_3.pth"]  # no temporary left behind


def test_optimizer_and_extras_load_with_weights_only(tmp_path):
    model = trained("tiny")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model(torch.rand(2, 3, 32, 32))[1].sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "c.pth", model, 2, optimizer=opt, rng={"torch": torch.get_rng_state()},
                           note="x", history=[1.0, 2.0], best=None)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"state_dict", "epoch", "optimizer", "rng", "note", "history", "best"}
    opt2 = torch.optim.SGD(build_model("tiny").parameters(), lr=0.1, momentum=0.9, nesterov=True)
    opt2.load_state_dict(ckpt["optimizer"])
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "bad.pth", model, 0, where=tmp_path)


def layouts(model):
    full = model.state_dict()
    return {
        "wrapped": {"state_dict": full, "epoch": 1},
        "raw": full,
        "module": {"state_dict": {f"module.{k}": v for k, v in full.items()}},
        "raw_module": {f"module.{k}": v for k, v in full.items()},
        "backbone_f": {"state_dict": model.f.state_dict()},
        "backbone_seq": model.f.f.state_dict(),
        "backbone_whole_names": {k: v for k, v in full.items() if k.startswith("f.")},
        "no_bn_counters": {k: v for k, v in full.items() if not k.endswith("num_batches_tracked")},
    }


@pytest.mark.parametrize("layout", ["wrapped", "raw", "module", "raw_module", "backbone_f", "backbone_seq",
                                    "backbone_whole_names", "no_bn_counters"])
def test_every_layout_loads(tmp_path, layout):
    model = trained("tiny", seed=1)
    path = tmp_path / f"{layout}.pth"
    torch.save(layouts(model)[layout], path)
    loaded = load_encoder(path, "tiny", torch.device("cpu"))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.f(x), loaded.f(x))
        if not layout.startswith("backbone"):
            assert torch.equal(model(x)[1], loaded(x)[1])


def test_wrong_architecture_names_model_and_keys(tmp_path):
    path = save_checkpoint(tmp_path / "tiny.pth", build_model("tiny"), 0)
    with pytest.raises(UserError) as err:
        load_encoder(path, "resnet18_small", "cpu", flag="--pretrained_encoder")
    message = str(err.value)
    assert "\n" not in message and "--model resnet18_small" in message and str(path) in message
    assert "missing f.f.3.1.conv1.weight" in message and "in all" in message


def test_shape_mismatch_is_one_line(tmp_path):
    path = save_checkpoint(tmp_path / "r18.pth", build_model("resnet18"), 0)
    with pytest.raises(UserError) as err:
        load_encoder(path, "resnet18_small", "cpu")
    message = str(err.value)
    assert "\n" not in message and "--model resnet18_small" in message and "shape mismatch at f.f.0.weight" in message


def test_unrelated_keys_are_reported(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, path)
    with pytest.raises(UserError, match=r"missing f\.f\.0\.weight.*unexpected encoder\.weight"):
        load_encoder(path, "tiny", "cpu")


class _Payload:
    """Unpickling this would run a shell command (os.system); a safe loader must never do it."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _OpenPayload:
    """Unpickling this would create a file through builtins.open."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("kind", ["system", "open"])
def test_pickled_payload_is_refused_and_not_run(tmp_path, kind):
    marker = tmp_path / "marker"
    payload = _Payload(f"touch {shlex.quote(str(marker))}") if kind == "system" else _OpenPayload(str(marker))
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": build_model("tiny").state_dict(), "payload": payload}, path)
    with pytest.raises(UserError) as err:
        load_encoder(path, "tiny", "cpu", flag="--pretrained_encoder")
    message = str(err.value)
    assert "\n" not in message and "pickled Python objects" in message and "only plain tensors" in message
    assert not marker.exists()
    # The payload is real: what an unsafe unpickler would call does create the marker.
    function, args = payload.__reduce__()
    function(*args)
    assert marker.exists()


@pytest.mark.parametrize("content,expected", [
    (b"", "not a PyTorch checkpoint"),
    (b"hello, not a checkpoint\n", "not a PyTorch checkpoint"),
    (bytes(range(256)) * 4, "not a PyTorch checkpoint"),
])
def test_garbage_files(tmp_path, content, expected):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match=expected):
        load_checkpoint(path, "--pretrained_encoder")


def test_missing_file_and_non_dict(tmp_path):
    with pytest.raises(UserError, match=r"--pretrained_encoder .*nope\.pth: file not found"):
        load_encoder(tmp_path / "nope.pth", "tiny", "cpu")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(UserError, match="not a checkpoint dict"):
        load_checkpoint(tmp_path / "list.pth", "--encoder")
    torch.save({"state_dict": {"a": 1}}, tmp_path / "nt.pth")
    with pytest.raises(UserError, match="non-tensor"):
        load_encoder(tmp_path / "nt.pth", "tiny", "cpu")


def test_sanity_check_frozen_detects_a_change():
    model = trained("tiny")
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    sanity_check_frozen(model, reference)
    with torch.no_grad():
        model.f.f[3][0].conv2.weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(AssertionError, match=r"f\.f\.3\.0\.conv2\.weight"):
        sanity_check_frozen(model, reference)


def test_sanity_check_frozen_sees_buffers():
    model = trained("tiny")
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 32, 32))  # BatchNorm running stats move in train mode
    with pytest.raises(AssertionError, match="running_mean"):
        sanity_check_frozen(model, reference)


def test_background_saver_writes_the_state_of_the_moment_it_was_asked(tmp_path):
    model = trained("tiny")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(4, 3, 32, 32))[1].sum().backward()
    opt.step()  # a momentum buffer to snapshot as well
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = [s["momentum_buffer"].clone() for s in opt.state.values()]
    rows = [{"round": 0, "l1": 1.5}]
    saver = BackgroundSaver()
    saver.save(tmp_path / "state.pth", model, 3, opt, rows=rows)
    with torch.no_grad():  # training goes on at once, in place
        for p in model.parameters():
            p.add_(1.0)
    opt.step()
    rows.append({"round": 1, "l1": 0.5})
    saver.wait()
    loaded = load_checkpoint(tmp_path / "state.pth", "state")
    assert all(torch.equal(loaded["state_dict"][k], expected[k]) for k in expected)
    assert all(torch.equal(a["momentum_buffer"], b) for a, b in zip(loaded["optimizer"]["state"].values(), momentum))
    assert loaded["epoch"] == 3 and loaded["rows"] == [{"round": 0, "l1": 1.5}]
    assert [p.name for p in tmp_path.iterdir()] == ["state.pth"]  # no temporary file left


def test_background_saver_reports_a_failed_write_once_on_wait(tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    saver = BackgroundSaver()
    saver.save(tmp_path / "blocker" / "state.pth", build_model("tiny"), 1)
    with pytest.raises(UserError, match="cannot write .*state.pth"):
        saver.wait()
    saver.wait()  # reported once; the saver is usable again
    saver.save(tmp_path / "ok.pth", build_model("tiny"), 2)
    saver.wait()
    assert load_checkpoint(tmp_path / "ok.pth", "ok")["epoch"] == 2


def test_background_saver_close_warns_instead_of_raising(tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    saver = BackgroundSaver()
    saver.save(tmp_path / "blocker" / "state.pth", build_model("tiny"), 1)
    saver.close()  # e.g. while a NaN stop or Ctrl-C is already on its way out
    assert "warning: the last background write failed too: cannot write" in capsys.readouterr().err


def test_load_errors_keep_their_reason_on_one_line():
    from MODELS.checkpoint import load_error_reason

    exc = RuntimeError('Error(s) in loading state_dict for SimCLR:\n\tsize mismatch for g.3.weight: copying a param '
                       'with shape torch.Size([128, 64]) from checkpoint, the shape in current model is torch.Size([2]).')
    assert load_error_reason(exc).startswith("size mismatch for g.3.weight: copying a param with shape")
    assert "\n" not in load_error_reason(exc) and len(load_error_reason(RuntimeError("x" * 999))) == 240
