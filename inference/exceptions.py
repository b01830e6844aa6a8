"""Errors of the inference package: each says what is wrong and what keeps serving."""


class ModelRejected(Exception):
    """A model version that must not serve: tampered file or inputs that do not fit."""


class UnknownVersion(KeyError):
    """No such model version in the registry."""
