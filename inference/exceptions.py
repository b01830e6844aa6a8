"""Errors of the inference package: each says what is wrong and what keeps serving."""


class ModelRejected(Exception):
    """A model version that must not serve: tampered file or inputs that do not fit."""


class RegistryDamaged(ModelRejected):
    """A registry file featflow did not write as it is (edited or broken by hand): nothing
    in it is trusted, what serves keeps serving, and writes wait until it is repaired."""


class UnknownVersion(KeyError):
    """No such model version in the registry."""
