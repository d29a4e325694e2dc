"""Encrypted object archive: cryptography, key management and the two object stores."""
