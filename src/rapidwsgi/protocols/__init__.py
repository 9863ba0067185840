"""Wire protocols: sans-IO front-ends that turn bytes into :mod:`rapidwsgi.events`."""
