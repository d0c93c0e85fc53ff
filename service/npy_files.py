"""Arrays from `.npy` and `.npz` files, memory-mapped where the format allows it."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray


def load_arrays(path: str, default_key: str | None = None) -> dict[str, NDArray[Any]]:
    """The arrays of a file: `x.npy` (memory-mapped), `x.npz` (every array, by name), or
    `x.npz:key` (one array). With `default_key`, an `.npz` gives its array of that name, or its
    only array."""
    file, _, key = path.rpartition(":") if ":" in Path(path).name else (path, "", "")
    if file.endswith(".npy"):
        array = np.load(file, mmap_mode="r", allow_pickle=False)
        return {default_key or Path(file).stem: array}
    if not file.endswith(".npz"):
        raise ValueError(f"{path}: expected a .npy or .npz file (or file.npz:name)")
    arrays = _load_npz(file)
    if key:
        if key not in arrays:
            raise ValueError(f"{path}: no array {key!r}; the file has {', '.join(arrays)}")
        return {default_key or key: arrays[key]}
    if default_key is None:
        return arrays
    if default_key in arrays:
        return {default_key: arrays[default_key]}
    if len(arrays) == 1:
        return {default_key: next(iter(arrays.values()))}
    raise ValueError(
        f"{path}: no array {default_key!r} among {', '.join(arrays)}; name one as {file}:NAME"
    )


def _load_npz(file: str) -> dict[str, NDArray[Any]]:
    """Every array of an `.npz`; those stored uncompressed are memory-mapped in place."""
    with np.load(file, allow_pickle=False) as npz:
        names = list(npz.files)
        arrays = {name: _mapped_member(file, name) for name in names}
        return {name: array if array is not None else npz[name] for name, array in arrays.items()}


def _mapped_member(file: str, name: str) -> NDArray[Any] | None:
    """A stored (uncompressed) `.npy` member of a zip file as a memory map, or None."""
    with zipfile.ZipFile(file) as archive:
        info = archive.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(file, "rb") as handle:
        # The local file header: 30 bytes, then the name and the extra field.
        handle.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(handle.read(4), dtype="<u2")
        start = info.header_offset + 30 + int(name_length) + int(extra_length)
        handle.seek(start)
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            return None
        if dtype.hasobject:
            return None
        offset = handle.tell()
    return np.memmap(
        file, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
    )
