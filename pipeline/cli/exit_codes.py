"""Exit codes of ``derain`` (also in ``derain --help`` and the README):

0 all ok; 1 some inputs failed (the others were processed) or the run was stopped; 2 bad usage
or a missing input; 3 infrastructure: a storage endpoint, credentials or a Ray cluster the
command needs is missing or unreachable (fix the set-up, then run again); 130 interrupted."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INFRASTRUCTURE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
