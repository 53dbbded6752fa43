"""diskci's own netboot initramfs: the busybox init (``init.sh``, ``udhcpc.sh``) and its builder."""
