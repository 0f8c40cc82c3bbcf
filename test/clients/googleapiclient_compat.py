"""One-argument bridge between the Arvados SDK's api.py (3.x) and Debian's googleapiclient.

The Arvados 3.x API client calls googleapiclient.discovery.build(..., num_retries=N), an
argument googleapiclient gained in its 1.8/2.x line; Debian bookworm packages 1.7.12
(python3-googleapi), whose build() has no such argument and raises TypeError. In
googleapiclient 2.x that argument only sets how often build() retries fetching the discovery
document; every API call's retries come from the http object, which the Arvados code sets
itself (_patch_http_request). So this wrapper drops num_retries and changes nothing else.
It is imported before arvados.api by arvados_cli.py (and by the arv-put/arv-get
subprocesses it starts); it is a no-op with a googleapiclient that takes the argument.
"""
import functools
import inspect

import googleapiclient.discovery as _discovery

_build = _discovery.build
if "num_retries" not in inspect.signature(inspect.unwrap(_build)).parameters:

    @functools.wraps(_build)
    def build(*args, num_retries=None, **kwargs):
        return _build(*args, **kwargs)

    _discovery.build = build
    ADAPTED = True
else:
    ADAPTED = False
