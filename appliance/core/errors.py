class DomainError(ValueError):
    """A request the domain refuses; entry points turn it into a 4xx / gRPC status."""

    http_status = 400


class ConflictError(DomainError):
    """The request conflicts with work already under way."""

    http_status = 409
