"""PyTorch's examples/mnist (github.com/pytorch/examples/tree/main/mnist), ported with an explicit
training loop.

    python examples/pytorch_style_mnist.py [--backend numba] [--epochs 1] [--data mnist]

The PyTorch script's pieces and their nnx counterparts:

    class Net(nn.Module) ... log_softmax          nnx.Sequential([...], Dense(128, 10,
                                                                 activation="log_softmax")])
    optim.Adadelta(model.parameters(), lr=1.0)    nnx.Adadelta(lr=StepDecay(1.0, 1, 0.7,
    StepLR(optimizer, step_size=1, gamma=0.7)                              per="epoch"))
    F.nll_loss                                    model.compile(optimizer, "nll")
    optimizer.zero_grad(); loss.backward();       loss = model.train_step(data, target)
      optimizer.step()
    scheduler.step()                              model.optimizer.begin_epoch(epoch)
    DataLoader(..., shuffle=True)                 nnx.preprocessing.iterate_batches(...)
    model(data) / .grad                           model.predict(data) / model.loss_and_grads

The "nll" loss takes log-probabilities, as F.nll_loss; with a log_softmax last layer nnx
computes it from the logits by the fused softmax cross-entropy kernel (the same value). Runs on
the MNIST sample bundled with nnx (6000 train / 1000 test images) unless `--data mnist`.
"""

from __future__ import annotations

import time

import numpy as np
from _common import save_if_asked, warm_up  # examples/_common.py

import nnx as nn  # the nnx stand-in for torch.nn / torch.optim
from nnx.preprocessing import iterate_batches


def Net(backend=None, seed=1):  # noqa: N802  (a model factory named like PyTorch's class)
    return nn.Sequential([
        nn.Conv2D(1, 32, 3, 1, activation="relu"),  # conv1 + relu
        nn.Conv2D(32, 64, 3, 1, activation="relu"),  # conv2 + relu
        nn.MaxPool2D(2),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Dense(9216, 128, activation="relu"),  # fc1 + relu
        nn.Dropout(0.5),
        nn.Dense(128, 10, activation="log_softmax"),  # fc2 + log_softmax
    ], backend=backend, seed=seed)


def train(args, model, train_data, epoch, rng):
    model.optimizer.begin_epoch(epoch - 1)  # what scheduler.step() does after each epoch
    x, y = train_data
    n = len(x)
    for batch_idx, (data, target) in enumerate(
            iterate_batches(x, y, batch_size=args.batch_size, shuffle=True,
                            seed=int(rng.integers(2**31)))):
        loss = model.train_step(data, target)
        if batch_idx % args.log_interval == 0:
            done = min(batch_idx * args.batch_size, n)
            print(f"Train Epoch: {epoch} [{done}/{n} ({100.0 * done / n:.0f}%)]\tLoss: "
                  f"{loss:.6f}")
            if args.dry_run:
                break


def test(model, test_data):
    x, y = test_data
    test_loss, correct = 0.0, 0
    for data, target in iterate_batches(x, y, batch_size=1000):
        output = model.predict(data)  # log-probabilities, inference mode (no dropout)
        test_loss += -output[np.arange(len(target)), target].sum()  # sum up batch loss
        correct += int((output.argmax(axis=1) == target).sum())
    test_loss /= len(x)
    print(f"\nTest set: Average loss: {test_loss:.4f}, Accuracy: {correct}/{len(x)} "
          f"({100.0 * correct / len(x):.0f}%)\n")
    return test_loss, correct / len(x)


def main(argv=None) -> dict:
    import argparse

    parser = argparse.ArgumentParser(description="PyTorch MNIST Example, on nnx")
    parser.add_argument("--backend", default=None, help="numpy | numba | cupy")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=0.7)
    parser.add_argument("--dry-run", action="store_true", help="one batch per epoch")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-interval", type=int, default=20)
    parser.add_argument("--data", choices=["sample", "mnist"], default="sample")
    parser.add_argument("--save", default=None, metavar="PATH")
    args = parser.parse_args(argv)

    (xtr, ytr), (xte, yte) = nn.datasets.mnist(sample=args.data == "sample")
    # transforms.ToTensor() + Normalize((0.1307,), (0.3081,)), channels first
    prep = lambda a: ((a.astype(np.float32) / 255 - 0.1307) / 0.3081)[:, None]  # noqa: E731
    train_data, test_data = (prep(xtr), ytr.astype(np.int64)), (prep(xte), yte.astype(np.int64))

    model = Net(args.backend, args.seed)
    warm_note = warm_up(model)
    optimizer = nn.Adadelta(lr=nn.StepDecay(args.lr, step_size=1, gamma=args.gamma,
                                            per="epoch"))
    model.compile(optimizer, "nll", metrics=[])
    # one gradient, as `loss.backward()` leaves it in .grad: host arrays in get_weights() order
    loss0, grads = model.loss_and_grads(*(a[:args.batch_size] for a in train_data))
    print(f"backend {model.backend}{warm_note}; initial loss {loss0:.4f}, gradient norm "
          f"{np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads)):.4f}")

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        train(args, model, train_data, epoch, rng)
        test_loss, accuracy = test(model, test_data)
    seconds = time.perf_counter() - t0
    print(f"train + test: {seconds:.1f}s")
    save_if_asked(model, args.save)
    return {"test_loss": test_loss, "test_accuracy": accuracy, "seconds": seconds}


if __name__ == "__main__":
    main()
