"""Shared pytest set-up: deterministic, single-threaded torch so tests behave the same on any machine."""

import os

import pytest
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(autouse=True)
def _torch_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
