"""OAuth 2.0 peers for the interop suite (see README.md)."""
