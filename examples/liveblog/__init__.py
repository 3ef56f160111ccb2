"""The liveblog: the original Channels example, running on the three tiers."""
