"""Trainer settings: one dataclass per trainer, read from YAML, every key overridable on the command line.

    cfg = load_config(DPOConfig, "configs/dpo.yaml", ["lr=5e-7", "max_steps=100"])

A YAML file may leave keys out (the dataclass default is used) but may not name a key the dataclass
does not have: a typo is an error naming the key and the closest known one (model/settings.py, the
project's one loader). Overrides are `KEY=VALUE`, VALUE read as YAML (`lr=1e-6`,
`activation_checkpointing=true`, `loss_options={label_smoothing: 0.1}`).
"""
import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import yaml

from model.errors import FormatError
from model.settings import apply_overrides, from_mapping, read_yaml
from train.losses import LOSSES, check_options


@dataclass
class TrainConfig:
    """Settings shared by SFT and DPO. The defaults are the paper's where it gives them."""
    lr: float = 1e-6                # peak learning rate, reached after warmup
    final_lr: float = 1e-7          # cosine decay ends here, at the last step
    warmup_steps: int = 0           # linear warmup from lr / warmup_steps (not stated in the paper)
    weight_decay: float = 0.0       # AdamW's decoupled decay (not stated in the paper)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95        # Llama-2's fine-tuning betas
    adam_eps: float = 1e-8
    grad_clip: float = 1.0          # clip the global gradient norm to this; 0 = no clipping
    batch_size: int = 16            # examples (SFT) or pairs (DPO) per optimizer step, over all ranks
    micro_batch_size: int = 1       # examples or pairs per forward on one rank; accumulation makes up the rest
    epochs: int = 1                 # passes over the data (the paper does not say; it picks among snapshots)
    max_steps: int = 0              # > 0: stop after this many optimizer steps instead (the schedule follows it)
    max_seq_len: int = 2048         # tokens per sequence, prompt + response; longer ones are cut (see train/data.py)
    dropout: float = 0.1            # on the residual branches while training
    seed: int = 0                   # data order, dropout
    save_every: int = 200           # steps between training states and snapshots (the paper's checkpoint selection)
    param_dtype: str = "auto"       # the dtype forward and backward run in over fp32 master weights, with fp32
                                    # gradient reduction; auto: bf16 on CUDA and on CPUs with native bf16
                                    # (AMX, AVX512-BF16), fp32 on other CPUs (train/distributed.py)
    activation_checkpointing: bool = False  # recompute each block in the backward instead of storing it
    save_dtype: str = "auto"        # weights written to checkpoints: auto = the input checkpoint's dtype
    # settings that change memory and speed but not the trained model: changing one neither makes a model out
    # of date (configs/iteration.py) nor stops a resume (train/loop.py)
    speed_only: ClassVar[tuple[str, ...]] = ("micro_batch_size",)

    def choices(self) -> dict:
        """The keys that take one of a few values, and those values."""
        return {"param_dtype": ("auto", "bfloat16", "float32"), "save_dtype": ("auto", "float32", "bfloat16", "float16")}

    def validate(self):
        for key, choices in self.choices().items():
            if getattr(self, key) not in choices:
                raise ValueError(f"{key} must be one of {choices}, got {getattr(self, key)!r}")
        for key in ("batch_size", "micro_batch_size", "epochs", "max_seq_len", "save_every"):
            _require(self, key, getattr(self, key) > 0, "positive")
        for key in ("warmup_steps", "max_steps"):
            _require(self, key, getattr(self, key) >= 0, "0 or more")
        # every float is compared so that NaN fails: a NaN or infinite setting makes every weight NaN in one step
        _require(self, "lr", 0 < self.lr < math.inf, "a finite number > 0")
        _require(self, "final_lr", 0 <= self.final_lr <= self.lr, f"in [0, lr] = [0, {self.lr}]")
        _require(self, "adam_eps", 0 < self.adam_eps < math.inf, "a finite number > 0")  # 0: 0 / 0 where a grad is 0
        for key in ("weight_decay", "grad_clip"):
            _require(self, key, 0 <= getattr(self, key) < math.inf, "a finite number >= 0")
        # AdamW multiplies the weights by 1 - lr * weight_decay: 0 or less zeroes or flips them (or overflows)
        _require(self, "weight_decay", self.lr * self.weight_decay < 1, f"below 1 / lr = {1 / self.lr:g}")
        for key in ("adam_beta1", "adam_beta2", "dropout"):
            _require(self, key, 0 <= getattr(self, key) < 1, "in [0, 1)")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of micro_batch_size "
                             f"{self.micro_batch_size}")


def _require(cfg, key: str, ok: bool, what: str):
    if not ok:
        raise ValueError(f"{key} must be {what}, got {getattr(cfg, key)}")


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning: the paper's learning rate 5.5e-6 decaying to 1.1e-6."""
    lr: float = 5.5e-6
    final_lr: float = 1.1e-6


@dataclass
class DPOConfig(TrainConfig):
    """DPO: the paper's learning rate 1e-6 decaying to 1e-7, beta 0.1."""
    lr: float = 1e-6
    final_lr: float = 1e-7
    beta: float = 0.1
    loss_type: str = "sigmoid"      # a name in train/losses.py's LOSSES: sigmoid = DPO, ipo, robust, hinge
    loss_options: dict = field(default_factory=dict)  # the loss's own keyword arguments, e.g.
                                    # {label_smoothing: 0.1}: sigmoid with it is conservative DPO (cDPO)
    reference: str = "cached"       # cached: reference log-probs computed once before training;
                                    # live: a second, frozen copy of the model scores every batch

    def choices(self) -> dict:
        # LOSSES as it is now: a loss registered after this module was imported is a choice too
        return {**super().choices(), "loss_type": tuple(LOSSES), "reference": ("cached", "live")}

    def validate(self):
        super().validate()
        _require(self, "beta", 0 < self.beta < math.inf, "a finite number > 0")
        check_options(self.loss_type, self.loss_options)


def load_config(cls, path, overrides: list[str] = ()):
    """cls (a TrainConfig dataclass) from a YAML file and KEY=VALUE overrides, checked."""
    values = apply_overrides(read_yaml(path), list(overrides))
    where = f"{path} with overrides {list(overrides)}" if overrides else str(path)
    cfg = from_mapping(cls, values, f"{where}:")
    try:
        cfg.validate()
    except ValueError as e:
        raise FormatError(f"{where}: {e}") from None
    return cfg


def dump_config(cfg, header: str = "") -> str:
    """The resolved config as YAML that load_config reads back (header lines become comments)."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + yaml.safe_dump(asdict(cfg), sort_keys=False)
