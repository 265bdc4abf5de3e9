"""The pure decision core: no I/O, no clock, no randomness, no protobuf, no logging.

Values in, values out (STYLE.md). Time and random values arrive as arguments.
"""
