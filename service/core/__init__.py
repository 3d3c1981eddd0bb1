"""Settings and security primitives shared by the whole service."""
