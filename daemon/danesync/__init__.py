"""danesync: keep Postfix's certificates and their DANE TLSA records in step."""

__version__ = "0.1.0"
