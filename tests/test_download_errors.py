"""A failed MNIST download names its cause in the one-line error (not just the exception's
type)."""

import urllib.error

import pytest
import torchvision.datasets.mnist

from utils.dataset import load_mnist
from utils.errors import DataError, first_line


def test_a_failed_mnist_download_names_the_network_error(tmp_path, monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path, "train")
    message = str(err.value)
    assert "\n" not in message
    assert "(download failed: <urlopen error [Errno -3] Temporary failure in name resolution>)" in (
        message
    )


def test_first_line_prefers_the_reason_then_the_message_then_the_type():
    assert first_line(urllib.error.URLError("no route")) == "no route"
    assert first_line(RuntimeError("first\nsecond")) == "first"
    assert first_line(EOFError()) == "EOFError"
