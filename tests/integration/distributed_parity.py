"""Helper script for test_distributed_parity.py (run directly or under torchrun; not a test itself).

    python distributed_parity.py RECORDS_DIR OUT_DIR PER_DEVICE_BATCH ENGINE CASE[,CASE...]

ENGINE is ``single`` (plain python), or ``ddp``, ``fsdp``, ``zero2``, ``zero3`` (torchrun, 2 processes
on CPU over gloo; FSDP2 through accelerate with ``mmpo.training.distributed.fsdp_on_cpu``; DeepSpeed
through the Trainer's ``deepspeed`` argument, on DeepSpeed's CPU accelerator). Each CASE trains the
untrained tiny LLaVA for 3 steps from the same weights and writes, from the main process,
``OUT_DIR/CASE.json`` (the log and how the reference was placed) and ``OUT_DIR/CASE.pt`` (the
final weights, gathered whole under FSDP).

Cases: dpo, aspo, adavip, dama (frozen-copy reference); dpo-precomputed, adavip-precomputed
(the precomputed reference, its table computed by the processes together); lora (DPO on a LoRA
policy, the adapter-off reference); adavip-packed (several records in a row, ``max_tokens_per_row``).
"""

import contextlib
import json
import sys
from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from mmpo import models
from mmpo.data.collator import PreferenceDataset
from mmpo.data.records import load_records
from mmpo.toyworld.model import build_processor, build_tiny_vlm, train_tokenizer
from mmpo.training import distributed
from mmpo.training.config import AdavipConfig, AspoConfig, DamaConfig, Methods, PreferenceConfig
from mmpo.training.trainer import PreferenceTrainer, check_finite_parameters

METHODS = {
    "dpo": Methods(),
    "aspo": Methods(aspo=AspoConfig(enabled=True)),
    "adavip": Methods(adavip=AdavipConfig(enabled=True)),
    "dama": Methods(dama=DamaConfig(model=True, loss_mean="global")),  # the authors' draw, one mean
    "lora": Methods(),  # DPO on a LoRA policy, with the adapter-off reference
}


def local_fraction(module: torch.nn.Module) -> float:
    """The fraction of ``module``'s parameter elements this process holds (1 unless sharded)."""
    local = total = 0
    for p in module.parameters():
        total += getattr(p, "ds_numel", p.numel())  # ZeRO-3 keeps the whole size aside
        local += distributed.local_shard(p).numel()
    return local / total


def run_case(case: str, records, tokenizer, checkpoint: Path, out_dir: Path, per_device: int, engine: str) -> None:
    method, _, reference = case.partition("-")
    packed = {"max_tokens_per_row": 1024} if reference == "packed" else {}  # several records a row
    reference = "" if packed else reference
    sharded = {"fsdp": True, "fsdp_config": {"version": 2, "reshard_after_forward": True}} if engine == "fsdp" else {}
    if engine.startswith("zero"):
        sharded = {"deepspeed": {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                                 "gradient_clipping": "auto", "zero_allow_untested_optimizer": True,
                                 "zero_optimization": {"stage": int(engine[-1]),
                                                       "stage3_param_persistence_threshold": 0,
                                                       "stage3_gather_16bit_weights_on_model_save": True}},
                   "ddp_backend": "gloo"}
    args = PreferenceConfig(output_dir=str(out_dir / f"trainer-{case}"), max_steps=3,
                            per_device_train_batch_size=per_device, per_device_eval_batch_size=2,
                            learning_rate=5e-3, logging_steps=1, save_strategy="no", use_cpu=True,
                            disable_tqdm=True,
                            seed=0, report_to="none", reference=reference or ("adapter" if method == "lora" else "copy"),
                            **packed, **sharded)
    # Loaded after the config exists, as ``mmpo train`` does: under ZeRO-3 transformers then
    # partitions the weights at load (zero.Init), and the frozen reference is loaded again from here.
    # (mmpo's load_policy first imports the modeling modules, so that no class is created inside
    # zero.Init: models.import_model_modules says why; done here as it does.)
    models.import_model_modules(LlavaConfig.from_pretrained(checkpoint))
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint)
    partitioned_at_load = distributed.is_partitioned(model)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights="gaussian"))
    with distributed.fsdp_on_cpu() if engine == "fsdp" else contextlib.nullcontext():
        trainer = PreferenceTrainer(model, args, build_processor(tokenizer), PreferenceDataset(records),
                                    methods=METHODS[method])
        trainer.train()
        check_finite_parameters(trainer.model)  # each process its own shard
        used = distributed.engine(trainer.accelerator)
    weights = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # gathered whole (FSDP, ZeRO-3)
    ref_model = getattr(trainer.reference, "model", None)
    info = {"log": trainer.state.log_history, "processes": trainer.accelerator.num_processes, "engine": used,
            "partitioned_at_load": partitioned_at_load, "r_bar": trainer.dama.r_bar,
            "reference_fraction": None if ref_model is None else local_fraction(ref_model),
            "policy_fraction": local_fraction(trainer.model),
            "max_tokens_per_row": trainer.data_collator.max_tokens_per_row}
    fractions = trainer.accelerator.gather(torch.tensor([info["reference_fraction"] or 1.0]))
    if trainer.is_world_process_zero():
        info["reference_fractions"] = fractions.tolist()
        torch.save({k: v.detach().cpu().float() for k, v in weights.items()}, out_dir / f"{case}.pt")
        (out_dir / f"{case}.json").write_text(json.dumps(info))


def main(records_dir: str, out: str, per_device: int, engine: str, cases: str) -> None:
    torch.set_num_threads(1)
    records = load_records(Path(records_dir) / "train.jsonl").records
    tokenizer = train_tokenizer()
    checkpoint = Path(records_dir) / "checkpoint"
    if engine == "single" and not checkpoint.exists():  # the single-process run comes first
        build_tiny_vlm(tokenizer, seed=0).save_pretrained(checkpoint)
    for case in cases.split(","):
        run_case(case, records, tokenizer, checkpoint, Path(out), per_device, engine)
    # Tear the process group down before exit: gloo's threads otherwise abort the interpreter
    # at shutdown now and then ("terminate called without an active exception").
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
