"""Exit codes of ``derain``: 0 success; 1 some inputs failed (the others were processed) or the
run was stopped; 2 bad usage or a missing input; 130 interrupted."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
