import os
import sys

import pytest
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py

# Property tests: fixed seed, bounded examples, no deadline on a loaded 2-core machine.
settings.register_profile("handgrad", derandomize=True, max_examples=25, deadline=None)
settings.load_profile("handgrad")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never reach the network: any socket connection fails at once."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
