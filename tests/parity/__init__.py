"""Official-recipe parity cases (issue 13): see harness.py."""
