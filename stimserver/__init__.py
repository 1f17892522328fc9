"""The stimulus server: shows image blocks with frame-counted timing (the only user of PsychoPy)."""
