"""The image pipeline: the stage graph and its cache, stage 1 (rootfs), the composefs stage, artifacts/ and
initramfs/. Knows no database and no HTTP."""
