"""The virtual rig: model neurons that watch the screen and spike like a recorded population."""
