"""The methods registry (name -> Method subclass)."""

from workers.contract.registry import Registry
from workers.methods.base import Method

METHODS: Registry[type[Method]] = Registry("method")
