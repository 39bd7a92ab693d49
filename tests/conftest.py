"""Fixtures shared by the unit and end-to-end tests (helpers live in tests/helpers/)."""

import pytest
import torch


@pytest.fixture
def single_thread():
    """Tiny models run faster on one thread, and do not fight parallel test runs for cores.
    Modules of training runs use it for every test (`pytestmark`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
