"""Helper script for test_dama_multiprocess.py (run directly or under torchrun; not a test itself).

    python dama_global_batch.py RECORDS_DIR OUT.json PER_DEVICE_BATCH

Trains the untrained tiny LLaVA for 4 steps with DAMA's model-aware beta and writes the main
process's log history, so a 2-process run can be compared with a 1-process run of the same
global batch.
"""

import json
import sys
from pathlib import Path

import torch

from mmpo.data.collator import PreferenceDataset
from mmpo.data.records import load_records
from mmpo.toyworld.model import build_processor, build_tiny_vlm, train_tokenizer
from mmpo.training.config import DamaArguments, Methods, PreferenceConfig
from mmpo.training.trainer import PreferenceTrainer


def main(records_dir: str, out: str, per_device: int) -> None:
    torch.set_num_threads(1)
    records = load_records(Path(records_dir) / "train.jsonl").records
    tokenizer = train_tokenizer()
    model = build_tiny_vlm(tokenizer, seed=0)
    args = PreferenceConfig(output_dir=str(Path(out).parent / "trainer"), max_steps=4,
                            per_device_train_batch_size=per_device, learning_rate=5e-3, logging_steps=1,
                            save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, report_to="none")
    methods = Methods(dama=DamaArguments(dama_model=True, dama_keep=0.75))
    trainer = PreferenceTrainer(model, args, build_processor(tokenizer), PreferenceDataset(records), methods=methods)
    trainer.train()
    if trainer.is_world_process_zero():
        Path(out).write_text(json.dumps({"log": trainer.state.log_history, "r_bar": trainer.dama.r_bar,
                                         "processes": trainer.accelerator.num_processes}))
    # Tear the process group down before exit: gloo's threads otherwise abort the interpreter
    # at shutdown now and then ("terminate called without an active exception").
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
