"""Tensor fields on the wire (nested JSON numbers or base64-encoded bytes) <-> NumPy arrays.

The API layer decodes every tensor field with `decode_tensor` and encodes every output tensor
with `encode_tensor`; the element limit, the accepted dtypes and the finiteness rules live here.
"""

from service.codecs import _oip as oip
from service.codecs._base64 import Base64Output, Base64Text
from service.codecs._checks import (
    TensorLimits,
    count_output,
    output_elements,
    request_elements,
)
from service.codecs._digest import tensors_digest
from service.codecs._dtypes import WIRE_DTYPES
from service.codecs._json_body import BodyPiece, body_pieces, dumps_json, loads_json
from service.codecs._tensors import (
    DecodedTensor,
    TensorForm,
    decode_tensor,
    encode_tensor,
    json_array,
)

__all__ = [
    "WIRE_DTYPES",
    "Base64Output",
    "Base64Text",
    "BodyPiece",
    "DecodedTensor",
    "TensorForm",
    "TensorLimits",
    "body_pieces",
    "count_output",
    "decode_tensor",
    "dumps_json",
    "encode_tensor",
    "json_array",
    "loads_json",
    "oip",
    "output_elements",
    "request_elements",
    "tensors_digest",
]
