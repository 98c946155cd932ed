"""I/O: object storage through fsspec/s3fs, video in (decord, PyAV) and out (PyAV), and the
threads that decode ahead of and encode behind the network."""
