"""The ``derain`` command: ``main`` (parser, the one place a UsageError becomes exit code 2),
exit codes, and one module per sub-command, each a thin caller of the library."""
