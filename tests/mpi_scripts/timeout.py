"""Hangs that the collective timeout must end (tests/test_distributed.py runs these with
`mpiexec`): each case leaves a rank out of a collective; the job must end non-zero within the
timeout plus a few seconds, with a report naming the collective and the rank that did not
arrive. argv[1] picks the case; the timeout is 15 s (from init(), or NNX_DIST_TIMEOUT)."""

import os
import sys
import time

from _common import data, dist, mlp, nnx

case = sys.argv[1]
if case == "fewer_steps":  # the timeout comes from the environment here
    assert os.environ.get("NNX_DIST_TIMEOUT") == "15", os.environ.get("NNX_DIST_TIMEOUT")
    comm = dist.init()
elif case == "stall_serialized":  # an MPI without threads: the waits poll, nobody serves
    import mpi4py

    mpi4py.rc.thread_level = "serialized"
    comm = dist.init(timeout=5)
    assert comm._watch._thread is None
else:
    comm = dist.init(timeout=15)
assert comm.timeout == (5.0 if case == "stall_serialized" else 15.0), comm.timeout
rank = comm.rank
x, y = data(48)

if case in ("stall", "stall_serialized"):  # rank 1 stops in the middle of fit()
    class Stall(nnx.callbacks.Callback):
        def on_batch_end(self, batch, state):
            if rank == 1 and batch == 2:
                time.sleep(600)  # the stalled line the report shows

    model = mlp(seed=0)
    model.compile(dist.DistributedOptimizer(nnx.SGD(0.1), comm), "softmax_cross_entropy")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[Stall()])
elif case == "fewer_steps":  # a custom loop in which rank 1 takes one step fewer
    model = mlp(seed=0)
    model.compile(dist.DistributedOptimizer(nnx.SGD(0.1), comm, data="sharded"),
                  "softmax_cross_entropy")
    xs, ys = dist.shard(x, y, comm=comm)
    steps = 4 if rank == 0 else 3
    for i in range(steps):
        model.train_step(xs[i * 4:(i + 1) * 4], ys[i * 4:(i + 1) * 4])
    print(f"rank {rank}: finished {steps} steps", flush=True)
    if rank == 1:
        sys.exit(0)  # its script ends normally; rank 0 waits in its 4th step's allreduce
else:
    raise SystemExit(f"unknown case {case}")
print(f"rank {rank}: no timeout", flush=True)
