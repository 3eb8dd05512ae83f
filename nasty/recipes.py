"""Default hyperparameters per dataset: the paper's where it has them, our sweep for digits.

CIFAR-10 / CIFAR-100 / Tiny-ImageNet follow Ma et al. (ICLR 2021) and its public code:
SGD 0.1, momentum 0.9, weight decay 5e-4, batch 128, steps x0.1 at 50% and 75%.
The digits values come from the sweep in ``bench/omega_sweep.py`` (see README).
MNIST, Fashion-MNIST and SVHN are not in the paper: short schedules that work, tau 4.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    arch: str
    epochs: int
    batch_size: int
    lr: float
    tau: float  # hardening temperature (also the KD attack's default)
    omega: float  # self-undermining weight
    students: tuple[str, ...] = ("tiny-cnn", "mlp")  # the audit's default student architectures


RECIPES: dict[str, Recipe] = {
    "digits": Recipe(arch="small-cnn", epochs=20, batch_size=64, lr=0.05, tau=4.0, omega=0.05),
    "mnist": Recipe(arch="small-cnn", epochs=15, batch_size=128, lr=0.05, tau=4.0, omega=0.04),
    "fashionmnist": Recipe(arch="small-cnn", epochs=30, batch_size=128, lr=0.05, tau=4.0, omega=0.04),
    "svhn": Recipe(arch="resnet18", epochs=40, batch_size=128, lr=0.05, tau=4.0, omega=0.04,
                   students=("cnn", "resnetc20")),
    "cifar10": Recipe(arch="resnet18", epochs=160, batch_size=128, lr=0.1, tau=4.0, omega=0.04,
                      students=("cnn", "resnetc20")),
    "cifar100": Recipe(arch="resnet18", epochs=200, batch_size=128, lr=0.1, tau=20.0, omega=0.005,
                       students=("cnn", "resnetc20")),
    "imagefolder": Recipe(arch="resnet18", epochs=200, batch_size=128, lr=0.1, tau=20.0, omega=0.01,
                          students=("cnn", "resnetc20")),
}


def recipe_for(dataset: str) -> Recipe:
    return RECIPES[dataset]
