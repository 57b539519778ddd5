"""The AWS event-stream binary message format (``application/vnd.amazon.eventstream``), encoding side.

Written from AWS's public description of the format: each message is

* a 12-byte prelude: total message length and headers length (big-endian uint32 each), then
  the CRC-32 of those 8 bytes;
* the headers: per header a 1-byte name length, the UTF-8 name, a 1-byte value type and the
  value (type 7, a string: a big-endian uint16 length and the UTF-8 bytes; type 0/1, booleans
  true/false, carry no value);
* the payload bytes;
* the CRC-32 of everything before it (prelude included), big-endian uint32.

Bedrock streams use it for ``ConverseStream`` and ``InvokeModelWithResponseStream``; botocore
decodes it (checking both CRCs) before parsing each event.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

__all__ = ["encode_message", "event", "exception"]

_STRING = 7
_TRUE = 0
_FALSE = 1


def _header(name: str, value: str | bool) -> bytes:
    raw_name = name.encode("utf-8")
    head = struct.pack(">B", len(raw_name)) + raw_name
    if isinstance(value, bool):
        return head + struct.pack(">B", _TRUE if value else _FALSE)
    raw = value.encode("utf-8")
    return head + struct.pack(">BH", _STRING, len(raw)) + raw


def encode_message(headers: Mapping[str, str | bool], payload: bytes) -> bytes:
    """One event-stream message with *headers* (strings or booleans) and *payload*."""
    encoded = b"".join(_header(name, value) for name, value in headers.items())
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(event_type: str, payload: bytes) -> bytes:
    """A JSON ``event`` message of type *event_type* (``chunk``, ``metadata``, ...)."""
    return encode_message(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}, payload
    )


def exception(exception_type: str, payload: bytes) -> bytes:
    """A modelled error inside the stream (``modelStreamErrorException``, ``throttlingException``, ...)."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        payload,
    )
