"""Type aliases of the client's surface."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

Encoding = Literal["base64", "json"]
"""How arrays travel: `base64` (raw little-endian bytes, exact, the default) or `json` lists."""

Array = NDArray[Any]
"""What comes back: a NumPy array."""

ArrayLike = Any
"""What goes in: a NumPy array, anything with `__array__` (a torch CPU tensor), or nested lists."""

Scalar = bool | int | float | str | None | np.generic
