"""Errors a user can cause, each naming the cause and the fix.

Hierarchy::

    HarnessError                 exit 2 unless stated
    ├── ConfigError              bad scenario file, field or flag
    ├── RecordError              a run directory this version cannot read (newer format, unknown field)
    ├── TargetError              the target cannot be booted or reached
    │   ├── BootError            the app failed to import or start
    │   ├── PortInUseError       the requested port is taken
    │   ├── UnreachableError     --url does not answer
    │   └── DatabaseError        the scenario's database cannot be reached
    ├── TargetDiedError          the target died mid-run (exit 1; partial results kept)
    ├── DriverError              a load process failed (exit 1)
    └── Interrupted              Ctrl-C or SIGTERM (exit 130; partial results kept)

The CLI prints ``str(error)`` without a traceback and exits with ``error.exit_code``.
"""

from __future__ import annotations


class HarnessError(Exception):
    exit_code = 2


class ConfigError(HarnessError):
    pass


class RecordError(HarnessError):
    pass


class TargetError(HarnessError):
    pass


class BootError(TargetError):
    pass


class PortInUseError(TargetError):
    pass


class UnreachableError(TargetError):
    pass


class DatabaseError(TargetError):
    pass


class TargetDiedError(HarnessError):
    exit_code = 1


class DriverError(HarnessError):
    exit_code = 1


class Interrupted(HarnessError):
    exit_code = 130
