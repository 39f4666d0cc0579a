"""DAMA's training-step state: the recipes (every choice of the model-aware step), the running mean
kept in checkpoints, and :class:`DamaController`, which the trainer calls once per batch and step."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from .factors import (
    ALPHA_MODEL_MAX,
    R_FLOOR,
    CombineMode,
    FilterMode,
    Normalizer,
    dama_combine,
    dama_model_alpha,
    dama_model_alpha_authors,
    paper_r_batch,
)

if TYPE_CHECKING:
    from .config import DamaConfig


class DamaStateMismatch(ValueError):
    """A saved DAMA state that is valid but belongs to another recipe (its running mean's scale differs)."""


@dataclass
class DamaState:
    """DAMA's training state: the running mean of the reward gaps, saved in checkpoints.

    The paper calls it ``R_bar`` (Eq. 15) and mixes in the normalised ``R_B`` of the kept records;
    the authors' code keeps an EMA of the mean raw gap of all records (``kind``).

    Attributes:
        r_bar: the running mean; both sources start it at 0.
        gamma: EMA momentum; both use 0.9.
        step: number of :meth:`update` calls so far.
        kind: what is averaged, ``"kept_normalised"`` (paper) or ``"all_gaps"`` (authors); a
            checkpoint of one kind cannot resume a run of the other (their scales differ).
    """

    r_bar: float = 0.0
    gamma: float = 0.9
    step: int = 0
    kind: str = "kept_normalised"

    def update(self, r_batch: float | torch.Tensor, float32: bool = False) -> float:
        """``r_bar <- gamma * r_bar + (1 - gamma) * r_batch``, DAMA Eq. 15. Returns the new value.

        With ``float32`` the update is computed as the authors' code does it, on a float32 tensor
        (``mul_(gamma).add_(value, alpha=1 - gamma)``), so the value matches theirs bit for bit.
        The update is a convex combination, so with the bounded normaliser (``|R_B| <= (N / K) / tau``)
        ``R_bar`` never leaves that bound once inside it.

        Raises:
            ValueError: ``r_batch`` is NaN or inf (``r_bar`` is left unchanged).
        """
        value = float(r_batch.detach().item()) if isinstance(r_batch, torch.Tensor) else float(r_batch)
        if not math.isfinite(value):
            raise ValueError(f"DAMA update got a non-finite batch statistic: {value}")
        if float32:
            mean = torch.tensor([self.r_bar], dtype=torch.float32)
            mean.mul_(self.gamma).add_(torch.tensor(value, dtype=torch.float32), alpha=1.0 - self.gamma)
            self.r_bar = mean.item()
        else:
            self.r_bar = self.gamma * self.r_bar + (1.0 - self.gamma) * value
        self.step += 1
        return self.r_bar

    def state_dict(self) -> dict[str, Any]:
        return {"r_bar": self.r_bar, "gamma": self.gamma, "step": self.step, "kind": self.kind}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        kind = state.get("kind", "kept_normalised")  # checkpoints before the recipes kept the paper's
        if kind != self.kind:
            raise DamaStateMismatch(f"the checkpoint's DAMA running mean is of kind {kind!r} and this run's of kind "
                             f"{self.kind!r} (dama_running_mean): their scales differ, so the run cannot resume "
                             f"from it; set dama_running_mean: {kind} (or the dama_recipe that uses it)")
        self.r_bar = float(state["r_bar"])
        self.gamma = float(state["gamma"])
        self.step = int(state["step"])


# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------

AlphaModelForm = Literal["authors", "paper"]
RunningMean = Literal["all_gaps", "kept_normalised"]
UpdateTime = Literal["loss", "step"]
LossMean = Literal["process", "global"]
KeepRounding = Literal["floor", "round"]


@dataclass(frozen=True)
class DamaRecipe:
    """Every choice of DAMA's model-aware step and of the loss around it.

    Attributes:
        keep: ``K / N``, the fraction of the global batch the filter keeps.
        keep_rounding: ``K = int(keep * N)`` (``"floor"``, the authors') or ``round(keep * N)``; at least 1.
        filter: ``"sample" | "topk" | "bottom" | "top" | "none"`` (:func:`dama_model_alpha`).
        gap_uses_beta: the gap is ``beta * (ratio_w - ratio_l)`` (paper, Eq. 9) or the raw margin (authors).
        alpha_model: ``"authors"`` (:func:`dama_model_alpha_authors`) or ``"paper"`` (:func:`dama_model_alpha`).
        running_mean: ``"all_gaps"``, the EMA of the mean gap of all ``N`` records (authors), or
            ``"kept_normalised"``, the EMA of the paper's ``R_B`` (Eq. 15).
        update: the running mean moves after each batch's loss (``"loss"``, the authors', who update
            it in ``compute_loss``) or once per optimizer step with the mean of its batches (``"step"``).
        loss_mean: the kept records' losses averaged per process, then over processes by DDP
            (``"process"``, the authors'), or one mean over the global kept set (``"global"``).
        beta_min: ``beta_C`` is clamped below at this (authors 1e-3; 0 = no clamp).
        normalizer, floor, alpha_max: the paper form's normaliser (:func:`dama_model_alpha`).
        gamma: the running mean's momentum.
        combine, rho: how ``alpha_D`` and ``alpha_M`` combine (:func:`dama_combine`).
    """

    keep: float
    keep_rounding: KeepRounding
    filter: FilterMode
    gap_uses_beta: bool
    alpha_model: AlphaModelForm
    running_mean: RunningMean
    update: UpdateTime
    loss_mean: LossMean
    beta_min: float
    normalizer: Normalizer = "paper"
    floor: float = R_FLOOR
    alpha_max: float = ALPHA_MODEL_MAX
    gamma: float = 0.9
    combine: CombineMode = "product"
    rho: float = 0.5

    def keep_count(self, n: int) -> int:
        """``K`` for a global batch of ``n`` records (never below 1: the authors' ``int(0.8)`` = 0
        would average over no record)."""
        k = int(self.keep * n) if self.keep_rounding == "floor" else round(self.keep * n)
        return max(1, min(n, k))


#: The two recipes (docs/papers.md lists every difference and the test that pins it).
RECIPES: dict[str, DamaRecipe] = {
    "authors": DamaRecipe(keep=0.8, keep_rounding="floor", filter="sample", gap_uses_beta=False,
                          alpha_model="authors", running_mean="all_gaps", update="loss", loss_mean="process",
                          beta_min=1e-3),
    "paper": DamaRecipe(keep=0.75, keep_rounding="round", filter="topk", gap_uses_beta=True,
                        alpha_model="paper", running_mean="kept_normalised", update="step", loss_mean="global",
                        beta_min=0.0, normalizer="paper"),
}


def dama_recipe(name: str = "authors", **choices: Any) -> DamaRecipe:
    """The recipe ``name`` with some choices replaced; a choice given as ``None`` keeps the recipe's."""
    if name not in RECIPES:
        raise ValueError(f"dama_recipe must be one of {', '.join(RECIPES)}, not {name!r}")
    return dataclasses.replace(RECIPES[name], **{k: v for k, v in choices.items() if v is not None})


# ---------------------------------------------------------------------------------------------
# The training step
# ---------------------------------------------------------------------------------------------


class BatchGather(Protocol):
    """How the DAMA step sees the other processes' records (the trainer passes one built on
    ``accelerate``; :class:`SingleProcess` for one process)."""

    num_processes: int

    def concat(self, values: torch.Tensor) -> tuple[torch.Tensor, int]:
        """All processes' ``(B_p,)`` values concatenated in process order, and this process's offset."""

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """A 0-dim value summed over processes."""


class SingleProcess:
    """:class:`BatchGather` for one process: the global batch is the local one."""

    num_processes = 1

    def concat(self, values: torch.Tensor) -> tuple[torch.Tensor, int]:
        return values, 0

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return value


class DamaController:
    """DAMA's whole training-step logic and its state: the per-record ``beta_C``, the model-aware
    filter's mean over the kept records, and the running mean with its updates.

    One step, as :class:`~mmpo.training.trainer.PreferenceTrainer` drives it:

    1. :meth:`beta` for each micro-batch: ``beta_C = max(beta * alpha, beta_min)`` ``(B,)``, the keep
       mask ``(B,)`` (model-aware) and diagnostics. In training, the batch's statistic moves the
       running mean at once (``update: loss``) or is queued for the optimizer step (``update: step``);
    2. :meth:`mean_loss`: the per-record losses averaged over the kept records, per process or over
       the global batch (``loss_mean``);
    3. :meth:`step_end` after the optimizer step (applies the queued statistics).

    A skipped batch takes its update back (:meth:`mark` / :meth:`discard_since`), a skipped
    optimizer step all of its batches' (:meth:`discard_pending`); evaluation never moves it.
    :meth:`state_dict` holds the running mean and the ``"sample"`` filter's random generator, for
    checkpoints. With both factors off, :meth:`beta` returns the plain ``beta`` and keeps
    everything: the step is DPO's.

    Args:
        beta: the base DPO beta.
        data_aware / model_aware: the two factors (D2PO = data only, MDPO = model only).
        recipe: a :class:`DamaRecipe` or the name of one in :data:`RECIPES` (default ``"authors"``).
        seed: seed of the ``"sample"`` filter's generator.
        gather: how to see the global batch; default one process.
        **choices: :class:`DamaRecipe` fields replacing the recipe's (``keep=0.75``, ``filter="topk"``).
    """

    def __init__(self, beta: float, *, data_aware: bool = False, model_aware: bool = False,
                 recipe: DamaRecipe | str = "authors", seed: int = 0, gather: BatchGather | None = None,
                 **choices: Any):
        self.beta_base = beta
        self.data_aware, self.model_aware = data_aware, model_aware
        if isinstance(recipe, str):
            recipe = dama_recipe(recipe, **choices)
        elif choices:
            recipe = dataclasses.replace(recipe, **choices)
        self.recipe = recipe
        self.state = DamaState(gamma=recipe.gamma, kind=recipe.running_mean)
        self.generator = torch.Generator().manual_seed(seed)
        self.gather: BatchGather = gather or SingleProcess()
        self._pending: list[float] = []  # this optimizer step's batch statistics, one per micro-batch
        self._before: list[tuple[float, int]] = []  # update "loss": (r_bar, step) before each of them

    @classmethod
    def from_config(cls, config: DamaConfig, beta: float, seed: int = 0, gather: BatchGather | None = None
                    ) -> DamaController:
        """From the run's :class:`~mmpo.methods.dama.DamaConfig`."""
        return cls(beta, data_aware=config.data, model_aware=config.model, recipe=config.resolved(), seed=seed,
                   gather=gather)

    @property
    def enabled(self) -> bool:
        return self.data_aware or self.model_aware

    @property
    def r_bar(self) -> float:
        """The running mean (``R_bar``, or the authors' EMA of the mean gap)."""
        return self.state.r_bar

    def beta(self, chosen: torch.Tensor, rejected: torch.Tensor, data_alpha: torch.Tensor | None = None,
             training: bool = True) -> tuple[float | torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """This micro-batch's ``beta_C``, the model-aware keep mask and the diagnostics.

        Args:
            chosen / rejected: ``(B,)`` log-ratios of the two responses (ASPO's weighted chosen one
                when ASPO is on); detached here.
            data_alpha: ``(B,)`` the records' offline ``alpha_D`` (needed when data-aware).
            training: move (or queue) the running mean (never in evaluation).

        Returns:
            ``(beta, keep, diagnostics)``: ``beta`` a ``(B,)`` tensor (the float ``beta`` when DAMA is
            off), ``keep`` a ``(B,)`` bool mask of this process's records (None unless model-aware).
        """
        if not self.enabled:
            return self.beta_base, None, {}
        recipe = self.recipe
        chosen, rejected = chosen.detach(), rejected.detach()
        if self.data_aware and data_alpha is None:
            raise ValueError("data-aware DAMA needs each record's data_alpha (mmpo score-sentences --dama)")
        alpha_data = data_alpha.to(chosen) if self.data_aware else torch.ones_like(chosen)  # (B,)
        gaps = chosen - rejected  # (B,)
        if recipe.gap_uses_beta:
            gaps = self.beta_base * gaps
        alpha_model: float | torch.Tensor = 1.0
        keep, diag = None, {}
        if self.model_aware:
            global_gaps, offset = self.gather.concat(gaps)  # (N,)
            alpha_model, keep_global, statistic = self._model_alpha(global_gaps)
            keep = keep_global[offset : offset + chosen.shape[0]].to(chosen.device)  # (B,)
            diag = {"dama/alpha_model": alpha_model.reshape(1), "dama/r_bar": torch.tensor([self.state.r_bar]),
                    "dama/r_batch": torch.tensor([statistic]), "dama/kept_fraction": keep.float()}
            if training:
                self._observe(statistic)
        alpha = dama_combine(alpha_data, alpha_model, recipe.combine, recipe.rho)  # (B,)
        beta = self.beta_base * alpha  # (B,)
        if recipe.beta_min > 0:
            diag["dama/beta_clamped"] = (beta < recipe.beta_min).float()
            beta = beta.clamp(min=recipe.beta_min)
        diag["dama/alpha_data_mean"] = alpha_data
        diag["dama/beta_mean"] = beta
        if self.data_aware:
            easy = alpha_data >= 1
            diag["dama/gap_easy"] = gaps[easy]
            diag["dama/gap_hard"] = gaps[~easy]
        return beta, keep, diag

    def _model_alpha(self, gaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``alpha_M``, the ``(N,)`` keep mask and the statistic the running mean averages, for the
        global batch's gaps ``(N,)``."""
        recipe, r_bar = self.recipe, self.state.r_bar
        k = recipe.keep_count(gaps.shape[0])
        if recipe.alpha_model == "authors":
            alpha, mask = dama_model_alpha_authors(gaps, r_bar, k, recipe.filter, generator=self.generator)
            r_batch = None
        else:
            alpha, mask, r_batch = dama_model_alpha(gaps, r_bar, k, recipe.filter, generator=self.generator,
                                                    normalizer=recipe.normalizer, floor=recipe.floor,
                                                    alpha_max=recipe.alpha_max)
        if recipe.running_mean == "all_gaps":
            return alpha, mask, gaps.detach().cpu().mean().item()  # in the gaps' dtype, as the authors'
        if r_batch is None:  # the authors' alpha_M with the paper's running mean: R_B from the same mask
            r_batch = torch.tensor(paper_r_batch(gaps.detach().to("cpu", torch.float64), mask.cpu(), r_bar,
                                                  recipe.normalizer, recipe.floor))
        return alpha, mask, float(r_batch)

    def _observe(self, statistic: float) -> None:
        """Queue this batch's statistic; with ``update: loss`` apply it now (a non-finite one is never
        applied: the NaN/inf guard then names the batch)."""
        self._pending.append(statistic)
        if self.recipe.update == "loss":
            self._before.append((self.state.r_bar, self.state.step))
            if math.isfinite(statistic):
                self.state.update(statistic, float32=self.recipe.running_mean == "all_gaps")

    def mean_loss(self, losses: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """The mean of ``losses`` ``(B,)`` over the kept records (all without a mask).

        ``loss_mean: process``: over this process's kept records (a process that keeps none adds 0),
        and DDP then averages over processes, as the authors' code does. ``global``: over the kept
        records of the global batch: DDP averages gradients over processes, so each process scales
        its kept sum by ``P / K_global``. A filtered record's loss is replaced, not multiplied by 0:
        ``inf * 0`` is NaN.
        """
        if keep is None:
            return losses.mean()
        kept_losses = torch.where(keep, losses, torch.zeros_like(losses))  # (B,)
        if self.recipe.loss_mean == "process":
            return kept_losses.sum() / keep.float().sum().clamp(min=1)
        kept_global = self.gather.sum(keep.float().sum())
        return kept_losses.sum() * self.gather.num_processes / kept_global.clamp(min=1)

    def mark(self) -> int:
        """A position in this step's batches, for :meth:`discard_since`."""
        return len(self._pending)

    def discard_since(self, mark: int) -> None:
        """Take back the batches after ``mark`` (skipped): their queued statistics, or the updates
        they made (``update: loss``)."""
        if self._before[mark:]:
            self.state.r_bar, self.state.step = self._before[mark]
        del self._pending[mark:], self._before[mark:]

    def discard_pending(self) -> None:
        """Take back every batch of this optimizer step (the step was skipped)."""
        self.discard_since(0)

    def step_end(self) -> None:
        """After each optimizer step: with ``update: step``, ``r_bar <- gamma r_bar + (1 - gamma) x``,
        ``x`` the mean statistic of the step's micro-batches."""
        if self._pending and self.recipe.update == "step":
            self.state.update(sum(self._pending) / len(self._pending),
                              float32=self.recipe.running_mean == "all_gaps")
        self._pending.clear()
        self._before.clear()

    def state_dict(self) -> dict[str, Any]:
        """The running mean and the filter's generator, in the layout of ``mmpo_state.json``."""
        return {"dama": self.state.state_dict(), "dama_generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state["dama"])
        self.generator.set_state(torch.tensor(state["dama_generator"], dtype=torch.uint8))
