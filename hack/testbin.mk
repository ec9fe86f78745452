# Placeholder until the test control plane lands (issue 3): nothing to build yet.
.PHONY: testbin
testbin:
	@true
