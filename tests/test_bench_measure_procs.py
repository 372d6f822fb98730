"""tools/measure_procs.py (separate-process measurements): its options, its table, and that the
PyTorch step of `--model cnn|lstm` trains the same network as nnx (same architecture, same
initial weights). Nothing here times anything."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nnx import compat

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("measure_procs", ROOT / "tools" / "measure_procs.py")
mp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mp)


def test_model_option_is_checked(capsys):
    with pytest.raises(SystemExit):
        mp.main(["torch", "--model", "vgg"])
    assert "invalid choice" in capsys.readouterr().err


def test_summary_names_the_model_and_the_per_round_ratio():
    stats = {"median_ms": 2.0, "best_ms": 1.5, "cpu_ms_per_step": 3.0, "ratio": 1.25,
             "ratio_q1": 1.1, "ratio_q3": 1.4, "quiet_ratio": 1.2, "quiet_median_ms": 2.1}
    res = {"summary": {"numba": dict(stats, ratio=1.0), "torch fused Adam": stats},
           "quiet_rounds": [0], "threads": 2, "rounds": 3, "slice_s": 0.3, "others": [0.1],
           "info": {}, "model": "cnn"}
    text = mp.format_summary(res, "torch")
    assert text.startswith("torch [cnn]: 2 thread(s), 3 rounds")
    assert "time / numba's (per-round median, IQR)" in text
    assert "1.25x (1.10-1.40)" in text


@pytest.mark.skipif(not compat.has_torch, reason="PyTorch is not installed")
def test_torch_mirror_of_the_zoo_models_has_nnx_weights():
    # in a child: torch must not load into the test process (it changes Numba's threads)
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT / "tools")!r})
        import torch
        import numpy as np
        import measure_procs as mp
        out = {{}}
        for name in ("cnn", "lstm"):
            net, x, y = mp._torch_model(torch, name)
            _zoo, model, _x, _y = mp._zoo(name, "numpy")
            net.eval()
            with torch.no_grad():
                theirs = net(torch.from_numpy(np.ascontiguousarray(x[:4]))).numpy()
            ours = np.asarray(model.predict(x[:4]))
            out[name] = [list(x.shape), float(np.abs(theirs - ours).max())]
        print(json.dumps(out))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["cnn"][0] == [128, 1, 28, 28] and out["lstm"][0] == [128, 28, 28]
    assert out["cnn"][1] < 1e-4 and out["lstm"][1] < 1e-4, out
