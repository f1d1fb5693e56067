"""Sans-IO protocol codecs: bytes in, values out; no sockets, UARTs or clocks inside."""
