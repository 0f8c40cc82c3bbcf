"""What the SDK's Keep errors say, for the checks of arvados_keepclient.py and arvados_cli.py."""


def statuses(exc):
    """HTTP status codes in a KeepRequestError's per-service errors."""
    out = []
    try:
        for _, err in exc.request_errors().items():
            out.append(getattr(err, "status_code", repr(err)))
    except Exception:  # noqa: BLE001
        pass
    return out
