"""`service._compat.glibc_malloc`: glibc keeps freed memory when asked, nothing changes when not."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from service._compat.glibc_malloc import retain_freed_memory
from service.config import Settings


def test_zero_leaves_the_c_library_alone() -> None:
    assert retain_freed_memory(0) is False


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt's thresholds are glibc's",
)
def test_glibc_takes_the_thresholds() -> None:
    assert ctypes.util.find_library("c") is not None
    assert retain_freed_memory(Settings().retain_freed_bytes) is True
    assert retain_freed_memory(2**40) is True  # capped to what mallopt's int takes


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSS_SERVICE_RETAIN_FREED_BYTES", "0")
    assert Settings().retain_freed_bytes == 0
    monkeypatch.setenv("LOSS_SERVICE_RETAIN_FREED_BYTES", "-1")
    with pytest.raises(ValueError, match="retain_freed_bytes"):
        Settings()
