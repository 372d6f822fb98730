"""Error paths run by tests/test_distributed.py; each must stop the job with a clear message
and a non-zero exit, without hanging. argv[1] picks the case."""

import sys
import time

from _common import data, dist, mlp, nnx, np

case = sys.argv[1]
comm = dist.init()
rank = comm.rank
x, y = data(40)

if case == "architecture":  # rank 1 builds a wider hidden layer
    model = mlp(seed=0, hidden=16 if rank == 0 else 24)
    model.compile(dist.DistributedOptimizer(nnx.SGD(0.1), comm), "softmax_cross_entropy")
elif case == "optimizer":  # rank 1 uses another learning rate
    model = mlp(seed=0)
    model.compile(dist.DistributedOptimizer(nnx.SGD(0.1 if rank == 0 else 0.2), comm),
                  "softmax_cross_entropy")
elif case == "data":  # rank 1 is given different data
    model = mlp(seed=0)
    model.compile(dist.DistributedOptimizer(nnx.SGD(0.1), comm), "softmax_cross_entropy")
    model.fit(x if rank == 0 else x * 2, y, epochs=1, batch_size=8, verbose=0)
elif case == "data_shape":  # rank 1 is given one sample fewer
    model = mlp(seed=0)
    model.compile(dist.DistributedOptimizer(nnx.SGD(0.1), comm), "softmax_cross_entropy")
    n = 40 if rank == 0 else 39
    model.fit(x[:n], y[:n], epochs=1, batch_size=8, verbose=0)
elif case == "bad_input":  # rank 1's (sharded) data contains NaN; rank 0 waits in a collective
    model = mlp(seed=0)
    model.compile(dist.DistributedOptimizer(nnx.SGD(0.1), comm, data="sharded"),
                  "softmax_cross_entropy")
    xs, ys = dist.shard(x, y, comm=comm)
    if rank == 1:
        xs = xs.copy()
        xs[3, 2] = np.nan
        time.sleep(0.5)  # rank 0 is already blocked when rank 1 fails
    model.fit(xs, ys, epochs=1, batch_size=4, verbose=0)
elif case == "raise":  # a bug on rank 1 in the middle of training
    class Boom(nnx.callbacks.Callback):
        def on_batch_end(self, batch, state):
            if rank == 1 and batch == 2:
                raise RuntimeError("boom on rank 1")

    model = mlp(seed=0)
    model.compile(dist.DistributedOptimizer(nnx.SGD(0.1), comm), "softmax_cross_entropy")
    model.fit(x, y, epochs=3, batch_size=4, verbose=0, callbacks=[Boom()])
elif case == "exit":  # sys.exit(3) on rank 1 while rank 0 waits
    if rank == 1:
        sys.exit(3)
    comm.barrier()
else:
    raise SystemExit(f"unknown case {case}")
print(f"rank {rank}: no error raised", flush=True)
