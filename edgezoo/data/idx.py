"""Read and write idx files (the MNIST / Fashion-MNIST format), gzip-compressed or plain.

torchvision's reader (datasets.mnist.read_sn3_pascalvincent_tensor) opens plain files only and
checks with `assert`; this one reads the .gz files as distributed and says what is wrong.
"""

import gzip
import os
from pathlib import Path

import numpy as np

from edgezoo.errors import DataError
from edgezoo.fileio import atomic_path

# idx type codes (third magic byte) -> numpy big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_CODES = {dtype: code for code, dtype in _IDX_DTYPES.items()}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Return the array stored in an idx file (.gz or plain), in native byte order."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read idx file {path}: {err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an idx file: its first bytes are {data[:4].hex()}")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path} is not an idx file: truncated header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path} holds {len(data) - header} data bytes, but its header declares shape "
            f"{shape} ({expected} bytes): the file is truncated or corrupt"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as an idx file, gzip-compressed when the name ends in .gz."""
    path = Path(path)
    dtype = array.dtype.newbyteorder(">")
    if dtype not in _DTYPE_CODES:
        raise DataError(f"idx files cannot store dtype {array.dtype}")
    header = bytes([0, 0, _DTYPE_CODES[dtype], array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=dtype).tobytes()
    with atomic_path(path) as partial:
        if path.suffix == ".gz":
            # mtime=0 and the final name in the header keep the output byte-identical.
            with (
                open(partial, "wb") as raw,
                gzip.GzipFile(str(path), "wb", fileobj=raw, mtime=0) as f,
            ):
                f.write(payload)
        else:
            partial.write_bytes(payload)
