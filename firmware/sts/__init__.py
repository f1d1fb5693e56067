"""STS (IEC 62055-41) 20-digit prepaid tokens: codec, EA07 cipher, meter-side acceptor."""
