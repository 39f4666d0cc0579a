"""Helper script for test_zero3_loading.py (not a test itself): in a fresh interpreter, as one
process of a ZeRO-3 run, load the policy the way ``mmpo train`` does (``load_policy``: partitioned
at load by ``zero.Init``), load the frozen reference again (``frozen_copy``) and run both.

    python zero3_loading.py CHECKPOINT OUT_DIR PORT

Prints one JSON line: the kernelized layers each model has and those built without their set-up.
A fresh interpreter matters: the failure it guards against happens only when the model's
modeling module is imported for the first time while ``zero.Init`` is active.
"""

import json
import os
import sys


def main(checkpoint: str, out_dir: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    import deepspeed
    import torch
    from PIL import Image

    from mmpo.models import load_policy
    from mmpo.training import distributed
    from mmpo.training.config import ModelArguments, PreferenceConfig

    assert "transformers.models.llama.modeling_llama" not in sys.modules  # imported below, under ZeRO-3
    zero3 = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
             "zero_optimization": {"stage": 3}}
    # kept: transformers sees ZeRO-3 (and from_pretrained uses zero.Init) while the config lives
    args = PreferenceConfig(output_dir=out_dir, use_cpu=True, deepspeed=zero3, ddp_backend="gloo", report_to="none")
    model, processor = load_policy(ModelArguments(model_name_or_path=checkpoint))
    reference = distributed.frozen_copy(model)
    inputs = processor(images=[Image.new("RGB", (64, 64), "red")], text=[f"{processor.image_token} a red circle ."],
                       return_tensors="pt")
    logits = []
    for m in (model, reference):
        with deepspeed.zero.GatheredParameters(list(m.parameters())), torch.no_grad():
            logits.append(m(**inputs).logits)
    print(json.dumps({
        "partitioned": [distributed.is_partitioned(model), distributed.is_partitioned(reference)],
        "kernel_layers": sum("_kernel_funcs" in vars(m) for m in reference.modules()),
        "without_setup": distributed.kernel_layers_without_setup(reference),
        "max_logit_difference": float((logits[0] - logits[1]).abs().max()),
    }))
    del args
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
