"""The learning rate, step by step: linear warm-up, then the paper's divide-on-plateau, a step schedule
or a cosine. Its state is plain numbers, so it rides in checkpoints and resumes exactly."""

from __future__ import annotations

import math
from typing import Any


# How the warm-up's epochs become steps: a warm-up asked for lowers at least its first step's rate. NEAREST:
# the nearest whole step, what runs recorded before the rule was named did.
WARMUP_RULE = "at-least-2-steps"
NEAREST = "nearest"


class LRSchedule:
    def __init__(self, kind: str, lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: float = 0.0,
                 gamma: float = 0.1, step_epochs: int = 30, patience: int = 5, max_drops: int = 3) -> None:
        self.kind, self.base, self.steps_per_epoch, self.epochs = kind, lr, steps_per_epoch, epochs
        self.warmup_epochs = warmup_epochs
        self._set_warmup(WARMUP_RULE)
        self.gamma, self.step_epochs, self.patience, self.max_drops = gamma, step_epochs, patience, max_drops
        # plateau state: the paper divided "when the validation error rate stopped improving"
        self.drops, self.best, self.bad_epochs = 0, -math.inf, 0

    def _set_warmup(self, rule: str) -> None:
        """The warm-up's steps by ``rule``. Its last step is at the full rate, so a warm-up asked for takes at least
        2 (half the rate, then the full one): rounded to the nearest step, a short one (0.05 epochs of 20 steps)
        was 1 step or none, and no step's rate was lowered. A run recorded before (its state names no rule)
        keeps the nearest step, so that its resume follows the schedule it was trained with."""
        self.warmup_rule = rule
        steps = round(self.warmup_epochs * self.steps_per_epoch)
        self.warmup_steps = max(steps, 2) if rule == WARMUP_RULE and self.warmup_epochs > 0 else steps

    def lr_at(self, step: int) -> float:
        """Learning rate for global step ``step`` (0-based). Warm-up: step i of W at (i + 1) / W of the rate, so
        its last step is at the full rate. Cosine: from the full rate at the first step after warm-up to zero
        at the step after the last, as torch's CosineAnnealingLR over the steps left (the last step is not
        wasted at zero). On a run of a few steps both are coarse: 2 steps with W = 2 run at half and the full rate."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.kind == "plateau":
            factor = self.gamma ** self.drops
        elif self.kind == "step":
            factor = self.gamma ** (step // (self.step_epochs * self.steps_per_epoch))
        else:  # cosine from the end of warm-up towards zero after the last step
            total = max(1, self.epochs * self.steps_per_epoch - self.warmup_steps)
            t = min(1.0, max(0, step - self.warmup_steps) / total)
            factor = 0.5 * (1 + math.cos(math.pi * t))
        return self.base * warm * factor

    def end_epoch(self, val_top1: float) -> bool:
        """Record an epoch's validation accuracy; True when the plateau rule just divided the rate."""
        if self.kind != "plateau":
            return False
        if val_top1 > self.best:
            self.best, self.bad_epochs = val_top1, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience and self.drops < self.max_drops:
            self.drops, self.bad_epochs = self.drops + 1, 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"drops": self.drops, "best": self.best, "bad_epochs": self.bad_epochs, "warmup_rule": self.warmup_rule}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.drops, self.best, self.bad_epochs = state["drops"], state["best"], state["bad_epochs"]
        self._set_warmup(state.get("warmup_rule", NEAREST))
