"""The de-rain stage: its typed config and declared resources, the one device resolver, the
stage itself (a J4R-Net on a device streaming one video), batching across clips, segments."""
