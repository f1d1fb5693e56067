"""Head-end side of STS: decoder key derivation (DKGA02) and token vending."""
