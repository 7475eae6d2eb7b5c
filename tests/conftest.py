"""Shared fixtures: small synthetic CIFAR-format data generated once per test session."""
import pytest
import torch

from fa_nb_utils.data import cifar, synthetic
from fa_nb_utils.data import DeviceData

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def synthetic_folder(data_root):
    """The standard preset, small: 2,000 train and 1,280 test images (the protocol's 10 x 128)."""
    return synthetic.ensure_synthetic(data_root, "standard", n_train=2000, n_test=1280)


@pytest.fixture(scope="session")
def synthetic_data(synthetic_folder):
    return DeviceData.from_cifar(cifar.read_cifar10_folder(synthetic_folder), name="synthetic")


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory):
    """The smoke reproduction's results folder, run once per session (slow tests only)."""
    from fa_nb_utils.paper import runner as rp

    results = tmp_path_factory.mktemp("smoke") / "results"
    rp.reproduce("smoke", results_dir=results, log=lambda *a: None)
    return results
