"""The stimulus server: shows image blocks with frame-counted timing (the only user of PsychoPy).

Modules: ``presenter`` (the Presenter seam, monitor profile, config), ``psychopy_presenter`` (the only
module importing psychopy), ``fake_presenter`` (display-free, simulated refresh clock), ``frameloop``
(frame counting, onsets/offsets, dropped frames, photodiode), ``cache`` (images by content hash),
``server`` (the ``wire.stim`` commands over ZeroMQ, TrialEvents on a PUB stream), ``cli``
(``python -m stimserver``), ``process`` (run the server as a child process). See docs/stimserver.md.
"""
