"""Data-parallel MNIST with nnx.distributed: the same script on 1 or N ranks.

    NNX_DATA_DIR=/path/to/mnist python examples/distributed_mnist.py --data mnist
    NNX_DATA_DIR=/path/to/mnist mpiexec -n 2 python examples/distributed_mnist.py --data mnist

Every rank loads the same data and calls `fit` with the same global batch; each computes its
share of every batch and the gradients are averaged with one allreduce per step, so N ranks
train the same model as one process (up to float rounding) and should reach the same test
accuracy. Only rank 0 prints. `--json PATH` writes the result (rank 0).

Options: --model mlp|cnn, --sync-bn (cnn with batch norm, statistics reduced across ranks),
--overlap (bucketed non-blocking allreduce during backward), --compression fp16|bf16,
--sharded (each rank holds only its half of the training set; batch size per rank).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread per rank unless told otherwise

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import nnx  # noqa: E402
import nnx.distributed as dist  # noqa: E402
from nnx import models  # noqa: E402
from nnx.commands.train import load_data  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    p.add_argument("--data", default="mnist", choices=["mnist", "sample"])
    p.add_argument("--backend", default="numpy")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128, help="global batch (per rank with "
                   "--sharded)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", default="512,256", help="MLP hidden sizes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sync-bn", action="store_true", help="cnn with SyncBatchNorm")
    p.add_argument("--overlap", action="store_true")
    p.add_argument("--compression", default=None, choices=["fp16", "bf16"])
    p.add_argument("--sharded", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    comm = dist.init()
    zoo = models.get(args.model)
    options = {}
    if args.model == "mlp":
        options["hidden"] = tuple(int(h) for h in args.hidden.split(","))
    elif args.sync_bn:
        options["batchnorm"] = True
    model = zoo.build(backend=args.backend, seed=args.seed, **options)
    if args.sync_bn:  # the same layers with SyncBatchNorm for BatchNorm2d, in a new model
        layers = nnx.layers.layer_from_dict(nnx.layers.layer_to_dict(model.net))
        model = nnx.Sequential(dist.sync_batchnorm(layers), backend=args.backend,
                               seed=args.seed, name=model.name)
    (xtr, ytr), (xte, yte) = load_data(args.data, zoo.INPUT)
    if args.sharded:
        xtr, ytr = dist.shard(xtr, ytr, comm=comm, seed=args.seed)
    opt = dist.DistributedOptimizer(nnx.Adam(args.lr), comm, overlap=args.overlap,
                                    compression=args.compression,
                                    data="sharded" if args.sharded else "replicated")
    model.compile(opt, zoo.LOSS, ["accuracy"])
    if comm.is_chief:
        print(f"{args.model} ({model.count_params():,} parameters) on {comm.size} rank(s), "
              f"backend {model.backend}, {len(xtr)} training samples per rank, batch "
              f"{args.batch_size}{' per rank' if args.sharded else ' global'}", flush=True)
    t0 = time.perf_counter()
    history = model.fit(xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, verbose=1)
    train_s = time.perf_counter() - t0
    result = model.evaluate(xte, yte)
    if comm.is_chief:
        print(f"ranks {comm.size}: test accuracy {result['accuracy']:.4f}  test loss "
              f"{result['loss']:.4f}  (training {train_s:.1f}s, allreduce "
              f"{opt.stats['comm_s']:.1f}s over {opt.stats['steps']} steps)", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ranks": comm.size, "args": vars(args), "test": result,
                           "train_s": train_s, "history": history.history,
                           "stats": opt.stats}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
