"""The methods registry (name -> Method subclass)."""

from workers.methods.base import Method
from workers.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")
