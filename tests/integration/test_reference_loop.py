"""The plain-PyTorch loop in examples/ and PreferenceTrainer take the same steps (parity pin)."""

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmpo.data.collator import PreferenceDataset
from mmpo.training.config import PreferenceConfig
from mmpo.training.trainer import PreferenceTrainer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "reference_loop.py"


def load_example():
    spec = importlib.util.spec_from_file_location("reference_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_loop_and_trainer_reach_the_same_weights(tmp_path, tiny_checkpoint, tiny_records):
    """Three SGD steps of batch 4 in record order, no clipping, constant learning rate, SFT term on:
    both paths must land on the same parameters."""
    loop = load_example()
    model_a = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    losses = loop.train(model_a, processor, tiny_records, steps=3, batch_size=4, lr=0.05, beta=0.1, sft_weight=0.5)
    assert losses[0] > losses[-1]

    model_b = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    args = PreferenceConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, optim="sgd",
                            learning_rate=0.05, lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0,
                            sft_weight=0.5, save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
                            train_sampling_strategy="sequential")
    PreferenceTrainer(model_b, args, processor, PreferenceDataset(tiny_records)).train()
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
