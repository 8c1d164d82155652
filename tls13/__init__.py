"""tls13: a sans-IO TLS 1.3 implementation (RFC 8446) on the ``cryptography`` package."""
