"""How a network is trained (:class:`TrainConfig`) and the choices its fields
take, without PyTorch: the command line builds its ``train`` options from
them (defaults and choices) while ``anytime --help`` stays torch-free.
``nets.train`` runs a configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass

from nets.errors import ConfigError

PRECISIONS = ("auto", "float32", "bfloat16")
# how the steps run, not what is trained: a run may resume with other values
EXECUTION_FIELDS = frozenset({"threads", "compile"})
LAMBDA_SCHEMES = ("uniform", "depth")  # lambda(depth, width) of the joint loss: equal, or growing with depth


@dataclass
class TrainConfig:
    """How a network is trained; recorded in its model card."""

    epochs: int = 30  # one-cycle length; fixed up front because the schedule depends on it
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate of the one-cycle schedule (SGD, batch 128)
    momentum: float = 0.9
    weight_decay: float = 5e-4  # strong decay suits short schedules on CIFAR
    # whether batch-norm scales and shifts and biases are decayed too.  In the
    # nested net, decay took the widest group of stage 1 to zero (little
    # gradient reaches channels only the widest outputs read: docs/RESULTS.md);
    # without it a channel fades only if its own gradient says so
    norm_weight_decay: bool = True
    nesterov: bool = True
    seed: int = 0  # seeds init, shuffling and augmentation
    threads: int = 0  # torch threads; 0 keeps torch's default
    # joint loss of the nested net (ignored for single-output models):
    lambda_scheme: str = "uniform"  # lambda(depth, width): "uniform" or "depth" (grows linearly with depth)
    full_output_weight: float = 0.5  # share of the loss on the full output alone; 0 = the paper's loss
    distill_weight: float = 0.5  # per output, share of distillation from the full output vs labels
    # knowledge distillation from a separately trained, stronger net (Hinton,
    # Vinyals and Dean, 2015) in place of in-place distillation from the full
    # output: the registered name of a single-output net and its weights (model
    # card beside them); the soft targets of every output are its answers.
    # Empty: in-place distillation (a nested net) or none (a single-output net)
    teacher_net: str = ""
    teacher_weights: str = ""
    # share of the gradient of the heads before the last depth that reaches the
    # shared trunk: 1 trains them jointly (the paper); lower keeps them from
    # pulling the trunk's features away from the last depth's (Shallow-Deep
    # Networks' IC-only training is 0)
    exit_gradient_scale: float = 1.0
    max_batches: int = 0  # stop each epoch after this many batches (smoke tests); 0 = all
    channels_last: bool = True  # NHWC is ~15% faster for these convolutions on this CPU (measured)
    # "auto": bfloat16 autocast where the CPU computes bfloat16 natively (AMX or
    # AVX-512 BF16), float32 elsewhere, where emulated bfloat16 is slower
    precision: str = "auto"
    # torch.compile the training step's forward and loss: 1.08x per step for the
    # nested net in bfloat16 on one AVX-512-BF16 core, nothing for the plain
    # ResNet-32; compiling takes 85 s the first time, about 10 s from Inductor's
    # cache after (docs/BENCHMARKS.md); needs a C++ compiler
    compile: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_batches < 0 or self.threads < 0:
            raise ConfigError("epochs and batch_size must be positive, max_batches and threads non-negative")
        for name in ("lr", "momentum", "weight_decay", "full_output_weight", "distill_weight",
                     "exit_gradient_scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError(f"lr must be positive and momentum, weight_decay non-negative "
                              f"(got {self.lr}, {self.momentum}, {self.weight_decay})")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.lambda_scheme not in LAMBDA_SCHEMES:
            raise ConfigError(f"lambda_scheme must be {' or '.join(map(repr, LAMBDA_SCHEMES))}, "
                              f"got {self.lambda_scheme!r}")
        if bool(self.teacher_net) != bool(self.teacher_weights):
            raise ConfigError("a teacher needs both its registered net name and its weights "
                              f"(got teacher_net={self.teacher_net!r}, teacher_weights={self.teacher_weights!r})")
        for name in ("full_output_weight", "distill_weight", "exit_gradient_scale"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
