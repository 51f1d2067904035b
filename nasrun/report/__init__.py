"""The ``nasrun-report`` command: tables and figures of finished (or running) run folders, multiruns
and sweeps. A consumer of the library: nothing else in nasrun imports it."""
