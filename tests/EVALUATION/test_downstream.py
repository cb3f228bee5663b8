"""Downstream MLP: learns a separable toy task, prints BadEncoder's JSON lines, is seeded, keeps one batch order."""
import json

import torch
import torch.nn.functional as F
from torch import nn

from EVALUATION import DownstreamMLP, train_downstream
import EVALUATION.downstream as downstream
from EVALUATION.downstream import adam


def blobs(n, num_classes, dim, generator):
    centres = 3 * torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(99))
    labels = torch.arange(n) % num_classes
    return centres[labels] + 0.3 * torch.randn(n, dim, generator=generator), labels


def toy():
    g = torch.Generator().manual_seed(0)
    train_x, train_y = blobs(300, 3, 8, g)
    test_x, test_y = blobs(90, 3, 8, g)
    bd = test_x[test_y == 1]  # "stamped" images that really are class 1: ASR towards 1 is high
    return train_x, train_y, test_x, test_y, bd


def test_architecture():
    net = DownstreamMLP(10, 4)
    layers = [(n, type(m)) for n, m in net.named_children()]
    assert dict(layers) == {"dropout2": nn.Dropout, "fc1": nn.Linear, "fc2": nn.Linear, "fc3": nn.Linear}
    assert (net.fc1.in_features, net.fc1.out_features, net.fc2.out_features, net.fc3.out_features) == (10, 512, 256, 4)
    assert net.dropout2.p == 0.5 and net(torch.rand(5, 10)).shape == (5, 4)


def test_learns_separable_toy_problem_and_prints_json(capsys):
    torch.manual_seed(0)
    rows = []
    net, history = train_downstream(*toy(), bd_target=1, num_classes=3, epochs=4, lr=1e-3, batch_size=32,
                                    hidden_1=64, hidden_2=32, on_epoch=rows.append)
    assert isinstance(net, DownstreamMLP)
    assert len(history) == 4 and rows == history
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["acc"] > 90 and history[-1]["asr"] > 90
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 8
    assert lines[0] == {"metric": "Eval - Backdoored Accuracy (BA)", "value": history[0]["acc"], "epoch": 1}
    assert lines[1] == {"metric": "Eval - Attack Success Rate (ASR)", "value": history[0]["asr"], "epoch": 1}
    assert list(lines[0]) == ["metric", "value", "epoch"]


def test_clean_names(capsys):
    torch.manual_seed(0)
    train_downstream(*toy(), bd_target=0, num_classes=3, epochs=1, lr=1e-3, batch_size=64, clean=True)
    metrics = [json.loads(line)["metric"] for line in capsys.readouterr().out.splitlines()]
    assert metrics == ["Eval - Clean Accuracy (CA)", "Eval - Attack Success Rate-Baseline (ASR-B)"]


def test_same_seed_same_history():
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(train_downstream(*toy(), bd_target=1, num_classes=3, epochs=2, lr=1e-3, batch_size=50,
                                     hidden_1=16, hidden_2=8)[1])
    assert runs[0] == runs[1]


def test_fused_adam_is_the_plain_adam_update(float64):
    # fused and plain Adam round in another order, and Adam's normalised steps amplify rounding over 20 steps:
    # float64, compared at 1e-9
    torch.manual_seed(0)
    nets = [DownstreamMLP(12, 3, 16, 8).eval() for _ in range(2)]  # eval: no dropout draws to replay
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [adam(nets[0].parameters(), 1e-2, torch.device("cpu")), torch.optim.Adam(nets[1].parameters(), lr=1e-2)]
    assert opts[0].defaults["fused"] and not opts[1].defaults["fused"]
    x, y = torch.randn(40, 12), torch.randint(0, 3, (40,))
    for _ in range(20):
        for net, opt in zip(nets, opts):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert a.dtype == torch.float64 and torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_every_epoch_walks_the_same_batch_order(monkeypatch):
    """The original trains on features extracted in one shuffled order with shuffle=False afterwards."""
    orders = []
    real = downstream._train_epoch

    def spy(net, opt, feats, labels, order, batch_size):
        orders.append(order.clone())
        return real(net, opt, feats, labels, order, batch_size)

    monkeypatch.setattr(downstream, "_train_epoch", spy)
    torch.manual_seed(3)
    train_downstream(*toy(), bd_target=1, num_classes=3, epochs=3, lr=1e-3, batch_size=32, hidden_1=16, hidden_2=8)
    assert len(orders) == 3 and all(torch.equal(o, orders[0]) for o in orders)
    assert sorted(orders[0].tolist()) == list(range(300)) and orders[0].tolist() != list(range(300))
    torch.manual_seed(3)
    assert torch.equal(orders[0], torch.randperm(300))  # drawn first, from the seeded CPU generator


def test_training_matches_a_loop_over_one_fixed_shuffled_copy(float64):  # fused vs plain Adam: float64
    """Reference: permute the features once, then walk them in order each epoch with plain Adam (as the
    original's shuffle=False loader over features extracted in shuffled order)."""
    train_x, train_y, test_x, test_y, bd = toy()
    epochs, batch, lr = 3, 32, 1e-3
    torch.manual_seed(11)
    net, history = train_downstream(train_x, train_y, test_x, test_y, bd, bd_target=1, num_classes=3,
                                    epochs=epochs, lr=lr, batch_size=batch, hidden_1=16, hidden_2=8)
    torch.manual_seed(11)
    perm = torch.randperm(train_x.shape[0])
    xs, ys = train_x[perm], train_y[perm]
    ref = DownstreamMLP(8, 3, 16, 8)
    opt = torch.optim.Adam(ref.parameters(), lr=lr)
    for _ in range(epochs):
        ref.train()
        for start in range(0, xs.shape[0], batch):
            loss = F.cross_entropy(ref(xs[start:start + batch]), ys[start:start + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for ours, theirs in zip(net.parameters(), ref.parameters()):
        assert ours.dtype == torch.float64 and torch.allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    ref.eval()
    with torch.no_grad():
        assert history[-1]["acc"] == 100.0 * (ref(test_x).argmax(1) == test_y).float().mean().item()


def test_per_image_success_labels():
    """bd_target may give each image its own label (--mode targeted, --source_label); an int means all."""
    train_x, train_y, test_x, test_y, _ = toy()
    torch.manual_seed(0)
    net, history = train_downstream(train_x, train_y, test_x, test_y, test_x, bd_target=test_y, num_classes=3,
                                    epochs=2, lr=1e-3, batch_size=32, hidden_1=16, hidden_2=8)
    net.eval()
    with torch.no_grad():
        preds = net(test_x).argmax(1)
    assert history[-1]["asr"] == 100.0 * (preds == test_y).float().mean().item() == history[-1]["acc"]
    torch.manual_seed(0)
    _, as_int = train_downstream(train_x, train_y, test_x, test_y, test_x, bd_target=2, num_classes=3,
                                 epochs=2, lr=1e-3, batch_size=32, hidden_1=16, hidden_2=8)
    assert as_int[-1]["asr"] == 100.0 * (preds == 2).float().mean().item()
