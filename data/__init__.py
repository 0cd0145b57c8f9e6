"""Course assets (checkpoints and MANIFEST), shipped in the xailab wheel as `xailab_data`."""
