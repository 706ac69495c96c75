"""Our GRPO loss against TRL's own ``GRPOTrainer._compute_loss`` on the same tensors, for every loss type.

Not a test (TRL is not a dependency): a check to rerun when either side changes.

    pip install trl==1.16.0 datasets   # into any environment that has this repo's requirements
    python benchmarks/check_against_trl.py

TRL's method is called unbound, on a plain namespace that holds the configuration attributes it reads; the
model forward is replaced by fixed log-probs, so both sides see identical inputs.
"""

from __future__ import annotations

import itertools
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rl.loss import policy_loss  # noqa: E402


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x


def trl_loss(grpo_trainer, logps, old, ref, adv, mask, *, loss_type, level, beta, eps_low, eps_high, max_len, ga):
    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=ga),
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=ga,
        max_completion_length=max_len,
        accelerator=_Accelerator(),
        _entropy_bonus_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
    )
    inputs = {
        "prompt_ids": torch.zeros(logps.shape[0], 1, dtype=torch.long),
        "prompt_mask": torch.ones(logps.shape[0], 1, dtype=torch.long),
        "completion_ids": torch.zeros_like(mask),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum() * ga,  # the whole generation batch: ga equal micro-batches
    }
    return grpo_trainer._compute_loss(stub, None, inputs)


def main() -> None:
    from trl.trainer.grpo_trainer import GRPOTrainer

    torch.manual_seed(0)
    b, t, max_len = 6, 9, 12
    logps = -torch.rand(b, t) * 3
    old = logps + torch.randn(b, t) * 0.3  # ratios well outside [0.8, 1.28]: clipping on both sides
    ref = logps + torch.randn(b, t) * 0.2
    adv = torch.randn(b)
    mask = (torch.arange(t) < torch.randint(2, t + 1, (b, 1))).long()
    worst = 0.0
    for loss_type, level, beta, ga in itertools.product(
        ["grpo", "bnpo", "dr_grpo", "dapo"], ["token", "sequence"], [0.0, 0.04], [1, 3]
    ):
        kwargs = dict(loss_type=loss_type, level=level, beta=beta, eps_low=0.2, eps_high=0.28, max_len=max_len, ga=ga)
        theirs = trl_loss(GRPOTrainer, logps, old, ref, adv, mask, **kwargs)
        ours = policy_loss(
            logps,
            old,
            adv,
            mask,
            loss_type=loss_type,
            epsilon_low=0.2,
            epsilon_high=0.28,
            beta=beta,
            ref_logps=ref,
            importance_sampling_level=level,
            max_completion_length=max_len,
            num_micro_batches=ga,
            num_items_in_batch=float(mask.sum() * ga),
        ).loss
        diff = abs(ours.item() - theirs.item())
        worst = max(worst, diff / max(abs(theirs.item()), 1e-12))
        case = f"{loss_type:8s} {level:8s} beta={beta:<5} micro-batches={ga}"
        print(f"{case}  TRL {theirs.item():+.8f}  ours {ours.item():+.8f}")
    print(f"largest relative difference: {worst:.2e}")


if __name__ == "__main__":
    main()
