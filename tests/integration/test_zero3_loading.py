"""Under DeepSpeed ZeRO-3 the policy and the frozen reference loaded again both run, with the
transformers + kernels releases in which the attention classes are decorated by kernels'
``use_kernelized_func`` (see :func:`mmpo.models.import_model_modules`).

Without ``load_policy`` importing the modeling modules first, the reference loaded again inside a
second ``zero.Init`` has no ``_kernel_funcs`` on its attention layers and its first forward raises
``AttributeError`` (transformers 5.25 + kernels 0.19 + DeepSpeed 0.19).
"""

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mmpo import models
from mmpo.training import distributed

SCRIPT = Path(__file__).with_name("zero3_loading.py")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="DeepSpeed is not installed (make test installs it)")


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def test_the_reference_loaded_again_under_zero3_runs_like_the_policy(tiny_checkpoint, tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), str(tiny_checkpoint), str(tmp_path), free_port()],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["partitioned"] == [True, True]
    assert info["without_setup"] == []
    assert info["max_logit_difference"] == 0.0


def test_every_nested_config_has_its_modeling_module_imported(tiny_checkpoint):
    from transformers import AutoConfig

    names = models.import_model_modules(AutoConfig.from_pretrained(tiny_checkpoint))
    assert names == ["transformers.models.clip.modeling_clip", "transformers.models.llama.modeling_llama",
                     "transformers.models.llava.modeling_llava"]
    assert all(name in sys.modules for name in names)


def test_a_layer_built_without_kernels_set_up_is_named():
    torch = pytest.importorskip("torch")
    kernels = pytest.importorskip("kernels", reason="kernels is not installed")

    @kernels.use_kernel_forward_from_hub("MmpoTestIdentity")
    def identity(x):
        return x

    @kernels.use_kernelized_func(identity)
    class Layer(torch.nn.Module):
        def forward(self, x):
            return identity(x)

    model = torch.nn.Sequential(Layer(), Layer())
    assert distributed.kernel_layers_without_setup(model) == []
    del vars(model[1])["_kernel_funcs"]  # what a Layer built with its pre-decoration __init__ looks like
    assert distributed.kernel_layers_without_setup(model) == ["1"]
