"""The published configuration files, as they are: every file of the authors' config/
folder (Virusdoll/Active-Negative-Loss) loads through ``get_loss`` and ``from_config``,
the recipe's loss equals the published ``forward(pred, labels, model)`` and its
optimizer and scheduler are the ones the published code builds from the file.

The files' values are written below as data (they are facts; the test does not read
the published repository). The two ``*_anl_ce_er.json`` files are left out until the
``anl_ce_er`` loss exists.
"""
import copy
import dataclasses
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import fused_anl
from helpers import compute_tol

# config/<name>.json of the published repository, key for key and in the files' order.
# mnist_mae.json names the loss "ce" (as published: that file trains cross entropy).
CONFIGS = {
    "cifar100_anl_ce": {
        "model": {"name": "resnet34"},
        "loss": {
            "name": "anl_ce", "alpha": 10.0, "beta": 1.0, "delta": 5e-07, "min_prob": 1e-07,
            "is_anl": True,
        },
        "dataset": {
            "name": "cifar100", "num_classes": 100, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 200, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
            "weight_decay": 0, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 200,
            "eta_min": 0,
        },
    },
    "cifar100_anl_fl": {
        "model": {"name": "resnet34"},
        "loss": {
            "name": "anl_fl", "alpha": 10.0, "beta": 1.0, "delta": 5e-07, "min_prob": 1e-07,
            "gamma": 0.5, "is_anl": True,
        },
        "dataset": {
            "name": "cifar100", "num_classes": 100, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 200, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
            "weight_decay": 0, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 200,
            "eta_min": 0,
        },
    },
    "cifar100_ce": {
        "model": {"name": "resnet34"},
        "loss": {"name": "ce"},
        "dataset": {
            "name": "cifar100", "num_classes": 100, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 200, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
            "weight_decay": 1e-05, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 200,
            "eta_min": 0,
        },
    },
    "cifar100_fl": {
        "model": {"name": "resnet34"},
        "loss": {"name": "fl", "gamma": 0.5},
        "dataset": {
            "name": "cifar100", "num_classes": 100, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 200, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
            "weight_decay": 1e-05, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 200,
            "eta_min": 0,
        },
    },
    "cifar100_gce": {
        "model": {"name": "resnet34"},
        "loss": {"name": "gce", "q": 0.7},
        "dataset": {
            "name": "cifar100", "num_classes": 100, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 200, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
            "weight_decay": 1e-05, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 200,
            "eta_min": 0,
        },
    },
    "cifar100_mae": {
        "model": {"name": "resnet34"},
        "loss": {"name": "mae"},
        "dataset": {
            "name": "cifar100", "num_classes": 100, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 200, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
            "weight_decay": 1e-05, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 200,
            "eta_min": 0,
        },
    },
    "cifar100_nce_ael": {
        "model": {"name": "resnet34"},
        "loss": {"name": "nce_ael", "alpha": 10.0, "beta": 0.1, "a": 1.5},
        "dataset": {
            "name": "cifar100", "num_classes": 100, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 200, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
            "weight_decay": 1e-05, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 200,
            "eta_min": 0,
        },
    },
    "cifar100_nce_agce": {
        "model": {"name": "resnet34"},
        "loss": {"name": "nce_agce", "alpha": 10.0, "beta": 0.1, "a": 1.8, "q": 3.0},
        "dataset": {
            "name": "cifar100", "num_classes": 100, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 200, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
            "weight_decay": 1e-05, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 200,
            "eta_min": 0,
        },
    },
    "cifar100_nce_aul": {
        "model": {"name": "resnet34"},
        "loss": {"name": "nce_aul", "alpha": 10.0, "beta": 0.015, "a": 6.0, "q": 3.0},
        "dataset": {
            "name": "cifar100", "num_classes": 100, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 200, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
            "weight_decay": 1e-05, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 200,
            "eta_min": 0,
        },
    },
    "cifar100_nce_mae": {
        "model": {"name": "resnet34"},
        "loss": {"name": "nce_mae", "alpha": 10.0, "beta": 0.1},
        "dataset": {
            "name": "cifar100", "num_classes": 100, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 200, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
            "weight_decay": 1e-05, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 200,
            "eta_min": 0,
        },
    },
    "cifar100_nce_rce": {
        "model": {"name": "resnet34"},
        "loss": {"name": "nce_rce", "alpha": 10.0, "beta": 0.1},
        "dataset": {
            "name": "cifar100", "num_classes": 100, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 200, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
            "weight_decay": 1e-05, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 200,
            "eta_min": 0,
        },
    },
    "cifar100_nfl_rce": {
        "model": {"name": "resnet34"},
        "loss": {"name": "nfl_rce", "gamma": 0.5, "alpha": 10.0, "beta": 0.1},
        "dataset": {
            "name": "cifar100", "num_classes": 100, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 200, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
            "weight_decay": 1e-05, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 200,
            "eta_min": 0,
        },
    },
    "cifar100_sce": {
        "model": {"name": "resnet34"},
        "loss": {"name": "sce", "alpha": 6.0, "beta": 0.1},
        "dataset": {
            "name": "cifar100", "num_classes": 100, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 200, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
            "weight_decay": 1e-05, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 200,
            "eta_min": 0,
        },
    },
    "cifar10_anl_ce": {
        "model": {"name": "toymodel8l"},
        "loss": {
            "name": "anl_ce", "alpha": 5.0, "beta": 5.0, "delta": 5e-05, "min_prob": 1e-07,
            "is_anl": True,
        },
        "dataset": {
            "name": "cifar10", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 120,
            "eta_min": 0,
        },
    },
    "cifar10_anl_fl": {
        "model": {"name": "toymodel8l"},
        "loss": {
            "name": "anl_fl", "alpha": 5.0, "beta": 5.0, "delta": 5e-05, "min_prob": 1e-07,
            "gamma": 0.5, "is_anl": True,
        },
        "dataset": {
            "name": "cifar10", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 120,
            "eta_min": 0,
        },
    },
    "cifar10_ce": {
        "model": {"name": "toymodel8l"},
        "loss": {"name": "ce"},
        "dataset": {
            "name": "cifar10", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.0001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 120,
            "eta_min": 0,
        },
    },
    "cifar10_fl": {
        "model": {"name": "toymodel8l"},
        "loss": {"name": "fl", "gamma": 0.5},
        "dataset": {
            "name": "cifar10", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.0001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 120,
            "eta_min": 0,
        },
    },
    "cifar10_gce": {
        "model": {"name": "toymodel8l"},
        "loss": {"name": "gce", "q": 0.7},
        "dataset": {
            "name": "cifar10", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.0001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 120,
            "eta_min": 0,
        },
    },
    "cifar10_mae": {
        "model": {"name": "toymodel8l"},
        "loss": {"name": "mae"},
        "dataset": {
            "name": "cifar10", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.0001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 120,
            "eta_min": 0,
        },
    },
    "cifar10_nce_ael": {
        "model": {"name": "toymodel8l"},
        "loss": {"name": "nce_ael", "alpha": 1.0, "beta": 4.0, "a": 5.0},
        "dataset": {
            "name": "cifar10", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.0001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 120,
            "eta_min": 0,
        },
    },
    "cifar10_nce_agce": {
        "model": {"name": "toymodel8l"},
        "loss": {"name": "nce_agce", "alpha": 1.0, "beta": 4.0, "a": 6.0, "q": 1.5},
        "dataset": {
            "name": "cifar10", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.0001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 120,
            "eta_min": 0,
        },
    },
    "cifar10_nce_aul": {
        "model": {"name": "toymodel8l"},
        "loss": {"name": "nce_aul", "alpha": 1.0, "beta": 4.0, "a": 6.3, "q": 1.5},
        "dataset": {
            "name": "cifar10", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.0001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 120,
            "eta_min": 0,
        },
    },
    "cifar10_nce_mae": {
        "model": {"name": "toymodel8l"},
        "loss": {"name": "nce_mae", "alpha": 1.0, "beta": 1.0},
        "dataset": {
            "name": "cifar10", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.0001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 120,
            "eta_min": 0,
        },
    },
    "cifar10_nce_rce": {
        "model": {"name": "toymodel8l"},
        "loss": {"name": "nce_rce", "alpha": 1.0, "beta": 1.0},
        "dataset": {
            "name": "cifar10", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.0001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 120,
            "eta_min": 0,
        },
    },
    "cifar10_nfl_rce": {
        "model": {"name": "toymodel8l"},
        "loss": {"name": "nfl_rce", "gamma": 0.5, "alpha": 1.0, "beta": 1.0},
        "dataset": {
            "name": "cifar10", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.0001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 120,
            "eta_min": 0,
        },
    },
    "cifar10_sce": {
        "model": {"name": "toymodel8l"},
        "loss": {"name": "sce", "alpha": 0.1, "beta": 1.0},
        "dataset": {
            "name": "cifar10", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.0001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 120,
            "eta_min": 0,
        },
    },
    "mnist_anl_ce": {
        "model": {"name": "toymodel4l"},
        "loss": {
            "name": "anl_ce", "alpha": 1.0, "beta": 1.0, "delta": 1e-06, "min_prob": 1e-07,
            "is_anl": True,
        },
        "dataset": {
            "name": "mnist", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 50, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 50, "eta_min": 0,
        },
    },
    "mnist_anl_fl": {
        "model": {"name": "toymodel4l"},
        "loss": {
            "name": "anl_fl", "alpha": 1.0, "beta": 1.0, "delta": 1e-06, "min_prob": 1e-07,
            "gamma": 0.5, "is_anl": True,
        },
        "dataset": {
            "name": "mnist", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 50, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 50, "eta_min": 0,
        },
    },
    "mnist_ce": {
        "model": {"name": "toymodel4l"},
        "loss": {"name": "ce"},
        "dataset": {
            "name": "mnist", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 50, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 50,
            "eta_min": 0,
        },
    },
    "mnist_fl": {
        "model": {"name": "toymodel4l"},
        "loss": {"name": "fl", "gamma": 0.5},
        "dataset": {
            "name": "mnist", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 50, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 50,
            "eta_min": 0,
        },
    },
    "mnist_gce": {
        "model": {"name": "toymodel4l"},
        "loss": {"name": "gce", "q": 0.7},
        "dataset": {
            "name": "mnist", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 50, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 50,
            "eta_min": 0,
        },
    },
    "mnist_mae": {
        "model": {"name": "toymodel4l"},
        "loss": {"name": "ce"},
        "dataset": {
            "name": "mnist", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 50, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 50,
            "eta_min": 0,
        },
    },
    "mnist_nce_ael": {
        "model": {"name": "toymodel4l"},
        "loss": {"name": "nce_ael", "alpha": 0.0, "beta": 1.0, "a": 3.5},
        "dataset": {
            "name": "mnist", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 50, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 50,
            "eta_min": 0,
        },
    },
    "mnist_nce_agce": {
        "model": {"name": "toymodel4l"},
        "loss": {"name": "nce_agce", "alpha": 0.0, "beta": 1.0, "a": 4.0, "q": 0.2},
        "dataset": {
            "name": "mnist", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 50, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 50,
            "eta_min": 0,
        },
    },
    "mnist_nce_aul": {
        "model": {"name": "toymodel4l"},
        "loss": {"name": "nce_aul", "alpha": 0.0, "beta": 1.0, "a": 3.0, "q": 0.1},
        "dataset": {
            "name": "mnist", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 50, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 50,
            "eta_min": 0,
        },
    },
    "mnist_nce_mae": {
        "model": {"name": "toymodel4l"},
        "loss": {"name": "nce_mae", "alpha": 1.0, "beta": 10.0},
        "dataset": {
            "name": "mnist", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 50, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 50,
            "eta_min": 0,
        },
    },
    "mnist_nce_rce": {
        "model": {"name": "toymodel4l"},
        "loss": {"name": "nce_rce", "alpha": 1.0, "beta": 10.0},
        "dataset": {
            "name": "mnist", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 50, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 50,
            "eta_min": 0,
        },
    },
    "mnist_nfl_rce": {
        "model": {"name": "toymodel4l"},
        "loss": {"name": "nfl_rce", "gamma": 0.5, "alpha": 1.0, "beta": 10.0},
        "dataset": {
            "name": "mnist", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 50, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 50,
            "eta_min": 0,
        },
    },
    "mnist_sce": {
        "model": {"name": "toymodel4l"},
        "loss": {"name": "sce", "alpha": 0.01, "beta": 1.0},
        "dataset": {
            "name": "mnist", "num_classes": 10, "train_batchsize": 128, "test_batchsize": 256,
            "num_workers": 4,
        },
        "optim": {
            "total_epoch": 50, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
            "weight_decay": 0.001, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 50,
            "eta_min": 0,
        },
    },
    "webvision_anl_ce": {
        "model": {"name": "resnet50"},
        "loss": {
            "name": "anl_ce", "alpha": 20.0, "beta": 1.0, "delta": 5e-06, "min_prob": 1e-07,
            "is_anl": True,
        },
        "dataset": {
            "name": "webvision", "num_classes": 50, "train_batchsize": 512, "test_batchsize": 1024,
            "num_workers": 8, "train_data_path": "/media/store/yxc/datasets/webvision",
            "val_data_path": "/media/store/yxc/datasets/ILSVRC2012",
        },
        "optim": {
            "total_epoch": 250, "optimizer": "sgd", "learning_rate": 0.4, "momentum": 0.9,
            "weight_decay": 0.0, "nesterov": True, "grad_bound": 5.0, "scheduler": "steplr",
            "step_size": 1, "gamma": 0.97,
        },
    },
    "webvision_ce": {
        "model": {"name": "resnet50"},
        "loss": {"name": "ce"},
        "dataset": {
            "name": "webvision", "num_classes": 50, "train_batchsize": 512, "test_batchsize": 1024,
            "num_workers": 8, "train_data_path": "/media/store/yxc/datasets/webvision",
            "val_data_path": "/media/store/yxc/datasets/ILSVRC2012",
        },
        "optim": {
            "total_epoch": 250, "optimizer": "sgd", "learning_rate": 0.4, "momentum": 0.9,
            "weight_decay": 3e-05, "nesterov": True, "grad_bound": 5.0, "scheduler": "steplr",
            "step_size": 1, "gamma": 0.97,
        },
    },
    "webvision_gce": {
        "model": {"name": "resnet50"},
        "loss": {"name": "gce", "q": 0.7},
        "dataset": {
            "name": "webvision", "num_classes": 50, "train_batchsize": 512, "test_batchsize": 1024,
            "num_workers": 8, "train_data_path": "/media/store/yxc/datasets/webvision",
            "val_data_path": "/media/store/yxc/datasets/ILSVRC2012",
        },
        "optim": {
            "total_epoch": 250, "optimizer": "sgd", "learning_rate": 0.4, "momentum": 0.9,
            "weight_decay": 3e-05, "nesterov": True, "grad_bound": 5.0, "scheduler": "steplr",
            "step_size": 1, "gamma": 0.97,
        },
    },
    "webvision_nce_agce": {
        "model": {"name": "resnet50"},
        "loss": {"name": "nce_agce", "alpha": 50.0, "beta": 0.1, "a": 2.5, "q": 3.0},
        "dataset": {
            "name": "webvision", "num_classes": 50, "train_batchsize": 512, "test_batchsize": 1024,
            "num_workers": 8, "train_data_path": "/media/store/yxc/datasets/webvision",
            "val_data_path": "/media/store/yxc/datasets/ILSVRC2012",
        },
        "optim": {
            "total_epoch": 250, "optimizer": "sgd", "learning_rate": 0.4, "momentum": 0.9,
            "weight_decay": 3e-05, "nesterov": True, "grad_bound": 5.0, "scheduler": "steplr",
            "step_size": 1, "gamma": 0.97,
        },
    },
    "webvision_nce_rce": {
        "model": {"name": "resnet50"},
        "loss": {"name": "nce_rce", "alpha": 50.0, "beta": 0.1},
        "dataset": {
            "name": "webvision", "num_classes": 50, "train_batchsize": 512, "test_batchsize": 1024,
            "num_workers": 8, "train_data_path": "/media/store/yxc/datasets/webvision",
            "val_data_path": "/media/store/yxc/datasets/ILSVRC2012",
        },
        "optim": {
            "total_epoch": 250, "optimizer": "sgd", "learning_rate": 0.4, "momentum": 0.9,
            "weight_decay": 3e-05, "nesterov": True, "grad_bound": 5.0, "scheduler": "steplr",
            "step_size": 1, "gamma": 0.97,
        },
    },
    "webvision_sce": {
        "model": {"name": "resnet50"},
        "loss": {"name": "sce", "alpha": 10.0, "beta": 1.0},
        "dataset": {
            "name": "webvision", "num_classes": 50, "train_batchsize": 512, "test_batchsize": 1024,
            "num_workers": 8, "train_data_path": "/media/store/yxc/datasets/webvision",
            "val_data_path": "/media/store/yxc/datasets/ILSVRC2012",
        },
        "optim": {
            "total_epoch": 250, "optimizer": "sgd", "learning_rate": 0.4, "momentum": 0.9,
            "weight_decay": 3e-05, "nesterov": True, "grad_bound": 5.0, "scheduler": "steplr",
            "step_size": 1, "gamma": 0.97,
        },
    },
    "cifar10_anl_ce_er": {
        "model": {"name": "toymodel8l"},
        "loss": {"name": "anl_ce_er", "alpha": 5.0, "beta": 5.0, "delta": 5e-5, "lamb": 2,
                 "min_prob": 1e-7},
        "dataset": {"name": "cifar10", "num_classes": 10, "train_batchsize": 128,
                    "test_batchsize": 256, "num_workers": 4},
        "optim": {"total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
                  "weight_decay": 0, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 120,
                  "eta_min": 0},
    },
    "cifar100_anl_ce_er": {
        "model": {"name": "resnet34"},
        "loss": {"name": "anl_ce_er", "alpha": 10.0, "beta": 1.0, "delta": 5e-7, "lamb": 0.01,
                 "min_prob": 1e-7},
        "dataset": {"name": "cifar100", "num_classes": 100, "train_batchsize": 128,
                    "test_batchsize": 256, "num_workers": 4},
        "optim": {"total_epoch": 200, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
                  "weight_decay": 0, "grad_bound": 5.0, "scheduler": "cosine", "T_max": 200,
                  "eta_min": 0},
    },
}

ER_FILES = ("cifar10_anl_ce_er", "cifar100_anl_ce_er")


def test_the_data_holds_every_published_file():
    # 47 files: mnist and cifar10/100 x 13 losses, webvision x 6, cifar10/100 x anl_ce_er
    losses = ("ce", "fl", "gce", "mae", "sce", "nce_mae", "nce_rce", "nfl_rce", "nce_agce",
              "nce_aul", "nce_ael", "anl_ce", "anl_fl")
    expected = {f"{ds}_{loss}" for ds in ("mnist", "cifar10", "cifar100") for loss in losses}
    expected |= {f"webvision_{loss}" for loss in ("ce", "gce", "sce", "nce_rce", "nce_agce",
                                                  "anl_ce")}
    expected |= set(ER_FILES)
    assert len(expected) == 47
    assert set(CONFIGS) == expected
    for name, cfg in CONFIGS.items():
        assert cfg["dataset"]["name"] == name.split("_")[0]


# ---- the published formulas, written out in plain torch (loss.py of the published code)

def _onehot(labels, k):
    return F.one_hot(labels, k).to(torch.float64)


def _p_y(pred, labels, k):
    return (_onehot(labels, k) * F.softmax(pred, dim=1)).sum(dim=1)


def _ce(pred, labels, k, c):
    return F.cross_entropy(pred, labels)


def _fl(pred, labels, k, c):
    logpt = F.log_softmax(pred, dim=1).gather(1, labels.view(-1, 1)).view(-1)
    pt = logpt.detach().exp()
    return (-1 * (1 - pt) ** c["gamma"] * logpt).mean()


def _mae(pred, labels, k, c):
    return (1.0 - _p_y(pred, labels, k)).mean()


def _rce(pred, labels, k, c):
    p = F.softmax(pred, dim=1).clamp(min=1e-7, max=1.0)
    one_hot = _onehot(labels, k).clamp(min=1e-4, max=1.0)
    return (-1 * torch.sum(p * torch.log(one_hot), dim=1)).mean()


def _gce(pred, labels, k, c):
    p = F.softmax(pred, dim=1).clamp(min=1e-7, max=1.0)
    return ((1.0 - torch.pow((_onehot(labels, k) * p).sum(dim=1), c["q"])) / c["q"]).mean()


def _nce(pred, labels, k, c):
    lp = F.log_softmax(pred, dim=1)
    return (-1 * torch.sum(_onehot(labels, k) * lp, dim=1) / (-lp.sum(dim=1))).mean()


def _nfl(pred, labels, k, c):
    gamma = c["gamma"]
    lp = F.log_softmax(pred, dim=1)
    normalizor = torch.sum(-1 * (1 - lp.detach().exp()) ** gamma * lp, dim=1)
    logpt = lp.gather(1, labels.view(-1, 1)).view(-1)
    pt = logpt.detach().exp()
    return (-1 * (1 - pt) ** gamma * logpt / normalizor).mean()


def _nnce(pred, labels, k, c):
    # The published code holds A = -log(min_prob) as a float32 tensor (torch's default
    # dtype); here it is the exact float64 value, as docs/semantics.md defines it.
    a = -math.log(c["min_prob"])
    v = a + F.softmax(pred, dim=1).clamp(min=c["min_prob"], max=1).log()
    return (1 - (_onehot(labels, k) * v).sum(dim=1) / v.sum(dim=1)).mean()


def _nnfl(pred, labels, k, c):
    gamma, logmp = c["gamma"], math.log(c["min_prob"])  # float64, as in _nnce
    a = -(1 - c["min_prob"]) ** gamma * logmp
    lp = F.log_softmax(pred, dim=1).clamp(min=logmp)
    normalizor = torch.sum(-1 * (1 - lp.detach().exp()) ** gamma * lp, dim=1)
    logpt = lp.gather(1, labels.view(-1, 1)).view(-1)
    loss = -1 * (1 - logpt.detach().exp()) ** gamma * logpt
    return (1 - (a - loss) / (k * a - normalizor)).mean()


def _agce(pred, labels, k, c):
    a, q = c["a"], c["q"]
    return (((a + 1) ** q - torch.pow(a + _p_y(pred, labels, k), q)) / q).mean()


def _aul(pred, labels, k, c):
    a, q = c["a"], c["q"]
    return ((torch.pow(a - _p_y(pred, labels, k), q) - (a - 1) ** q) / q).mean()


def _ael(pred, labels, k, c):
    return torch.exp(-_p_y(pred, labels, k) / c["a"]).mean()


def _nnce_er(pred, labels, k, c):
    # ANL_CE_ER.nnce: the probabilities clamped to [min_prob, 1 - min_prob]
    a = -math.log(c["min_prob"])
    v = a + F.softmax(pred, dim=1).clamp(min=c["min_prob"], max=1 - c["min_prob"]).log()
    return (1 - (_onehot(labels, k) * v).sum(dim=1) / v.sum(dim=1)).mean()


def _entropy_reg(pred, k, c):
    # ANL_CE_ER.entropy_reg
    mp = c["min_prob"]
    prob = F.softmax(pred, dim=1).clamp(min=mp, max=1 - mp)
    prob_class = (prob.sum(dim=0).view(-1) / prob.sum()).clamp(min=mp, max=1 - mp)
    return math.log(k) + (prob_class * prob_class.log()).sum()


# name -> (active, passive); a single loss has no passive term and no alpha
PUBLISHED = {
    "ce": (_ce, None), "fl": (_fl, None), "mae": (_mae, None), "gce": (_gce, None),
    "sce": (_ce, _rce), "nce_mae": (_nce, _mae), "nce_rce": (_nce, _rce),
    "nfl_rce": (_nfl, _rce), "nce_agce": (_nce, _agce), "nce_aul": (_nce, _aul),
    "nce_ael": (_nce, _ael), "anl_ce": (_nce, _nnce), "anl_fl": (_nfl, _nnfl),
    "anl_ce_er": (_nce, _nnce_er),
}


def published_forward(c, k, pred, labels, model):
    """The published criterion's value: ``alpha * active + beta * passive`` (APL and
    SCE), plus ``delta * sum |theta|`` over every parameter for the ANL losses
    (``ActiveNegativeLoss.forward(pred, labels, model)``)."""
    active, passive = PUBLISHED[c["name"]]
    if passive is None:
        return active(pred, labels, k, c)
    loss = c["alpha"] * active(pred, labels, k, c) + c["beta"] * passive(pred, labels, k, c)
    if c["name"] == "anl_ce_er":  # ANL_CE_ER.forward: always the L1 and entropy terms
        l1_norm = sum(p.abs().sum() for p in model.parameters())
        return loss + c["delta"] * l1_norm + c["lamb"] * _entropy_reg(pred, k, c)
    if c.get("is_anl", False):
        l1_norm = sum(p.abs().sum() for p in model.parameters())
        loss = loss + c["delta"] * l1_norm
    return loss


def _model_and_batch(k, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                                torch.nn.Linear(6, k)).double()
    with torch.no_grad():
        model[2].weight.mul_(25.0)  # logits spread over tens of units: clamps at p_min act
    x = torch.randn(7, 4, dtype=torch.float64)
    labels = torch.randint(0, k, (7,))
    return model, x, labels


def _value_and_grads(loss_fn, model, x, labels):
    loss = loss_fn(model(x), labels, model)
    return loss.detach(), torch.autograd.grad(loss, list(model.parameters()))


# ---- every file, through get_loss and from_config

@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_published_config_loads_and_its_loss_is_the_published_forward(name):
    cfg = CONFIGS[name]
    k = cfg["dataset"]["num_classes"]
    written = copy.deepcopy(cfg)

    crit = fused_anl.get_loss(**cfg["loss"], num_classes=k)
    recipe = fused_anl.from_config(cfg)
    assert cfg == written  # neither call changes the dict it was given
    assert repr(recipe.criterion) == repr(crit)
    assert crit.loss_name == cfg["loss"]["name"] == recipe.loss_name
    for key in ("alpha", "beta", "gamma", "q", "a"):
        if key in cfg["loss"]:
            assert crit.hyper[key] == cfg["loss"][key], key
    if "min_prob" in cfg["loss"]:
        assert crit.hyper["p_min"] == cfg["loss"]["min_prob"]
    assert recipe.delta == crit.delta == cfg["loss"].get("delta", 0.0)
    anl = cfg["loss"].get("is_anl", False) or cfg["loss"]["name"] == "anl_ce_er"  # no flag there
    assert isinstance(crit, fused_anl.ANLLoss) == anl

    model, x, labels = _model_and_batch(k, seed=sorted(CONFIGS).index(name))
    ours, our_grads = _value_and_grads(recipe.loss, model, x, labels)
    ref, ref_grads = _value_and_grads(lambda z, y, m: published_forward(cfg["loss"], k, z, y, m),
                                      model, x, labels)
    # float64 throughout: only the order of the sums differs (tests/helpers.py)
    tol = compute_tol(torch.float64)
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    for p, g, g_ref in zip(model.parameters(), our_grads, ref_grads):
        torch.testing.assert_close(g, g_ref, rtol=tol, atol=tol * g_ref.abs().max().item())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_published_config_optimizer_scheduler_and_settings(name):
    cfg = CONFIGS[name]
    ds, opt = cfg["dataset"], cfg["optim"]
    recipe = fused_anl.from_config(cfg)
    assert recipe.dataset == ds["name"] and recipe.num_classes == ds["num_classes"]
    assert recipe.model_name == cfg["model"]["name"]
    assert recipe.train_batch_size == ds["train_batchsize"]
    assert recipe.test_batch_size == ds["test_batchsize"]
    assert recipe.num_workers == ds["num_workers"]
    assert recipe.epochs == opt["total_epoch"] and recipe.grad_bound == opt["grad_bound"]
    assert recipe.config == cfg

    model = torch.nn.Linear(3, ds["num_classes"])
    optimizer = recipe.make_optimizer(model)
    assert type(optimizer) is torch.optim.SGD and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["params"] == list(model.parameters())
    assert group["lr"] == opt["learning_rate"] and group["momentum"] == opt["momentum"]
    assert group["weight_decay"] == opt["weight_decay"]
    assert group["nesterov"] is opt.get("nesterov", False)
    scheduler = recipe.make_scheduler(optimizer)
    if opt["scheduler"] == "cosine":
        assert type(scheduler) is torch.optim.lr_scheduler.CosineAnnealingLR
        assert scheduler.T_max == opt["T_max"] and scheduler.eta_min == opt["eta_min"]
    else:
        assert opt["scheduler"] == "steplr"
        assert type(scheduler) is torch.optim.lr_scheduler.StepLR
        assert scheduler.step_size == opt["step_size"] and scheduler.gamma == opt["gamma"]

    # the same learning rates, epoch by epoch, as the published get_optimizer and
    # get_scheduler (utils.py) build from the file
    published = torch.optim.SGD(model.parameters(), lr=opt["learning_rate"],
                                momentum=opt["momentum"], weight_decay=opt["weight_decay"],
                                nesterov=opt.get("nesterov", False))
    if opt["scheduler"] == "cosine":
        published_sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer=published, T_max=opt["T_max"], eta_min=opt["eta_min"])
    else:
        published_sched = torch.optim.lr_scheduler.StepLR(
            optimizer=published, step_size=opt["step_size"], gamma=opt["gamma"])
    for _ in range(opt["total_epoch"]):
        optimizer.step(), published.step()  # no gradients: only the schedules move
        scheduler.step(), published_sched.step()
        assert optimizer.param_groups[0]["lr"] == published.param_groups[0]["lr"]


def test_from_config_reads_a_json_file(tmp_path):
    cfg = CONFIGS["webvision_anl_ce"]
    path = tmp_path / "webvision_anl_ce.json"
    path.write_text(json.dumps(cfg, indent=4))
    for source in (path, str(path)):
        recipe = fused_anl.from_config(source)
        assert recipe.config == cfg and recipe.nesterov is True
        assert repr(recipe.criterion) == (
            "ANLCELoss(alpha=20, beta=1, p_min=1e-07, delta=5e-06, num_classes=50)")
        assert recipe.scheduler == "steplr"
        assert dict(recipe.scheduler_args) == {"step_size": 1, "gamma": 0.97}


def test_recipe_is_frozen_and_its_loss_holds_the_l1_term():
    recipe = fused_anl.from_config(CONFIGS["cifar10_anl_ce"], backend="torch")
    assert recipe.criterion.backend == "torch"
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.epochs = 1
    with pytest.raises(TypeError):
        recipe.config["loss"] = {}
    model, x, labels = _model_and_batch(10, seed=0)
    recipe.criterion.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ANL's "training without its L1 term" must not fire
        for _ in range(4):
            loss = recipe.loss(model(x), labels, model)
            loss.backward()
    l1 = sum(p.abs().sum() for p in model.parameters())
    torch.testing.assert_close(loss - recipe.criterion(model(x), labels), 5e-5 * l1,
                               rtol=1e-12, atol=0.0)
    # the gradient-norm bound of the file, as the published trainer applies it
    grads = [p.grad.clone() for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone() * 1e3
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g * 1e3)
                                                     for g in grads]))
    total = recipe.clip_grad_norm_(model)
    torch.testing.assert_close(total, expected)
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad)
                                                    for p in model.parameters()]))
    torch.testing.assert_close(clipped, torch.tensor(5.0, dtype=torch.float64),
                               rtol=1e-6, atol=0.0)
    # other losses: the regularizer is an exact zero
    sce = fused_anl.from_config(CONFIGS["cifar10_sce"], backend="torch")
    z = model(x)
    assert torch.equal(sce.loss(z, labels, model), sce.criterion(z, labels))


# ---- misspelled and out-of-place keys are errors that list the valid keys

@pytest.mark.parametrize("loss, match", [
    ({"name": "anl_ce", "alpha": 5.0, "beta": 5.0, "delta": 5e-5, "min_prb": 1e-7},
     r"unknown keys \['min_prb'\]; valid keys: .*min_prob"),
    ({"name": "nce_rce", "alpah": 1.0, "beta": 1.0}, r"unknown keys \['alpah'\]; valid keys"),
    ({"name": "gce", "q": 0.7, "detla": 0.1}, r"unknown keys \['detla'\]"),
    ({"name": "nce_rce", "alpha": 1.0, "beta": 1.0, "is_anl": True},
     r"is_anl is a key of the published files of anl_ce and anl_fl only"),
    ({"name": "sce", "alpha": 0.1, "beta": 1.0, "delta": 5e-5}, r"L1 weight of the ANL"),
    ({"name": "anl_ce", "is_anl": False}, r"is_anl=False"),
    ({"name": "anl_fl", "is_anl": 1}, r"is_anl=1"),
    ({"name": "anl_ce", "min_prob": 1e-7, "p_min": 1e-6}, r"both min_prob"),
    ({"name": "anl_cee"}, r"unknown loss 'anl_cee'; valid names"),
])
def test_get_loss_rejects_misspelled_and_out_of_place_keys(loss, match):
    with pytest.raises(ValueError, match=match):
        fused_anl.get_loss(**loss, num_classes=10)
    cfg = copy.deepcopy(CONFIGS["cifar10_anl_ce"])
    cfg["loss"] = loss
    with pytest.raises(ValueError, match=match):
        fused_anl.from_config(cfg)


_DROP = object()  # _edit: remove the key


def _edit(file, section, **changes):
    cfg = copy.deepcopy(CONFIGS[file])
    target = cfg if section is None else cfg[section]
    for key, value in changes.items():
        if value is _DROP:
            del target[key]
        else:
            target[key] = value
    return cfg


@pytest.mark.parametrize("cfg, match", [
    (_edit("cifar10_ce", None, optimizer={}), r"top level: unknown keys \['optimizer'\]"),
    (_edit("cifar10_ce", None, optim=_DROP), r"top level: missing keys \['optim'\]"),
    (_edit("cifar10_ce", "dataset", num_class=10, num_classes=_DROP),
     r"'dataset': missing keys \['num_classes'\]; unknown keys \['num_class'\]; valid keys"),
    (_edit("cifar10_ce", "optim", learning_rte=0.1, learning_rate=_DROP),
     r"'optim': missing keys \['learning_rate'\]; unknown keys \['learning_rte'\]"),
    (_edit("cifar10_ce", "optim", T_Max=120), r"unknown keys \['T_Max'\]"),
    (_edit("cifar10_ce", "optim", eta_min=_DROP), r"missing keys \['eta_min'\]"),
    (_edit("cifar10_ce", "optim", step_size=1), r"\['step_size'\] belong to another scheduler"),
    (_edit("webvision_ce", "optim", T_max=250), r"\['T_max'\] belong to another scheduler"),
    (_edit("cifar10_ce", "optim", optimizer="adam"), r"'adam' is not one of sgd"),
    (_edit("cifar10_ce", "optim", scheduler="step"), r"'step' is not one of cosine, steplr"),
    (_edit("cifar10_ce", "optim", total_epoch=120.0), r"total_epoch: must be an integer"),
    (_edit("cifar10_ce", "optim", learning_rate=-0.1), r"learning_rate: must be finite and >"),
    (_edit("cifar10_ce", "optim", nesterov=1), r"nesterov: must be true or false"),
    (_edit("cifar10_ce", "dataset", num_classes=True), r"num_classes: must be an integer"),
    (_edit("cifar10_ce", "model", nmae="x", name=_DROP), r"'model': missing keys \['name'\]"),
])
def test_from_config_rejects_misspelled_keys_and_bad_values(cfg, match):
    with pytest.raises(ValueError, match=match):
        fused_anl.from_config(cfg)


def test_from_config_options_are_settings_the_files_do_not_hold():
    with pytest.raises(ValueError, match=r"\['alpha'\] are already in the file's loss section"):
        fused_anl.from_config(CONFIGS["cifar10_sce"], alpha=1.0)
    with pytest.raises(ValueError, match=r"unknown \['lr'\]; valid: reduction"):
        fused_anl.from_config(CONFIGS["cifar10_sce"], lr=1.0)
    with pytest.raises(TypeError, match="a path or a mapping"):
        fused_anl.from_config(42)
    recipe = fused_anl.from_config(CONFIGS["cifar10_sce"], reduction="sum", backend="torch")
    assert recipe.criterion.reduction == "sum"


def test_presets_are_the_published_configs():
    """PRESETS[dataset][name] holds the loss section of the published file of that name,
    for every file (but mnist_mae.json, which names the loss "ce"); the one disagreement of
    file and paper, webvision's ANL-CE delta, follows the paper, and the one preset without
    a file, webvision's ANL-FL, is the paper's Table 4."""
    seen = {(d, n) for d, n in JAL_PRESETS}
    for file, cfg in CONFIGS.items():
        dataset, loss = cfg["dataset"]["name"], dict(cfg["loss"])
        name = loss.pop("name")
        if file != f"{dataset}_{name}":
            continue  # mnist_mae.json: loss "ce"
        loss.pop("is_anl", None)
        loss["p_min"] = loss.pop("min_prob", 1e-7)
        if file == "webvision_anl_ce":
            assert loss["delta"] == 5e-6
            loss["delta"] = 6e-6  # the paper's Table 4
        preset = dict(fused_anl.PRESETS[dataset].get(name, {"missing": True}))
        spec = fused_anl.LOSSES.get(name) or fused_anl.BATCH_LOSSES[name]
        if "p_min" in spec.hyper:
            preset.setdefault("p_min", spec.hyper["p_min"])
        else:
            loss.pop("p_min")
        if name == "ce" or name == "mae":
            assert name not in fused_anl.PRESETS[dataset] or not preset, (file, preset)
            seen.add((dataset, name))
            continue
        assert preset == loss, (file, preset, loss)
        seen.add((dataset, name))
    extra = {(d, n) for d, t in fused_anl.PRESETS.items() for n in t} - seen
    assert extra == {("webvision", "anl_fl")}, f"presets without a published file: {extra}"


# JAL's config.py (cswjl/joint-asymmetric-loss): NCEandAMSE / NFLandAMSE(alpha, beta, a),
# NFL's gamma its default 0.5
JAL_PRESETS = {
    ("cifar10", "nce_amse"): dict(alpha=1.0, beta=1.0, a=30.0),
    ("cifar100", "nce_amse"): dict(alpha=5.0, beta=1.0, a=20.0),
    ("webvision", "nce_amse"): dict(alpha=50.0, beta=1.0, a=30.0),
    ("clothing1m", "nce_amse"): dict(alpha=5.0, beta=0.1, a=5.0),
}
JAL_PRESETS.update({(d, "nfl_amse"): dict(v, gamma=0.5) for (d, _), v in list(JAL_PRESETS.items())})


def test_jal_presets_are_its_config():
    for (dataset, name), hyper in JAL_PRESETS.items():
        assert fused_anl.PRESETS[dataset][name] == hyper, (dataset, name)
        crit = fused_anl.get_loss(name, **hyper)
        assert crit.hyper == dict(fused_anl.LOSSES[name].hyper, **hyper)
