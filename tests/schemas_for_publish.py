"""A ``module:Struct`` schema for the publish tests' ``[publish."chat.typed"]``."""

import msgspec


class Typed(msgspec.Struct):
    n: int
