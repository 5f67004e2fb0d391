"""The threat model as tests: each module names the attack it stops, and runs it against mxd."""
