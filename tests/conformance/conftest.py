"""The third-party example package runs with its own pytest configuration, not in this session."""

collect_ignore = ["thirdparty"]
