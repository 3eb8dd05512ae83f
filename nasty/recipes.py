"""Default hyperparameters per dataset: the paper's where it has them, our sweep for digits.

CIFAR-10 / CIFAR-100 / Tiny-ImageNet follow Ma et al. (ICLR 2021) and its public code:
SGD 0.1, momentum 0.9, weight decay 5e-4, batch 128, steps x0.1 at 50% and 75%.
The digits values come from the sweep in ``bench/omega_sweep.py`` (see docs/omega_digits.md).
digit-pairs (two digits side by side, 100 classes) takes the digits values.
MNIST, Fashion-MNIST and SVHN are not in the paper: short schedules that work, tau 4.
A user's image folder takes the paper's rule by its number of classes (:func:`recipe_for`): CIFAR-10's
recipe below 100 classes (tau 4), Tiny-ImageNet's at 100 or more (tau 20), as the audit's KD thief does.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    arch: str
    epochs: int
    batch_size: int
    lr: float
    tau: float  # hardening temperature (also the KD attack's default)
    omega: float  # self-undermining weight
    cmi_weight: float = 10.0  # CMIM's weight of its CMI term: where the budgeted search starts (ours, not the paper's)
    students: tuple[str, ...] = ("tiny-cnn", "mlp")  # the audit's default student architectures
    attack_options: dict = field(default_factory=dict)  # per attack, constructor arguments for this scale


# DeepInversion's published CIFAR settings (Yin et al.): Adam lr 0.1, BN weight 10, 2k iterations per
# batch, jitter 2. Not run on our CPUs; the attacks' own defaults are sized for digits.
CIFAR_ATTACKS = {"deepinversion": {"pool_size": 10240, "iterations": 2000, "lr": 0.1, "bn": 10.0, "jitter": 2}}


RECIPES: dict[str, Recipe] = {
    "digits": Recipe(arch="small-cnn", epochs=20, batch_size=64, lr=0.05, tau=4.0, omega=0.05),
    # the 100-class pairs of digits (nasty.data): the digits recipe; 20 epochs of its 6,000 pairs
    "digitpairs": Recipe(arch="small-cnn", epochs=20, batch_size=64, lr=0.05, tau=4.0, omega=0.05),
    "mnist": Recipe(arch="small-cnn", epochs=15, batch_size=128, lr=0.05, tau=4.0, omega=0.04),
    "fashionmnist": Recipe(arch="small-cnn", epochs=30, batch_size=128, lr=0.05, tau=4.0, omega=0.04),
    "svhn": Recipe(arch="resnet18", epochs=40, batch_size=128, lr=0.05, tau=4.0, omega=0.04,
                   students=("cnn", "resnetc20"), attack_options=CIFAR_ATTACKS),
    "cifar10": Recipe(arch="resnet18", epochs=160, batch_size=128, lr=0.1, tau=4.0, omega=0.04,
                      students=("cnn", "resnetc20"), attack_options=CIFAR_ATTACKS),
    "cifar100": Recipe(arch="resnet18", epochs=200, batch_size=128, lr=0.1, tau=20.0, omega=0.005,
                       students=("cnn", "resnetc20"), attack_options=CIFAR_ATTACKS),
    # a folder of 100 classes or more (Tiny-ImageNet's recipe); with fewer, recipe_for gives CIFAR-10's
    "imagefolder": Recipe(arch="resnet18", epochs=200, batch_size=128, lr=0.1, tau=20.0, omega=0.01,
                          students=("cnn", "resnetc20"), attack_options=CIFAR_ATTACKS),
}

MANY_CLASSES = 100  # from here on, the paper's high-temperature recipes (CIFAR-100, Tiny-ImageNet: tau 20)


def recipe_for(dataset: str, num_classes: int | None = None) -> Recipe:
    """The recipe of ``dataset``; for an image folder, by its ``num_classes``: CIFAR-10's (160 epochs,
    tau 4, omega 0.04) below :data:`MANY_CLASSES`, else Tiny-ImageNet's (200 epochs, tau 20, omega 0.01)."""
    if dataset == "imagefolder" and num_classes is not None and num_classes < MANY_CLASSES:
        return RECIPES["cifar10"]
    return RECIPES[dataset]
