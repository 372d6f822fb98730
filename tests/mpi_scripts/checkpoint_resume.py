"""Only rank 0 writes checkpoints (ModelCheckpoint, model.save); a checkpoint loaded on every
rank and wrapped with distribute() resumes exactly like one process resuming from it; EarlyStopping
and validation metrics agree on every rank; only rank 0 prints progress."""

import io
import os
import sys
import tempfile
from contextlib import redirect_stdout

from _common import assert_close, assert_same_on_all_ranks, data, dist, done, mlp, nnx

comm = dist.init()
rank = comm.rank
tmp = comm.bcast(tempfile.mkdtemp(prefix="nnx-dist-") if rank == 0 else None)
x, y = data(60)
xv, yv = data(20, seed=2)

model = mlp(seed=11 + rank)
model.compile(dist.DistributedOptimizer(nnx.Adam(0.01), comm), "softmax_cross_entropy",
              ["accuracy"])
ckpt = os.path.join(tmp, f"rank{rank}-epoch{{epoch}}.npz")
out = io.StringIO()
with redirect_stdout(out):
    h = model.fit(x, y, epochs=2, batch_size=8, validation_data=(xv, yv), verbose=1,
                  callbacks=[nnx.ModelCheckpoint(ckpt, save_best_only=False)])
printed = out.getvalue()
if rank == 0:
    assert "epoch 2/2" in printed, printed
else:
    assert printed == "", f"rank {rank} printed: {printed!r}"
comm.barrier()
files = sorted(f for f in os.listdir(tmp) if f.endswith(".npz"))
assert files == ["rank0-epoch1.npz", "rank0-epoch2.npz"], files
comm.barrier()
model.save(os.path.join(tmp, f"explicit-{rank}.npz"))
comm.barrier()
assert os.path.exists(os.path.join(tmp, "explicit-0.npz"))
assert not os.path.exists(os.path.join(tmp, "explicit-1.npz"))
# metrics are global: identical on every rank
hist = comm.allgather(h.history["val_loss"] + h.history["loss"] + h.history["accuracy"])
assert hist[0] == hist[1], hist

# resume on every rank from rank 0's checkpoint; compare with one process resuming
path = os.path.join(tmp, "rank0-epoch1.npz")
resumed = nnx.load(path)
opt = dist.distribute(resumed, comm)
assert opt.step == resumed.optimizer.step and opt.step > 0
resumed.fit(x, y, epochs=2, batch_size=8, verbose=0)
single = nnx.load(path)
single.fit(x, y, epochs=2, batch_size=8, verbose=0)
assert_close(resumed.get_weights(), single.get_weights(), "resumed")
assert_same_on_all_ranks(comm, resumed.get_weights(), "resumed")

# EarlyStopping sees the same (reduced) logs on every rank, so every rank stops together
model = mlp(seed=4)
model.compile(dist.DistributedOptimizer(nnx.SGD(0.5), comm), "softmax_cross_entropy")
es = nnx.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
model.fit(x, y, epochs=5, batch_size=8, verbose=0, callbacks=[es])
stopped = comm.allgather(es.stopped_epoch)
assert stopped[0] == stopped[1] == 1, stopped
sys.stdout.flush()
done(comm, "checkpoint_resume")
